package channels

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeHosts are the production host names the fake providers answer for.
var fakeHosts = []string{"discord.com", "hooks.slack.com", "prod-42.westeurope.logic.azure.com", "chat.googleapis.com",
	"api.telegram.org", "matrix.example.org", "hooks.example.com", "inward.example.com"}

// fakeNet serves handler for every fake host on one loopback TLS server.
// Its resolver gives each host a documentation address (inward.example.com
// resolves to the metadata address, as DNS rebinding would) and its dialer
// sends those addresses to the server; any other name fails to resolve, so
// no test ever reaches a real provider.
type fakeNet struct {
	srv   *httptest.Server
	addrs map[string]netip.Addr
	mu    sync.Mutex
	dials []string
}

func newFakeNet(t *testing.T, handler http.Handler) (*fakeNet, *Network) {
	t.Helper()
	f := &fakeNet{addrs: map[string]netip.Addr{}}
	for i, h := range fakeHosts {
		f.addrs[h] = netip.AddrFrom4([4]byte{203, 0, 113, byte(10 + i)})
	}
	f.addrs["inward.example.com"] = netip.MustParseAddr("169.254.169.254")
	cert, pool := selfSigned(t, fakeHosts)
	f.srv = httptest.NewUnstartedServer(handler)
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	n := &Network{Resolver: f, Dial: f.dial, TLS: &tls.Config{RootCAs: pool}}
	return f, n
}

func (f *fakeNet) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	a, ok := f.addrs[host]
	if !ok {
		return nil, fmt.Errorf("fake resolver: unknown host %s", host)
	}
	return []netip.Addr{a}, nil
}

func (f *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dials = append(f.dials, addr)
	f.mu.Unlock()
	ip, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	for _, a := range f.addrs {
		if a == ip.Addr() {
			var d net.Dialer
			return d.DialContext(ctx, network, f.srv.Listener.Addr().String())
		}
	}
	return nil, fmt.Errorf("fake dialer: %s is no fake host", addr)
}

func (f *fakeNet) dialed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.dials...)
}

func selfSigned(t *testing.T, hosts []string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake providers"},
		DNSNames: hosts, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

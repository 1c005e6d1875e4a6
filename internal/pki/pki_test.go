package pki_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// selfSigned makes a certificate signed by its own key, with tweaks.
func selfSigned(t *testing.T, key any, pub any, edit func(*x509.Certificate)) []byte {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return pki.EncodeCert(der)
}

func keyPEM(t *testing.T, k any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestParseCA(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := selfSigned(t, p256, &p256.PublicKey, nil)
	tests := []struct {
		name             string
		cert, key        []byte
		certErr, keyErr  string
		wantCert, wantOK bool
	}{
		{name: "valid", cert: good, key: keyPEM(t, p256), wantOK: true},
		{name: "garbage certificate", cert: []byte("hello"), key: keyPEM(t, p256), certErr: "no PEM CERTIFICATE"},
		{name: "P-384", cert: selfSigned(t, p384, &p384.PublicKey, nil), key: keyPEM(t, p384), certErr: "P-256"},
		{name: "RSA", cert: selfSigned(t, rsaKey, &rsaKey.PublicKey, nil), key: keyPEM(t, rsaKey), certErr: "P-256"},
		{name: "not a CA", cert: selfSigned(t, p256, &p256.PublicKey, func(c *x509.Certificate) { c.IsCA = false; c.KeyUsage = x509.KeyUsageDigitalSignature }),
			key: keyPEM(t, p256), certErr: "not a CA"},
		{name: "expired", cert: selfSigned(t, p256, &p256.PublicKey, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		}), key: keyPEM(t, p256), certErr: "expired"},
		{name: "not yet valid", cert: selfSigned(t, p256, &p256.PublicKey, func(c *x509.Certificate) {
			c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
		}), key: keyPEM(t, p256), certErr: "not valid before"},
		{name: "key of another CA", cert: good, key: keyPEM(t, other), keyErr: "does not belong"},
		{name: "garbage key", cert: good, key: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), keyErr: "parse private key"},
		{name: "RSA key", cert: good, key: keyPEM(t, rsaKey), keyErr: "P-256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca, certErr, keyErr := pki.ParseCA(tt.cert, tt.key, time.Now())
			check := func(what string, err error, want string) {
				t.Helper()
				switch {
				case want == "" && err != nil:
					t.Fatalf("%s error: %v", what, err)
				case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Fatalf("%s error = %v, want one containing %q", what, err, want)
				}
			}
			check("certificate", certErr, tt.certErr)
			check("key", keyErr, tt.keyErr)
			if (ca != nil) != tt.wantOK {
				t.Fatalf("ca = %v, want ok=%v", ca, tt.wantOK)
			}
		})
	}
}

func TestWriteCAAndReadSource(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	certPath, keyPath, err := pki.WriteCA(dir, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{certPath: 0o644, keyPath: 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	if _, _, err := pki.WriteCA(dir, time.Now()); !errors.Is(err, pki.ErrCAExists) {
		t.Fatalf("second WriteCA: %v, want ErrCAExists", err)
	}
	// By path and as PEM text, the same CA.
	certText, err := os.ReadFile(certPath)
	if err != nil {
		t.Fatal(err)
	}
	keyText, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range [][2]string{{certPath, keyPath}, {string(certText), string(keyText)}} {
		if _, cerr, kerr := pki.LoadCA(src[0], src[1], time.Now()); cerr != nil || kerr != nil {
			t.Fatalf("load written CA: %v %v", cerr, kerr)
		}
	}
	if _, cerr, _ := pki.LoadCA(filepath.Join(dir, "missing.pem"), keyPath, time.Now()); cerr == nil {
		t.Fatal("a missing certificate file loaded")
	}
	if _, _, kerr := pki.LoadCA(certPath, "/nonexistent/key.pem", time.Now()); kerr == nil {
		t.Fatal("a missing key file loaded")
	}
	if _, err := pki.ReadSource(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("a missing file read without error")
	}
}

func csrFor(t *testing.T, key any, edit func(*x509.CertificateRequest)) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func TestIssueHost(t *testing.T) {
	ca := newCA(t)
	key, _ := pki.GenerateKey()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	const hostID = "host-abc"
	tests := []struct {
		name    string
		csr     string
		address string
		wantErr string
	}{
		{name: "IP address", csr: mustCSR(t, key, "10.1.2.3:9090"), address: "10.1.2.3:9090"},
		{name: "DNS name", csr: mustCSR(t, key, "agent-1.example:9090"), address: "agent-1.example:9090"},
		{name: "own URI", csr: csrFor(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{{Scheme: "wrenn", Host: "host", Path: "/" + hostID}}
		}), address: "10.1.2.3:9090"},
		{name: "foreign IP", csr: mustCSR(t, key, "10.9.9.9:9090"), address: "10.1.2.3:9090", wantErr: "is not the host's address"},
		{name: "foreign DNS", csr: csrFor(t, key, func(r *x509.CertificateRequest) { r.DNSNames = []string{"bank.example"} }),
			address: "10.1.2.3:9090", wantErr: "is not the host's address"},
		{name: "another host's URI", csr: csrFor(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{{Scheme: "wrenn", Host: "host", Path: "/host-other"}}
		}), address: "10.1.2.3:9090", wantErr: "does not name this host"},
		{name: "control plane URI", csr: csrFor(t, key, func(r *x509.CertificateRequest) {
			r.URIs = []*url.URL{{Scheme: "wrenn", Host: "control-plane"}}
		}), address: "10.1.2.3:9090", wantErr: "does not name this host"},
		{name: "email", csr: csrFor(t, key, func(r *x509.CertificateRequest) { r.EmailAddresses = []string{"a@b.c"} }),
			address: "10.1.2.3:9090", wantErr: "email"},
		{name: "P-384 key", csr: csrFor(t, p384, nil), address: "10.1.2.3:9090", wantErr: "P-256"},
		{name: "RSA key", csr: csrFor(t, rsaKey, nil), address: "10.1.2.3:9090", wantErr: "P-256"},
		{name: "not PEM", csr: "hello", address: "10.1.2.3:9090", wantErr: "no PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Now()
			csr, err := pki.ParseCSR(tt.csr)
			var leaf pki.Leaf
			if err == nil {
				leaf, err = ca.IssueHost(csr, hostID, tt.address, now, pki.HostCertTTL)
			}
			if tt.wantErr != "" {
				var ce *pki.CSRError
				if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a CSRError containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c := leaf.Cert
			if c.Subject.CommonName != hostID || len(c.URIs) != 1 || c.URIs[0].String() != pki.HostURI(hostID) {
				t.Errorf("identity: CN %q URIs %v", c.Subject.CommonName, c.URIs)
			}
			host, _, _ := net.SplitHostPort(tt.address)
			if ip := net.ParseIP(host); ip != nil {
				if len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(ip) || len(c.DNSNames) != 0 {
					t.Errorf("SANs: IPs %v DNS %v", c.IPAddresses, c.DNSNames)
				}
			} else if len(c.DNSNames) != 1 || c.DNSNames[0] != host || len(c.IPAddresses) != 0 {
				t.Errorf("SANs: IPs %v DNS %v", c.IPAddresses, c.DNSNames)
			}
			if got := c.NotAfter.Sub(now); got < pki.HostCertTTL-time.Second || got > pki.HostCertTTL+time.Second {
				t.Errorf("lifetime to expiry %v, want %v", got, pki.HostCertTTL)
			}
			if len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
				t.Errorf("ext key usage %v, want server auth only", c.ExtKeyUsage)
			}
			if leaf.Fingerprint != pki.Fingerprint(c) || len(leaf.Fingerprint) != 64 {
				t.Errorf("fingerprint %q", leaf.Fingerprint)
			}
			if err := pki.VerifyHost([]*x509.Certificate{c}, ca.Pool, now, hostID, leaf.Fingerprint); err != nil {
				t.Errorf("VerifyHost of the issued leaf: %v", err)
			}
		})
	}
}

func mustCSR(t *testing.T, key *ecdsa.PrivateKey, address string) string {
	t.Helper()
	raw, err := pki.NewCSR(key, address)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

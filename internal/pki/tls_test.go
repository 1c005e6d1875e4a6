package pki_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// hostLeaf issues hostID's leaf as an agent gets it: key made here, a CSR.
func hostLeaf(t *testing.T, ca *pki.CA, hostID, address string) (certPEM, keyPEM []byte, fp string) {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.ParseCSR(mustCSR(t, key, address))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueHost(csr, hostID, address, time.Now(), pki.HostCertTTL)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.CertPEM, kp, leaf.Fingerprint
}

// agent is an HTTPS server on loopback configured as the host agent's:
// it answers with the serial of the client certificate it saw.
type agent struct {
	addr  string
	store *pki.HostCertStore
	fp    string
	logs  *testenv.SyncBuffer
}

func startAgent(t *testing.T, ca *pki.CA, hostID string, now func() time.Time) *agent {
	t.Helper()
	a := &agent{store: &pki.HostCertStore{}, logs: &testenv.SyncBuffer{}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", a.store.ServerConfig(now))
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	certPEM, keyPEM, fp := hostLeaf(t, ca, hostID, a.addr)
	if err := a.store.Set(certPEM, keyPEM, ca.CertPEM, time.Now()); err != nil {
		t.Fatal(err)
	}
	a.fp = fp
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.TLS.PeerCertificates[0].SerialNumber.String())
		}),
		ErrorLog: log.New(a.logs, "", 0),
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return a
}

func clientFor(cfg *tls.Config) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}}
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return string(body), err
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t)
	cp, err := pki.NewCPCertStore(ca, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, "host-a", nil)
	b := startAgent(t, ca, "host-b", nil)
	foreignCA := newCA(t)
	foreignCP, err := pki.NewCPCertStore(foreignCA, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	expiredCP, err := pki.NewCPCertStore(ca, func() time.Time { return time.Now().Add(-48 * time.Hour) }, 0)
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, leafKey, _ := hostLeaf(t, ca, "host-c", "127.0.0.1:1")
	hostPair, err := tls.X509KeyPair(leafPEM, leafKey)
	if err != nil {
		t.Fatal(err)
	}
	// Clients that trust the agent but present the wrong (or no) certificate.
	asClient := func(certs ...tls.Certificate) *tls.Config {
		cfg := cp.ClientConfig("host-a", a.fp)
		cfg.GetClientCertificate = nil
		cfg.Certificates = certs
		return cfg
	}
	presenting := func(s *pki.CPCertStore) *tls.Config {
		cfg := cp.ClientConfig("host-a", a.fp)
		cfg.GetClientCertificate = s.GetClientCertificate
		return cfg
	}
	tests := []struct {
		name      string
		client    *http.Client
		url       string
		agentLogs bool   // the agent logs the refused handshake
		wantErr   string // "" succeeds
	}{
		{name: "control plane to its host", client: clientFor(cp.ClientConfig("host-a", a.fp)), url: "https://" + a.addr},
		{name: "plain HTTP", client: &http.Client{Timeout: 5 * time.Second}, url: "http://" + a.addr, agentLogs: true, wantErr: "status 400"},
		{name: "no client certificate", client: clientFor(asClient()), url: "https://" + a.addr, agentLogs: true, wantErr: "certificate required"},
		{name: "client certificate of another CA", client: clientFor(presenting(foreignCP)), url: "https://" + a.addr,
			agentLogs: true, wantErr: "bad certificate"},
		{name: "expired client certificate", client: clientFor(presenting(expiredCP)), url: "https://" + a.addr,
			agentLogs: true, wantErr: "bad certificate"},
		{name: "host leaf as client", client: clientFor(asClient(hostPair)), url: "https://" + a.addr, agentLogs: true, wantErr: "bad certificate"},
		{name: "host B's certificate at A's address", client: clientFor(cp.ClientConfig("host-a", a.fp)), url: "https://" + b.addr,
			wantErr: "names another identity"},
		{name: "fingerprint not on record", client: clientFor(cp.ClientConfig("host-b", a.fp)), url: "https://" + b.addr,
			wantErr: "not the one on record"},
		{name: "no fingerprint on record (deleted host)", client: clientFor(cp.ClientConfig("host-a")), url: "https://" + a.addr,
			wantErr: "not the one on record"},
		// The control plane restarted with another CA refuses its hosts.
		{name: "control plane of another CA dialled", client: clientFor(foreignCP.ClientConfig("host-a", a.fp)), url: "https://" + a.addr,
			wantErr: "unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := settledLines(a.logs, -1)
			body, err := get(tt.client, tt.url)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if body != cp.Current().SerialNumber.String() {
					t.Fatalf("agent saw client %s, want the control plane's %s", body, cp.Current().SerialNumber)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			if tt.agentLogs {
				if n := settledLines(a.logs, before) - before; n != 1 {
					t.Fatalf("agent logged %d lines for the refusal, want 1:\n%s", n, a.logs.String())
				}
			}
		})
	}
}

// settledLines counts the log's lines once no new one came for 100 ms
// (after more than above when above >= 0, within 2 s): the server logs a
// refusal after the client has seen it.
func settledLines(l *testenv.SyncBuffer, above int) int {
	deadline := time.Now().Add(2 * time.Second)
	n, since := strings.Count(l.String(), "\n"), time.Now()
	for time.Now().Before(deadline) && (n <= above || time.Since(since) < 100*time.Millisecond) {
		time.Sleep(10 * time.Millisecond)
		if m := strings.Count(l.String(), "\n"); m != n {
			n, since = m, time.Now()
		}
	}
	return n
}

// fakeClock is a clock tests move.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time               { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Add(d time.Duration)          { c.ns.Add(int64(d)) }
func newClock(t time.Time) *fakeClock             { c := &fakeClock{}; c.ns.Store(t.UnixNano()); return c }
func serialOf(s *pki.CPCertStore) string          { return s.Current().SerialNumber.String() }
func isTLSError(err error) bool                   { var re tls.RecordHeaderError; return errors.As(err, &re) }
func transportFor(c *http.Client) *http.Transport { return c.Transport.(*http.Transport) }

// The control plane's certificate is renewed (its clock moved past the
// 12 h renewal point, then renewed twice more) while 50 callers keep
// opening connections: no call fails, and the agent sees the new
// certificates.
func TestCPCertRenewalUnderLoad(t *testing.T) {
	ca := newCA(t)
	clock := newClock(time.Now())
	cp, err := pki.NewCPCertStore(ca, clock.Now, 0)
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, "host-a", clock.Now)
	client := clientFor(cp.ClientConfig("host-a", a.fp))
	// Few idle connections: most calls open a new one, so handshakes run
	// throughout the renewals.
	transportFor(client).MaxIdleConnsPerHost = 2
	first := serialOf(cp)
	seen := sync.Map{}
	var failures atomic.Int64
	var calls atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				body, err := get(client, "https://"+a.addr)
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("call failed during renewal: %v (tls: %v)", err, isTLSError(err))
					return
				}
				seen.Store(body, true)
			}
		})
	}
	// Renewal keeps every certificate handed out valid for 12 h more, so
	// the clock moves past 12 h once: a handshake slowed down on this
	// loaded machine must not see two 13 h jumps and an expired
	// certificate, which a real renewal every 12 h never causes.
	for _, step := range []time.Duration{13 * time.Hour, time.Hour, time.Hour} {
		time.Sleep(150 * time.Millisecond)
		clock.Add(step)
		if err := cp.Renew(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d calls failed", failures.Load(), calls.Load())
	}
	last := serialOf(cp)
	if last == first {
		t.Fatal("Renew did not replace the certificate")
	}
	if _, ok := seen.Load(last); !ok {
		t.Fatalf("the agent never saw the renewed certificate (%d calls)", calls.Load())
	}
	t.Logf("%d calls, none failed, %d client certificates seen", calls.Load(), countMap(&seen))
	// A certificate issued 25 h ago by the clock both sides read has
	// expired: a new connection with it is refused.
	old := cp.ClientConfig("host-a", a.fp)
	firstStore, err := pki.NewCPCertStore(ca, func() time.Time { return clock.Now().Add(-25 * time.Hour) }, 0)
	if err != nil {
		t.Fatal(err)
	}
	old.GetClientCertificate = firstStore.GetClientCertificate
	if _, err := get(clientFor(old), "https://"+a.addr); err == nil {
		t.Fatal("an expired control plane certificate was accepted")
	}
}

func countMap(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// A host's leaf swapped in the store serves new connections; a connection
// opened before keeps working.
func TestHostCertSwap(t *testing.T) {
	ca := newCA(t)
	cp, err := pki.NewCPCertStore(ca, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, ca, "host-a", nil)
	oldFP := a.fp
	oldClient := clientFor(cp.ClientConfig("host-a", oldFP))
	if _, err := get(oldClient, "https://"+a.addr); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, newFP := hostLeaf(t, ca, "host-a", a.addr)
	if err := a.store.Set(certPEM, keyPEM, ca.CertPEM, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := get(oldClient, "https://"+a.addr); err != nil {
		t.Fatalf("the connection opened before the swap broke: %v", err)
	}
	if _, err := get(clientFor(cp.ClientConfig("host-a", newFP)), "https://"+a.addr); err != nil {
		t.Fatalf("new connection after the swap: %v", err)
	}
	if _, err := get(clientFor(cp.ClientConfig("host-a", oldFP)), "https://"+a.addr); err == nil {
		t.Fatal("a new connection still got the old certificate")
	}
	// A store refuses material that does not hold together.
	otherPEM, otherKey, _ := hostLeaf(t, ca, "host-a", a.addr)
	foreign := newCA(t)
	for name, set := range map[string][3][]byte{
		"key of another leaf": {certPEM, otherKey, ca.CertPEM},
		"another CA":          {otherPEM, otherKey, foreign.CertPEM},
		"garbage":             {[]byte("x"), otherKey, ca.CertPEM},
	} {
		if err := a.store.Set(set[0], set[1], set[2], time.Now()); err == nil {
			t.Errorf("%s: Set accepted it", name)
		}
	}
	if err := a.store.Set(certPEM, keyPEM, ca.CertPEM, time.Now().Add(8*24*time.Hour)); err == nil {
		t.Error("an expired leaf was accepted")
	}
	if _, err := net.Dial("tcp", a.addr); err != nil {
		t.Fatal(err)
	}
}

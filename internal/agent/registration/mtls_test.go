package registration_test

import (
	"context"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/config"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/app"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// mtlsCP is a control plane with a CA whose pool dials with its client
// certificate.
func mtlsCP(t *testing.T, cfg hostauth.Config) (*cp, *pki.CA) {
	t.Helper()
	c, ca, _ := mtlsCPWithCerts(t, cfg)
	return c, ca
}

func mtlsCPWithCerts(t *testing.T, cfg hostauth.Config) (*cp, *pki.CA, *pki.CPCertStore) {
	t.Helper()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.NewCPCertStore(ca, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg.CA = ca
	return newCPWith(t, cfg, certs), ca, certs
}

// mtlsAgent is the fake agent behind the real agent's listener
// configuration, serving the certificate registration installs.
func mtlsAgent(t *testing.T) (*agenttest.Agent, *pki.HostCertStore) {
	t.Helper()
	store := &pki.HostCertStore{}
	return agenttest.Serve(t, func(a *agenttest.Agent) { a.TLS = store.ServerConfig(nil) }), store
}

func (c *cp) list(t *testing.T, hostID string) error {
	t.Helper()
	h, err := c.q.GetHost(context.Background(), hostID)
	if err != nil {
		return err
	}
	_, err = c.agents.ForHost(h).ListSandboxes(context.Background(), connect.NewRequest(&pb.ListSandboxesRequest{}))
	return err
}

// registered runs an agent's registration with a TLS fake agent until its
// certificate is installed.
func (c *cp) registered(t *testing.T, o registration.Options) (hostauth.HostWithToken, *agenttest.Agent, *pki.HostCertStore) {
	t.Helper()
	h := c.newHost(t)
	agent, store := mtlsAgent(t)
	o.CPURLs, o.RegisterToken, o.Address, o.Specs, o.Certs = []string{c.url}, h.Token, agent.Address(), specs, store
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Interval == 0 {
		o.Interval = 100 * time.Millisecond
	}
	start(t, o)
	waitFor(t, 5*time.Second, "host certificate installed", store.Loaded)
	return h, agent, store
}

func TestMTLSRegistrationAndRefusals(t *testing.T) {
	c, ca := mtlsCP(t, hostauth.Config{})
	dir := t.TempDir()
	hA, _, storeA := c.registered(t, registration.Options{Dir: dir})

	// The credentials file holds the leaf, its key (made here) and the CA.
	creds, err := registration.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !pki.SameCert([]byte(creds.CACertPEM), ca.CertPEM) || !sameLeaf(creds.CertPEM, storeA.Leaf()) {
		t.Fatal("the credentials file does not hold the CA and the installed leaf")
	}
	key, err := pki.ParseKey([]byte(creds.KeyPEM))
	if err != nil || !key.PublicKey.Equal(storeA.Leaf().PublicKey) {
		t.Fatalf("key_pem is not the leaf's key: %v", err)
	}
	if st, err := os.Stat(filepath.Join(dir, registration.CredentialsFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file mode: %v %v", st.Mode(), err)
	}
	if err := c.list(t, hA.Host.ID); err != nil {
		t.Fatalf("the control plane cannot reach its host over mTLS: %v", err)
	}

	// Host B's agent at the address recorded for A: refused.
	hB, agentB, _ := c.registered(t, registration.Options{})
	if err := c.list(t, hB.Host.ID); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rowA, _ := c.q.GetHost(ctx, hA.Host.ID)
	if _, err := c.pool.Exec(ctx, "UPDATE hosts SET address = $1 WHERE id = $2", agentB.Address(), hA.Host.ID); err != nil {
		t.Fatal(err)
	}
	c.agents.Evict(hA.Host.ID)
	if err := c.list(t, hA.Host.ID); err == nil || !strings.Contains(err.Error(), "names another identity") {
		t.Fatalf("host B's certificate accepted for host A: %v", err)
	}
	if _, err := c.pool.Exec(ctx, "UPDATE hosts SET address = $1 WHERE id = $2", rowA.Address, hA.Host.ID); err != nil {
		t.Fatal(err)
	}
	c.agents.Evict(hA.Host.ID)
	if err := c.list(t, hA.Host.ID); err != nil {
		t.Fatal(err)
	}

	// A deleted host is refused from then on, with the row as it was.
	if _, err := c.hosts.DeleteHost(ctx, admin, hA.Host.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.agents.ForHost(rowA).ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{})); err == nil ||
		!strings.Contains(err.Error(), "deleted") {
		t.Fatalf("a deleted host's agent was called: %v", err)
	}
}

func sameLeaf(certPEM string, leaf *x509.Certificate) bool {
	c, err := pki.ParseCert([]byte(certPEM))
	return err == nil && c.Equal(leaf)
}

type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time               { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Set(d time.Duration)          { c.off.Store(int64(d)) }
func fingerprint(s *pki.HostCertStore) string { return pki.Fingerprint(s.Leaf()) }

// The host certificate is renewed once a third of its lifetime is left,
// while the JWT is valid, and swapped in without dropping the control
// plane's connection.
func TestHostCertRenewedBeforeExpiry(t *testing.T) {
	c, _ := mtlsCP(t, hostauth.Config{})
	clk := &clock{}
	dir := t.TempDir()
	h, _, store := c.registered(t, registration.Options{Dir: dir, Now: clk.Now})
	first := store.Leaf()
	creds, err := registration.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.list(t, h.Host.ID); err != nil {
		t.Fatal(err)
	}
	// More than a third left: kept.
	clk.Set(4 * 24 * time.Hour)
	time.Sleep(500 * time.Millisecond)
	if fingerprint(store) != pki.Fingerprint(first) {
		t.Fatal("renewed with more than a third of the lifetime left")
	}
	clk.Set(5 * 24 * time.Hour)
	waitFor(t, 5*time.Second, "certificate renewed", func() bool { return fingerprint(store) != pki.Fingerprint(first) })
	if now := clk.Now(); !now.Before(first.NotAfter) || !now.Before(creds.TokenExpiresAt) {
		t.Fatalf("renewed at %v: the leaf (%v) or the JWT (%v) had already expired", now, first.NotAfter, creds.TokenExpiresAt)
	}
	// Back to the real time: the new leaf (issued by the real clock) is not
	// due, so renewals stop; one already under way finishes.
	clk.Set(0)
	time.Sleep(500 * time.Millisecond)
	row, err := c.q.GetHost(context.Background(), h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	if *row.CertFingerprint != fingerprint(store) || row.CertFingerprintPrev == nil || *row.CertFingerprintPrev == *row.CertFingerprint {
		t.Fatalf("recorded fingerprints %v/%v, installed %s", *row.CertFingerprint, row.CertFingerprintPrev, fingerprint(store))
	}
	saved, err := registration.Load(dir)
	if err != nil || !sameLeaf(saved.CertPEM, store.Leaf()) {
		t.Fatalf("the renewed certificate was not saved: %v", err)
	}
	// The connection opened before still works, and so does a new one.
	if err := c.list(t, h.Host.ID); err != nil {
		t.Fatal(err)
	}
	c.agents.Evict(h.Host.ID)
	if err := c.list(t, h.Host.ID); err != nil {
		t.Fatalf("new connection after renewal: %v", err)
	}
}

// The real control plane started with a CA (WRENN_CA_CERT as PEM text,
// WRENN_CA_KEY as a file path) places a sandbox on an agent over mTLS and
// shows the host certificate's expiry.
func TestControlPlaneWithCA(t *testing.T) {
	ctx := t.Context()
	certPath, keyPath, err := pki.WriteCA(filepath.Join(t.TempDir(), "ca"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certText, _ := os.ReadFile(certPath)
	env := map[string]string{
		"DATABASE_URL": testenv.MigratedURL(t), "REDIS_URL": testenv.RedisURL(t), "WRENN_JWT_SECRET": strings.Repeat("j", 40),
		"WRENN_CP_LISTEN_ADDR": "127.0.0.1:0", "WRENN_RECONCILE_INTERVAL": "100ms",
		"WRENN_CA_CERT": string(certText), "WRENN_CA_KEY": keyPath,
	}
	cfg, err := config.LoadControlPlane(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	cpCtx, stopCP := context.WithCancel(ctx)
	addrc := make(chan net.Addr, 1)
	cpDone := make(chan error, 1)
	go func() {
		cpDone <- app.Run(cpCtx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(s app.Started) { addrc <- s.Addr })
	}()
	t.Cleanup(func() { stopCP(); <-cpDone })
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-cpDone:
		t.Fatalf("control plane: %v", err)
	}
	st, sess := call(t, "POST", base+"/v1/auth/signup", "", map[string]any{"email": "admin@example.test", "password": "correct horse battery", "name": "Admin"})
	if st != 201 && st != 200 {
		t.Fatalf("signup: %d %v", st, sess)
	}
	jwt, _ := sess["token"].(string)
	st, h := call(t, "POST", base+"/v1/hosts", jwt, map[string]any{"name": "tls", "shared": true})
	if st != 201 {
		t.Fatalf("create host: %d %v", st, h)
	}
	hostID := h["host"].(map[string]any)["id"].(string)
	agent, store := mtlsAgent(t)
	start(t, registration.Options{Dir: t.TempDir(), CPURLs: []string{base}, RegisterToken: h["registration_token"].(string),
		Address: agent.Address(), Specs: specs, Interval: 200 * time.Millisecond, Certs: store})
	waitFor(t, 5*time.Second, "host certificate installed", store.Loaded)
	st, sb := call(t, "POST", base+"/v1/sandboxes", jwt, map[string]any{"template": "minimal"})
	if st != 201 && st != 200 {
		t.Fatalf("create sandbox: %d %v", st, sb)
	}
	if id, _ := sb["id"].(string); id == "" || !agent.Has(id) {
		t.Fatalf("sandbox %v not on the mTLS agent", sb)
	}
	_, got := call(t, "GET", base+"/v1/hosts/"+hostID, jwt, nil)
	exp, err := time.Parse(time.RFC3339Nano, got["cert_expires_at"].(string))
	if err != nil || !exp.Equal(store.Leaf().NotAfter) {
		t.Fatalf("cert_expires_at %v (%v), want %v", got["cert_expires_at"], err, store.Leaf().NotAfter)
	}
}

// An agent whose credentials file holds unusable certificate material does
// not start, and says which file and field are at fault on one line.
func TestAgentRefusesBadCertificateMaterial(t *testing.T) {
	c, _ := mtlsCP(t, hostauth.Config{})
	dir := t.TempDir()
	c.registered(t, registration.Options{Dir: dir})
	good, err := registration.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, _ := pki.GenerateKey()
	otherKeyPEM, _ := pki.EncodeKey(otherKey)
	foreign, _, _ := pki.NewCA(time.Now())
	dead := "http://" + closedAddr(t)
	tests := []struct {
		name string
		edit func(*registration.Credentials)
		now  time.Duration // the agent's clock ahead of real time
		urls []string
		want string
	}{
		{name: "key of another certificate", edit: func(c *registration.Credentials) { c.KeyPEM = string(otherKeyPEM) }, want: "do not form a pair"},
		{name: "garbage certificate", edit: func(c *registration.Credentials) { c.CertPEM = "garbage" }, want: "cert_pem"},
		{name: "garbage key", edit: func(c *registration.Credentials) { c.KeyPEM = "garbage" }, want: "key_pem"},
		{name: "another CA", edit: func(c *registration.Credentials) { c.CACertPEM = string(foreign.CertPEM) }, want: "unknown authority"},
		{name: "expired and the control plane unreachable", edit: func(*registration.Credentials) {}, now: 8 * 24 * time.Hour,
			urls: []string{dead}, want: "cert_pem expired at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := t.TempDir()
			creds := good
			tt.edit(&creds)
			if err := registration.Save(d, creds); err != nil {
				t.Fatal(err)
			}
			clk := &clock{}
			clk.Set(tt.now)
			_, err := registration.Prepare(t.Context(), registration.Options{Dir: d, CPURLs: tt.urls, Certs: &pki.HostCertStore{},
				Interval: 200 * time.Millisecond, Now: clk.Now, Backoff: registration.Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond}})
			if err == nil || !strings.Contains(err.Error(), registration.CredentialsFile) || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line naming %s and %q", err, registration.CredentialsFile, tt.want)
			}
		})
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// 50 callers keep calling an agent through the pool while the control
// plane's client certificate is renewed and connections are redialled:
// no call fails, and the renewed certificate is the one in use.
func TestPoolCallsDuringCPCertRenewal(t *testing.T) {
	c, _, certs := mtlsCPWithCerts(t, hostauth.Config{})
	h, _, _ := c.registered(t, registration.Options{})
	row, err := c.q.GetHost(context.Background(), h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	var calls, failures atomic.Int64
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
				_, err := c.agents.ForHost(row).ListSandboxes(context.Background(), connect.NewRequest(&pb.ListSandboxesRequest{}))
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("call during renewal: %v", err)
					return
				}
			}
		})
	}
	first := certs.Current().SerialNumber
	for range 5 {
		time.Sleep(100 * time.Millisecond)
		if err := certs.Renew(); err != nil {
			t.Fatal(err)
		}
		c.agents.Evict(h.Host.ID) // idle connections go: new handshakes with the new certificate
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failures.Load() > 0 || calls.Load() < 50 {
		t.Fatalf("%d of %d calls failed", failures.Load(), calls.Load())
	}
	if certs.Current().SerialNumber.Cmp(first) == 0 {
		t.Fatal("the certificate was not renewed")
	}
	t.Logf("%d calls during 5 renewals, none failed", calls.Load())
}

package hostauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/pki"
)

func testCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func csrPEM(t *testing.T, address string) string {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := pki.NewCSR(key, address)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// checkGrant checks a grant against the host row: a leaf of the CA for the
// host, whose fingerprint and expiry are on record.
func (e *env) checkGrant(t *testing.T, ca *pki.CA, hostID string, g CertGrant) *x509.Certificate {
	t.Helper()
	leaf, err := pki.ParseCert([]byte(g.CertPEM))
	if err != nil {
		t.Fatalf("cert_pem: %v", err)
	}
	if !pki.SameCert([]byte(g.CACertPEM), ca.CertPEM) {
		t.Fatal("ca_cert_pem is not the control plane's CA")
	}
	h, err := e.q.GetHost(context.Background(), hostID)
	if err != nil {
		t.Fatal(err)
	}
	if h.CertFingerprint == nil || *h.CertFingerprint != pki.Fingerprint(leaf) {
		t.Fatalf("stored fingerprint %v, want %s", h.CertFingerprint, pki.Fingerprint(leaf))
	}
	if h.CertExpiresAt == nil || !h.CertExpiresAt.Equal(leaf.NotAfter) || g.CertExpiresAt == nil || !g.CertExpiresAt.Equal(leaf.NotAfter) {
		t.Fatalf("expiry: stored %v, answered %v, leaf %v", h.CertExpiresAt, g.CertExpiresAt, leaf.NotAfter)
	}
	if err := pki.VerifyHost([]*x509.Certificate{leaf}, ca.Pool, time.Now(), hostID, *h.CertFingerprint); err != nil {
		t.Fatalf("leaf: %v", err)
	}
	return leaf
}

func TestRegistrationIssuesLeafFromCSR(t *testing.T) {
	ca := testCA(t)
	e := newEnv(t, Config{CA: ca})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	const addr = "10.0.0.7:9090"
	c, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: addr, Specs: specs, CSR: csrPEM(t, addr)})
	if err != nil {
		t.Fatal(err)
	}
	leaf := e.checkGrant(t, ca, h.Host.ID, c.CertGrant)
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("10.0.0.7")) {
		t.Fatalf("IP SANs %v", leaf.IPAddresses)
	}
	if got := time.Until(leaf.NotAfter); got < pki.HostCertTTL-time.Minute || got > pki.HostCertTTL {
		t.Fatalf("leaf lifetime left %v, want %v", got, pki.HostCertTTL)
	}
	shown, err := e.svc.GetHost(ctx, admin, h.Host.ID)
	if err != nil || shown.CertExpiresAt == nil || !shown.CertExpiresAt.Equal(leaf.NotAfter) {
		t.Fatalf("GetHost cert_expires_at %v (%v), want %v", shown.CertExpiresAt, err, leaf.NotAfter)
	}

	// A refresh renews it; the leaf it replaces stays accepted.
	c2, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: c.RefreshToken, CSR: csrPEM(t, addr)})
	if err != nil {
		t.Fatal(err)
	}
	leaf2 := e.checkGrant(t, ca, h.Host.ID, c2.CertGrant)
	if pki.Fingerprint(leaf2) == pki.Fingerprint(leaf) {
		t.Fatal("refresh returned the same leaf")
	}
	row, _ := e.q.GetHost(ctx, h.Host.ID)
	if row.CertFingerprintPrev == nil || *row.CertFingerprintPrev != pki.Fingerprint(leaf) {
		t.Fatalf("previous fingerprint %v, want the first leaf's", row.CertFingerprintPrev)
	}
	// A new registration trusts only the new leaf.
	h2, err := e.svc.RegenerateToken(ctx, admin, h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	c3, err := e.svc.Register(ctx, RegisterInput{Token: h2.Token, Address: addr, Specs: specs, CSR: csrPEM(t, addr)})
	if err != nil {
		t.Fatal(err)
	}
	e.checkGrant(t, ca, h.Host.ID, c3.CertGrant)
	if row, _ := e.q.GetHost(ctx, h.Host.ID); row.CertFingerprintPrev != nil {
		t.Fatalf("a re-registration kept the old leaf accepted: %v", *row.CertFingerprintPrev)
	}
}

func TestBadCSRIsRefusedAndCostsNothing(t *testing.T) {
	ca := testCA(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}, p384)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	const addr = "10.0.0.7:9090"
	tests := []struct {
		name string
		csr  string
	}{
		{"missing", ""},
		{"not PEM", "hello"},
		{"P-384 key", wrongKey},
		{"foreign IP SAN", csrPEM(t, "10.9.9.9:1")},
		{"foreign DNS SAN", csrPEM(t, "bank.example:443")},
	}
	e := newEnv(t, Config{CA: ca})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run("register/"+tt.name, func(t *testing.T) {
			_, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: addr, Specs: specs, CSR: tt.csr})
			wantKind(t, err, service.KindInvalid, service.CodeInvalidRequest)
			if se, _ := service.AsError(err); se.Field != "csr" {
				t.Fatalf("field %q, want csr", se.Field)
			}
		})
	}
	// The token survived every refusal.
	c, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: addr, Specs: specs, CSR: csrPEM(t, addr)})
	if err != nil {
		t.Fatalf("register after refused CSRs: %v", err)
	}
	for _, tt := range tests {
		t.Run("refresh/"+tt.name, func(t *testing.T) {
			_, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: c.RefreshToken, CSR: tt.csr})
			wantKind(t, err, service.KindInvalid, service.CodeInvalidRequest)
		})
	}
	// The refresh token was not rotated by the refusals.
	if _, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: c.RefreshToken, CSR: csrPEM(t, addr)}); err != nil {
		t.Fatalf("refresh after refused CSRs: %v", err)
	}
}

func TestNoCAIssuesNothing(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9", Specs: specs, CSR: csrPEM(t, "127.0.0.1:9")})
	if err != nil {
		t.Fatal(err)
	}
	if c.CertPEM != "" || c.CACertPEM != "" || c.CertExpiresAt != nil {
		t.Fatalf("plain mode issued a certificate: %+v", c.CertGrant)
	}
	if row, _ := e.q.GetHost(ctx, h.Host.ID); row.CertFingerprint != nil {
		t.Fatal("plain mode recorded a fingerprint")
	}
}

package config

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/pki"
)

func TestControlPlaneCA(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath, err := pki.WriteCA(filepath.Join(dir, "a"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := pki.WriteCA(filepath.Join(dir, "b"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certText, _ := os.ReadFile(certPath)
	keyText, _ := os.ReadFile(keyPath)
	// An expired CA with its own key.
	key, _ := pki.GenerateKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "old"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	expiredKey, _ := pki.EncodeKey(key)
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		cert     string
		key      string
		wantCA   bool
		wantVar  string
		wantText string
	}{
		{name: "none: plain HTTP mode"},
		{name: "file paths", cert: certPath, key: keyPath, wantCA: true},
		{name: "PEM text", cert: string(certText), key: string(keyText), wantCA: true},
		{name: "certificate without key", cert: certPath, wantVar: "WRENN_CA_KEY", wantText: "is required when WRENN_CA_CERT"},
		{name: "key without certificate", key: keyPath, wantVar: "WRENN_CA_CERT", wantText: "is required when WRENN_CA_KEY"},
		{name: "unreadable certificate", cert: filepath.Join(dir, "missing.crt"), key: keyPath, wantVar: "WRENN_CA_CERT", wantText: "neither PEM text nor a readable file"},
		{name: "unreadable key", cert: certPath, key: filepath.Join(dir, "missing.key"), wantVar: "WRENN_CA_KEY", wantText: "neither PEM text nor a readable file"},
		{name: "invalid certificate", cert: garbage, key: keyPath, wantVar: "WRENN_CA_CERT", wantText: "no PEM CERTIFICATE"},
		{name: "invalid key", cert: certPath, key: garbage, wantVar: "WRENN_CA_KEY", wantText: "no PEM PRIVATE KEY"},
		{name: "mismatched key", cert: certPath, key: otherKey, wantVar: "WRENN_CA_KEY", wantText: "does not belong"},
		{name: "expired CA", cert: string(pki.EncodeCert(der)), key: string(expiredKey), wantVar: "WRENN_CA_CERT", wantText: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := validCP()
			env["WRENN_CA_CERT"], env["WRENN_CA_KEY"] = tt.cert, tt.key
			c, err := LoadControlPlane(envOf(env))
			if tt.wantVar == "" {
				if err != nil {
					t.Fatal(err)
				}
				if (c.CA != nil) != tt.wantCA {
					t.Fatalf("CA loaded: %v, want %v", c.CA != nil, tt.wantCA)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 {
				t.Fatalf("err = %v, want one problem", err)
			}
			if errs[0].Var != tt.wantVar || !strings.Contains(errs[0].Problem, tt.wantText) {
				t.Fatalf("problem %v, want %s: ...%s...", errs[0], tt.wantVar, tt.wantText)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("the error spans lines: %q", err)
			}
		})
	}
}

func TestAgentInsecureListen(t *testing.T) {
	for raw, want := range map[string]bool{"": false, "true": true, "false": false, "1": true} {
		a, err := LoadAgent(envOf(map[string]string{"WRENN_AGENT_INSECURE_LISTEN": raw}))
		if err != nil || a.InsecureListen != want {
			t.Fatalf("%q: %v %v, want %v", raw, a.InsecureListen, err, want)
		}
	}
	if _, err := LoadAgent(envOf(map[string]string{"WRENN_AGENT_INSECURE_LISTEN": "sure"})); err == nil ||
		!strings.Contains(err.Error(), "WRENN_AGENT_INSECURE_LISTEN: must be true or false") {
		t.Fatalf("err = %v", err)
	}
}

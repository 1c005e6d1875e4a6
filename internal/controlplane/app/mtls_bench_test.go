package app

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// BenchmarkExecRoundTrip is one exec through the control plane's REST API
// to an agent, over plain HTTP and over mutual TLS in the same run. The
// agent is the in-memory one (its exec costs microseconds), so the ratio
// is the transport's whole overhead; a real guest's exec adds milliseconds
// to both.
func BenchmarkExecRoundTrip(b *testing.B) {
	for _, mode := range []string{"plain", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			base, apiKey, sandboxID := execBenchSetup(b, mode == "mtls")
			client := &http.Client{Timeout: 30 * time.Second}
			exec := func() {
				req, _ := http.NewRequest(http.MethodPost, base+"/v1/sandboxes/"+sandboxID+"/exec", strings.NewReader(`{"cmd":"echo","args":["hello"]}`))
				req.Header.Set("X-API-Key", apiKey)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("exec answered %d", resp.StatusCode)
				}
			}
			// Warm the new database's caches and the connections first, or
			// whichever mode runs first pays for them.
			for range 500 {
				exec()
			}
			b.ResetTimer()
			for b.Loop() {
				exec()
			}
		})
	}
}

// execBenchSetup serves a control plane (with a CA when mtls) and a fake
// agent (behind the real agent's mTLS listener configuration when mtls)
// holding one running sandbox.
func execBenchSetup(b *testing.B, mtls bool) (base, apiKey, sandboxID string) {
	b.Helper()
	ctx := context.Background()
	dbURL := testenv.MigratedURL(b)
	env := map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(b), "WRENN_AUTH_RATE_LIMIT": "0"}
	if mtls {
		ca, keyPEM, err := pki.NewCA(time.Now())
		if err != nil {
			b.Fatal(err)
		}
		env["WRENN_CA_CERT"], env["WRENN_CA_KEY"] = string(ca.CertPEM), string(keyPEM)
	}
	cfg := testConfig(b, env)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	_, srv := serveCore(b, cfg, pool, testRedis(b, cfg), slog.New(slog.DiscardHandler))

	store := &pki.HostCertStore{}
	agent := agenttest.Serve(b, func(a *agenttest.Agent) {
		if mtls {
			a.TLS = store.ServerConfig(nil)
		}
	})
	q := db.New(pool)
	if _, err := q.UpsertHost(ctx, db.UpsertHostParams{ID: "host-bench", Address: agent.Address(), Status: "online"}); err != nil {
		b.Fatal(err)
	}
	if mtls {
		key, _ := pki.GenerateKey()
		csrPEM, _ := pki.NewCSR(key, agent.Address())
		csr, err := pki.ParseCSR(string(csrPEM))
		if err != nil {
			b.Fatal(err)
		}
		leaf, err := cfg.CA.IssueHost(csr, "host-bench", agent.Address(), time.Now(), pki.HostCertTTL)
		if err != nil {
			b.Fatal(err)
		}
		keyPEM, _ := pki.EncodeKey(key)
		if err := store.Set(leaf.CertPEM, keyPEM, cfg.CA.CertPEM, time.Now()); err != nil {
			b.Fatal(err)
		}
		exp := leaf.Cert.NotAfter
		if _, err := q.SetHostCert(ctx, db.SetHostCertParams{ID: "host-bench", Fingerprint: &leaf.Fingerprint, ExpiresAt: &exp}); err != nil {
			b.Fatal(err)
		}
	}
	var sess struct{ Token string }
	postJSON(b, srv.URL+"/v1/auth/signup", "", `{"email":"bench@example.com","password":"a long passphrase"}`, http.StatusCreated, &sess)
	var key struct{ Key string }
	postJSON(b, srv.URL+"/v1/api-keys", sess.Token, `{"name":"bench"}`, http.StatusCreated, &key)
	var sb struct{ ID string }
	postJSON(b, srv.URL+"/v1/sandboxes", sess.Token, `{}`, http.StatusCreated, &sb)
	if !agent.Has(sb.ID) {
		b.Fatalf("sandbox %s not on the agent", sb.ID)
	}
	return srv.URL, key.Key, sb.ID
}

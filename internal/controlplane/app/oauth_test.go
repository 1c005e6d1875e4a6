package app

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth/githubtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// GitHub sign-in is wired from configuration alone: the provider at its
// base URL, the callback under CP_PUBLIC_URL, Secure cookies for https.
func TestNewCoreConfiguresGitHubSignIn(t *testing.T) {
	fake := githubtest.New(t)
	dbURL := testenv.MigratedURL(t)
	cfg := testConfig(t, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t),
		"CP_PUBLIC_URL": "https://cp.example.test", "WRENN_GITHUB_CLIENT_ID": githubtest.ClientID,
		"WRENN_GITHUB_CLIENT_SECRET": githubtest.ClientSecret, "WRENN_GITHUB_URL": fake.URL, "WRENN_GITHUB_API_URL": fake.URL})
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := NewCore(cfg, pool, nil, logger); err == nil {
		t.Fatal("GitHub sign-in without Redis was accepted")
	}
	core, err := NewCore(cfg, pool, testRedis(t, cfg), logger)
	if err != nil {
		t.Fatal(err)
	}
	deps := api.Deps{Logger: logger}
	core.Fill(&deps)
	if deps.OAuth == nil || !deps.SecureCookies {
		t.Fatalf("deps: oauth %v, secure cookies %v", deps.OAuth, deps.SecureCookies)
	}
	h, err := api.New(deps)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(srv.URL + "/v1/auth/oauth/github")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound || loc.Host != mustHost(t, fake.URL) ||
		loc.Query().Get("redirect_uri") != "https://cp.example.test/v1/auth/oauth/github/callback" {
		t.Fatalf("start = %d to %s", resp.StatusCode, loc)
	}
	if cs := resp.Cookies(); len(cs) != 1 || !cs[0].Secure || !cs[0].HttpOnly {
		t.Fatalf("state cookie %+v", cs)
	}
}

func mustHost(t *testing.T, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

package oauth_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth/githubtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const secret = "state-secret-state-secret-state-secret"

func TestStateSignerOpen(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	s := oauth.NewStateSigner(secret, clock)
	f, cookie, err := s.Start("github", "usr-1", "/x")
	if err != nil {
		t.Fatal(err)
	}
	if f.Verifier == "" || f.State == "" || f.Provider != "github" || f.LinkUserID != "usr-1" || f.Redirect != "/x" || strings.Count(cookie, ".") != 1 {
		t.Fatalf("flow %+v cookie %q", f, cookie)
	}
	payload, _, _ := strings.Cut(cookie, ".")
	other, _, _ := oauth.NewStateSigner("another-secret-another-secret-another", clock).Start("github", "", "")
	_, otherCookie, _ := oauth.NewStateSigner("another-secret-another-secret-another", clock).Start("github", "", "")
	tests := []struct {
		name, cookie, state, provider string
		after                         time.Duration
		ok                            bool
	}{
		{"valid", cookie, f.State, "github", 0, true},
		{"valid until the end", cookie, f.State, "github", oauth.StateTTL - time.Second, true},
		{"expired", cookie, f.State, "github", oauth.StateTTL, false},
		{"missing cookie", "", f.State, "github", 0, false},
		{"missing state", cookie, "", "github", 0, false},
		{"other state", cookie, other.State, "github", 0, false},
		{"other provider", cookie, f.State, "google", 0, false},
		{"forged signature", payload + ".AAAA", f.State, "github", 0, false},
		{"no signature", payload, f.State, "github", 0, false},
		{"signed with another key", otherCookie, f.State, "github", 0, false},
		{"garbage", "%%%.###", f.State, "github", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := oauth.NewStateSigner(secret, func() time.Time { return now.Add(tt.after) })
			got, err := at.Open(tt.cookie, tt.state, tt.provider)
			var se *oauth.StateError
			switch {
			case tt.ok && (err != nil || got != f):
				t.Fatalf("Open = %+v, %v; want %+v", got, err, f)
			case !tt.ok && !errors.As(err, &se):
				t.Fatalf("Open = %+v, %v; want a StateError", got, err)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	gh := newGitHub(t, "http://127.0.0.1:1")
	r, err := oauth.NewRegistry(gh)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := r.Get("github"); !ok || p != gh {
		t.Fatal("github not registered")
	}
	if _, ok := r.Get("google"); ok {
		t.Fatal("google found")
	}
	if names := r.Names(); len(names) != 1 || names[0] != "github" {
		t.Fatalf("names %v", names)
	}
	if _, err := oauth.NewRegistry(gh, gh); err == nil {
		t.Fatal("a provider registered twice was accepted")
	}
	var none *oauth.Registry
	if _, ok := none.Get("github"); ok || none.Names() != nil {
		t.Fatal("a nil registry has providers")
	}
}

func newGitHub(t *testing.T, base string) *oauth.GitHub {
	t.Helper()
	g, err := oauth.NewGitHub(oauth.GitHubConfig{ClientID: githubtest.ClientID, ClientSecret: githubtest.ClientSecret,
		RedirectURL: "http://127.0.0.1:9/cb", BaseURL: base, APIURL: base})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// consent runs the fake's authorize step and returns the code.
func consent(t *testing.T, g *oauth.GitHub, verifier string) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(g.AuthCodeURL("st", verifier))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "st" {
		t.Fatalf("authorize = %d %s", resp.StatusCode, loc)
	}
	return loc.Query().Get("code")
}

func TestGitHubProfile(t *testing.T) {
	fake := githubtest.New(t)
	g := newGitHub(t, fake.URL)
	const verifier = "verifier-verifier-verifier-verifier-verifier-0"
	tests := []struct {
		name string
		user githubtest.User
		want oauth.Profile
	}{
		{"public email", githubtest.User{ID: 7, Login: "seven", Name: "Seven", PublicEmail: "s@example.test",
			Emails: []githubtest.Email{{Email: "s@example.test", Primary: true, Verified: true}}},
			oauth.Profile{ID: "7", Login: "seven", Name: "Seven", Email: "s@example.test", EmailVerified: true}},
		{"hidden email", githubtest.User{ID: 8, Login: "eight", Emails: []githubtest.Email{
			{Email: "x@example.test", Verified: true}, {Email: "e@example.test", Primary: true, Verified: true}}},
			oauth.Profile{ID: "8", Login: "eight", Email: "e@example.test", EmailVerified: true}},
		{"unverified primary", githubtest.User{ID: 9, Login: "nine", PublicEmail: "n@example.test", Emails: []githubtest.Email{
			{Email: "n@example.test", Primary: true}}},
			oauth.Profile{ID: "9", Login: "nine", Email: "n@example.test"}},
		{"no emails listed", githubtest.User{ID: 10, Login: "ten", PublicEmail: "t@example.test"},
			oauth.Profile{ID: "10", Login: "ten", Email: "t@example.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake.SetUser(tt.user)
			got, err := g.Profile(t.Context(), consent(t, g, verifier), verifier)
			if err != nil || got != tt.want {
				t.Fatalf("Profile = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestGitHubFaults(t *testing.T) {
	fake := githubtest.New(t)
	fake.SetUser(githubtest.User{ID: 1, Login: "one"})
	g := newGitHub(t, fake.URL)
	const verifier = "verifier-verifier-verifier-verifier-verifier-1"
	closed := githubtest.New(t)
	closedURL := closed.URL
	closed.Close()
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"wrong verifier", func() error {
			_, err := g.Profile(t.Context(), consent(t, g, verifier), verifier+"x")
			return err
		}, oauth.ErrCodeRejected},
		{"code used twice", func() error {
			code := consent(t, g, verifier)
			if _, err := g.Profile(t.Context(), code, verifier); err != nil {
				return err
			}
			_, err := g.Profile(t.Context(), code, verifier)
			return err
		}, oauth.ErrCodeRejected},
		{"GitHub answers 503", func() error {
			code := consent(t, g, verifier)
			fake.SetDown(true)
			defer fake.SetDown(false)
			_, err := g.Profile(t.Context(), code, verifier)
			return err
		}, oauth.ErrUnavailable},
		{"GitHub unreachable", func() error {
			_, err := newGitHub(t, closedURL).Profile(t.Context(), "code", verifier)
			return err
		}, oauth.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestStore(t *testing.T) {
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	s := oauth.NewStore(rdb)
	ctx := context.Background()
	for i, want := range []bool{true, false} {
		if ok, err := s.ClaimState(ctx, "state-a", time.Minute); err != nil || ok != want {
			t.Fatalf("claim %d = %v, %v; want %v", i, ok, err, want)
		}
	}
	code, err := s.NewCode(ctx, "usr-1")
	if err != nil {
		t.Fatal(err)
	}
	if u, err := s.TakeCode(ctx, code); err != nil || u != "usr-1" {
		t.Fatalf("take = %q, %v", u, err)
	}
	for _, c := range []string{code, "", "unknown"} {
		if _, err := s.TakeCode(ctx, c); !errors.Is(err, oauth.ErrCodeInvalid) {
			t.Fatalf("take %q = %v, want ErrCodeInvalid", c, err)
		}
	}
	keys, _ := rdb.Keys(ctx, "*").Result()
	for _, k := range keys {
		if strings.Contains(k, "state-a") {
			t.Fatalf("key %q holds the state itself", k)
		}
	}
}

// A state cookie is accepted only under the key that signed it (what
// another key accepts, this one refuses), for the state it carries; nothing
// panics. (The fuzz workers make their own random seed cookie, so the
// property cannot name one.)
func FuzzStateOpen(f *testing.F) {
	now := func() time.Time { return time.Unix(1_800_000_000, 0) }
	s := oauth.NewStateSigner(secret, now)
	other := oauth.NewStateSigner("another-secret-another-secret-another", now)
	valid, cookie, err := s.Start("github", "", "")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(cookie, valid.State)
	f.Add(cookie+"x", valid.State)
	f.Add("e30.", "")
	f.Add(".", "x")
	f.Fuzz(func(t *testing.T, c, state string) {
		got, err := s.Open(c, state, "github")
		if err != nil {
			return
		}
		if _, err := other.Open(c, state, "github"); err == nil {
			t.Fatalf("a cookie is accepted under two keys: %q", c)
		}
		if got.State != state || got.Provider != "github" {
			t.Fatalf("Open(%q, %q) accepted a flow for another state: %+v", c, state, got)
		}
	})
}

package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth/oauth/githubtest"
)

// browser is one user agent: its own cookie jar, and redirects shown to the
// test instead of followed (every hop is checked; the dashboard is never
// fetched).
type browser struct {
	t      *testing.T
	e      *env
	client *http.Client

	mu sync.Mutex
	// seen is every response header and Location of the control plane.
	seen []http.Header
}

func newBrowser(t *testing.T, e *env) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, e: e, client: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// get fetches u (the control plane or the fake GitHub, both on loopback).
func (b *browser) get(u string) (*http.Response, []byte) {
	b.t.Helper()
	return b.send(mustRequest(b.t, http.MethodGet, u, ""))
}

func mustRequest(t *testing.T, method, u, body string) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

func (b *browser) send(req *http.Request) (*http.Response, []byte) {
	b.t.Helper()
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	if strings.HasPrefix(req.URL.String(), b.e.srv.URL) {
		b.mu.Lock()
		b.seen = append(b.seen, resp.Header.Clone())
		b.mu.Unlock()
		if resp.StatusCode >= 500 && resp.StatusCode != http.StatusBadGateway {
			b.t.Errorf("%s %s answered %d: %s", req.Method, req.URL.Path, resp.StatusCode, body)
		}
	}
	return resp, body
}

// startPath begins a sign-in at path and follows it through the fake
// GitHub's consent: it returns the callback URL the provider sent the
// browser to, not yet visited.
func (b *browser) startPath(path string) string {
	b.t.Helper()
	resp, body := b.get(b.e.srv.URL + path)
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("GET %s = %d, want 302: %s", path, resp.StatusCode, body)
	}
	return b.consent(resp.Header.Get("Location"))
}

// consent visits the provider's authorize URL and returns the callback URL.
func (b *browser) consent(authorize string) string {
	b.t.Helper()
	resp, body := b.get(authorize)
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("authorize = %d: %s", resp.StatusCode, body)
	}
	cb := resp.Header.Get("Location")
	if !strings.HasPrefix(cb, b.e.srv.URL+"/v1/auth/oauth/github/callback?") {
		b.t.Fatalf("provider sent the browser to %q", cb)
	}
	return cb
}

// landing is where a successful callback sent the browser: the dashboard
// URL and its fragment's values.
func (b *browser) landing(callback string) (*url.URL, url.Values) {
	b.t.Helper()
	resp, body := b.get(callback)
	if resp.StatusCode != http.StatusFound {
		b.t.Fatalf("callback = %d, want 302: %s", resp.StatusCode, body)
	}
	to, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		b.t.Fatal(err)
	}
	frag, err := url.ParseQuery(to.Fragment)
	if err != nil {
		b.t.Fatal(err)
	}
	return to, frag
}

// callbackErr visits a callback and checks its error.
func (b *browser) callbackErr(callback string, status int, code string) {
	b.t.Helper()
	resp, body := b.get(callback)
	var ae apiErr
	if resp.StatusCode != status || json.Unmarshal(body, &ae) != nil || ae.Error.Code != code {
		b.t.Fatalf("callback = %d %s, want %d %s", resp.StatusCode, body, status, code)
	}
}

// exchange spends a one-time code.
func (b *browser) exchange(code string) (int, session, []byte) {
	b.t.Helper()
	raw, _ := json.Marshal(map[string]string{"code": code})
	resp, body := b.send(mustRequest(b.t, http.MethodPost, b.e.srv.URL+"/v1/auth/oauth/exchange", string(raw)))
	var s session
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &s); err != nil {
			b.t.Fatal(err)
		}
	}
	return resp.StatusCode, s, body
}

// oneTimeCode runs a sign-in up to the landing and returns its code.
func (b *browser) oneTimeCode() string {
	b.t.Helper()
	_, frag := b.landing(b.startPath("/v1/auth/oauth/github"))
	return frag.Get("oauth_code")
}

// signIn runs a whole sign-in and returns the session.
func (b *browser) signIn() session {
	b.t.Helper()
	st, s, body := b.exchange(b.oneTimeCode())
	if st != http.StatusOK {
		b.t.Fatalf("exchange = %d: %s", st, body)
	}
	return s
}

func newOAuthEnv(t *testing.T, opt ...func(*envOpts)) (*env, *githubtest.Server) {
	gh := githubtest.New(t)
	e := newEnv(t, append([]func(*envOpts){func(o *envOpts) { o.github = gh }}, opt...)...)
	return e, gh
}

var octocat = githubtest.User{ID: 583231, Login: "octocat", Name: "The Octocat",
	PublicEmail: "octocat@example.test", Emails: []githubtest.Email{{Email: "octocat@example.test", Primary: true, Verified: true}}}

func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// A new GitHub user signs up (the first user of the install: platform
// admin, with a default team), comes back to the same account, has no
// password to log in with, and sees the identity.
func TestOAuthSignUpThenReturningLogin(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	b := newBrowser(t, e)
	first := b.signIn()
	if first.User.Email != "octocat@example.test" || !first.User.IsAdmin || first.Team.Role != "owner" {
		t.Fatalf("sign-up session = %+v, want octocat, platform admin, team owner", first)
	}
	var me struct {
		User struct{ Name string } `json:"user"`
	}
	e.want("GET", "/v1/me", nil, first.cred(), http.StatusOK, &me)
	if me.User.Name != "The Octocat" {
		t.Fatalf("name = %q, want GitHub's name", me.User.Name)
	}
	again := newBrowser(t, e).signIn()
	if again.User.ID != first.User.ID || again.Team.ID != first.Team.ID || again.Token == first.Token {
		t.Fatalf("returning login = %+v, want the same user and team, a new session (first %+v)", again, first)
	}
	if n := e.count("SELECT count(*) FROM users"); n != 1 {
		t.Fatalf("%d users, want 1", n)
	}
	var ids struct {
		Identities  []struct{ Provider, Login, Email string } `json:"identities"`
		HasPassword bool                                      `json:"has_password"`
	}
	e.want("GET", "/v1/me/identities", nil, first.cred(), http.StatusOK, &ids)
	if len(ids.Identities) != 1 || ids.Identities[0].Provider != "github" || ids.Identities[0].Login != "octocat" || ids.HasPassword {
		t.Fatalf("identities = %+v", ids)
	}
	// No password: a password login is refused like a wrong password, and
	// changing it says why.
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "octocat@example.test", "password": "anything-at-all"}, cred{}, http.StatusUnauthorized, "invalid_credentials", "")
	e.wantErr("POST", "/v1/me/password", map[string]string{"current_password": "anything-at-all", "new_password": "a-new-password"}, first.cred(), http.StatusForbidden, "wrong_password", "current_password")
	// The next email sign-up is no admin: the first-user rule is one path.
	second := e.signup("second@example.test")
	if second.User.IsAdmin {
		t.Fatal("second user became platform admin")
	}
	for _, tt := range []struct {
		s    session
		want []string
		data []map[string]any // oldest first
	}{
		{first, []string{"user.signed_up", "user.logged_in"}, []map[string]any{{"method": "github"}, {"provider": "github"}}},
		{second, []string{"user.signed_up"}, []map[string]any{{"method": "password"}}},
	} {
		e.wantUserEvents(tt.s, tt.want, tt.data)
	}
}

// wantUserEvents checks the audit rows about a user (oldest first): each
// by that user, admin-scoped, in their default team, with the data.
func (e *env) wantUserEvents(s session, want []string, data []map[string]any) {
	e.t.Helper()
	rows := e.auditLogs(s.cred(), "resource_type=user,identity&resource_id="+s.User.ID, 50)
	if got := types(rows); !slices.Equal(got, want) {
		e.t.Fatalf("events of %s = %v, want %v", s.User.Email, got, want)
	}
	for i, r := range rows {
		d := data[len(rows)-1-i]
		if r.Actor.Type != "user" || r.Actor.ID != s.User.ID || r.Actor.Name != s.User.Email || r.Scope != "admin" || r.TeamID != s.Team.ID {
			e.t.Errorf("%s row %+v", r.typ(), r)
		}
		for k, v := range d {
			if r.Metadata[k] != v {
				e.t.Errorf("%s %s = %v, want %v", r.typ(), k, r.Metadata[k], v)
			}
		}
	}
}

// The profile's email, hidden or not, unverified or missing: only a
// verified primary email from /user/emails signs a user up.
func TestOAuthEmailRules(t *testing.T) {
	tests := []struct {
		name      string
		user      githubtest.User
		wantEmail string // empty: refused with email_unverified
	}{
		{"hidden email", githubtest.User{ID: 1, Login: "hidden", Emails: []githubtest.Email{
			{Email: "other@example.test", Verified: true}, {Email: "hidden@example.test", Primary: true, Verified: true}}}, "hidden@example.test"},
		{"public but unverified primary", githubtest.User{ID: 2, Login: "unver", PublicEmail: "unver@example.test", Emails: []githubtest.Email{
			{Email: "unver@example.test", Primary: true}, {Email: "ok@example.test", Verified: true}}}, ""},
		{"no emails", githubtest.User{ID: 3, Login: "none", PublicEmail: "none@example.test"}, ""},
	}
	e, gh := newOAuthEnv(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gh.SetUser(tt.user)
			b := newBrowser(t, e)
			cb := b.startPath("/v1/auth/oauth/github")
			if tt.wantEmail == "" {
				b.callbackErr(cb, http.StatusUnauthorized, "email_unverified")
				if n := e.count("SELECT count(*) FROM user_identities WHERE provider_user_id = $1", fmt.Sprint(tt.user.ID)); n != 0 {
					t.Fatalf("refused sign-in left %d identities", n)
				}
				return
			}
			_, frag := b.landing(cb)
			_, s, body := b.exchange(frag.Get("oauth_code"))
			if s.User.Email != tt.wantEmail {
				t.Fatalf("session %s, want email %s", body, tt.wantEmail)
			}
		})
	}
}

// A GitHub email that belongs to an account made with a password is no
// way into that account.
func TestOAuthEmailTakenByUnlinkedAccount(t *testing.T) {
	e, gh := newOAuthEnv(t)
	e.signup("octocat@example.test")
	gh.SetUser(octocat)
	b := newBrowser(t, e)
	b.callbackErr(b.startPath("/v1/auth/oauth/github"), http.StatusConflict, "email_taken")
	if n := e.count("SELECT count(*) FROM user_identities"); n != 0 {
		t.Fatalf("%d identities after a refused sign-in", n)
	}
}

// Twenty first callbacks of one new GitHub account at once: one user, one
// team, one identity, and every callback signs in as that user.
func TestOAuthConcurrentFirstSignIn(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	const n = 20
	browsers := make([]*browser, n)
	callbacks := make([]string, n)
	for i := range n {
		browsers[i] = newBrowser(t, e)
		callbacks[i] = browsers[i].startPath("/v1/auth/oauth/github")
	}
	codes := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			resp, body := browsers[i].get(callbacks[i])
			if resp.StatusCode != http.StatusFound {
				t.Errorf("callback %d = %d: %s", i, resp.StatusCode, body)
				return
			}
			to, _ := url.Parse(resp.Header.Get("Location"))
			frag, _ := url.ParseQuery(to.Fragment)
			codes[i] = frag.Get("oauth_code")
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	users := map[string]bool{}
	for i, c := range codes {
		st, s, body := browsers[i].exchange(c)
		if st != http.StatusOK {
			t.Fatalf("exchange %d = %d: %s", i, st, body)
		}
		users[s.User.ID] = true
	}
	if len(users) != 1 {
		t.Fatalf("sessions of %d users, want 1", len(users))
	}
	for q, want := range map[string]int{"SELECT count(*) FROM users": 1, "SELECT count(*) FROM teams": 1,
		"SELECT count(*) FROM user_identities": 1, "SELECT count(*) FROM users WHERE is_admin": 1} {
		if got := e.count(q); got != want {
			t.Errorf("%s = %d, want %d", q, got, want)
		}
	}
}

// Every way a callback's state can be wrong answers 401 and creates nobody.
func TestOAuthStateFaults(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().Unix())
	now := func() time.Time { return time.Unix(clock.Load(), 0) }
	e, gh := newOAuthEnv(t, func(o *envOpts) { o.oauthNow = now })
	gh.SetUser(octocat)
	stateCookie := func(b *browser) *http.Cookie {
		u, _ := url.Parse(e.srv.URL + "/v1/auth/oauth/github/callback")
		for _, c := range b.client.Jar.Cookies(u) {
			if c.Name == "wrenn_oauth_state" {
				return c
			}
		}
		t.Fatal("no state cookie")
		return nil
	}
	withCookie := func(cb string, c *http.Cookie) *http.Request {
		req := mustRequest(t, http.MethodGet, cb, "")
		req.AddCookie(c)
		return req
	}
	tests := []struct {
		name string
		run  func(t *testing.T) (*http.Response, []byte)
	}{
		{"missing cookie", func(t *testing.T) (*http.Response, []byte) {
			cb := newBrowser(t, e).startPath("/v1/auth/oauth/github")
			return newBrowser(t, e).get(cb)
		}},
		{"forged cookie", func(t *testing.T) (*http.Response, []byte) {
			b := newBrowser(t, e)
			cb := b.startPath("/v1/auth/oauth/github")
			c := stateCookie(b)
			payload, _, _ := strings.Cut(c.Value, ".")
			c.Value = payload + ".AAAA"
			return newBrowser(t, e).send(withCookie(cb, c))
		}},
		{"state of another flow", func(t *testing.T) (*http.Response, []byte) {
			b := newBrowser(t, e)
			b.startPath("/v1/auth/oauth/github")
			mine := stateCookie(b)
			other := newBrowser(t, e).startPath("/v1/auth/oauth/github")
			return newBrowser(t, e).send(withCookie(other, mine))
		}},
		{"expired", func(t *testing.T) (*http.Response, []byte) {
			b := newBrowser(t, e)
			cb := b.startPath("/v1/auth/oauth/github")
			c := stateCookie(b)
			clock.Add(int64((11 * time.Minute).Seconds()))
			defer clock.Add(-int64((11 * time.Minute).Seconds()))
			return newBrowser(t, e).send(withCookie(cb, c))
		}},
		{"replayed", func(t *testing.T) (*http.Response, []byte) {
			b := newBrowser(t, e)
			cb := b.startPath("/v1/auth/oauth/github")
			c := stateCookie(b)
			if to, _ := b.landing(cb); to == nil {
				t.Fatal("first callback failed")
			}
			return newBrowser(t, e).send(withCookie(cb, c))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.run(t)
			var ae apiErr
			if resp.StatusCode != http.StatusUnauthorized || json.Unmarshal(body, &ae) != nil || ae.Error.Code != "invalid_oauth_state" {
				t.Fatalf("callback = %d %s, want 401 invalid_oauth_state", resp.StatusCode, body)
			}
		})
	}
	if n := e.count("SELECT count(*) FROM users"); n != 1 {
		t.Fatalf("%d users, want the one the replay test made", n)
	}
}

// What GitHub refuses or fails: a code for another flow's PKCE challenge,
// a made-up code, the user's refusal, GitHub down, and a provider that is
// not configured.
func TestOAuthProviderFaults(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	withParam := func(cb, key, value string) string {
		u, _ := url.Parse(cb)
		q := u.Query()
		q.Set(key, value)
		u.RawQuery = q.Encode()
		return u.String()
	}
	t.Run("PKCE mismatch", func(t *testing.T) {
		a := newBrowser(t, e)
		cbA := a.startPath("/v1/auth/oauth/github")
		cbB := newBrowser(t, e).startPath("/v1/auth/oauth/github")
		u, _ := url.Parse(cbB)
		// A's state and cookie with B's code: A's verifier does not match
		// the challenge B's code was issued for.
		a.callbackErr(withParam(cbA, "code", u.Query().Get("code")), http.StatusUnauthorized, "oauth_code_rejected")
	})
	t.Run("unknown code", func(t *testing.T) {
		b := newBrowser(t, e)
		b.callbackErr(withParam(b.startPath("/v1/auth/oauth/github"), "code", "not-a-code"), http.StatusUnauthorized, "oauth_code_rejected")
	})
	t.Run("denied at GitHub", func(t *testing.T) {
		b := newBrowser(t, e)
		cb := withParam(b.startPath("/v1/auth/oauth/github"), "error", "access_denied")
		b.callbackErr(cb, http.StatusUnauthorized, "oauth_denied")
	})
	t.Run("GitHub down", func(t *testing.T) {
		b := newBrowser(t, e)
		cb := b.startPath("/v1/auth/oauth/github")
		gh.SetDown(true)
		defer gh.SetDown(false)
		b.callbackErr(cb, http.StatusBadGateway, "provider_unavailable")
	})
	t.Run("provider not configured", func(t *testing.T) {
		e.wantErr("GET", "/v1/auth/oauth/google", nil, cred{}, http.StatusNotFound, "provider_not_configured", "")
		e.wantErr("GET", "/v1/auth/oauth/google/callback?state=x&code=y", nil, cred{}, http.StatusNotFound, "provider_not_configured", "")
	})
	t.Run("redirect outside the dashboard", func(t *testing.T) {
		for _, r := range []string{"//evil.example/x", "https://evil.example/", "/\\evil.example", "relative"} {
			e.wantErr("GET", "/v1/auth/oauth/github?redirect="+url.QueryEscape(r), nil, cred{}, http.StatusBadRequest, "invalid_request", "redirect")
		}
	})
	if n := e.count("SELECT count(*) FROM users"); n != 0 {
		t.Fatalf("%d users after refused sign-ins", n)
	}
}

// A browser whose callback fails lands on the dashboard's callback page
// with the error's code and message in the fragment (a person reads words,
// not JSON); a program asking for JSON still gets the error format.
func TestOAuthCallbackFailureLandsOnDashboard(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	for _, tc := range []struct {
		name     string
		callback func(b *browser) string
		code     string
	}{
		{"forged state", func(*browser) string { return e.srv.URL + "/v1/auth/oauth/github/callback?state=forged&code=x" }, "invalid_oauth_state"},
		{"denied at GitHub", func(b *browser) string {
			return strings.Replace(b.startPath("/v1/auth/oauth/github"), "code=", "error=access_denied&code=", 1)
		}, "oauth_denied"},
		{"GitHub down", func(b *browser) string {
			cb := b.startPath("/v1/auth/oauth/github")
			gh.SetDown(true)
			return cb
		}, "provider_unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer gh.SetDown(false)
			b := newBrowser(t, e)
			req := mustRequest(t, http.MethodGet, tc.callback(b), "")
			req.Header.Set("Accept", "text/html,application/xhtml+xml")
			resp, body := b.send(req)
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("callback = %d, want 302: %s", resp.StatusCode, body)
			}
			to, err := url.Parse(resp.Header.Get("Location"))
			if err != nil {
				t.Fatal(err)
			}
			if want := e.srv.URL + "/auth/callback"; to.Scheme+"://"+to.Host+to.Path != want || to.RawQuery != "" {
				t.Fatalf("landed on %s, want %s#...", to, want)
			}
			frag, err := url.ParseQuery(to.EscapedFragment())
			if err != nil || frag.Get("oauth_error") != tc.code || frag.Get("oauth_message") == "" || frag.Has("oauth_code") {
				t.Fatalf("fragment %q, want oauth_error=%s and a message", to.Fragment, tc.code)
			}
		})
	}
	if n := e.count("SELECT count(*) FROM users"); n != 0 {
		t.Fatalf("%d users after failed callbacks", n)
	}
}

// Without any provider configured, every OAuth route says so.
func TestOAuthNotConfigured(t *testing.T) {
	e := newEnv(t)
	s := e.signup("plain@example.test")
	e.wantErr("GET", "/v1/auth/oauth/github", nil, cred{}, http.StatusNotFound, "provider_not_configured", "")
	e.wantErr("GET", "/v1/auth/oauth/github/callback?state=x&code=y", nil, cred{}, http.StatusNotFound, "provider_not_configured", "")
	e.wantErr("POST", "/v1/auth/oauth/exchange", map[string]string{"code": "x"}, cred{}, http.StatusNotFound, "provider_not_configured", "")
	e.wantErr("POST", "/v1/me/identities/github", nil, s.cred(), http.StatusNotFound, "provider_not_configured", "")
	e.want("GET", "/v1/me/identities", nil, s.cred(), http.StatusOK, nil)
}

// The providers list is what the dashboard's sign-in buttons follow: empty
// without a provider, GitHub when it is configured; no credentials needed.
func TestOAuthProvidersList(t *testing.T) {
	for _, tc := range []struct {
		name   string
		github bool
		want   []string
	}{
		{"none configured", false, []string{}},
		{"github configured", true, []string{"github"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *env
			if tc.github {
				e, _ = newOAuthEnv(t)
			} else {
				e = newEnv(t)
			}
			var got struct {
				Providers []string `json:"providers"`
			}
			e.want("GET", "/v1/auth/providers", nil, cred{}, http.StatusOK, &got)
			if got.Providers == nil || !slices.Equal(got.Providers, tc.want) {
				t.Fatalf("providers = %#v, want %#v", got.Providers, tc.want)
			}
		})
	}
}

// The state cookie: HttpOnly, SameSite=Lax, short-lived, scoped to the
// callback, Secure when the public URL is https; the start lands where
// redirect says.
func TestOAuthStateCookieAndRedirect(t *testing.T) {
	for _, secure := range []bool{false, true} {
		e, gh := newOAuthEnv(t, func(o *envOpts) { o.secureCookies = secure })
		gh.SetUser(octocat)
		resp, body := newBrowser(t, e).get(e.srv.URL + "/v1/auth/oauth/github?redirect=" + url.QueryEscape("/sandboxes?tab=1"))
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("start = %d: %s", resp.StatusCode, body)
		}
		var c *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == "wrenn_oauth_state" {
				c = ck
			}
		}
		if c == nil || !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure != secure || c.MaxAge <= 0 || c.MaxAge > 600 || c.Path != "/v1/auth/oauth/" {
			t.Fatalf("state cookie = %+v (secure %v)", c, secure)
		}
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if loc.Query().Get("code_challenge_method") != "S256" || loc.Query().Get("state") == "" || strings.Contains(c.Value, loc.Query().Get("code_challenge")) {
			t.Fatalf("authorize URL %s", loc)
		}
		if secure {
			continue // the jar keeps Secure cookies off plain http
		}
		b := newBrowser(t, e)
		to, frag := b.landing(b.startPath("/v1/auth/oauth/github?redirect=" + url.QueryEscape("/sandboxes?tab=1")))
		if to.Path != "/sandboxes" || to.Query().Get("tab") != "1" || frag.Get("oauth_code") == "" || to.Query().Get("oauth_code") != "" {
			t.Fatalf("landing %s: want /sandboxes?tab=1 with the code in the fragment only", to)
		}
	}
}

// A one-time code: single use, 60 s in Redis, stored hashed.
func TestOAuthOneTimeCode(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	b := newBrowser(t, e)
	code := b.oneTimeCode()
	keys, err := e.rdb.Keys(context.Background(), "wrenn:oauth:code:*").Result()
	if err != nil || len(keys) != 1 || !strings.HasSuffix(keys[0], auth.HashToken(code)) {
		t.Fatalf("code keys %v (%v), want the code's hash only", keys, err)
	}
	if ttl := e.rdb.TTL(context.Background(), keys[0]).Val(); ttl <= 0 || ttl > 60*time.Second {
		t.Fatalf("code ttl %s, want at most 60s", ttl)
	}
	tests := []struct {
		name, code string
		want       int
	}{
		{"first use", code, http.StatusOK},
		{"reused", code, http.StatusUnauthorized},
		{"made up", "bm90LWEtY29kZQ", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		st, _, body := b.exchange(tt.code)
		var ae apiErr
		if st != tt.want || (st != http.StatusOK && (json.Unmarshal(body, &ae) != nil || ae.Error.Code != "invalid_oauth_code")) {
			t.Fatalf("%s: exchange = %d %s, want %d", tt.name, st, body, tt.want)
		}
	}
	e.wantErr("POST", "/v1/auth/oauth/exchange", map[string]string{}, cred{}, http.StatusBadRequest, "invalid_request", "code")
}

// Linking from a session, and the rules of linking and unlinking.
func TestOAuthLinkAndUnlink(t *testing.T) {
	e, gh := newOAuthEnv(t)
	alice := e.signup("alice@example.test")
	// link starts the flow in link mode for the caller.
	link := func(b *browser, s session) string {
		req := mustRequest(t, http.MethodPost, e.srv.URL+"/v1/me/identities/github", `{"redirect":"/settings"}`)
		s.cred().apply(req)
		resp, body := b.send(req)
		var st struct {
			AuthorizeURL string `json:"authorize_url"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil || st.AuthorizeURL == "" {
			t.Fatalf("start link = %d: %s", resp.StatusCode, body)
		}
		return b.consent(st.AuthorizeURL)
	}
	aliceGH := githubtest.User{ID: 42, Login: "alice-gh", Emails: []githubtest.Email{{Email: "alice@work.example", Primary: true, Verified: true}}}
	gh.SetUser(aliceGH)
	b := newBrowser(t, e)
	to, frag := b.landing(link(b, alice))
	if to.Path != "/settings" || frag.Get("oauth_linked") != "github" {
		t.Fatalf("link landed on %s", to)
	}
	// GitHub now signs Alice in, though the emails differ.
	if s := newBrowser(t, e).signIn(); s.User.ID != alice.User.ID {
		t.Fatalf("sign-in with the linked account = user %s, want alice %s", s.User.ID, alice.User.ID)
	}
	// Linking the same account again changes nothing.
	b = newBrowser(t, e)
	b.landing(link(b, alice))

	bob := e.signup("bob@example.test")
	b = newBrowser(t, e)
	b.callbackErr(link(b, bob), http.StatusConflict, "identity_taken")
	gh.SetUser(githubtest.User{ID: 43, Login: "alice-second", Emails: aliceGH.Emails})
	b = newBrowser(t, e)
	b.callbackErr(link(b, alice), http.StatusConflict, "already_linked")

	e.wantErr("DELETE", "/v1/me/identities/github", nil, bob.cred(), http.StatusNotFound, "identity_not_found", "")
	e.want("DELETE", "/v1/me/identities/github", nil, alice.cred(), http.StatusNoContent, nil)
	e.wantErr("DELETE", "/v1/me/identities/github", nil, alice.cred(), http.StatusNotFound, "identity_not_found", "")

	// A GitHub-only account keeps its only way in.
	gh.SetUser(octocat)
	cat := newBrowser(t, e).signIn()
	e.wantErr("DELETE", "/v1/me/identities/github", nil, cat.cred(), http.StatusConflict, "last_sign_in_method", "")
	e.wantErr("POST", "/v1/me/identities/github", nil, cred{}, http.StatusUnauthorized, "unauthenticated", "")
	e.wantErr("POST", "/v1/me/identities/gitlab", nil, cat.cred(), http.StatusNotFound, "provider_not_configured", "")
	// Linked once (linking again and refused links write nothing), signed
	// in with it, unlinked once.
	e.wantUserEvents(alice, []string{"user.signed_up", "identity.linked", "user.logged_in", "identity.unlinked"},
		[]map[string]any{{"method": "password"}, {"provider": "github", "login": "alice-gh"}, {"provider": "github"}, {"provider": "github"}})
	e.wantUserEvents(bob, []string{"user.signed_up"}, []map[string]any{{"method": "password"}})
}

// The callback shares the signup/login rate limit per client address.
func TestOAuthCallbackRateLimited(t *testing.T) {
	e, gh := newOAuthEnv(t, func(o *envOpts) { o.rateLimiter = NewMemoryRateLimiter(2, time.Minute) })
	gh.SetUser(octocat)
	for i, want := range []int{http.StatusFound, http.StatusFound, http.StatusTooManyRequests} {
		b := newBrowser(t, e)
		resp, body := b.get(b.startPath("/v1/auth/oauth/github"))
		if resp.StatusCode != want {
			t.Fatalf("callback %d = %d, want %d: %s", i, resp.StatusCode, want, body)
		}
	}
}

// No session token in any redirect, in any header but the exchange's
// body, or in any log line; neither the one-time code nor GitHub's access
// token is logged.
func TestOAuthSecretsStayOutOfURLsHeadersAndLogs(t *testing.T) {
	e, gh := newOAuthEnv(t)
	gh.SetUser(octocat)
	b := newBrowser(t, e)
	code := b.oneTimeCode()
	st, s, _ := b.exchange(code)
	if st != http.StatusOK || s.Token == "" {
		t.Fatalf("exchange = %d", st)
	}
	linkReq := mustRequest(t, http.MethodPost, e.srv.URL+"/v1/me/identities/github", "")
	s.cred().apply(linkReq)
	b.send(linkReq)
	secrets := map[string]string{"session token": s.Token, "one-time code": code}
	for i, tok := range gh.AccessTokens() {
		secrets[fmt.Sprintf("github token %d", i)] = tok
	}
	for _, h := range b.seen {
		for name, vals := range h {
			for _, v := range vals {
				if strings.Contains(v, s.Token) {
					t.Errorf("header %s carries the session token", name)
				}
			}
		}
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "user signed up") {
		t.Fatalf("the logs were not captured: %.300s", logs)
	}
	for what, v := range secrets {
		if v != "" && strings.Contains(logs, v) {
			t.Errorf("the %s is in the logs", what)
		}
	}
}

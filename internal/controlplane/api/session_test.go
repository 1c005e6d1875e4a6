package api

import (
	"encoding/json"
	"net/http"
	"testing"
)

type browserSessionResp struct {
	Token     string `json:"token"`
	CSRFToken string `json:"csrf_token"`
	ExpiresAt string `json:"expires_at"`
	User      struct {
		ID string `json:"id"`
	} `json:"user"`
	Team struct {
		ID string `json:"id"`
	} `json:"team"`
}

// browserLogin logs in asking for a cookie and returns the answer, the
// session cookie and the CSRF cookie.
func (e *env) browserLogin(email string) (browserSessionResp, *http.Cookie, *http.Cookie) {
	e.t.Helper()
	req := e.request("POST", "/v1/auth/login", map[string]string{"email": email, "password": testPassword}, cred{})
	req.Header.Set(SessionModeHeader, "cookie")
	resp, b := e.sendResp(req)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("browser login = %d: %s", resp.StatusCode, b)
	}
	var out browserSessionResp
	if err := json.Unmarshal(b, &out); err != nil {
		e.t.Fatal(err)
	}
	return out, findCookie(resp, SessionCookie), findCookie(resp, CSRFCookie)
}

func findCookie(resp *http.Response, name string) *http.Cookie {
	for _, c := range resp.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestBrowserSessionCookie(t *testing.T) {
	for _, secure := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain http", true: "secure cookies"}[secure], func(t *testing.T) {
			e := newEnv(t, func(o *envOpts) { o.secureCookies = secure })
			e.signup("cookie@example.com")
			out, sc, cc := e.browserLogin("cookie@example.com")
			if out.Token != "" {
				t.Fatal("a browser session must not show the token to the page")
			}
			if sc == nil || cc == nil {
				t.Fatalf("want both cookies, got session %v csrf %v", sc, cc)
			}
			if !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.Path != "/" || sc.Secure != secure || sc.Expires.IsZero() {
				t.Fatalf("session cookie flags: %+v", sc)
			}
			if cc.HttpOnly || cc.SameSite != http.SameSiteStrictMode || cc.Secure != secure || cc.Value != out.CSRFToken || out.CSRFToken == "" {
				t.Fatalf("csrf cookie %+v, csrf_token %q", cc, out.CSRFToken)
			}
			// A program's login is unchanged: the token, no cookies.
			req := e.request("POST", "/v1/auth/login", map[string]string{"email": "cookie@example.com", "password": testPassword}, cred{})
			resp, b := e.sendResp(req)
			var prog session
			if err := json.Unmarshal(b, &prog); err != nil || prog.Token == "" || len(resp.Cookies()) != 0 {
				t.Fatalf("program login: %s cookies %v", b, resp.Cookies())
			}
		})
	}
}

func TestBrowserSessionCSRF(t *testing.T) {
	e := newEnv(t)
	e.signup("csrf@example.com")
	other := e.signup("other@example.com")
	out, sc, _ := e.browserLogin("csrf@example.com")
	_, otherCookie, _ := e.browserLogin("other@example.com")
	otherCSRF := csrfToken(otherCookie.Value)

	var me struct {
		User struct{ ID string } `json:"user"`
	}
	e.want("GET", "/v1/me", nil, cred{cookie: sc.Value}, http.StatusOK, &me)
	if me.User.ID != out.User.ID {
		t.Fatalf("cookie session is user %q, want %q", me.User.ID, out.User.ID)
	}
	// Reads need no CSRF token, sandbox routes take the cookie too.
	e.want("GET", "/v1/sandboxes", nil, cred{cookie: sc.Value}, http.StatusOK, nil)

	tests := []struct {
		name   string
		c      cred
		status int
		code   string
	}{
		{"no csrf header", cred{cookie: sc.Value}, http.StatusForbidden, "csrf_failed"},
		{"wrong csrf header", cred{cookie: sc.Value, csrf: "not-the-token"}, http.StatusForbidden, "csrf_failed"},
		{"another session's csrf", cred{cookie: sc.Value, csrf: otherCSRF}, http.StatusForbidden, "csrf_failed"},
		{"the cookie's value as csrf", cred{cookie: sc.Value, csrf: sc.Value}, http.StatusForbidden, "csrf_failed"},
		{"csrf without cookie", cred{csrf: out.CSRFToken}, http.StatusUnauthorized, "unauthenticated"},
		{"garbage cookie", cred{cookie: "garbage", csrf: csrfToken("garbage")}, http.StatusUnauthorized, "invalid_token"},
		// Other credentials take precedence; the cookie is then ignored.
		{"bearer beside a cookie", cred{jwt: other.Token, cookie: sc.Value}, http.StatusCreated, ""},
		{"right csrf", cred{cookie: sc.Value, csrf: out.CSRFToken}, http.StatusCreated, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.code != "" {
				e.wantErr("POST", "/v1/api-keys", map[string]string{"name": "k"}, tt.c, tt.status, tt.code, "")
				return
			}
			e.want("POST", "/v1/api-keys", map[string]string{"name": "k"}, tt.c, tt.status, nil)
		})
	}
	// DELETE and PATCH are unsafe too.
	e.wantErr("PATCH", "/v1/me", map[string]string{"name": "x"}, cred{cookie: sc.Value}, http.StatusForbidden, "csrf_failed", "")
	e.wantErr("DELETE", "/v1/teams/"+out.Team.ID, nil, cred{cookie: sc.Value}, http.StatusForbidden, "csrf_failed", "")
}

func TestBrowserSessionSwitchTeamAndLogout(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	var team struct{ ID string }
	e.want("POST", "/v1/teams", map[string]string{"name": "second"}, owner.cred(), http.StatusCreated, &team)
	out, sc, _ := e.browserLogin("owner@example.com")

	// Switching teams with the cookie answers with a new cookie, no token.
	req := e.request("POST", "/v1/auth/switch-team", map[string]string{"team_id": team.ID}, cred{cookie: sc.Value, csrf: out.CSRFToken})
	resp, b := e.sendResp(req)
	var sw browserSessionResp
	if err := json.Unmarshal(b, &sw); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("switch-team = %d: %s", resp.StatusCode, b)
	}
	nc := findCookie(resp, SessionCookie)
	if sw.Token != "" || sw.Team.ID != team.ID || nc == nil || nc.Value == sc.Value || sw.CSRFToken != csrfToken(nc.Value) {
		t.Fatalf("switch-team answer %s cookie %v", b, nc)
	}

	req = e.request("POST", "/v1/auth/logout", nil, cred{cookie: nc.Value})
	resp, _ = e.sendResp(req)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout = %d", resp.StatusCode)
	}
	for _, name := range []string{SessionCookie, CSRFCookie} {
		c := findCookie(resp, name)
		if c == nil || c.Value != "" || c.MaxAge >= 0 {
			t.Fatalf("logout must clear %s: %+v", name, c)
		}
	}
	// Logout with no session at all is fine too (an expired tab).
	e.want("POST", "/v1/auth/logout", nil, cred{}, http.StatusNoContent, nil)
}

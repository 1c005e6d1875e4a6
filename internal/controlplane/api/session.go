package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// Browser sessions. Programs send the session JWT as a Bearer token; the
// dashboard instead asks for a cookie (SessionModeHeader: cookie on
// signup, login or switch-team) and then never sees the JWT: it lives in
// an HttpOnly, SameSite=Strict cookie. Because a cookie rides along on
// every request, unsafe methods authenticated by it must also carry the
// CSRF token in CSRFHeader. The token is derived from the JWT, so a
// cookie planted by a sibling host (sandbox hostnames share the site)
// cannot supply a matching pair, and it is readable by the page from the
// CSRFCookie, which is not HttpOnly. WebSocket upgrades are checked by the
// WebSocket library instead: it refuses an Origin other than the Host.
const (
	SessionCookie     = "wrenn_session"
	CSRFCookie        = "wrenn_csrf"
	CSRFHeader        = "X-CSRF-Token"
	SessionModeHeader = "X-Wrenn-Session"
	sessionModeCookie = "cookie"
)

// browserSession is the session answer in cookie mode: the token stays in
// the cookie.
type browserSession struct {
	ExpiresAt time.Time       `json:"expires_at"`
	User      service.User    `json:"user"`
	Team      service.TeamRef `json:"team"`
	CSRFToken string          `json:"csrf_token"`
}

// csrfToken is the CSRF token that goes with a session JWT.
func csrfToken(jwt string) string {
	sum := sha256.Sum256([]byte("wrenn-csrf\x00" + jwt))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// validCSRF reports whether r carries the CSRF token of the session jwt.
func validCSRF(r *http.Request, jwt string) bool {
	got := r.Header.Get(CSRFHeader)
	want := csrfToken(jwt)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// safeMethod: methods that change nothing and so need no CSRF token.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// wantsCookie: the client asked for a browser session, or already has one
// (a dashboard switching teams keeps its cookie).
func wantsCookie(r *http.Request, viaCookie bool) bool {
	return viaCookie || r.Header.Get(SessionModeHeader) == sessionModeCookie
}

// writeSession is the one way a new session is answered, for signup,
// login, switch-team and any later way to sign in: programs get the
// token in the body; browsers get the cookies and the CSRF token.
func (s *Server) writeSession(w http.ResponseWriter, r *http.Request, status int, sess service.Session) {
	// A session is never cached, in either form; the token travels only
	// in this body or the cookie, never in a URL.
	w.Header().Set("Cache-Control", "no-store")
	if !wantsCookie(r, sessionFromCookie(r)) {
		WriteJSON(w, status, sess)
		return
	}
	csrf := csrfToken(sess.Token)
	secure := s.secureCookies(r)
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: sess.Token, Path: "/", Expires: sess.ExpiresAt,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode,
	})
	http.SetCookie(w, &http.Cookie{
		Name: CSRFCookie, Value: csrf, Path: "/", Expires: sess.ExpiresAt,
		Secure: secure, SameSite: http.SameSiteStrictMode,
	})
	WriteJSON(w, status, browserSession{ExpiresAt: sess.ExpiresAt, User: sess.User, Team: sess.Team, CSRFToken: csrf})
}

// logout clears the browser session's cookies. It needs no session: an
// expired one must be clearable too.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	secure := s.secureCookies(r)
	for _, name := range []string{SessionCookie, CSRFCookie} {
		http.SetCookie(w, &http.Cookie{
			Name: name, Value: "", Path: "/", MaxAge: -1,
			HttpOnly: name == SessionCookie, Secure: secure, SameSite: http.SameSiteStrictMode,
		})
	}
	w.WriteHeader(http.StatusNoContent)
}

// secureCookies: cookies are Secure when the dashboard is served over
// TLS, directly or (Deps.SecureCookies) behind a TLS-terminating proxy.
func (s *Server) secureCookies(r *http.Request) bool {
	return s.deps.SecureCookies || r.TLS != nil
}

// sessionFromCookie reports whether the request carries a session cookie
// and no other credentials (which take precedence).
func sessionFromCookie(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" || r.Header.Get("X-API-Key") != "" {
		return false
	}
	c, err := r.Cookie(SessionCookie)
	return err == nil && c.Value != ""
}

// cookieSession returns the session JWT from the cookie, checking the CSRF
// token on unsafe methods.
func cookieSession(r *http.Request) (string, error) {
	c, err := r.Cookie(SessionCookie)
	if err != nil || c.Value == "" {
		return "", nil
	}
	if !safeMethod(r.Method) && !validCSRF(r, c.Value) {
		return "", service.Forbidden(service.CodeCSRFFailed, "this request needs the "+CSRFHeader+" header of the browser session (the "+CSRFCookie+" cookie's value)")
	}
	return c.Value, nil
}

// Package githubtest is a fake GitHub for tests: an httptest server on
// loopback speaking the OAuth web flow (GET /login/oauth/authorize, POST
// /login/oauth/access_token with PKCE) and the REST API's GET /user and GET
// /user/emails, as GitHub documents them. Tests reach it through the base
// URLs; the real GitHub is never contacted.
package githubtest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// The OAuth app the fake knows.
const (
	ClientID     = "Iv1.fakeclientid"
	ClientSecret = "fake-client-secret-0123456789"
)

// Email is one entry of GET /user/emails.
type Email struct {
	Email    string `json:"email"`
	Primary  bool   `json:"primary"`
	Verified bool   `json:"verified"`
}

// User is the GitHub account that consents at the authorize page.
type User struct {
	ID    int64
	Login string
	Name  string
	// PublicEmail is the profile's email; empty hides it (JSON null), as
	// GitHub does for private emails.
	PublicEmail string
	Emails      []Email
}

// Server is the fake.
type Server struct {
	*httptest.Server

	mu    sync.Mutex
	user  User
	down  bool
	codes map[string]grant // authorization code -> grant, single use
	// tokens maps access tokens to the user they were issued for.
	tokens map[string]User
	// AccessTokens lists every access token issued, so tests can check
	// none of them leaks.
	issued []string
}

type grant struct {
	challenge, redirectURI string
	user                   User
}

// New starts the fake; it stops with the test.
func New(t testing.TB) *Server {
	s := &Server{codes: map[string]grant{}, tokens: map[string]User{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", s.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", s.token)
	mux.HandleFunc("GET /user", s.api(func(w http.ResponseWriter, u User) {
		body := map[string]any{"id": u.ID, "login": u.Login, "name": u.Name, "email": nil}
		if u.PublicEmail != "" {
			body["email"] = u.PublicEmail
		}
		writeJSON(w, http.StatusOK, body)
	}))
	mux.HandleFunc("GET /user/emails", s.api(func(w http.ResponseWriter, u User) {
		writeJSON(w, http.StatusOK, u.Emails)
	}))
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

// SetUser makes u the account that consents next.
func (s *Server) SetUser(u User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.user = u
}

// SetDown makes the token endpoint and the API answer 503 (true) or work.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

// AccessTokens are the tokens issued so far.
func (s *Server) AccessTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

func random() string {
	var b [20]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// authorize is the consent page, consented at once by the current user:
// it redirects to redirect_uri with a code bound to the PKCE challenge.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != ClientID || q.Get("redirect_uri") == "" || q.Get("state") == "" ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		http.Error(w, "bad authorize request", http.StatusBadRequest)
		return
	}
	if q.Get("scope") != "read:user user:email" {
		http.Error(w, "unexpected scope "+q.Get("scope"), http.StatusBadRequest)
		return
	}
	code := random()
	s.mu.Lock()
	s.codes[code] = grant{challenge: q.Get("code_challenge"), redirectURI: q.Get("redirect_uri"), user: s.user}
	s.mu.Unlock()
	to, err := url.Parse(q.Get("redirect_uri"))
	if err != nil {
		http.Error(w, "bad redirect_uri", http.StatusBadRequest)
		return
	}
	v := to.Query()
	v.Set("code", code)
	v.Set("state", q.Get("state"))
	to.RawQuery = v.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// token exchanges a code. Like GitHub it answers a refused code with 200
// and an error field, and form-encodes unless asked for JSON.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	reply := func(v url.Values) {
		if strings.Contains(r.Header.Get("Accept"), "json") {
			m := map[string]string{}
			for k := range v {
				m[k] = v.Get(k)
			}
			writeJSON(w, http.StatusOK, m)
			return
		}
		w.Header().Set("Content-Type", "application/x-www-form-urlencoded")
		_, _ = w.Write([]byte(v.Encode()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		http.Error(w, "unicorn", http.StatusServiceUnavailable)
		return
	}
	if r.PostForm.Get("client_id") != ClientID || r.PostForm.Get("client_secret") != ClientSecret {
		reply(url.Values{"error": {"incorrect_client_credentials"}})
		return
	}
	g, ok := s.codes[r.PostForm.Get("code")]
	delete(s.codes, r.PostForm.Get("code"))
	sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
	if !ok || g.redirectURI != r.PostForm.Get("redirect_uri") || base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
		reply(url.Values{"error": {"bad_verification_code"}, "error_description": {"The code passed is incorrect or expired."}})
		return
	}
	tok := "gho_" + random()
	s.tokens[tok] = g.user
	s.issued = append(s.issued, tok)
	reply(url.Values{"access_token": {tok}, "token_type": {"bearer"}, "scope": {"read:user,user:email"}})
}

// api serves a REST resource to the owner of a valid access token.
func (s *Server) api(serve func(http.ResponseWriter, User)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		s.mu.Lock()
		u, ok := s.tokens[tok]
		down := s.down
		s.mu.Unlock()
		switch {
		case down:
			http.Error(w, "unicorn", http.StatusServiceUnavailable)
		case !ok || !(strings.EqualFold(scheme, "bearer") || strings.EqualFold(scheme, "token")):
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials"})
		default:
			serve(w, u)
		}
	}
}

package api

import (
	"context"
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// authMode says which credentials a route group takes.
type authMode int

const (
	// jwtOnly: user management (account, teams, keys).
	jwtOnly authMode = iota
	// jwtOrKey: sandbox operations.
	jwtOrKey
)

// authenticate resolves the request's credentials into an AuthContext:
// a Bearer token, an API key, or the browser session cookie (session.go).
// Browsers cannot set headers on WebSocket requests, so WebSocket upgrades
// may pass them as the `token` or `api_key` query parameter instead.
func (s *Server) authenticate(mode authMode) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			bearer := ""
			if h := r.Header.Get("Authorization"); h != "" {
				scheme, tok, ok := strings.Cut(h, " ")
				if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
					s.writeErr(w, r, service.Unauthorized(service.CodeInvalidToken, "the Authorization header must be `Bearer <token>`"))
					return
				}
				bearer = strings.TrimSpace(tok)
			}
			key := r.Header.Get("X-API-Key")
			if isWebSocket(r) {
				q := r.URL.Query()
				if bearer == "" {
					bearer = q.Get("token")
				}
				if key == "" {
					key = q.Get("api_key")
				}
			}
			var (
				ac  auth.AuthContext
				err error
			)
			switch {
			case bearer != "":
				ac, err = s.deps.Service.AuthenticateJWT(r.Context(), bearer)
			case key != "" && mode == jwtOnly:
				err = service.Forbidden(service.CodeSessionRequired, "this endpoint needs a user session (Authorization: Bearer <token>); API keys only work for sandbox operations")
			case key != "":
				ac, err = s.deps.Service.AuthenticateAPIKey(r.Context(), key)
			case sessionFromCookie(r):
				var jwt string
				if jwt, err = cookieSession(r); err == nil {
					ac, err = s.deps.Service.AuthenticateJWT(r.Context(), jwt)
				}
			default:
				msg := "authentication required: send Authorization: Bearer <token>"
				if mode == jwtOrKey {
					msg += " or X-API-Key: <key>"
				}
				err = service.Unauthorized(service.CodeUnauthenticated, msg)
			}
			if err != nil {
				s.writeErr(w, r, err)
				return
			}
			next.ServeHTTP(w, r.WithContext(auth.WithContext(r.Context(), ac)))
		})
	}
}

func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// caller returns the AuthContext the middleware stored.
func caller(r *http.Request) auth.AuthContext {
	ac, _ := auth.FromContext(r.Context())
	return ac
}

// LimitBody caps request bodies (the E2B routes use it too).
func LimitBody(n int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil {
				r.Body = http.MaxBytesReader(w, r.Body, n)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// RateLimiter decides whether one more request under key is allowed.
type RateLimiter interface {
	Allow(ctx context.Context, key string) (bool, error)
}

// rateLimit guards signup and login per client IP (clientip: the TCP
// peer, or what trusted proxies forwarded). A limiter that fails is
// let through (a broken limiter must not lock everyone out); the control
// plane's own (NewRateLimiter) does not fail: it falls back to this process.
func (s *Server) rateLimit(name string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.deps.RateLimiter != nil {
				ok, err := s.deps.RateLimiter.Allow(r.Context(), name+":"+s.clientIP.Of(r).String())
				if err != nil {
					s.deps.Logger.WarnContext(r.Context(), "rate limiter unavailable", "err", err)
				} else if !ok {
					s.writeErr(w, r, &service.Error{Kind: service.CodeRateLimited.Kind(), Code: service.CodeRateLimited, Message: "too many attempts; try again in a minute"})
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	}
}

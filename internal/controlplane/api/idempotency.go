package api

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// attemptKey carries what the handler of an idempotent request learns:
// the ID its first call chose for what it makes (a sandbox, a snapshot),
// and whether this attempt takes over from a replica that died.
type attemptKey struct{}

type attempt struct {
	resourceID string
	takenOver  bool
}

// resourceID is that ID, or "" when the request has no Idempotency-Key.
func resourceID(r *http.Request) string {
	at, _ := r.Context().Value(attemptKey{}).(attempt)
	return at.resourceID
}

// takenOver says the request takes over one a dead replica began.
func takenOver(r *http.Request) bool {
	at, _ := r.Context().Value(attemptKey{}).(attempt)
	return at.takenOver
}

// idempotent makes a POST honour the Idempotency-Key header (the rules
// are service.Idempotent's): the handler runs at most once per team,
// route and key, and its answer, status and body, is stored and replayed.
// route names the operation and its target; newID, when not nil, names
// what the first call makes (the handler reads it with resourceID).
// Without the header the handler simply runs.
func (s *Server) idempotent(route func(r *http.Request) string, newID func() string) func(http.Handler) http.Handler {
	if newID == nil {
		newID = func() string { return "" }
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			keys := r.Header.Values("Idempotency-Key")
			if len(keys) == 0 {
				next.ServeHTTP(w, r)
				return
			}
			if len(keys) > 1 {
				s.writeErr(w, r, service.Invalid("Idempotency-Key", "send one Idempotency-Key header"))
				return
			}
			if err := service.CheckIdempotencyKey(keys[0]); err != nil {
				s.writeErr(w, r, err)
				return
			}
			var raw []byte
			if r.Body != nil {
				var err error
				if raw, err = io.ReadAll(r.Body); err != nil {
					s.writeErr(w, r, jsonError(err))
					return
				}
			}
			var live http.Header
			call := service.IdempotentCall{Route: route(r), Key: keys[0], Body: raw, NewResourceID: newID}
			res, err := s.deps.Service.Idempotent(r.Context(), caller(r), call, func(ctx context.Context, id string, takenOver bool) service.Response {
				c := &capture{header: http.Header{}, status: http.StatusOK}
				rr := r.WithContext(context.WithValue(ctx, attemptKey{}, attempt{resourceID: id, takenOver: takenOver}))
				rr.Body = io.NopCloser(bytes.NewReader(raw))
				next.ServeHTTP(c, rr)
				live = c.header
				return service.Response{Status: c.status, Body: c.body.Bytes()}
			})
			if err != nil {
				s.writeErr(w, r, err)
				return
			}
			for k, v := range live {
				w.Header()[k] = v
			}
			if res.Replayed {
				w.Header().Set("Idempotent-Replayed", "true")
			}
			if len(res.Body) > 0 {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("X-Content-Type-Options", "nosniff")
			}
			w.WriteHeader(res.Status)
			_, _ = w.Write(res.Body)
		})
	}
}

// capture is a ResponseWriter that keeps the answer, to be stored before
// it is sent.
type capture struct {
	header http.Header
	status int
	wrote  bool
	body   bytes.Buffer
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) WriteHeader(status int) {
	if !c.wrote {
		c.status, c.wrote = status, true
	}
}

func (c *capture) Write(p []byte) (int, error) {
	c.WriteHeader(http.StatusOK)
	return c.body.Write(p)
}

// prefersAsync reports `Prefer: respond-async` (RFC 7240).
func prefersAsync(r *http.Request) bool {
	for _, v := range r.Header.Values("Prefer") {
		for _, pref := range strings.Split(v, ",") {
			token, _, _ := strings.Cut(pref, ";")
			if strings.EqualFold(strings.TrimSpace(token), "respond-async") {
				return true
			}
		}
	}
	return false
}

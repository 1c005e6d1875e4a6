// Package httpapi serves envd's plain HTTP endpoints: /health, /metrics,
// /init, /envs and /files, with the semantics of E2B's envd.yaml.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envd/rpcutil"
	"github.com/wrenn-dev/wrenn/internal/envd/state"
)

// TokenHeader carries the access token set by /init.
const TokenHeader = "X-Access-Token"

// maxInitBody bounds the /init request body.
const maxInitBody = 1 << 20

// Config configures the API.
type Config struct {
	Logger   *slog.Logger
	Env      rpcutil.Env
	SetClock func(time.Time) error
	PowerOff func()
	// Root is the host-mode root; disk metrics are taken there.
	Root string
}

// API holds the HTTP handlers.
type API struct {
	cfg     Config
	metrics *metricsSampler
}

// New returns the API.
func New(cfg Config) *API {
	root := cfg.Root
	if root == "" {
		root = "/"
	}
	return &API{cfg: cfg, metrics: newMetricsSampler(root)}
}

// Register adds the endpoints to mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /metrics", a.getMetrics)
	mux.HandleFunc("POST /init", a.init)
	mux.HandleFunc("GET /envs", a.envs)
	mux.HandleFunc("GET /files", a.download)
	mux.HandleFunc("POST /files", a.upload)
	mux.HandleFunc("POST /wrenn/poweroff", a.poweroff)
}

// RequireToken rejects every request but GET /health without the access
// token once /init has set one. The comparison is constant-time. A /files
// request may carry a URL signature made with the token instead.
func RequireToken(st *state.State, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" && !st.CheckToken(r.Header.Get(TokenHeader)) {
			if hasSignature(r) && r.Header.Get(TokenHeader) == "" {
				token, _ := st.Token()
				if err := checkSignature(r, token, time.Now()); err != nil {
					writeError(w, http.StatusUnauthorized, err.Error())
					return
				}
				next.ServeHTTP(w, r)
				return
			}
			if strings.HasPrefix(r.URL.Path, "/process.Process/") || strings.HasPrefix(r.URL.Path, "/filesystem.Filesystem/") {
				// The Connect error shape; gRPC clients map the 401 status.
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"code":"unauthenticated","message":"invalid or missing access token"}`)
				return
			}
			writeError(w, http.StatusUnauthorized, "invalid or missing access token")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type apiError struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(apiError{Message: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (a *API) health(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusNoContent)
}

// InitRequest is the body of POST /init.
type InitRequest struct {
	EnvVars        map[string]string `json:"envVars,omitempty"`
	AccessToken    *string           `json:"accessToken,omitempty"`
	Timestamp      *time.Time        `json:"timestamp,omitempty"`
	DefaultUser    string            `json:"defaultUser,omitempty"`
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
}

// ParseInit decodes and validates an /init body.
func ParseInit(r io.Reader) (InitRequest, error) {
	var req InitRequest
	dec := json.NewDecoder(io.LimitReader(r, maxInitBody))
	if err := dec.Decode(&req); err != nil {
		if errors.Is(err, io.EOF) {
			return InitRequest{}, nil // an empty body is a valid no-op
		}
		return InitRequest{}, fmt.Errorf("decode init body: %w", err)
	}
	for k := range req.EnvVars {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return InitRequest{}, fmt.Errorf("invalid environment variable name %q", k)
		}
	}
	for _, v := range req.EnvVars {
		if strings.IndexByte(v, 0) >= 0 {
			return InitRequest{}, errors.New("environment variable value contains a NUL byte")
		}
	}
	if req.DefaultWorkdir != "" && !strings.HasPrefix(req.DefaultWorkdir, "/") {
		return InitRequest{}, fmt.Errorf("defaultWorkdir %q must be absolute", req.DefaultWorkdir)
	}
	return req, nil
}

func (a *API) init(w http.ResponseWriter, r *http.Request) {
	req, err := ParseInit(r.Body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.DefaultUser != "" {
		if _, err := rpcutil.LookupUser(req.DefaultUser); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("defaultUser: %v", err))
			return
		}
	}
	if req.Timestamp != nil && a.cfg.SetClock != nil {
		// After a snapshot restore the guest clock is stale: trust the host.
		if err := a.cfg.SetClock(*req.Timestamp); err != nil {
			a.cfg.Logger.Error("set clock", "err", err)
			writeError(w, http.StatusInternalServerError, fmt.Sprintf("set clock: %v", err))
			return
		}
	}
	a.cfg.Env.State.Apply(state.Update{Envs: req.EnvVars, User: req.DefaultUser, Workdir: req.DefaultWorkdir, AccessToken: req.AccessToken})
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) envs(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.cfg.Env.State.Envs())
}

func (a *API) poweroff(w http.ResponseWriter, r *http.Request) {
	if a.cfg.PowerOff == nil {
		writeError(w, http.StatusNotImplemented, "power off is not available")
		return
	}
	w.WriteHeader(http.StatusAccepted)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	a.cfg.PowerOff()
}

// Package wrenn is the Go client of the Wrenn platform: sandboxes with
// exec, terminals and files, snapshots, templates and their builds, API keys
// and the audit log. The REST models and raw calls are generated from the
// control plane's OpenAPI document (package wrennapi); this package adds
// typed errors, retries of idempotent calls, the WebSocket streams and
// streaming file transfers. The `wrenn` CLI is built on it.
package wrenn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/sdk/go/wrenn/wrennapi"
)

// Config says where the control plane is and who the client is. Empty
// fields fall back to the environment: WRENN_URL and WRENN_API_KEY.
type Config struct {
	// URL of the control plane, e.g. http://localhost:8080.
	URL string
	// APIKey (wrn_...) is sent as X-API-Key.
	APIKey string
	// Token is a session token from Login, sent as a Bearer token; session
	// tokens are needed for API keys and template builds.
	Token string
	// HTTPClient sends the requests (nil: a client without a timeout, as
	// exec and file streams may last long; use contexts for deadlines).
	HTTPClient *http.Client
	// Retry is how idempotent calls are retried on 502 and 503 (zero
	// value: DefaultRetry).
	Retry RetryPolicy
	// UserAgent is sent with every request (default "wrenn-go-sdk").
	UserAgent string
}

// RetryPolicy retries idempotent requests (GET, HEAD, DELETE, and any
// request with an Idempotency-Key) answered 502 or 503 with exponential
// backoff and jitter, honouring Retry-After up to Max.
type RetryPolicy struct {
	// Attempts in all, the first included (1: no retries).
	Attempts int
	Base     time.Duration
	Max      time.Duration
}

// DefaultRetry is 4 attempts, 200ms doubling up to 3s.
var DefaultRetry = RetryPolicy{Attempts: 4, Base: 200 * time.Millisecond, Max: 3 * time.Second}

// Client talks to one control plane as one caller. It is safe for
// concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
	api  *wrennapi.ClientWithResponses
}

// New makes a client from cfg (and WRENN_URL / WRENN_API_KEY for what cfg
// leaves empty).
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" {
		cfg.URL = os.Getenv("WRENN_URL")
	}
	if cfg.APIKey == "" && cfg.Token == "" {
		cfg.APIKey = os.Getenv("WRENN_API_KEY")
	}
	if cfg.URL == "" {
		return nil, errors.New("wrenn: no control plane URL (set Config.URL or WRENN_URL)")
	}
	base, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("wrenn: control plane URL %q must be http(s)://host[:port]", cfg.URL)
	}
	if cfg.Retry.Attempts == 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "wrenn-go-sdk"
	}
	hc := &http.Client{}
	if cfg.HTTPClient != nil {
		copied := *cfg.HTTPClient
		hc = &copied
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = &transport{next: next, cfg: cfg}
	api, err := wrennapi.NewClientWithResponses(base.String()+"/", wrennapi.WithHTTPClient(statusDoer{hc}))
	if err != nil {
		return nil, fmt.Errorf("wrenn: %w", err)
	}
	return &Client{base: base, hc: hc, api: api}, nil
}

// API is the generated client of every REST route, sharing this client's
// credentials and retries; an answer outside 2xx is returned as *APIError.
func (c *Client) API() *wrennapi.ClientWithResponses { return c.api }

// URL is the control plane's base URL.
func (c *Client) URL() string { return c.base.String() }

// transport adds the credentials and retries idempotent requests.
type transport struct {
	next http.RoundTripper
	cfg  Config
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	switch {
	case t.cfg.Token != "":
		req.Header.Set("Authorization", "Bearer "+t.cfg.Token)
	case t.cfg.APIKey != "":
		req.Header.Set("X-API-Key", t.cfg.APIKey)
	}
	req.Header.Set("User-Agent", t.cfg.UserAgent)
	retryable := idempotent(req) && (req.Body == nil || req.Body == http.NoBody || req.GetBody != nil)
	for attempt := 1; ; attempt++ {
		resp, err := t.next.RoundTrip(req)
		if err != nil || !retryable || attempt >= t.cfg.Retry.Attempts ||
			(resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable) {
			return resp, err
		}
		wait := t.cfg.Retry.backoff(attempt, resp.Header.Get("Retry-After"))
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if req.GetBody != nil {
			if req.Body, err = req.GetBody(); err != nil {
				return nil, fmt.Errorf("rewind the request body for a retry: %w", err)
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, req.Context().Err()
		case <-timer.C:
		}
	}
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodDelete, http.MethodPut:
		return true
	}
	return req.Header.Get("Idempotency-Key") != ""
}

// backoff is the wait before attempt+1: Retry-After when given (seconds),
// else Base*2^(attempt-1) with up to 50% jitter; at most Max.
func (p RetryPolicy) backoff(attempt int, retryAfter string) time.Duration {
	if s, err := strconv.Atoi(strings.TrimSpace(retryAfter)); err == nil && s >= 0 {
		return min(time.Duration(s)*time.Second, p.Max)
	}
	d := p.Base << (attempt - 1)
	if d <= 0 || d > p.Max {
		d = p.Max
	}
	return d/2 + rand.N(d/2+1)
}

// statusDoer turns answers outside 2xx into *APIError, so every generated
// call returns the API's error as an error.
type statusDoer struct{ hc *http.Client }

func (d statusDoer) Do(req *http.Request) (*http.Response, error) {
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, readAPIError(resp)
	}
	return resp, nil
}

// do runs a generated call: its error, or the model it decoded.
func do[T any](r interface{ StatusCode() int }, err error, model func() *T) (*T, error) {
	if err != nil {
		return nil, err
	}
	m := model()
	if m == nil {
		return nil, fmt.Errorf("wrenn: unexpected answer %d without a body", r.StatusCode())
	}
	return m, nil
}

// idemKey is a fresh Idempotency-Key, so a retried create or pause is
// carried out once.
func idemKey() *string {
	var b [16]byte
	for i := range b {
		b[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[rand.N(36)]
	}
	k := "sdk-" + string(b[:])
	return &k
}

func ptr[T any](v T) *T { return &v }

// ctxErr prefers the context's error over the one it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

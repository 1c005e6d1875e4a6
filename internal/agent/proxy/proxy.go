// Package proxy is the agent's half of the sandbox HTTP proxy: it serves
// agentwire.ProxyPath(id, port)/... and forwards each request to that TCP
// port of the sandbox's guest through httputil.ReverseProxy, streaming
// bodies both ways (WebSocket and other Upgrade requests, server-sent
// events, long polls). The control plane authenticates users and decides
// which ports may be reached; the agent trusts the control plane (mTLS).
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agentwire"
	"github.com/wrenn-dev/wrenn/internal/proxybody"
)

// Targets finds where the agent reaches a sandbox's guest port.
type Targets interface {
	// GuestPort returns the host:port at which the agent reaches TCP port
	// of running sandbox id, and a function that records activity on it
	// (resets its idle timer). Errors match agenterr.ErrNotFound (no such
	// sandbox) or agenterr.ErrInvalidState (not running).
	GuestPort(id string, port uint16) (addr string, touch func(), err error)
}

// Config configures a Handler.
type Config struct {
	// DialRetry is how long a refused connection is retried, so a server
	// the user just started has time to bind (default 5 s).
	DialRetry time.Duration
	// DialTimeout bounds one connection attempt to a guest that does not
	// answer (default 10 s). Nothing bounds a request once connected: long
	// polls and streams end when either side ends them.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// Handler serves the agent's /proxy/ routes.
type Handler struct {
	targets Targets
	cfg     Config
	rp      *httputil.ReverseProxy
}

// guestDomain ends the names of the transport's URLs: one name per
// sandbox and port, resolved at dial time, so a kept-alive connection
// never serves another sandbox that later holds the same network slot.
const guestDomain = ".guest.wrenn.internal"

// New returns a Handler over targets.
func New(targets Targets, cfg Config) *Handler {
	if cfg.DialRetry <= 0 {
		cfg.DialRetry = 5 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{targets: targets, cfg: cfg}
	t := &http.Transport{
		DialContext:         h.dial,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     30 * time.Second,
		// The guest's bytes pass as they are (no transparent gzip).
		DisableCompression: true,
	}
	h.rp = &httputil.ReverseProxy{
		Rewrite:        h.rewrite,
		Transport:      t,
		ModifyResponse: h.modifyResponse,
		ErrorHandler:   h.errorHandler,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return h
}

type targetKey struct{}

// target is one request's sandbox and port.
type target struct {
	id    string
	port  uint16
	addr  string
	touch func()
}

// ServeHTTP forwards /proxy/{id}/{port}/{path...} to the guest.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, port, ok := parsePath(r.URL.Path)
	if !ok {
		writeErr(w, http.StatusBadRequest, agentwire.ProxyBadRequest, "the path must be /proxy/{sandbox_id}/{port}/...")
		return
	}
	addr, touch, err := h.targets.GuestPort(id, port)
	if err != nil {
		h.writeTargetErr(w, err)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = proxybody.New(r.Body, r.ContentLength, touch)
	}
	t := &target{id: id, port: port, addr: addr, touch: touch}
	h.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), targetKey{}, t)))
}

// parsePath splits /proxy/{id}/{port}[/rest] (rest is not checked).
func parsePath(p string) (id string, port uint16, ok bool) {
	rest, ok := strings.CutPrefix(p, agentwire.ProxyPathPrefix)
	if !ok {
		return "", 0, false
	}
	id, rest, _ = strings.Cut(rest, "/")
	portStr, _, _ := strings.Cut(rest, "/")
	n, err := strconv.ParseUint(portStr, 10, 16)
	if id == "" || err != nil || n == 0 || portStr[0] == '+' {
		return "", 0, false
	}
	return id, uint16(n), true
}

// stripPrefix removes the /proxy/{id}/{port} prefix from an URL path
// (decoded or raw), leaving at least "/".
func stripPrefix(p string) string {
	rest := strings.TrimPrefix(p, agentwire.ProxyPathPrefix)
	for range 2 {
		_, rest, _ = strings.Cut(rest, "/")
	}
	return "/" + rest
}

func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	t := pr.In.Context().Value(targetKey{}).(*target)
	out := pr.Out
	out.URL.Scheme = "http"
	out.URL.Host = t.id + "." + strconv.Itoa(int(t.port)) + guestDomain
	out.URL.Path = stripPrefix(pr.In.URL.Path)
	if pr.In.URL.RawPath != "" {
		out.URL.RawPath = stripPrefix(pr.In.URL.RawPath)
	}
	// The control plane set the forwarding headers (Rewrite drops them
	// from the outbound request); the guest sees the host the user asked.
	out.Host = t.addr
	for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
		if v := pr.In.Header.Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	if fh := pr.In.Header.Get("X-Forwarded-Host"); fh != "" {
		out.Host = fh
	}
}

// dial resolves a transport name back to its sandbox's current address
// and connects, retrying while nothing listens yet.
func (h *Handler) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w", addr, err)
	}
	name, ok := strings.CutSuffix(host, guestDomain)
	i := strings.LastIndexByte(name, '.')
	if !ok || i < 0 {
		return nil, fmt.Errorf("dial %q: not a guest of this proxy", addr)
	}
	port, err := strconv.ParseUint(name[i+1:], 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dial %q: %w", addr, err)
	}
	guest, _, err := h.targets.GuestPort(name[:i], uint16(port))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(h.cfg.DialRetry)
	wait := 20 * time.Millisecond
	for {
		d := net.Dialer{Timeout: h.cfg.DialTimeout}
		c, err := d.DialContext(ctx, network, guest)
		left := time.Until(deadline)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || left <= 0 {
			return c, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial guest %s: %w", guest, ctx.Err())
		case <-time.After(min(wait, left)):
		}
		wait = min(2*wait, 250*time.Millisecond)
	}
}

// modifyResponse keeps the guest from speaking for the agent and counts
// the response's bytes as activity.
func (h *Handler) modifyResponse(resp *http.Response) error {
	resp.Header.Del(agentwire.ProxyErrorHeader)
	t := resp.Request.Context().Value(targetKey{}).(*target)
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &activityConn{ReadWriteCloser: rwc, touch: t.touch}
		return nil
	}
	resp.Body = &activityBody{ReadCloser: resp.Body, touch: t.touch}
	return nil
}

func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client (the control plane, for its user) went away: the
		// upstream request is cancelled; no one reads an answer.
		return
	}
	var ne net.Error
	switch {
	case errors.Is(err, agenterr.ErrNotFound), errors.Is(err, agenterr.ErrInvalidState):
		h.writeTargetErr(w, err)
	case errors.As(err, &ne) && ne.Timeout():
		writeErr(w, http.StatusGatewayTimeout, agentwire.ProxyTimeout, "the sandbox did not answer the connection")
	default:
		h.cfg.Logger.Debug("proxy to guest failed", "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusBadGateway, agentwire.ProxyRefused, "nothing in the sandbox answered on that port (connection refused or reset)")
	}
}

func (h *Handler) writeTargetErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, agenterr.ErrNotFound):
		writeErr(w, http.StatusNotFound, agentwire.ProxyNotFound, "no such sandbox on this host")
	case errors.Is(err, agenterr.ErrInvalidState):
		writeErr(w, http.StatusConflict, agentwire.ProxyNotRunning, "the sandbox is not running")
	default:
		h.cfg.Logger.Warn("proxy target", "err", err)
		writeErr(w, http.StatusBadGateway, agentwire.ProxyRefused, "the sandbox cannot be reached")
	}
}

func writeErr(w http.ResponseWriter, status int, reason, msg string) {
	w.Header().Set(agentwire.ProxyErrorHeader, reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg)
}

// activityBody records activity as a body's bytes flow.
type activityBody struct {
	io.ReadCloser
	touch func()
}

func (b *activityBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.touch()
	}
	return n, err
}

// activityConn records activity both ways on an upgraded connection.
type activityConn struct {
	io.ReadWriteCloser
	touch func()
}

func (c *activityConn) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *activityConn) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

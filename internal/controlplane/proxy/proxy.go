// Package proxy is the control plane's half of the sandbox HTTP proxy. A
// handler ahead of the API router takes requests whose Host is
// `{port}-{sandbox_id}.{WRENN_PROXY_DOMAIN}`, authenticates them (the
// owning team's X-API-Key, a preview token's cookie, or a public port),
// and forwards them through the sandbox's host agent
// (agentwire.ProxyPath) over the host pool's one transport, so mTLS
// applies when configured. Nothing of the user's credentials reaches the
// guest.
package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/wrenn-dev/wrenn/internal/agentwire"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/clientip"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/proxy/proxyurl"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/proxybody"
)

// Config configures a Proxy.
type Config struct {
	Service *service.Service
	// States is observed: a sandbox's cached lookup is dropped when its
	// state changes in this process.
	States *service.States
	Hosts  *hosts.Pool
	Names  *proxyurl.Names
	// Tokens recognizes Wrenn session tokens in Authorization, which are
	// not forwarded to the guest.
	Tokens         *auth.Tokens
	TrustedProxies []netip.Prefix
	// CacheTTL bounds how long a sandbox's lookup (team, state, host) is
	// reused (default 2 s); changes made by other replicas are seen
	// within it.
	CacheTTL time.Duration
	Logger   *slog.Logger
}

// Proxy serves sandbox hostnames and Forward.
type Proxy struct {
	cfg      Config
	clientIP clientip.Resolver
	rp       *httputil.ReverseProxy
	resumes  singleflight.Group

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	t       service.ProxyTarget
	expires time.Time
}

// New builds a Proxy.
func New(cfg Config) (*Proxy, error) {
	if cfg.Service == nil || cfg.Hosts == nil || cfg.Names == nil {
		return nil, errors.New("proxy: Service, Hosts and Names are required")
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{cfg: cfg, clientIP: clientip.New(cfg.TrustedProxies), cache: map[string]cached{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      cfg.Hosts.Transport(),
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	if cfg.States != nil {
		cfg.States.Observe(func(t service.Transition) { p.forget(t.SandboxID) })
	}
	return p, nil
}

// Wrap serves sandbox hostnames and hands every other request to next.
func (p *Proxy) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !p.cfg.Names.IsProxyHost(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		p.serveHost(w, r)
	})
}

// serveHost authenticates a request to a sandbox hostname and forwards it.
func (p *Proxy) serveHost(w http.ResponseWriter, r *http.Request) {
	t, err := p.cfg.Names.Parse(r.Host)
	if err == nil {
		err = service.CheckProxyPort(t.Port)
	}
	if err != nil {
		p.writeErr(w, r, err)
		return
	}
	if tok := r.URL.Query().Get(proxyurl.PreviewParam); tok != "" {
		p.openPreview(w, r, t, tok)
		return
	}
	teamID, err := p.authorize(r, t)
	if err != nil {
		p.writeErr(w, r, err)
		return
	}
	p.Forward(w, r, teamID, t.SandboxID, t.Port, ForwardOptions{})
}

// authorize returns the team on whose behalf r reaches t: the API key's,
// a valid preview cookie's, or, on a public port, the owner's.
func (p *Proxy) authorize(r *http.Request, t proxyurl.Target) (string, error) {
	if key := r.Header.Get("X-API-Key"); key != "" {
		ac, err := p.cfg.Service.AuthenticateAPIKey(r.Context(), key)
		if err != nil {
			return "", err
		}
		return ac.TeamID, nil
	}
	if c, err := r.Cookie(proxyurl.PreviewCookie); err == nil {
		team, _, err := p.cfg.Names.VerifyPreview(c.Value, t)
		if err != nil {
			return "", service.Unauthorized(service.CodeInvalidPreviewToken, "the preview link expired or is not for this sandbox port; ask for a new one")
		}
		return team, nil
	}
	tgt, err := p.lookup(r.Context(), t.SandboxID)
	if err == nil && containsPort(tgt.Sandbox.PublicPorts, t.Port) {
		return tgt.Sandbox.TeamID, nil
	}
	if err != nil && !isNotFound(err) {
		return "", err
	}
	return "", service.Unauthorized(service.CodeUnauthenticated, "authentication required: send X-API-Key: <key>, or open a preview URL (POST /v1/sandboxes/{id}/preview-urls)")
}

// openPreview turns a preview URL's token into a cookie scoped to this
// exact host and sends the browser to the clean URL.
func (p *Proxy) openPreview(w http.ResponseWriter, r *http.Request, t proxyurl.Target, tok string) {
	team, exp, err := p.cfg.Names.VerifyPreview(tok, t)
	if err != nil {
		p.writeErr(w, r, service.Unauthorized(service.CodeInvalidPreviewToken, "the preview link expired or is not for this sandbox port; ask for a new one"))
		return
	}
	// The sandbox must still be the team's and live: a destroyed
	// sandbox's links stop working with it.
	if _, err := p.target(r.Context(), team, t.SandboxID); err != nil && !isPaused(err) {
		p.writeErr(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: proxyurl.PreviewCookie, Value: tok, Path: "/", Expires: exp,
		MaxAge: int(time.Until(exp).Seconds()), HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: r.TLS != nil || p.cfg.Names.Secure()})
	q := r.URL.Query()
	q.Del(proxyurl.PreviewParam)
	clean := url.URL{Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: q.Encode()}
	if clean.Path == "" {
		clean.Path = "/"
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, clean.String(), http.StatusSeeOther)
}

// ForwardOptions change what Forward allows.
type ForwardOptions struct {
	// AllowEnvdPort lets port 49983 through; only the E2B layer sets it, after its own checks.
	AllowEnvdPort bool
}

// Forward proxies r to `port` of sandbox `sandboxID` owned by `teamID` (the caller has already
// authenticated and authorized the request) through its host agent, with the same header
// stripping, auto-resume, and error mapping as hostname-routed requests. r.URL.Path is the
// path inside the guest.
func (p *Proxy) Forward(w http.ResponseWriter, r *http.Request, teamID, sandboxID string, port int, opts ForwardOptions) {
	if err := service.CheckProxyPort(port); err != nil && !(opts.AllowEnvdPort && port == service.EnvdPort) {
		p.writeErr(w, r, err)
		return
	}
	t, err := p.target(r.Context(), teamID, sandboxID)
	if isPaused(err) {
		t, err = p.autoResume(r.Context(), teamID, sandboxID)
	}
	if err != nil {
		p.writeErr(w, r, err)
		return
	}
	f := &forward{id: sandboxID, port: port, base: p.cfg.Hosts.URL(*t.Host)}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = proxybody.New(r.Body, r.ContentLength, nil)
	}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), forwardKey{}, f)))
}

type forwardKey struct{}

// forward is one request's destination.
type forward struct {
	id   string
	port int
	base string
}

// target returns team's sandbox id if the proxy can serve it now: running
// on an online host. Other states answer as the API does (another team's
// sandbox is not found); a paused one answers sandbox_paused.
func (p *Proxy) target(ctx context.Context, teamID, id string) (service.ProxyTarget, error) {
	t, err := p.lookup(ctx, id)
	if err != nil {
		return t, err
	}
	sb := t.Sandbox
	if sb.TeamID != teamID {
		return service.ProxyTarget{}, service.NotFound(service.CodeSandboxNotFound, "sandbox not found")
	}
	switch service.Status(sb.Status) {
	case service.StatusRunning:
	case service.StatusPaused:
		return t, service.Errorf(service.CodeSandboxPaused, "sandbox %s is paused; resume it (or create it with auto_resume) to reach its ports", id)
	case service.StatusPending:
		return t, service.Conflict(service.CodeInvalidState, "sandbox "+id+" is still starting")
	case service.StatusMissing:
		return t, service.Errorf(service.CodeAgentUnavailable, "the host of sandbox %s does not answer", id)
	default:
		return service.ProxyTarget{}, service.NotFound(service.CodeSandboxNotFound, "sandbox not found")
	}
	if t.Host == nil || t.Host.Status != hosts.StatusOnline || t.Host.Address == "" {
		return t, service.Errorf(service.CodeAgentUnavailable, "the host of sandbox %s is not online", id)
	}
	return t, nil
}

// autoResume resumes a paused sandbox whose auto_resume is set (once for
// all the requests that wait on it) and returns it running.
func (p *Proxy) autoResume(ctx context.Context, teamID, id string) (service.ProxyTarget, error) {
	_, err, _ := p.resumes.Do(id, func() (any, error) {
		// Detached: the resume finishes even if this first client hangs up.
		return p.cfg.Service.AutoResume(context.WithoutCancel(ctx), teamID, id)
	})
	p.forget(id)
	t, terr := p.target(ctx, teamID, id)
	if terr != nil && err != nil {
		// Still not running: the resume's own error says why.
		return t, err
	}
	return t, terr
}

// lookup returns sandbox id's proxy target, cached for CacheTTL.
func (p *Proxy) lookup(ctx context.Context, id string) (service.ProxyTarget, error) {
	now := time.Now()
	p.mu.Lock()
	c, ok := p.cache[id]
	p.mu.Unlock()
	if ok && now.Before(c.expires) {
		return c.t, nil
	}
	t, err := p.cfg.Service.LookupProxyTarget(ctx, id)
	if err != nil {
		return t, err
	}
	p.mu.Lock()
	for k, v := range p.cache {
		// Bounded by the live sandboxes used in the last CacheTTL.
		if now.After(v.expires) {
			delete(p.cache, k)
		}
	}
	p.cache[id] = cached{t: t, expires: now.Add(p.cfg.CacheTTL)}
	p.mu.Unlock()
	return t, nil
}

func (p *Proxy) forget(id string) {
	p.mu.Lock()
	delete(p.cache, id)
	p.mu.Unlock()
}

// rewrite sends the request to the agent's proxy path and keeps the
// user's credentials to ourselves.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	f := pr.In.Context().Value(forwardKey{}).(*forward)
	base, err := url.Parse(f.base)
	if err != nil {
		// hosts.Pool.URL always parses; keep the request unroutable if not.
		base = &url.URL{Scheme: "http", Host: "invalid."}
	}
	out := pr.Out
	prefix := agentwire.ProxyPath(f.id, f.port)
	out.URL.Scheme, out.URL.Host = base.Scheme, base.Host
	out.URL.Path = prefix + ensureSlash(pr.In.URL.Path)
	out.URL.RawPath = ""
	if pr.In.URL.RawPath != "" {
		out.URL.RawPath = prefix + ensureSlash(pr.In.URL.RawPath)
	}
	out.Host = ""
	stripCredentials(out.Header, p.isWrennToken)
	out.Header.Set("X-Forwarded-For", p.clientIP.Of(pr.In).String())
	out.Header.Set("X-Forwarded-Host", pr.In.Host)
	out.Header.Set("X-Forwarded-Proto", p.proto(pr.In))
}

func ensureSlash(s string) string {
	if !strings.HasPrefix(s, "/") {
		return "/" + s
	}
	return s
}

// proto is the scheme the client used: TLS here, or what a trusted proxy
// in front says.
func (p *Proxy) proto(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	if v := r.Header.Get("X-Forwarded-Proto"); p.clientIP.FromTrustedProxy(r) && (v == "https" || v == "http") {
		return v
	}
	return "http"
}

// isWrennToken says whether a bearer token is a Wrenn credential (an API
// key or a session token this control plane signed).
func (p *Proxy) isWrennToken(tok string) bool {
	if strings.HasPrefix(tok, auth.APIKeyPrefix) {
		return true
	}
	if p.cfg.Tokens == nil {
		return false
	}
	_, err := p.cfg.Tokens.Parse(tok)
	return err == nil
}

// wrennCookie names the cookies of Wrenn (sessions, CSRF, preview tokens).
func wrennCookie(name string) bool { return strings.HasPrefix(name, "wrenn_") }

// stripCredentials removes Wrenn's credentials from headers toward a
// guest: X-API-Key, an Authorization carrying a Wrenn token, and Wrenn's
// cookies (others stay: they are the guest app's own).
func stripCredentials(h http.Header, isWrennToken func(string) bool) {
	h.Del("X-API-Key")
	if a := h.Get("Authorization"); a != "" {
		scheme, tok, _ := strings.Cut(a, " ")
		if strings.EqualFold(scheme, "Bearer") && isWrennToken(strings.TrimSpace(tok)) {
			h.Del("Authorization")
		}
	}
	if lines := h.Values("Cookie"); len(lines) > 0 {
		var keep []string
		for _, line := range lines {
			for part := range strings.SplitSeq(line, ";") {
				name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
				if strings.TrimSpace(part) != "" && !wrennCookie(name) {
					keep = append(keep, strings.TrimSpace(part))
				}
			}
		}
		h.Del("Cookie")
		if len(keep) > 0 {
			h.Set("Cookie", strings.Join(keep, "; "))
		}
	}
}

// agentRefusal is an answer the agent made itself (the guest was not
// reached), by its agentwire reason.
type agentRefusal struct {
	reason, message string
}

func (e *agentRefusal) Error() string { return "agent proxy: " + e.reason + ": " + e.message }

// modifyResponse turns the agent's own refusals into errors, and keeps a
// guest from setting Wrenn's cookies.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	if reason := resp.Header.Get(agentwire.ProxyErrorHeader); reason != "" {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return &agentRefusal{reason: reason, message: string(msg)}
	}
	if sc := resp.Header.Values("Set-Cookie"); len(sc) > 0 {
		resp.Header.Del("Set-Cookie")
		for _, line := range sc {
			if c, err := http.ParseSetCookie(line); err == nil && wrennCookie(c.Name) {
				continue
			}
			resp.Header.Add("Set-Cookie", line)
		}
	}
	return nil
}

func (p *Proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client went away; the request to the agent is cancelled.
		return
	}
	f := r.Context().Value(forwardKey{}).(*forward)
	var ref *agentRefusal
	if !errors.As(err, &ref) {
		p.cfg.Logger.WarnContext(r.Context(), "proxy: agent unreachable", "sandbox_id", f.id, "err", err)
		p.forget(f.id)
		p.writeErr(w, r, service.Errorf(service.CodeAgentUnavailable, "the host of sandbox %s cannot be reached", f.id))
		return
	}
	var se *service.Error
	switch ref.reason {
	case agentwire.ProxyNotFound:
		p.forget(f.id)
		se = service.NotFound(service.CodeSandboxNotFound, "sandbox not found")
	case agentwire.ProxyNotRunning:
		p.forget(f.id)
		se = service.Errorf(service.CodeSandboxPaused, "sandbox %s is not running", f.id)
	case agentwire.ProxyRefused:
		se = service.Errorf(service.CodeGuestUnreachable, "nothing in sandbox %s answered on port %d (connection refused or reset)", f.id, f.port)
	case agentwire.ProxyTimeout:
		se = service.Errorf(service.CodeGuestTimeout, "sandbox %s did not answer on port %d in time", f.id, f.port)
	default:
		se = service.Internal("proxy through agent", err)
	}
	p.writeErr(w, r, se)
}

// writeErr answers in the API's error format, logging server faults.
func (p *Proxy) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	se, ok := service.AsError(err)
	if !ok {
		se = service.Internal("sandbox proxy", err)
	}
	if se.Kind == service.KindInternal {
		p.cfg.Logger.ErrorContext(r.Context(), "sandbox proxy failed", "host", r.Host, "err", err)
	}
	api.WriteServiceError(w, se)
}

func containsPort(ports []int32, port int) bool {
	for _, p := range ports {
		if int(p) == port {
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	se, ok := service.AsError(err)
	return ok && se.Kind == service.KindNotFound
}

func isPaused(err error) bool {
	se, ok := service.AsError(err)
	return ok && se.Code == service.CodeSandboxPaused
}

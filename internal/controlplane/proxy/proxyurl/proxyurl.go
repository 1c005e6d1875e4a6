// Package proxyurl names sandbox ports for the HTTP proxy: the hostnames
// `{port}-{sandbox_id}.{domain}` (parsed and formatted here only) and the
// signed preview tokens that let a browser, which cannot send X-API-Key,
// reach one port of one sandbox until the token expires.
package proxyurl

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

// DefaultDomain is WRENN_PROXY_DOMAIN's default: browsers and curl resolve
// every *.localhost name to loopback, so it works locally without DNS.
const DefaultDomain = "localhost"

// Preview token lifetimes (ttl_sec).
const (
	DefaultPreviewTTL = time.Hour
	MinPreviewTTL     = time.Minute
	MaxPreviewTTL     = 7 * 24 * time.Hour
)

// PreviewParam is the query parameter of a preview URL, and PreviewCookie
// the cookie it becomes (host-only: scoped to that one sandbox port).
const (
	PreviewParam  = "wrenn_preview"
	PreviewCookie = "wrenn_preview"
)

// Names formats and parses proxy hostnames and preview tokens.
type Names struct {
	domain string
	// scheme and port of the URLs handed out (from CP_PUBLIC_URL).
	scheme, port string
	// apiHost is the control plane's own hostname, never a sandbox's.
	apiHost string
	secret  []byte
	now     func() time.Time
}

// New builds Names for domain (empty: DefaultDomain). publicURL is
// CP_PUBLIC_URL (its scheme and port are those of the URLs handed out;
// empty: http on the request's port). secret signs preview tokens.
func New(domain, publicURL string, secret []byte, now func() time.Time) (*Names, error) {
	if domain == "" {
		domain = DefaultDomain
	}
	if now == nil {
		now = time.Now
	}
	if len(secret) < 32 {
		return nil, errors.New("proxy: the preview token secret must be at least 32 bytes")
	}
	// A distinct key: a preview token is never a valid session and back.
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("wrenn sandbox proxy preview tokens v1"))
	n := &Names{domain: strings.ToLower(strings.Trim(domain, ".")), scheme: "http", secret: mac.Sum(nil), now: now}
	if publicURL != "" {
		u, err := url.Parse(publicURL)
		if err != nil {
			return nil, fmt.Errorf("CP_PUBLIC_URL: %w", err)
		}
		n.scheme, n.port, n.apiHost = u.Scheme, u.Port(), strings.ToLower(u.Hostname())
	}
	return n, nil
}

// Domain is the proxy domain.
func (n *Names) Domain() string { return n.domain }

// Target is one sandbox port a hostname names.
type Target struct {
	SandboxID string
	Port      int
}

// IsProxyHost says whether a Host header names a sandbox port (well
// formed or not): one label under the proxy domain, other than the
// control plane's own hostname.
func (n *Names) IsProxyHost(host string) bool {
	h := hostOnly(host)
	label, ok := strings.CutSuffix(h, "."+n.domain)
	return ok && label != "" && !strings.Contains(label, ".") && h != n.apiHost
}

// Parse reads `{port}-{sandbox_id}.{domain}[:listen port]`. The id holds a
// hyphen itself, so the port ends at the first one. Errors are service
// errors: a port outside 1-65535 is port_not_allowed (403), any other
// malformed name invalid_request (400).
func (n *Names) Parse(host string) (Target, error) {
	if !n.IsProxyHost(host) {
		return Target{}, service.Invalid("host", "host %q is not {port}-{sandbox_id}.%s", host, n.domain)
	}
	label := strings.TrimSuffix(hostOnly(host), "."+n.domain)
	portStr, id, ok := strings.Cut(label, "-")
	if !ok || portStr == "" || id == "" {
		return Target{}, service.Invalid("host", "host %q is not {port}-{sandbox_id}.%s", host, n.domain)
	}
	for _, c := range portStr {
		if c < '0' || c > '9' {
			return Target{}, service.Invalid("host", "host %q: %q is not a port number", host, portStr)
		}
	}
	if len(portStr) > 5 {
		return Target{}, service.Errorf(service.CodePortNotAllowed, "port %s is not a TCP port (1-65535)", portStr)
	}
	port, _ := strconv.Atoi(portStr)
	if port < 1 || port > 65535 {
		return Target{}, service.Errorf(service.CodePortNotAllowed, "port %d is not a TCP port (1-65535)", port)
	}
	if !ids.Valid(ids.Sandbox, id) {
		return Target{}, service.Invalid("host", "host %q: %q is not a sandbox id", host, id)
	}
	return Target{SandboxID: id, Port: port}, nil
}

// Host is the hostname of port of sandbox id.
func (n *Names) Host(id string, port int) string {
	return strconv.Itoa(port) + "-" + id + "." + n.domain
}

// URL is the base URL of port of sandbox id; reqPort is the port the
// request that asks came to (used when CP_PUBLIC_URL is not set).
func (n *Names) URL(id string, port int, reqPort string) string {
	h := n.Host(id, port)
	if p := n.portFor(reqPort); p != "" {
		h = net.JoinHostPort(h, p)
	}
	return n.scheme + "://" + h + "/"
}

// portFor is the port of handed-out names: CP_PUBLIC_URL's, or the
// request's when it is not set.
func (n *Names) portFor(reqPort string) string {
	if n.apiHost == "" {
		return reqPort
	}
	return n.port
}

// SDKDomain is the domain as E2B's SDKs take it: sandbox.getHost(port)
// makes "{port}-{id}." + it, so it carries the port of handed-out URLs.
func (n *Names) SDKDomain(reqPort string) string {
	if p := n.portFor(reqPort); p != "" {
		return net.JoinHostPort(n.domain, p)
	}
	return n.domain
}

// Secure says whether handed-out URLs are https (cookies are Secure).
func (n *Names) Secure() bool { return n.scheme == "https" }

// Preview is a signed preview URL.
type Preview struct {
	URL       string    `json:"url"`
	Port      int       `json:"port"`
	ExpiresAt time.Time `json:"expires_at"`
}

// NewPreview signs a preview URL of port of team's sandbox id, valid for
// ttl (zero: DefaultPreviewTTL).
func (n *Names) NewPreview(teamID, id string, port int, ttl time.Duration, reqPort string) (Preview, error) {
	if err := service.CheckProxyPort(port); err != nil {
		return Preview{}, err
	}
	if ttl == 0 {
		ttl = DefaultPreviewTTL
	}
	if ttl < MinPreviewTTL || ttl > MaxPreviewTTL {
		return Preview{}, service.Invalid("ttl_sec", "ttl_sec must be between %d and %d", int(MinPreviewTTL.Seconds()), int(MaxPreviewTTL.Seconds()))
	}
	exp := n.now().Add(ttl).Truncate(time.Second)
	tok := n.sign(teamID, id, port, exp)
	return Preview{URL: n.URL(id, port, reqPort) + "?" + PreviewParam + "=" + tok, Port: port, ExpiresAt: exp.UTC()}, nil
}

func (n *Names) sign(teamID, id string, port int, exp time.Time) string {
	payload := strings.Join([]string{teamID, id, strconv.Itoa(port), strconv.FormatInt(exp.Unix(), 10)}, "|")
	mac := hmac.New(sha256.New, n.secret)
	mac.Write([]byte(payload))
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(mac.Sum(nil))
}

// ErrPreviewInvalid is a token that is forged, for another sandbox or
// port, or expired.
var ErrPreviewInvalid = errors.New("invalid preview token")

// VerifyPreview checks tok for t and returns the team that made it and
// when it expires.
func (n *Names) VerifyPreview(tok string, t Target) (teamID string, exp time.Time, err error) {
	enc := base64.RawURLEncoding
	p64, s64, ok := strings.Cut(tok, ".")
	payload, err1 := enc.DecodeString(p64)
	sig, err2 := enc.DecodeString(s64)
	if !ok || err1 != nil || err2 != nil {
		return "", time.Time{}, ErrPreviewInvalid
	}
	mac := hmac.New(sha256.New, n.secret)
	mac.Write(payload)
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return "", time.Time{}, ErrPreviewInvalid
	}
	f := strings.Split(string(payload), "|")
	if len(f) != 4 || f[1] != t.SandboxID || f[2] != strconv.Itoa(t.Port) {
		return "", time.Time{}, ErrPreviewInvalid
	}
	sec, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return "", time.Time{}, ErrPreviewInvalid
	}
	exp = time.Unix(sec, 0)
	if !n.now().Before(exp) {
		return "", time.Time{}, ErrPreviewInvalid
	}
	return f[0], exp, nil
}

// hostOnly is a Host header's name, lower-cased, without port or a final dot.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

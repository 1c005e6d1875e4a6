package channels

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// ErrAddressNotAllowed is returned when a destination resolves to an
// address channels may not reach (loopback, private, CGNAT, link-local,
// metadata...), unless private addresses are allowed.
var ErrAddressNotAllowed = errors.New("destination address is not allowed")

// blocked are the ranges a channel may not reach besides what netip
// classifies (loopback, private, link-local, unspecified, multicast).
var blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),         // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),     // CGNAT
	netip.MustParsePrefix("192.0.0.0/24"),      // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),     // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),       // reserved, broadcast
	netip.MustParsePrefix("64:ff9b:1::/48"),    // local-use NAT64
	netip.MustParsePrefix("fd00:ec2::254/128"), // AWS metadata over IPv6 (also ULA)
}

// AddressAllowed reports whether a channel may connect to ip.
func AddressAllowed(ip netip.Addr, allowPrivate bool) bool {
	ip = ip.Unmap()
	if allowPrivate {
		return ip.IsValid()
	}
	if !ip.IsValid() || ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() {
		return false
	}
	for _, p := range blocked {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// Resolver finds a host's addresses (net.Resolver's LookupNetIP).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DialFunc connects to one resolved address ("ip:port").
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Network is how channels reach the outside: every connection resolves its
// host, checks each address at dial time (so DNS that changes after
// validation cannot point a channel inward) and dials only allowed ones.
// Tests inject Resolver and Dial to reach local fakes under production
// host names; the check between them is the production one.
type Network struct {
	AllowPrivate bool
	Resolver     Resolver
	Dial         DialFunc
	// TLS is the client's TLS config (tests set their fake providers'
	// roots on it); nil: the system's roots.
	TLS *tls.Config
}

// DialContext is the guarded dialer for an http.Transport.
func (n *Network) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else {
		res := n.Resolver
		if res == nil {
			res = net.DefaultResolver
		}
		ips, err = res.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
	}
	dial := n.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		dial = d.DialContext
	}
	var lastErr error = fmt.Errorf("resolve %s: no addresses", host)
	for _, ip := range ips {
		if !AddressAllowed(ip, n.AllowPrivate) {
			lastErr = fmt.Errorf("%w: %s resolves to %s", ErrAddressNotAllowed, host, ip)
			continue
		}
		c, err := dial(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// CheckURL is the validation-time check of a destination URL: http(s), a
// host, and no literal address (or localhost name) that the dialer would
// refuse anyway. field names the config field in the error.
func (n *Network) CheckURL(field, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return invalidField(field, "%s must be an http or https URL", field)
	}
	if u.User != nil {
		return invalidField(field, "%s must not carry credentials in the URL", field)
	}
	host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
	if n.AllowPrivate {
		return nil
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return urlNotAllowed(field)
	}
	if ip, err := netip.ParseAddr(host); err == nil && !AddressAllowed(ip, false) {
		return urlNotAllowed(field)
	}
	return nil
}

// Client is the one HTTP client every provider sends through: the guarded
// dialer, no proxy from the environment (it would bypass the address
// check), and no redirect followed (a 3xx is the answer).
//
// It is fasthttp's, not net/http's: a delivery is one small POST whose
// answer is discarded, and net/http's two goroutines per connection, the
// hand-offs between them and its allocations cost about as much CPU as the
// rest of the dispatcher (docs/benchmarks.md, "Notification channels").
// What net/http did for free is set here: TLS 1.2 at least, a bounded
// answer, idle connections dropped before common servers' keep-alive
// timeouts, and one retry of a request whose connection was closed before
// any answer (a keep-alive race).
func (n *Network) Client() *fasthttp.Client {
	var tc *tls.Config
	if n.TLS != nil {
		tc = n.TLS.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.MinVersion == 0 {
		tc.MinVersion = tls.VersionTLS12
	}
	return &fasthttp.Client{
		DialTimeout: func(addr string, timeout time.Duration) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			return n.DialContext(ctx, "tcp", addr)
		},
		TLSConfig: tc,
		// Deliveries to one host run in parallel (a process has at most
		// DispatcherConfig.Workers in flight), and the most recently used
		// connection is reused first, so idle ones age out.
		MaxConnsPerHost:     1024,
		MaxConnWaitTimeout:  5 * time.Second,
		ConnPoolStrategy:    fasthttp.LIFO,
		MaxIdleConnDuration: 4 * time.Second, // Node's default keep-alive is 5 s
		// Answers are read and dropped; headers up to 16 KiB, a body up to
		// 64 KiB (a larger one still gives its status).
		ReadBufferSize:      16 << 10,
		MaxResponseBodySize: 64 << 10,
		// The path is sent as the channel's config gives it (tokens and
		// escaped room ids included), and no default User-Agent is added.
		DisablePathNormalizing:   true,
		NoDefaultUserAgentHeader: true,
		RetryIfErr:               retryClosedOnce,
	}
}

// retryClosedOnce retries a request once when its connection was closed or
// reset before any answer: a pooled connection the server had just closed
// for idleness. A timeout is never retried: the attempt's time is spent.
func retryClosedOnce(_ *fasthttp.Request, attempts int, err error) (resetTimeout, retry bool) {
	closed := errors.Is(err, io.EOF) || errors.Is(err, fasthttp.ErrConnectionClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
	return false, attempts == 1 && closed
}

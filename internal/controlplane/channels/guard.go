package channels

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
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
	// Base is the transport Client clones (tests set their fake
	// providers' TLS roots on it); nil: http.DefaultTransport.
	Base *http.Transport
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

// Transport is the one HTTP transport every provider sends through: the
// guarded dialer and no proxy from the environment (it would bypass the
// address check). Senders call its RoundTrip, which follows no redirect
// (a 3xx is the answer), without an http.Client, which would only copy
// each request's headers for the redirects it is not to follow.
func (n *Network) Transport() *http.Transport {
	var tr *http.Transport
	if n.Base != nil {
		tr = n.Base.Clone()
	} else {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	tr.Proxy = nil
	tr.DialContext = n.DialContext
	// Deliveries to one host run in parallel; keep their connections
	// (more idle ones per host than attempts in flight to it at once).
	tr.MaxIdleConnsPerHost = 64
	// Answers are discarded: asking for gzip would only add a header to
	// parse at both ends.
	tr.DisableCompression = true
	return tr
}

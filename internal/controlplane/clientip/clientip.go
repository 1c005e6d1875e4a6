// Package clientip decides which address a request comes from, the one
// identity the rate limiter keys on and logs show.
//
// Forwarding headers are believed only from trusted proxies: when the TCP
// peer is in a trusted range, the forwarding chain (Forwarded when present,
// else X-Forwarded-For) is walked from the right, past every trusted hop, and
// the first untrusted address is the client. Each hop appends what it saw,
// so entries left of an untrusted one were written by someone who could
// have lied, and are never read.
package clientip

import (
	"net/http"
	"net/netip"
	"strings"
)

// Resolver computes client addresses; the zero value trusts no proxy.
type Resolver struct {
	trusted []netip.Prefix
}

// New trusts the given proxy ranges.
func New(trusted []netip.Prefix) Resolver { return Resolver{trusted: trusted} }

func (r Resolver) isTrusted(a netip.Addr) bool {
	for _, p := range r.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// FromTrustedProxy says whether req's TCP peer is a trusted proxy, whose
// other forwarding headers (X-Forwarded-Proto) may be believed too.
func (r Resolver) FromTrustedProxy(req *http.Request) bool {
	peer := parseAddr(req.RemoteAddr)
	return peer.IsValid() && r.isTrusted(peer)
}

// Of returns the client address of req; the zero Addr only when even the
// TCP peer has no address (a request not from a TCP listener).
func (r Resolver) Of(req *http.Request) netip.Addr {
	peer := parseAddr(req.RemoteAddr)
	if !peer.IsValid() || !r.isTrusted(peer) {
		return peer
	}
	var chain []string
	if fwd := req.Header.Values("Forwarded"); len(fwd) > 0 {
		chain = ForwardedFor(fwd)
	} else {
		chain = XForwardedFor(req.Header.Values("X-Forwarded-For"))
	}
	client := peer
	for i := len(chain) - 1; i >= 0; i-- {
		a := parseAddr(chain[i])
		if !a.IsValid() {
			// A trusted hop wrote something that is no address ("unknown",
			// an obfuscated name): the last hop known is the best answer.
			return client
		}
		client = a
		if !r.isTrusted(a) {
			return a
		}
	}
	return client
}

// XForwardedFor splits X-Forwarded-For header lines into their entries, in
// order.
func XForwardedFor(lines []string) []string {
	var out []string
	for _, line := range lines {
		for e := range strings.SplitSeq(line, ",") {
			if e = strings.TrimSpace(e); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// ForwardedFor returns the for= values of RFC 7239 Forwarded header lines,
// one per element, in order (an element without for= gives "").
func ForwardedFor(lines []string) []string {
	var out []string
	for _, line := range lines {
		for _, elem := range splitOutsideQuotes(line, ',') {
			forValue := ""
			for _, pair := range splitOutsideQuotes(elem, ';') {
				k, v, ok := strings.Cut(pair, "=")
				if ok && strings.EqualFold(strings.TrimSpace(k), "for") {
					forValue = unquote(strings.TrimSpace(v))
				}
			}
			out = append(out, forValue)
		}
	}
	return out
}

// splitOutsideQuotes splits s at sep where sep is not inside a quoted
// string (RFC 7230 quoted-string with backslash escapes).
func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unquote(v string) string {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return v
	}
	var b strings.Builder
	for i := 1; i < len(v)-1; i++ {
		if v[i] == '\\' && i+1 < len(v)-1 {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// parseAddr reads an address with or without a port ("192.0.2.1",
// "192.0.2.1:80", "[2001:db8::1]:80", "2001:db8::1", "[2001:db8::1]"),
// dropping any zone and unmapping IPv4-in-IPv6, so one client always has
// one identity. Anything else is the zero Addr.
func parseAddr(s string) netip.Addr {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
				return netip.Addr{}
			}
			if a, err = netip.ParseAddr(s[1 : len(s)-1]); err != nil || !a.Is6() {
				return netip.Addr{}
			}
		} else {
			a = ap.Addr()
		}
	}
	return a.WithZone("").Unmap()
}

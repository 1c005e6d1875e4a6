package clientip

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func prefixes(t testing.TB, s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func TestOf(t *testing.T) {
	trusted := prefixes(t, "10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name    string
		trusted []netip.Prefix
		peer    string
		header  map[string][]string
		want    string
	}{
		{"no proxies trusted: peer, header ignored", nil, "10.0.0.1:5000", map[string][]string{"X-Forwarded-For": {"198.51.100.7"}}, "10.0.0.1"},
		{"untrusted peer's header ignored", trusted, "203.0.113.5:5000", map[string][]string{"X-Forwarded-For": {"198.51.100.7"}}, "203.0.113.5"},
		{"trusted peer, no header", trusted, "10.0.0.1:5000", nil, "10.0.0.1"},
		{"trusted peer, one hop", trusted, "10.0.0.1:5000", map[string][]string{"X-Forwarded-For": {"198.51.100.7"}}, "198.51.100.7"},
		{"right-most untrusted wins over a spoofed left part", trusted, "10.0.0.1:5000",
			map[string][]string{"X-Forwarded-For": {"1.2.3.4, 198.51.100.7, 10.0.0.2"}}, "198.51.100.7"},
		{"several header lines are one list", trusted, "10.0.0.1:5000",
			map[string][]string{"X-Forwarded-For": {"1.2.3.4", "198.51.100.7,10.9.9.9"}}, "198.51.100.7"},
		{"all hops trusted: the left-most", trusted, "10.0.0.1:5000", map[string][]string{"X-Forwarded-For": {"10.1.1.1, 10.2.2.2"}}, "10.1.1.1"},
		{"garbage after a trusted hop stops at that hop", trusted, "10.0.0.1:5000",
			map[string][]string{"X-Forwarded-For": {"198.51.100.7, nonsense, 10.2.2.2"}}, "10.2.2.2"},
		{"ports and brackets", trusted, "[fd00::1]:443", map[string][]string{"X-Forwarded-For": {"[2001:db8::7]:1234"}}, "2001:db8::7"},
		{"IPv4 with port in XFF", trusted, "10.0.0.1:1", map[string][]string{"X-Forwarded-For": {"198.51.100.7:8080"}}, "198.51.100.7"},
		{"mapped IPv4 peer is the IPv4 address", trusted, "[::ffff:10.0.0.1]:1", map[string][]string{"X-Forwarded-For": {"::ffff:198.51.100.7"}}, "198.51.100.7"},
		{"Forwarded preferred over X-Forwarded-For", trusted, "10.0.0.1:1", map[string][]string{
			"Forwarded": {`for=192.0.2.60;proto=http;by=10.0.0.1, For="[2001:db8:cafe::17]:4711"`}, "X-Forwarded-For": {"198.51.100.7"}}, "2001:db8:cafe::17"},
		{"Forwarded quoted comma does not split", trusted, "10.0.0.1:1", map[string][]string{
			"Forwarded": {`for=192.0.2.60;x="a,b", for=10.3.3.3`}}, "192.0.2.60"},
		{"Forwarded unknown stops at the trusted hop", trusted, "10.0.0.1:1", map[string][]string{"Forwarded": {"for=unknown"}}, "10.0.0.1"},
		{"Forwarded element without for", trusted, "10.0.0.1:1", map[string][]string{"Forwarded": {"proto=https"}}, "10.0.0.1"},
		{"peer without port", trusted, "203.0.113.5", nil, "203.0.113.5"},
		{"peer not an address", trusted, "pipe", nil, "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := &http.Request{RemoteAddr: tt.peer, Header: http.Header{}}
			for k, vs := range tt.header {
				for _, v := range vs {
					req.Header.Add(k, v)
				}
			}
			if got := New(tt.trusted).Of(req).String(); got != tt.want {
				t.Fatalf("Of = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestForwardedFor(t *testing.T) {
	got := ForwardedFor([]string{`for="\"q\"";by=x, by=y`, `FOR = 192.0.2.1 `})
	if want := []string{`"q"`, "", "192.0.2.1"}; !slices.Equal(got, want) {
		t.Fatalf("ForwardedFor = %q, want %q", got, want)
	}
}

// Any header value gives an answer without panicking: the peer, an
// address from the header, and never an address from left of an untrusted
// entry.
func FuzzOf(f *testing.F) {
	for _, s := range []string{"198.51.100.7", "1.2.3.4, 10.0.0.2", `for="[2001:db8::1]:80";by=x`, `for="\`, "[::1", ",,,", "for=;for=\"\"\""} {
		f.Add(s, s)
	}
	r := New(prefixes(f, "10.0.0.0/8"))
	f.Fuzz(func(t *testing.T, xff, fwd string) {
		for _, h := range []http.Header{{"X-Forwarded-For": {xff}}, {"Forwarded": {fwd}}} {
			req := &http.Request{RemoteAddr: "10.0.0.1:1", Header: h}
			got := r.Of(req)
			if !got.IsValid() || got.Zone() != "" || got.Is4In6() {
				t.Fatalf("Of(%q) = %v: want a plain address", h, got)
			}
			var chain []string
			if _, ok := h["Forwarded"]; ok {
				chain = ForwardedFor(h["Forwarded"])
			} else {
				chain = XForwardedFor(h["X-Forwarded-For"])
			}
			if got == netip.MustParseAddr("10.0.0.1") {
				continue
			}
			// got must come from the chain, right of every untrusted entry.
			found := false
			for i := len(chain) - 1; i >= 0; i-- {
				a := parseAddr(chain[i])
				if a == got {
					found = true
					break
				}
				if !a.IsValid() || !r.isTrusted(a) {
					break
				}
			}
			if !found {
				t.Fatalf("Of = %v, not a trustworthy entry of %q", got, strings.Join(chain, "|"))
			}
		}
	})
}

package channels

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
)

func TestAddressAllowed(t *testing.T) {
	for _, tc := range []struct {
		ip      string
		allowed bool
	}{
		{"93.184.216.34", true},
		{"2606:2800:220:1::1", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"10.1.2.3", false},
		{"172.16.0.1", false},
		{"192.168.1.1", false},
		{"100.64.0.1", false},
		{"169.254.169.254", false},
		{"fe80::1", false},
		{"fd00:ec2::254", false},
		{"fc00::1", false},
		{"0.0.0.0", false},
		{"::", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"224.0.0.1", false},
		{"255.255.255.255", false},
	} {
		t.Run(tc.ip, func(t *testing.T) {
			ip := netip.MustParseAddr(tc.ip)
			if got := AddressAllowed(ip, false); got != tc.allowed {
				t.Fatalf("AddressAllowed(%s) = %v, want %v", tc.ip, got, tc.allowed)
			}
			if !AddressAllowed(ip, true) {
				t.Fatalf("AddressAllowed(%s, allowPrivate) = false", tc.ip)
			}
		})
	}
}

func TestCheckURL(t *testing.T) {
	strict, lax := &Network{}, &Network{AllowPrivate: true}
	for _, tc := range []struct {
		url        string
		strictCode string // "" ok, else the code
		laxOK      bool
	}{
		{"https://hooks.example.com/x", "", true},
		{"http://hooks.example.com:8080/x", "", true},
		{"ftp://hooks.example.com/x", "invalid_request", false},
		{"hooks.example.com/x", "invalid_request", false},
		{"https://user:pw@hooks.example.com/", "invalid_request", false},
		{"http://127.0.0.1:9000/", "url_not_allowed", true},
		{"http://[::1]/", "url_not_allowed", true},
		{"http://localhost/", "url_not_allowed", true},
		{"http://169.254.169.254/latest/meta-data", "url_not_allowed", true},
		{"http://10.0.0.5/", "url_not_allowed", true},
		{"http://100.100.1.1/", "url_not_allowed", true},
	} {
		t.Run(tc.url, func(t *testing.T) {
			err := strict.CheckURL("config.url", tc.url)
			if got := codeOf(err); got != tc.strictCode {
				t.Fatalf("strict CheckURL code = %q (%v), want %q", got, err, tc.strictCode)
			}
			if err := lax.CheckURL("config.url", tc.url); (err == nil) != tc.laxOK {
				t.Fatalf("lax CheckURL err = %v, want ok=%v", err, tc.laxOK)
			}
		})
	}
}

// TestDialTimeCheck: a name that resolves inward is refused when it is
// dialed, whatever validation saw, and nothing is dialed.
func TestDialTimeCheck(t *testing.T) {
	f, n := newFakeNet(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	if err := n.CheckURL("config.url", "https://inward.example.com/hook"); err != nil {
		t.Fatalf("validation refused a public-looking name: %v", err)
	}
	s := NewSender(n, "")
	r := s.Send(context.Background(), Webhook, Config{"url": "https://inward.example.com/hook", "secret": "0123456789abcdef"}, Message{Payload: []byte(`{}`)})
	if !errors.Is(r.Err, ErrAddressNotAllowed) {
		t.Fatalf("send to a name resolving to 169.254.169.254: %v, want ErrAddressNotAllowed", r.Err)
	}
	if d := f.dialed(); len(d) != 0 {
		t.Fatalf("dialed %v", d)
	}
	r = s.Send(context.Background(), Webhook, Config{"url": "https://hooks.example.com/hook", "secret": "0123456789abcdef"}, Message{Payload: []byte(`{}`)})
	if !r.OK() {
		t.Fatalf("send to a public name: %v", r.Err)
	}
	n.AllowPrivate = true
	r = NewSender(n, "").Send(context.Background(), Webhook, Config{"url": "https://inward.example.com/hook", "secret": "0123456789abcdef"}, Message{Payload: []byte(`{}`)})
	if !r.OK() {
		t.Fatalf("with private addresses allowed: %v", r.Err)
	}
}

func codeOf(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := service.AsError(err); ok {
		return string(e.Code)
	}
	return "?"
}

func serviceErr(err error) (*service.Error, bool) { return service.AsError(err) }

package channels

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

// closingServer answers each request 204 and then closes its connection
// without saying so (no Connection: close), as a server dropping an idle
// keep-alive connection does; it counts the connections it accepted.
func closingServer(t *testing.T) (url string, conns *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/hook", conns
}

// The client's behaviour where net/http's would differ by default: a
// pooled connection the server closed is retried once on a new one; a
// large answer still gives its status; a cancelled or timed-out attempt
// returns at once.
func TestSenderClient(t *testing.T) {
	n := &Network{AllowPrivate: true}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(1500 * time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Padding", strings.Repeat("p", 8<<10))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(bytes.Repeat([]byte("b"), 1<<20))
	}))
	t.Cleanup(big.Close)
	cfg := func(u string) Config { return Config{"url": u, "secret": "0123456789abcdef"} }
	msg := Message{Payload: []byte(`{}`), Attempt: 1}

	t.Run("connection closed after an answer", func(t *testing.T) {
		u, conns := closingServer(t)
		s := NewSender(n, "")
		for i := range 3 {
			if r := s.Send(context.Background(), Webhook, cfg(u), msg); !r.OK() || r.StatusCode != 204 {
				t.Fatalf("send %d: code %d, %v", i+1, r.StatusCode, r.Err)
			}
		}
		if c := conns.Load(); c != 3 {
			t.Fatalf("%d connections for 3 sends, want 3 (each answer closes its connection)", c)
		}
	})
	t.Run("large answer", func(t *testing.T) {
		r := NewSender(n, "").Send(context.Background(), Webhook, cfg(big.URL), msg)
		if !r.OK() || r.StatusCode != 200 {
			t.Fatalf("code %d, %v; want 200", r.StatusCode, r.Err)
		}
	})
	for _, tc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
		want error
	}{
		{"cancelled", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}, context.Canceled},
		{"timed out", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := tc.ctx()
			defer cancel()
			start := time.Now()
			r := NewSender(n, "").Send(ctx, Webhook, cfg(slow.URL), msg)
			if took := time.Since(start); !errors.Is(r.Err, tc.want) || took > time.Second {
				t.Fatalf("after %v: %v, want %v at once", took, r.Err, tc.want)
			}
		})
	}
}

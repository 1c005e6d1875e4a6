package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/agentwire"
)

// guests maps sandbox ids to a "guest" host reached on loopback: a real
// HTTP server plays the guest's port.
type guests struct {
	mu      sync.Mutex
	host    map[string]string // id -> IP
	paused  map[string]bool
	touches atomic.Int64
}

func (g *guests) GuestPort(id string, port uint16) (string, func(), error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ip, ok := g.host[id]
	if !ok {
		return "", nil, agenterr.New(agenterr.ErrNotFound, "sandbox %q not found", id)
	}
	if g.paused[id] {
		return "", nil, agenterr.New(agenterr.ErrInvalidState, "sandbox %q is paused", id)
	}
	return net.JoinHostPort(ip, strconv.Itoa(int(port))), func() { g.touches.Add(1) }, nil
}

// guestServer serves h on 127.0.0.1 at a free port and returns the port.
func guestServer(t *testing.T, h http.Handler) uint16 {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	_, p, _ := net.SplitHostPort(srv.Listener.Addr().String())
	n, _ := strconv.Atoi(p)
	return uint16(n)
}

func agent(t *testing.T, g *guests, cfg Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(New(g, cfg))
	t.Cleanup(srv.Close)
	return srv
}

func TestParsePath(t *testing.T) {
	cases := []struct {
		path string
		id   string
		port uint16
		ok   bool
	}{
		{"/proxy/sb-1/8080/", "sb-1", 8080, true},
		{"/proxy/sb-1/8080", "sb-1", 8080, true},
		{"/proxy/sb-1/8080/a/b?c", "sb-1", 8080, true},
		{"/proxy/sb-1/65535/", "sb-1", 65535, true},
		{"/proxy/sb-1/0/", "", 0, false},
		{"/proxy/sb-1/65536/", "", 0, false},
		{"/proxy/sb-1/+80/", "", 0, false},
		{"/proxy/sb-1/x/", "", 0, false},
		{"/proxy/sb-1/", "", 0, false},
		{"/proxy//8080/", "", 0, false},
		{"/other/sb-1/8080/", "", 0, false},
	}
	for _, tc := range cases {
		id, port, ok := parsePath(tc.path)
		if id != tc.id || port != tc.port || ok != tc.ok {
			t.Errorf("parsePath(%q) = %q %d %v", tc.path, id, port, ok)
		}
	}
}

func TestForward(t *testing.T) {
	port := guestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A guest trying to speak for the agent.
		w.Header().Set(agentwire.ProxyErrorHeader, agentwire.ProxyNotFound)
		fmt.Fprintf(w, "%s %s %s raw=%s q=%s xff=%s", r.Method, r.Host, r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.Header.Get("X-Forwarded-For"))
	}))
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1"}, paused: map[string]bool{}}
	srv := agent(t, g, Config{})
	req, _ := http.NewRequest(http.MethodGet, srv.URL+agentwire.ProxyPath("sb-1", int(port))+"/a%2Fb/c?x=1", nil)
	req.Header.Set("X-Forwarded-Host", "8080-sb-1.localhost")
	req.Header.Set("X-Forwarded-For", "192.0.2.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "GET 8080-sb-1.localhost /a/b/c raw=/a%2Fb/c q=x=1 xff=192.0.2.1"
	if resp.StatusCode != http.StatusOK || string(b) != want || resp.Header.Get(agentwire.ProxyErrorHeader) != "" {
		t.Fatalf("= %d %q %v, want %q without the agent's error header", resp.StatusCode, b, resp.Header, want)
	}
	if g.touches.Load() == 0 {
		t.Fatal("proxied traffic recorded no activity")
	}
}

func TestRefusals(t *testing.T) {
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1", "sb-p": "127.0.0.1"}, paused: map[string]bool{"sb-p": true}}
	srv := agent(t, g, Config{DialRetry: 300 * time.Millisecond})
	// A port nothing listens on: take one and close it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	cases := []struct {
		path   string
		status int
		reason string
	}{
		{"/proxy/sb-none/8080/", http.StatusNotFound, agentwire.ProxyNotFound},
		{"/proxy/sb-p/8080/", http.StatusConflict, agentwire.ProxyNotRunning},
		{"/proxy/sb-1/0/", http.StatusBadRequest, agentwire.ProxyBadRequest},
		{"/proxy/sb-1/" + closed + "/", http.StatusBadGateway, agentwire.ProxyRefused},
	}
	for _, tc := range cases {
		t0 := time.Now()
		resp, err := http.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get(agentwire.ProxyErrorHeader) != tc.reason {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, resp.StatusCode, resp.Header.Get(agentwire.ProxyErrorHeader), tc.status, tc.reason)
		}
		if tc.reason == agentwire.ProxyRefused && time.Since(t0) < 250*time.Millisecond {
			t.Errorf("a refused connection was not retried (%s)", time.Since(t0))
		}
	}
}

// A server that starts listening after the request arrived is reached.
func TestDialRetriesWhileTheServerBinds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1"}, paused: map[string]bool{}}
	srv := agent(t, g, Config{DialRetry: 5 * time.Second})
	go func() {
		time.Sleep(500 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "late") })}
		t.Cleanup(func() { s.Close() })
		_ = s.Serve(ln)
	}()
	_, port, _ := net.SplitHostPort(addr)
	resp, err := http.Get(srv.URL + "/proxy/sb-1/" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "late" {
		t.Fatalf("= %d %q", resp.StatusCode, b)
	}
}

// 1,000 requests with bodies of random sizes come back intact (the guest
// echoes the body's hash and length; the answer streams a body as long).
func TestRandomBodiesIntact(t *testing.T) {
	port := guestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Sum", fmt.Sprintf("%x", h.Sum(nil)))
		_, _ = io.CopyN(w, zeros{}, n)
	}))
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1"}, paused: map[string]bool{}}
	srv := agent(t, g, Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1000 {
		body := make([]byte, rng.IntN(256<<10))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		resp, err := http.Post(srv.URL+agentwire.ProxyPath("sb-1", int(port))+"/", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("request %d: read the answer: %v", i, err)
		}
		if want := fmt.Sprintf("%x", sha256.Sum256(body)); resp.StatusCode != http.StatusOK || resp.Header.Get("X-Sum") != want || n != int64(len(body)) {
			t.Fatalf("request %d (%d bytes) = %d, sum %s, %d bytes back", i, len(body), resp.StatusCode, resp.Header.Get("X-Sum"), n)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// A client hanging up mid-stream cancels the request to the guest.
func TestClientDisconnectCancelsUpstream(t *testing.T) {
	cancelled := make(chan struct{})
	port := guestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			if _, err := io.WriteString(w, "data: tick\n\n"); err != nil {
				close(cancelled)
				return
			}
			http.NewResponseController(w).Flush()
			select {
			case <-r.Context().Done():
				close(cancelled)
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1"}, paused: map[string]bool{}}
	srv := agent(t, g, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+agentwire.ProxyPath("sb-1", int(port))+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// Server-sent events arrive as they are sent, not when the body ends.
	buf := make([]byte, 64)
	if n, err := io.ReadAtLeast(resp.Body, buf, len("data: tick\n\n")); err != nil || !strings.HasPrefix(string(buf[:n]), "data: tick") {
		t.Fatalf("first event = %q %v", buf[:n], err)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the guest's request was not cancelled after the client left")
	}
}

func TestWebSocketUpgrade(t *testing.T) {
	port := guestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil || c.Write(r.Context(), typ, msg) != nil {
				return
			}
		}
	}))
	g := &guests{host: map[string]string{"sb-1": "127.0.0.1"}, paused: map[string]bool{}}
	srv := agent(t, g, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+agentwire.ProxyPath("sb-1", int(port))+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	before := g.touches.Load()
	for i := range 1000 {
		msg := []byte("m" + strconv.Itoa(i))
		if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
			t.Fatal(err)
		}
		if _, got, err := c.Read(ctx); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo %d = %q %v", i, got, err)
		}
	}
	if g.touches.Load()-before < 1000 {
		t.Fatalf("1000 echoes recorded %d activities", g.touches.Load()-before)
	}
}

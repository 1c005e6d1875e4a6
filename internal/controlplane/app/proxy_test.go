package app

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// clientFrom makes requests from one loopback source address, so the test
// has several distinct clients on loopback alone.
func clientFrom(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// listenOn serves h on a loopback address of the test's choosing.
func listenOn(t *testing.T, ip string, h http.Handler) *httptest.Server {
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// Behind a trusted proxy each client has its own login budget (25 bad
// logins from each of two clients: the 21st of each gets 429, not the 11th
// of the pair); a peer that is no trusted proxy cannot pick its identity
// with X-Forwarded-For.
func TestLoginLimitPerClientBehindTrustedProxy(t *testing.T) {
	pool, dbURL := testenv.MigratedPool(t)
	// The proxy reaches the control plane from 127.0.0.1, the only
	// trusted peer; clients use other loopback addresses.
	cfg := testConfig(t, map[string]string{"DATABASE_URL": dbURL, "REDIS_URL": testenv.RedisURL(t),
		"WRENN_TRUSTED_PROXIES": "127.0.0.1/32"})
	rdb := testRedis(t, cfg)
	logger := slog.New(slog.DiscardHandler)
	core, err := NewCore(cfg, pool, rdb, logger)
	if err != nil {
		t.Fatal(err)
	}
	deps := api.Deps{Logger: logger}
	core.Fill(&deps)
	h, err := api.New(deps)
	if err != nil {
		t.Fatal(err)
	}
	cp := listenOn(t, "127.0.0.1", h)
	cpURL, _ := url.Parse(cp.URL)
	proxy := httputil.NewSingleHostReverseProxy(cpURL) // appends the client's address to X-Forwarded-For
	proxy.Transport = clientFrom("127.0.0.1").Transport
	front := listenOn(t, "127.0.0.10", proxy)

	login := func(c *http.Client, base, xff string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(context.Background(), "POST", base+"/v1/auth/login",
			strings.NewReader(`{"email":"nobody@example.com","password":"wrong password"}`))
		req.Header.Set("Content-Type", "application/json")
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	want := func(i int) int {
		if i > 20 {
			return http.StatusTooManyRequests
		}
		return http.StatusUnauthorized
	}

	clients := []*http.Client{clientFrom("127.0.0.2"), clientFrom("127.0.0.3")}
	for i := 1; i <= 25; i++ {
		for n, c := range clients {
			if got := login(c, front.URL, ""); got != want(i) {
				t.Fatalf("client %d through the proxy, login %d = %d, want %d", n+1, i, got, want(i))
			}
		}
	}

	// Straight to the control plane from 127.0.0.4, naming a new address
	// each time: all count against 127.0.0.4.
	direct := clientFrom("127.0.0.4")
	for i := 1; i <= 21; i++ {
		if got := login(direct, cp.URL, "198.51.100."+strconv.Itoa(i)); got != want(i) {
			t.Fatalf("untrusted peer, login %d = %d, want %d", i, got, want(i))
		}
	}
	// And a spoofed left part through the trusted proxy does not help a
	// limited client: the proxy's right-most entry is its real address.
	if got := login(clients[0], front.URL, "198.51.100.99"); got != http.StatusTooManyRequests {
		t.Fatalf("limited client with a spoofed X-Forwarded-For = %d, want 429", got)
	}
}

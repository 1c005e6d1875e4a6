package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// proxyHost is the proxy hostname of port of sandbox id under wrenn dev's
// default WRENN_PROXY_DOMAIN.
func proxyHost(id string, port int) string { return fmt.Sprintf("%d-%s.localhost", port, id) }

// errorCode reads the code of an answer in the API's error format.
func errorCode(b []byte) string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error.Code
}

// loopbackDialer dials the control plane at cpAddr for every *.localhost
// name, as browsers resolve them; anything else is refused.
func loopbackDialer(cpAddr string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	_, port, _ := net.SplitHostPort(cpAddr)
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, p, err := net.SplitHostPort(addr)
		if err != nil || p != port || !strings.HasSuffix(host, ".localhost") {
			return nil, fmt.Errorf("test dialer: %q is not a *.localhost name on the control plane's port", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, cpAddr)
	}
}

// TestSandboxProxy drives the sandbox HTTP proxy of `wrenn dev` against
// servers in a real VM: busybox httpd by hostname, what reaches the guest
// (no Wrenn credentials, forwarding headers), refusals, a WebSocket echo,
// a 256 MiB download with flat proxy memory, preview URLs with a cookie
// jar, public ports, and auto-resume of a paused sandbox.
func TestSandboxProxy(t *testing.T) {
	src := requirePlatform(t)
	ds := newDevSetup(t, src, "proxy", "wpx", 238, "WRENN_RECONCILE_INTERVAL=500ms")
	dev := startDev(t, ds.env, ds.dataDir, ds.port)
	cpAddr := strings.TrimPrefix(dev.base, "http://")
	anon := newClient(dev.base)
	key := anon.withKey(dev.apiKey)
	sb := key.createSandbox(t)
	// A page, a CGI script that shows what reached the guest, a big file.
	setup := `mkdir -p /srv/cgi-bin && echo hello-proxy > /srv/index.html &&
printf '#!/bin/sh\necho Content-Type: text/plain\necho\nenv\n' > /srv/cgi-bin/env && chmod +x /srv/cgi-bin/env &&
busybox httpd -p 8080 -h /srv`
	if r := key.sh(t, sb.ID, setup); r.ExitCode != 0 {
		t.Fatalf("start httpd: %+v", r)
	}
	web := key.onHost(proxyHost(sb.ID, 8080))

	t.Run("busybox httpd by hostname", func(t *testing.T) {
		status, body := web.raw(t, http.MethodGet, "/", "", nil)
		if status != http.StatusOK || string(body) != "hello-proxy\n" {
			t.Fatalf("GET / through the proxy = %d %q", status, body)
		}
		// The hostname is case-insensitive; the CP's port may follow it.
		status, body = key.onHost(strings.ToUpper(proxyHost(sb.ID, 8080))+":"+strconv.Itoa(ds.port)).raw(t, http.MethodGet, "/index.html", "", nil)
		if status != http.StatusOK || string(body) != "hello-proxy\n" {
			t.Fatalf("GET /index.html on the upper-case host = %d %q", status, body)
		}
	})

	t.Run("the guest sees no Wrenn credentials", func(t *testing.T) {
		c := web.withHeader("Cookie", "wrenn_session=secret-session; app=kept; wrenn_csrf=x").
			withHeader("Authorization", "Bearer "+dev.apiKey)
		status, body := c.raw(t, http.MethodGet, "/cgi-bin/env", "", nil)
		if status != http.StatusOK {
			t.Fatalf("GET /cgi-bin/env = %d %s", status, body)
		}
		env := string(body)
		for _, leak := range []string{dev.apiKey, "secret-session", "wrenn_csrf", "HTTP_X_API_KEY"} {
			if strings.Contains(env, leak) {
				t.Errorf("the guest saw %q:\n%s", leak, env)
			}
		}
		for _, want := range []string{"HTTP_COOKIE=app=kept", "HTTP_X_FORWARDED_FOR=127.0.0.1", "HTTP_X_FORWARDED_PROTO=http",
			"HTTP_X_FORWARDED_HOST=" + proxyHost(sb.ID, 8080)} {
			if !strings.Contains(env, want+"\n") {
				t.Errorf("the guest's environment lacks %s:\n%s", want, env)
			}
		}
	})

	t.Run("refusals", func(t *testing.T) {
		other := anon.withSession(anon.signup(t, "proxy-"+randomHex(t, 4)+"@example.com"))
		var otherKey struct {
			Key string `json:"key"`
		}
		other.must(t, http.MethodPost, "/v1/api-keys", map[string]string{"name": "other"}, &otherKey, http.StatusCreated)
		cases := []struct {
			name   string
			c      client
			status int
			code   string
		}{
			{"no credentials", anon.onHost(proxyHost(sb.ID, 8080)), http.StatusUnauthorized, "unauthenticated"},
			{"a bad key", anon.withKey("wrn_notakey").onHost(proxyHost(sb.ID, 8080)), http.StatusUnauthorized, "invalid_api_key"},
			{"another team's key", anon.withKey(otherKey.Key).onHost(proxyHost(sb.ID, 8080)), http.StatusNotFound, "sandbox_not_found"},
			{"envd's port", key.onHost(proxyHost(sb.ID, 49983)), http.StatusForbidden, "port_not_allowed"},
			{"envd's port without a key", anon.onHost(proxyHost(sb.ID, 49983)), http.StatusForbidden, "port_not_allowed"},
			{"port 0", key.onHost(proxyHost(sb.ID, 0)), http.StatusForbidden, "port_not_allowed"},
			{"port 65536", key.onHost(proxyHost(sb.ID, 65536)), http.StatusForbidden, "port_not_allowed"},
			{"no port", key.onHost(sb.ID + ".localhost"), http.StatusBadRequest, "invalid_request"},
			{"a bad id", key.onHost("8080-sb-nope.localhost"), http.StatusBadRequest, "invalid_request"},
			{"an unknown sandbox", key.onHost(proxyHost("sb-aaaaaaaaaaaaaaaaaaaa", 8080)), http.StatusNotFound, "sandbox_not_found"},
			{"nothing listens", key.onHost(proxyHost(sb.ID, 8081)), http.StatusBadGateway, "guest_unreachable"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				status, body := tc.c.raw(t, http.MethodGet, "/", "", nil)
				if status != tc.status || errorCode(body) != tc.code {
					t.Fatalf("= %d %s, want %d %s", status, body, tc.status, tc.code)
				}
			})
		}
		// The API itself is still served on the control plane's own host.
		if status, _ := key.raw(t, http.MethodGet, "/v1/sandboxes/"+sb.ID, "", nil); status != http.StatusOK {
			t.Fatalf("GET the sandbox on the API host = %d", status)
		}
	})

	t.Run("websocket echo of 1000 messages", func(t *testing.T) { testProxyWebSocket(t, key, dev.apiKey, cpAddr, sb.ID) })
	t.Run("256 MiB download with flat proxy memory", func(t *testing.T) { testProxyDownload(t, key, dev, sb.ID) })
	t.Run("preview URL", func(t *testing.T) { testPreviewURL(t, key, cpAddr, sb.ID) })

	t.Run("public port", func(t *testing.T) {
		key.must(t, http.MethodPatch, "/v1/sandboxes/"+sb.ID, map[string]any{"public_ports": []int{8080}}, nil, http.StatusOK)
		if status, body := anon.onHost(proxyHost(sb.ID, 8080)).raw(t, http.MethodGet, "/", "", nil); status != http.StatusOK || string(body) != "hello-proxy\n" {
			t.Fatalf("GET a public port without credentials = %d %q", status, body)
		}
		if status, body := anon.onHost(proxyHost(sb.ID, 8081)).raw(t, http.MethodGet, "/", "", nil); status != http.StatusUnauthorized {
			t.Fatalf("GET a port that is not public without credentials = %d %s", status, body)
		}
		key.must(t, http.MethodPatch, "/v1/sandboxes/"+sb.ID, map[string]any{"public_ports": []int{}}, nil, http.StatusOK)
		if status, body := anon.onHost(proxyHost(sb.ID, 8080)).raw(t, http.MethodGet, "/", "", nil); status != http.StatusUnauthorized {
			t.Fatalf("GET a port no longer public without credentials = %d %s", status, body)
		}
		if status, body := key.do(t, http.MethodPatch, "/v1/sandboxes/"+sb.ID, map[string]any{"public_ports": []int{49983}}); status != http.StatusBadRequest {
			t.Fatalf("PATCH public_ports [49983] = %d %s", status, body)
		}
	})

	t.Run("paused sandbox", func(t *testing.T) {
		key.must(t, http.MethodPost, "/v1/sandboxes/"+sb.ID+"/pause", nil, nil, http.StatusOK)
		status, body := web.raw(t, http.MethodGet, "/", "", nil)
		if status != http.StatusConflict || errorCode(body) != "sandbox_paused" {
			t.Fatalf("GET a paused sandbox without auto_resume = %d %s", status, body)
		}
		key.must(t, http.MethodPatch, "/v1/sandboxes/"+sb.ID, map[string]any{"auto_resume": true}, nil, http.StatusOK)
		t0 := time.Now()
		status, body = web.raw(t, http.MethodGet, "/", "", nil)
		if status != http.StatusOK || string(body) != "hello-proxy\n" {
			t.Fatalf("GET a paused sandbox with auto_resume = %d %q", status, body)
		}
		t.Logf("auto-resumed and served in %s", time.Since(t0).Round(time.Millisecond))
		if got := key.getSandbox(t, sb.ID); got.Status != "running" {
			t.Fatalf("after the auto-resume the sandbox is %q", got.Status)
		}
	})

	t.Run("destroyed sandbox", func(t *testing.T) {
		key.must(t, http.MethodDelete, "/v1/sandboxes/"+sb.ID, nil, nil, http.StatusNoContent)
		if status, body := web.raw(t, http.MethodGet, "/", "", nil); status != http.StatusNotFound || errorCode(body) != "sandbox_not_found" {
			t.Fatalf("GET a destroyed sandbox = %d %s", status, body)
		}
	})
}

// testProxyWebSocket builds a static WebSocket echo server, uploads it,
// starts it in the guest and echoes 1,000 messages through the proxy.
func testProxyWebSocket(t *testing.T, key client, apiKey, cpAddr, id string) {
	bin := filepath.Join(t.TempDir(), "wsecho")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./testdata/wsecho")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build wsecho: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if status, b := upload(t, key, id, "/usr/local/bin/wsecho", data); status != http.StatusOK && status != http.StatusCreated {
		t.Fatalf("upload wsecho: %d %s", status, b)
	}
	if r := key.sh(t, id, "chmod +x /usr/local/bin/wsecho && (setsid /usr/local/bin/wsecho :8090 >/tmp/wsecho.log 2>&1 &)"); r.ExitCode != 0 {
		t.Fatalf("start wsecho: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DialContext: loopbackDialer(cpAddr)}}
	_, port, _ := net.SplitHostPort(cpAddr)
	// The server was just started: the agent retries the connection while
	// it binds.
	c, resp, err := websocket.Dial(ctx, "ws://"+proxyHost(id, 8090)+":"+port+"/", &websocket.DialOptions{
		HTTPClient: hc, HTTPHeader: http.Header{"X-API-Key": {apiKey}}})
	if err != nil {
		t.Fatalf("dial the echo server through the proxy: %v (%v)", err, resp)
	}
	defer c.CloseNow()
	t0 := time.Now()
	for i := range 1000 {
		msg := fmt.Sprintf("message %d %s", i, strings.Repeat("x", i%300))
		if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil || typ != websocket.MessageText || string(got) != msg {
			t.Fatalf("echo %d = %v %q %v", i, typ, got, err)
		}
	}
	t.Logf("1000 echoes in %s", time.Since(t0).Round(time.Millisecond))
	c.Close(websocket.StatusNormalClosure, "")
}

// testProxyDownload streams a 256 MiB file from httpd and checks its hash
// while sampling the dev process's resident memory (it runs both the
// control plane's and the agent's half of the proxy).
func testProxyDownload(t *testing.T, key client, dev devRun, id string) {
	const size = 256 << 20
	// A CGI script streams one random MiB 256 times: writing 256 MiB to
	// the guest's disk first is too slow under TCG.
	chunk := make([]byte, 1<<20)
	if _, err := rand.Read(chunk); err != nil {
		t.Fatal(err)
	}
	if status, b := upload(t, key, id, "/srv/chunk", chunk); status != http.StatusOK && status != http.StatusCreated {
		t.Fatalf("upload the chunk: %d %s", status, b)
	}
	if r := key.sh(t, id, `printf '#!/bin/sh\necho Content-Type: application/octet-stream\necho\nfor i in $(seq 256); do cat /srv/chunk; done\n' > /srv/cgi-bin/big && chmod +x /srv/cgi-bin/big`); r.ExitCode != 0 {
		t.Fatalf("write the CGI script: %+v", r)
	}
	sum := sha256.New()
	for range size / len(chunk) {
		sum.Write(chunk)
	}
	want := hex.EncodeToString(sum.Sum(nil))
	pid := dev.p.cmd.Process.Pid
	before := rssKiB(t, pid)
	peak := before
	done := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
				peak = max(peak, rssKiB(t, pid))
			}
		}
	}()
	req, err := http.NewRequest(http.MethodGet, dev.base+"/cgi-bin/big", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = proxyHost(id, 8080)
	req.Header.Set("X-API-Key", dev.apiKey)
	t0 := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	took := time.Since(t0)
	close(done)
	<-sampled
	if err != nil || resp.StatusCode != http.StatusOK || n != size {
		t.Fatalf("download: status %d, %d bytes, %v", resp.StatusCode, n, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("downloaded sha256 %s, the guest's %s", got, want)
	}
	growth := (peak - before) / 1024
	t.Logf("256 MiB in %s (%.1f MiB/s); wrenn dev RSS %d MiB before, peak %d MiB (+%d MiB)",
		took.Round(time.Millisecond), float64(size>>20)/took.Seconds(), before/1024, peak/1024, growth)
	if growth > 48 {
		t.Fatalf("the proxy's process grew by %d MiB while streaming 256 MiB: bodies are buffered", growth)
	}
}

// rssKiB is a process's resident set size.
func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Errorf("read status of %d: %v", pid, err)
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	return 0
}

// testPreviewURL opens a preview URL with a cookie jar, as a browser
// would: the token becomes a host-only cookie and the clean URL loads.
func testPreviewURL(t *testing.T, key client, cpAddr, id string) {
	var p struct {
		URL       string    `json:"url"`
		Port      int       `json:"port"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	key.must(t, http.MethodPost, "/v1/sandboxes/"+id+"/preview-urls", map[string]any{"port": 8080, "ttl_sec": 600}, &p, http.StatusCreated)
	_, port, _ := net.SplitHostPort(cpAddr)
	clean := "http://" + proxyHost(id, 8080) + ":" + port + "/"
	if !strings.HasPrefix(p.URL, clean+"?wrenn_preview=") || time.Until(p.ExpiresAt) < 9*time.Minute {
		t.Fatalf("preview URL %+v, want %s?wrenn_preview=... for 10 minutes", p, clean)
	}
	jar, _ := cookiejar.New(nil)
	var visited []string
	browser := &http.Client{Jar: jar, Transport: &http.Transport{DialContext: loopbackDialer(cpAddr)},
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			visited = append(visited, req.URL.String())
			return nil
		}}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := browser.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := get(p.URL); status != http.StatusOK || body != "hello-proxy\n" || len(visited) != 1 || visited[0] != clean {
		t.Fatalf("open the preview URL = %d %q after redirects %v", status, body, visited)
	}
	u, _ := http.NewRequest(http.MethodGet, clean, nil)
	cookies := jar.Cookies(u.URL)
	if len(cookies) != 1 || cookies[0].Name != "wrenn_preview" {
		t.Fatalf("cookies for %s: %v", clean, cookies)
	}
	if status, body := get(clean + "index.html"); status != http.StatusOK || body != "hello-proxy\n" {
		t.Fatalf("GET with the preview cookie = %d %q", status, body)
	}
	// The cookie is for that host only: another port asks for credentials.
	other := "http://" + proxyHost(id, 8081) + ":" + port + "/"
	if status, body := get(other); status != http.StatusUnauthorized {
		t.Fatalf("GET another port with the jar = %d %s", status, body)
	}
	// A token for port 8080 does not open 8081, and a forged one nothing.
	tok := strings.TrimPrefix(p.URL, clean+"?wrenn_preview=")
	for _, u := range []string{other + "?wrenn_preview=" + tok, clean + "?wrenn_preview=" + tok[:len(tok)-2] + "AA"} {
		if status, body := get(u); status != http.StatusUnauthorized || errorCode([]byte(body)) != "invalid_preview_token" {
			t.Fatalf("GET %s = %d %s", u, status, body)
		}
	}
	t.Run("in headless Chromium", func(t *testing.T) {
		chromium, node, webDir := requireBrowser(t)
		var fresh struct {
			URL string `json:"url"`
		}
		key.must(t, http.MethodPost, "/v1/sandboxes/"+id+"/preview-urls", map[string]any{"port": 8080}, &fresh, http.StatusCreated)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := browserCommand(t, ctx, node, webDir, "tests/preview.mjs", []string{"http://" + cpAddr},
			"PREVIEW_URL="+fresh.URL, "EXPECT_TEXT=hello-proxy", "CHROMIUM="+chromium)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "RESULT ") {
			t.Fatalf("preview in Chromium: %v\n%s", err, out)
		}
		t.Logf("%s", strings.TrimSpace(string(out)))
	})
	for _, bad := range []map[string]any{{"port": 49983}, {"port": 0}, {"port": 8080, "ttl_sec": 10}, {"port": 8080, "ttl_sec": 1 << 30}} {
		if status, body := key.do(t, http.MethodPost, "/v1/sandboxes/"+id+"/preview-urls", bad); status != http.StatusForbidden && status != http.StatusBadRequest {
			t.Fatalf("preview URL %v = %d %s", bad, status, body)
		}
	}
}

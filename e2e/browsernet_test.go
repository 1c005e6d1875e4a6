package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// browserCommand runs a headless-Chromium script (web/tests/*.mjs) with node
// in a network namespace of its own that holds only loopback. Chromium cuts
// every connection in flight (net::ERR_NETWORK_CHANGED) whenever an
// interface appears or goes in its namespace, and VMs (this test's and other
// packages') add and remove tap and veth devices all the time; a cut module
// import leaves a page that never recovers. In its own namespace nothing
// changes under it.
//
// The script's namespace reaches the loopback ports of reach (URLs served
// here) through one Unix socket each: web/tests/netns-bridge.mjs listens on
// the same port inside and forwards to the socket, and this side dials the
// port. The other way, a loopback port here (WRENN_NETNS_INBOUND_PORT)
// reaches the script's own server (its webhook receiver), which listens on
// a socket.
func browserCommand(t *testing.T, ctx context.Context, node, webDir, script string, reach []string, env ...string) *exec.Cmd {
	t.Helper()
	// Not t.TempDir: a Unix socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "wrenn-netns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	var ports []string
	for _, raw := range reach {
		u, err := url.Parse(raw)
		if err != nil || u.Hostname() != "127.0.0.1" || u.Port() == "" {
			t.Fatalf("browser bridge: %q is not a URL on 127.0.0.1 with a port", raw)
		}
		ln, err := net.Listen("unix", filepath.Join(dir, u.Port()+".sock"))
		if err != nil {
			t.Fatalf("browser bridge: %v", err)
		}
		serveForward(t, ln, func() (net.Conn, error) { return net.Dial("tcp", u.Host) })
		ports = append(ports, u.Port())
	}
	in, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("browser bridge: %v", err)
	}
	serveForward(t, in, func() (net.Conn, error) { return net.Dial("unix", filepath.Join(dir, "inbound.sock")) })
	inbound := in.Addr().(*net.TCPAddr).Port

	// unshare fails the run when the namespace cannot be made: the script
	// never runs in this namespace instead.
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", "sh", "-ec", `ip link set lo up; exec "$@"`, "sh", node, script)
	cmd.Dir = webDir
	cmd.Env = append(os.Environ(), "WRENN_NETNS_BRIDGE="+dir, "WRENN_NETNS_PORTS="+strings.Join(ports, ","),
		"WRENN_NETNS_INBOUND_PORT="+strconv.Itoa(inbound))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// serveForward accepts on ln until the test ends and splices each
// connection to one from dial.
func serveForward(t *testing.T, ln net.Listener, dial func() (net.Conn, error)) {
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Logf("browser bridge: accept: %v", err)
				}
				return
			}
			up, err := dial()
			if err != nil {
				t.Logf("browser bridge: %v", err)
				_ = c.Close()
				continue
			}
			go splice(c, up)
		}
	})
}

// splice copies both ways, passing each side's end of stream on (HTTP
// keep-alive, SSE and WebSocket all work through it), and closes both when
// both directions are done.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			_ = dst.Close()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
}

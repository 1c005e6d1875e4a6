// Package envdtest builds the real envd binary and runs it as a host
// process for tests (host mode: -root confines its paths to a directory).
// It is a test helper: it depends on the testing package.
package envdtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// Require fails the test under CI=true and skips it otherwise, with why.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	testenv.Require(t, ok, "%s", why)
}

// Build compiles cmd/envd into a temporary directory and returns its path.
func Build(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "envd")
	cmd := exec.Command("go", "build", "-o", out, "github.com/wrenn-dev/wrenn/cmd/envd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	b, err := cmd.CombinedOutput()
	Require(t, err == nil, fmt.Sprintf("build cmd/envd: %v\n%s", err, b))
	return out
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs bin on 127.0.0.1 with root as its host-mode root, waits until
// the port accepts connections and stops it at the end of the test. It
// returns "127.0.0.1:PORT".
func Start(t testing.TB, bin, root string) string {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(FreePort(t))
	cmd := exec.Command(bin, "-addr", addr, "-root", root)
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start envd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if ctx.Err() != nil {
			t.Fatalf("envd did not listen on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Package e2bcompat checks that the official E2B JS SDK (npm "e2b", pinned
// in package.json and package-lock.json) works unchanged against envd.
package e2bcompat

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/envd/envdtest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// sdkAddr is where the SDK's debug mode looks for envd (localhost:49983).
const sdkAddr = "127.0.0.1:49983"

func need(t *testing.T, what string, err error) {
	t.Helper()
	testenv.Require(t, err == nil, "%s: %v", what, err)
}

func TestE2BSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the E2B SDK run")
	}
	_, err := exec.LookPath("node")
	need(t, "node is required", err)
	_, err = exec.LookPath("npm")
	need(t, "npm is required", err)
	// The port is fixed by the SDK: say so clearly if something holds it.
	ln, err := net.Listen("tcp", sdkAddr)
	if err != nil {
		t.Fatalf("port %s (fixed by the E2B SDK debug mode) is busy: %v", sdkAddr, err)
	}
	ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if _, err := os.Stat(filepath.Join("node_modules", "e2b", "package.json")); err != nil {
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
		out, err := cmd.CombinedOutput()
		need(t, "npm ci (needs the npm registry)", wrap(err, out))
	}

	envdtest.Start(t, sdkAddr)
	cmd := exec.CommandContext(ctx, "node", "test.mjs")
	cmd.Env = append(os.Environ(), "E2B_DEBUG=true", "WRENN_E2B_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	t.Logf("node test.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("E2B SDK run failed: %v", err)
	}
}

type cmdErr struct {
	err error
	out []byte
}

func (c cmdErr) Error() string { return c.err.Error() + ": " + string(c.out) }

func wrap(err error, out []byte) error {
	if err == nil {
		return nil
	}
	return cmdErr{err, out}
}

// Package e2e tests the whole platform as a user runs it: the real `wrenn`
// binary (built once per test run), real PostgreSQL and Redis, real host
// agents booting QEMU microVMs, and HTTP on loopback only.
//
// The tests need root (network namespaces, nftables), qemu-system-x86_64
// and the images under WRENN_DIR (`make images`). Without them they skip
// with the reason, or fail under CI=true.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// binaries are the executables TestMain builds. Test binaries are
// processes: this is written once, before any test runs, and only read after.
var binaries struct {
	wrenn string
	err   error
}

func TestMain(m *testing.M) { os.Exit(runMain(m)) }

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "wrenn-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: make bin dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binaries.wrenn = filepath.Join(dir, "wrenn")
	// Built from this checkout so the tests exercise exactly this code.
	if out, err := exec.Command("go", "build", "-o", binaries.wrenn, "github.com/wrenn-dev/wrenn/cmd/wrenn").CombinedOutput(); err != nil {
		binaries.err = fmt.Errorf("go build ./cmd/wrenn: %v\n%s", err, out)
	}
	return testenv.Run(m)
}

// wrennBin returns the built binary, failing the test when the build failed
// (a build failure is never a reason to skip).
func wrennBin(t testing.TB) string {
	t.Helper()
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return binaries.wrenn
}

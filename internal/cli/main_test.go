package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// builtBinary is `wrenn` built from this checkout once per test run, for the
// tests that drive the binary as a user does.
var builtBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "wrenn-cli-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "wrenn")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/wrenn-dev/wrenn/cmd/wrenn").CombinedOutput(); err != nil {
		return "", &buildError{err: err, out: string(out)}
	}
	return bin, nil
})

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build ./cmd/wrenn: " + e.err.Error() + "\n" + e.out }

func wrennBinary(t testing.TB) string {
	t.Helper()
	bin, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

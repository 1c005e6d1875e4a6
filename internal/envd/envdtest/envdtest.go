// Package envdtest builds the envd binary and runs it as a subprocess on a
// loopback port, for tests and benchmarks that need a real, separate envd
// (host mode: "-root DIR" confines its paths to a directory). The binary is
// built once per test binary and removed by Run.
package envdtest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// moduleRoot finds the directory holding go.mod above this file.
func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("no caller information")
	}
	dir := filepath.Dir(file)
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("go.mod not found above %s", file)
		}
		dir = parent
	}
}

// Build compiles ./cmd/envd statically once per test binary and returns its path.
func Build(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "envd-build-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "envd")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/envd")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/envd: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return buildPath
}

// Run runs the package's tests and removes the binary Build made. A
// package using Build opts in with
//
//	func TestMain(m *testing.M) { os.Exit(envdtest.Run(m)) }
func Run(m *testing.M) int {
	code := m.Run()
	RemoveBuild()
	return code
}

// RemoveBuild removes the binary Build made, for a TestMain that runs its
// tests through another runner (such as testenv.Run).
func RemoveBuild() {
	if buildPath != "" {
		os.RemoveAll(filepath.Dir(buildPath))
	}
}

// Envd is a running envd subprocess.
type Envd struct {
	Cmd  *exec.Cmd
	Addr string // host:port
	URL  string
	// Started is how long it took from exec to the listening log line.
	Started time.Duration

	stopOnce sync.Once
}

var listenRe = regexp.MustCompile(`envd listening" addr=(\S+)`)

// Start runs envd with -addr addr (use 127.0.0.1:0 for a free port) and
// waits until it listens. It is stopped when the test ends.
func Start(tb testing.TB, addr string, args ...string) *Envd {
	tb.Helper()
	bin := Build(tb)
	cmd := exec.Command(bin, append([]string{"-addr", addr}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start envd: %v", err)
	}
	e := &Envd{Cmd: cmd}
	tb.Cleanup(e.Stop)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listenRe.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
			if testing.Verbose() {
				fmt.Fprintln(os.Stderr, "envd:", sc.Text())
			}
		}
	}()
	select {
	case a := <-found:
		e.Addr, e.URL, e.Started = a, "http://"+a, time.Since(t0)
		return e
	case <-time.After(20 * time.Second):
		tb.Fatal("envd did not start listening within 20s")
	}
	return nil
}

// Stop interrupts envd and waits for it (killing it after 10 s). It is
// safe to call more than once.
func (e *Envd) Stop() {
	e.stopOnce.Do(func() {
		e.Cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { e.Cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			e.Cmd.Process.Kill()
			<-done
		}
	})
}

// RSS returns the resident set size of the process in bytes.
func (e *Envd) RSS() (int64, error) { return RSS(e.Cmd.Process.Pid) }

// RSS reads VmRSS of pid from /proc.
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, err := strconv.ParseInt(f[1], 10, 64)
				return kb * 1024, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// PeakRSS samples RSS every interval until ctx ends and returns the maximum.
func (e *Envd) PeakRSS(ctx context.Context, interval time.Duration) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if r, err := e.RSS(); err == nil && r > peak {
				peak = r
			}
			select {
			case <-ctx.Done():
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

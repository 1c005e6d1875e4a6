package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// startFromDoomedThread starts a child with a parent-death signal from a
// goroutine whose OS thread then ends, as a namespace helper's would.
func startFromDoomedThread(t *testing.T, start func(*exec.Cmd) (<-chan error, error)) (*exec.Cmd, <-chan error) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	type res struct {
		done <-chan error
		err  error
	}
	got := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // exits locked: the runtime ends this thread
		done, err := start(cmd)
		got <- res{done, err}
	}()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	return cmd, r.done
}

// A plain exec.Cmd.Start from such a goroutine dies with the thread in
// nearly every run (not when the goroutine lands on the main thread, which Go
// parks instead of ending), so this fails if Start forks on the caller's
// thread.
func TestChildSurvivesTheStartingThread(t *testing.T) {
	cmd, done := startFromDoomedThread(t, Start)
	defer func() { _ = cmd.Process.Kill(); <-done }()
	select {
	case err := <-done:
		done = closedWith(err)
		t.Fatalf("the child died with the thread that started it: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
}

func closedWith(err error) <-chan error {
	c := make(chan error, 1)
	c <- err
	return c
}

func TestStartError(t *testing.T) {
	if _, err := Start(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

func TestDoneReportsExit(t *testing.T) {
	done, err := Start(exec.Command("sh", "-c", "exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if err := <-done; err == nil || !asExit(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("wait = %v, want exit status 3", err)
	}
}

func asExit(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*target = e
	return ok
}

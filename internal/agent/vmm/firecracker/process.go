package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/agent/nsexec"
)

// proc is a host process the driver watches: either a child it started
// (reaped with Wait) or a process adopted from an earlier agent (watched
// through a pidfd; its parent is now init, which reaps it).
type proc struct {
	pid       int
	startTime uint64
	done      chan struct{}

	mu      sync.Mutex
	exitErr error

	// exactly one of cmd / pidfd is set
	cmd   *exec.Cmd
	pidfd int
}

// spawnSpec describes a process to start.
type spawnSpec struct {
	path    string
	args    []string
	env     []string // appended to the agent's environment
	dir     string
	netns   string // path of a network namespace, "" for the agent's
	logPath string // stdout+stderr go here (a file, so the child outlives the agent)
}

// spawn starts the process, in its network namespace if one is given, in
// its own process group (a Ctrl-C to the agent must not kill the VMs).
func spawn(spec spawnSpec) (*proc, error) {
	logf, err := os.OpenFile(spec.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log %s: %w", spec.logPath, err)
	}
	defer logf.Close() // the child holds its own copy
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", os.DevNull, err)
	}
	defer devnull.Close()

	cmd := exec.Command(spec.path, spec.args...)
	cmd.Dir = spec.dir
	cmd.Env = append(os.Environ(), spec.env...)
	cmd.Stdin = devnull
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}

	if err := nsexec.Start(spec.netns, cmd); err != nil {
		return nil, err
	}
	p := &proc{pid: cmd.Process.Pid, cmd: cmd, pidfd: -1, done: make(chan struct{})}
	if st, err := readProcStat(p.pid); err == nil {
		p.startTime = st.StartTime
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// adoptProc watches a process started by an earlier agent. startTime (from
// /proc/PID/stat) guards against the PID having been reused.
func adoptProc(pid int, startTime uint64) (*proc, error) {
	if pid <= 1 {
		return nil, fmt.Errorf("invalid pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	// Check identity after opening the pidfd: from here on the pidfd
	// refers to this very process even if the PID is recycled.
	st, err := readProcStat(pid)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("read process %d: %w", pid, err)
	}
	if startTime != 0 && st.StartTime != startTime {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d is not the recorded one (start time %d, recorded %d)", pid, st.StartTime, startTime)
	}
	if st.State == 'Z' || st.State == 'X' {
		unix.Close(fd)
		return nil, fmt.Errorf("process %d has exited", pid)
	}
	p := &proc{pid: pid, startTime: st.StartTime, pidfd: fd, done: make(chan struct{})}
	go func() {
		// A pidfd polls readable once the process has exited.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			_, err := unix.Poll(fds, -1)
			if err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	var err error
	if p.cmd != nil {
		err = p.cmd.Process.Signal(sig)
		if errors.Is(err, os.ErrProcessDone) {
			err = nil
		}
	} else {
		p.mu.Lock()
		if p.pidfd >= 0 {
			err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
		}
		p.mu.Unlock()
		if errors.Is(err, unix.ESRCH) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// kill sends SIGKILL and waits until the process is gone (reaped, for a
// child). It gives up when ctx ends.
func (p *proc) kill(ctx context.Context) error {
	if err := p.signal(syscall.SIGKILL); err != nil {
		return err
	}
	return p.wait(ctx)
}

func (p *proc) wait(ctx context.Context) error {
	select {
	case <-p.done:
		p.release()
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for pid %d to exit: %w", p.pid, ctx.Err())
	}
}

// waitFor waits up to d for the process to exit on its own.
func (p *proc) waitFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

func (p *proc) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

func (p *proc) exitError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Package reaper starts child processes and delivers their exit statuses.
//
// Two implementations share one interface. Direct waits for each child on its
// own (host mode: envd must not reap children it did not start, e.g. those of
// a test binary it runs in). Subreaper runs a single SIGCHLD-driven
// wait4(-1) loop (PID 1 mode: orphans are reparented to envd and must be
// reaped too) and hands each exit status to whoever started that pid, so the
// reaper never steals a status envd itself waits for.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
)

// Exit is the final status of a child process.
type Exit struct {
	Status syscall.WaitStatus
	// Err is set when the status could not be obtained.
	Err error
}

// Reaper starts commands and reports how they ended.
type Reaper interface {
	// Start starts cmd (which must not have been started) and returns a
	// channel that receives exactly one Exit when the process ends. The
	// caller must not call cmd.Wait. Stdin, Stdout and Stderr of cmd should
	// be *os.File (or nil) so that os/exec starts no copying goroutines.
	Start(cmd *exec.Cmd) (<-chan Exit, error)
}

// Direct waits for each child individually.
type Direct struct{}

// NewDirect returns a reaper for host mode.
func NewDirect() *Direct { return &Direct{} }

// Start implements Reaper.
func (Direct) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Exit, 1)
	go func() {
		st, err := cmd.Process.Wait()
		if err != nil {
			ch <- Exit{Err: fmt.Errorf("wait pid %d: %w", cmd.Process.Pid, err)}
			return
		}
		ws, _ := st.Sys().(syscall.WaitStatus)
		ch <- Exit{Status: ws}
	}()
	return ch, nil
}

// Subreaper reaps every child of the process (PID 1 mode).
type Subreaper struct {
	// mu is held while starting a child and while reaping, so a child can
	// never be reaped before its waiter is registered.
	mu      sync.Mutex
	waiters map[int]chan Exit
	sigs    chan os.Signal
	// Orphans counts reaped processes nobody waited for (reparented ones).
	orphans uint64
}

// NewSubreaper returns a Subreaper; call Run to start reaping.
func NewSubreaper() *Subreaper {
	s := &Subreaper{waiters: make(map[int]chan Exit), sigs: make(chan os.Signal, 1)}
	// Subscribe now so no SIGCHLD sent before Run is lost.
	signal.Notify(s.sigs, syscall.SIGCHLD)
	return s
}

// Start implements Reaper.
func (s *Subreaper) Start(cmd *exec.Cmd) (<-chan Exit, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := make(chan Exit, 1)
	s.waiters[cmd.Process.Pid] = ch
	return ch, nil
}

// Run reaps children until ctx is done.
func (s *Subreaper) Run(ctx context.Context) {
	defer signal.Stop(s.sigs)
	s.reapAll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.sigs:
			s.reapAll()
		}
	}
}

// Orphans returns how many processes were reaped without a waiter.
func (s *Subreaper) Orphans() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.orphans
}

func (s *Subreaper) reapAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return // ECHILD: no children; 0: none exited yet
		}
		if ch, ok := s.waiters[pid]; ok {
			delete(s.waiters, pid)
			ch <- Exit{Status: ws}
			continue
		}
		s.orphans++
	}
}

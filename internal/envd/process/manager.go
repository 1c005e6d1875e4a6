// Package process runs and tracks the processes clients start through envd.
package process

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	"github.com/wrenn-dev/wrenn/internal/envd/reaper"
	"github.com/wrenn-dev/wrenn/internal/envd/users"
)

// drainTimeout bounds how long envd waits, after a process exited, for the
// end of its output: a background child that inherited stdout could hold it
// open forever.
const drainTimeout = 2 * time.Second

// Errors the RPC layer maps to status codes.
var (
	ErrNotFound    = errors.New("process not found")
	ErrTagInUse    = errors.New("tag already used by a running process")
	ErrInvalidSize = errors.New("pty size must be at least 1x1 and at most 65535x65535")
)

// StartOptions describe a process to start. Paths are host paths.
type StartOptions struct {
	Config Config
	// Dir is the resolved working directory.
	Dir  string
	User *users.User
	// BaseEnv is applied before Config.Envs (defaults from /init).
	BaseEnv map[string]string
	Tag     string
	// PTY, when not nil, runs the process in a terminal of this size.
	PTY   *Winsize
	Stdin bool
}

// Winsize is a terminal size.
type Winsize struct{ Cols, Rows uint32 }

// Manager owns the running processes.
type Manager struct {
	log    *slog.Logger
	reaper reaper.Reaper
	// resetOOMScore makes children killable by the OOM killer again when
	// envd shields itself (PID 1 mode): oom_score_adj is inherited.
	resetOOMScore bool

	mu    sync.Mutex
	procs map[uint32]*Proc
}

// Option configures a Manager.
type Option func(*Manager)

// WithOOMScoreReset sets each child's oom_score_adj back to 0 right after
// it starts (use when envd lowered its own).
func WithOOMScoreReset() Option { return func(m *Manager) { m.resetOOMScore = true } }

// NewManager returns a Manager that starts processes through r.
func NewManager(log *slog.Logger, r reaper.Reaper, opts ...Option) *Manager {
	m := &Manager{log: log, reaper: r, procs: make(map[uint32]*Proc)}
	for _, o := range opts {
		o(m)
	}
	return m
}

// Start starts a process. Its events are published from the moment it
// starts; subscribe before it can produce output with the returned sub.
func (m *Manager) Start(o StartOptions) (*Proc, *Sub, error) {
	if o.PTY != nil && (o.PTY.Cols == 0 || o.PTY.Rows == 0 || o.PTY.Cols > 65535 || o.PTY.Rows > 65535) {
		return nil, nil, ErrInvalidSize
	}
	if o.Config.Cmd == "" {
		return nil, nil, errors.New("cmd is empty")
	}
	if o.Tag != "" {
		m.mu.Lock()
		for _, p := range m.procs {
			if p.Tag == o.Tag {
				m.mu.Unlock()
				return nil, nil, fmt.Errorf("%w: %q", ErrTagInUse, o.Tag)
			}
		}
		m.mu.Unlock()
	}
	path, err := exec.LookPath(o.Config.Cmd)
	if err != nil {
		return nil, nil, fmt.Errorf("find %q: %w", o.Config.Cmd, err)
	}
	cmd := &exec.Cmd{Path: path, Args: append([]string{o.Config.Cmd}, o.Config.Args...), Dir: o.Dir}
	cmd.Env = buildEnv(o)
	attr := &syscall.SysProcAttr{}
	if o.User != nil && !o.User.IsSelf() {
		attr.Credential = &syscall.Credential{Uid: o.User.UID, Gid: o.User.GID, Groups: o.User.Groups}
	}
	cmd.SysProcAttr = attr

	p := &Proc{Tag: o.Tag, Config: o.Config, subs: make(map[*Sub]struct{}), done: make(chan struct{})}
	// Files to close in envd once the child has its copies.
	var childEnds []*os.File
	var readers []struct {
		f    *os.File
		kind Kind
	}
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	if o.PTY != nil {
		ptmx, tty, err := pty.Open()
		if err != nil {
			return nil, nil, fmt.Errorf("open pty: %w", err)
		}
		if err := pty.Setsize(ptmx, &pty.Winsize{Cols: uint16(o.PTY.Cols), Rows: uint16(o.PTY.Rows)}); err != nil {
			closeAll(ptmx, tty)
			return nil, nil, fmt.Errorf("size pty: %w", err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		// A new session with the terminal as controlling tty; the session
		// is also a new process group.
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		p.ptmx = ptmx
		childEnds = append(childEnds, tty)
		readers = append(readers, struct {
			f    *os.File
			kind Kind
		}{ptmx, PTY})
	} else {
		attr.Setpgid = true
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, nil, fmt.Errorf("stdout pipe: %w", err)
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			closeAll(outR, outW)
			return nil, nil, fmt.Errorf("stderr pipe: %w", err)
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		childEnds = append(childEnds, outW, errW)
		readers = append(readers, struct {
			f    *os.File
			kind Kind
		}{outR, Stdout}, struct {
			f    *os.File
			kind Kind
		}{errR, Stderr})
		if o.Stdin {
			inR, inW, err := os.Pipe()
			if err != nil {
				closeAll(outR, outW, errR, errW)
				return nil, nil, fmt.Errorf("stdin pipe: %w", err)
			}
			cmd.Stdin = inR
			p.stdin = inW
			childEnds = append(childEnds, inR)
		}
	}
	sub, _ := p.Subscribe(false)

	exitc, err := m.reaper.Start(cmd)
	closeAll(childEnds...)
	if err != nil {
		for _, r := range readers {
			r.f.Close()
		}
		closeAll(p.stdin)
		return nil, nil, fmt.Errorf("start %q: %w", o.Config.Cmd, err)
	}
	p.PID = uint32(cmd.Process.Pid)
	if m.resetOOMScore {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", p.PID), []byte("0"), 0); err != nil {
			m.log.Warn("reset oom_score_adj", "pid", p.PID, "err", err)
		}
	}
	m.mu.Lock()
	m.procs[p.PID] = p
	m.mu.Unlock()

	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go p.pump(r.f, r.kind, &wg)
	}
	go m.wait(p, cmd.Process, exitc, &wg, readers)
	return p, sub, nil
}

func (m *Manager) wait(p *Proc, proc *os.Process, exitc <-chan reaper.Exit, wg *sync.WaitGroup, readers []struct {
	f    *os.File
	kind Kind
}) {
	ex := <-exitc
	proc.Release() // frees the pidfd os/exec may hold
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
		m.log.Warn("process output still open after exit; closing it", "pid", p.PID)
		for _, r := range readers {
			r.f.Close()
		}
		<-drained
	}
	for _, r := range readers {
		r.f.Close()
	}
	p.inMu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.inMu.Unlock()

	m.mu.Lock()
	delete(m.procs, p.PID)
	m.mu.Unlock()
	p.publish(Event{Kind: End, End: endInfo(ex)})
	close(p.done)
}

func endInfo(ex reaper.Exit) *EndInfo {
	if ex.Err != nil {
		return &EndInfo{ExitCode: -1, Status: "unknown", Error: ex.Err.Error()}
	}
	ws := ex.Status
	switch {
	case ws.Exited():
		return &EndInfo{ExitCode: int32(ws.ExitStatus()), Exited: true, Status: fmt.Sprintf("exit status %d", ws.ExitStatus())}
	case ws.Signaled():
		return &EndInfo{ExitCode: -1, Status: "signal: " + ws.Signal().String()}
	default:
		return &EndInfo{ExitCode: -1, Status: fmt.Sprintf("wait status %d", int(ws))}
	}
}

func buildEnv(o StartOptions) []string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v
		}
	}
	if env["PATH"] == "" {
		env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	if o.User != nil {
		env["HOME"] = o.User.Home
		env["USER"] = o.User.Name
		env["LOGNAME"] = o.User.Name
	}
	if o.PTY != nil && (env["TERM"] == "" || env["TERM"] == "linux") {
		env["TERM"] = "xterm-256color"
	}
	maps.Copy(env, o.BaseEnv)
	maps.Copy(env, o.Config.Envs)
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// Get finds a running process by pid (when tag is "") or tag.
func (m *Manager) Get(pid uint32, tag string) (*Proc, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tag == "" {
		if p, ok := m.procs[pid]; ok {
			return p, nil
		}
		return nil, fmt.Errorf("%w: pid %d", ErrNotFound, pid)
	}
	for _, p := range m.procs {
		if p.Tag == tag {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w: tag %q", ErrNotFound, tag)
}

// List returns the running processes ordered by pid.
func (m *Manager) List() []*Proc {
	m.mu.Lock()
	ps := slices.Collect(maps.Values(m.procs))
	m.mu.Unlock()
	sort.Slice(ps, func(i, j int) bool { return ps[i].PID < ps[j].PID })
	return ps
}

// SignalAll sends sig to every running process group.
func (m *Manager) SignalAll(sig syscall.Signal) {
	for _, p := range m.List() {
		p.Signal(sig)
	}
}

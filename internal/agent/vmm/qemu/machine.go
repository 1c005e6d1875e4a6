package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/agent/fileclone"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// Snapshot file names inside the snapshot directory.
const (
	SnapshotStateName  = "state"
	SnapshotMemoryName = "memory"
	SnapshotDiskName   = "disk"
	snapshotMetaName   = "snapshot.json"
)

// Machine is one QEMU process.
type Machine struct {
	d   *Driver
	cfg vmm.Config
	st  state
	pid int
	// proc is set for machines this process started (its children).
	proc *os.Process
	// pidfd is set for adopted machines (not our child); -1 otherwise,
	// pidfdClosed once the waiter has seen the exit. Guarded by pidMu.
	pidMu sync.Mutex
	pidfd int
	// wakeW ends waitPidfd early (adoption failed half way).
	wakeW int
	done  chan struct{}

	mu      sync.Mutex // serialises lifecycle operations
	qmp     *qmpClient // open only during an operation (see openQMP); guarded by mu
	paused  bool
	stopped bool
}

var _ vmm.Machine = (*Machine)(nil)

func newMachine(d *Driver, cfg vmm.Config, st state) *Machine {
	return &Machine{d: d, cfg: cfg, st: st, pidfd: -1, wakeW: -1, done: make(chan struct{})}
}

// PID implements vmm.Machine.
func (m *Machine) PID() int { return m.pid }

// Done implements vmm.Machine.
func (m *Machine) Done() <-chan struct{} { return m.done }

// RunDir is where the machine's files are.
func (m *Machine) RunDir() string { return m.cfg.RunDir }

// SerialLog is the guest console log.
func (m *Machine) SerialLog() string { return filepath.Join(m.cfg.RunDir, SerialLogName) }

func (m *Machine) alive() bool {
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// running is called with mu held.
func (m *Machine) running() error {
	if m.stopped || !m.alive() {
		return vmm.ErrNotRunning
	}
	return nil
}

// openQMP connects for one operation; releaseQMP must follow. QEMU serves
// one QMP client at a time, so no handle keeps the connection between
// operations: a restarted agent (or a second handle) can always connect.
// Called with mu held.
func (m *Machine) openQMP(ctx context.Context) error {
	if m.qmp != nil {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, m.d.opts.BootTimeout)
	defer cancel()
	c, err := dialQMP(dctx, filepath.Join(m.cfg.RunDir, qmpSocketName), m.alive)
	if err != nil {
		if !m.alive() {
			return vmm.ErrNotRunning
		}
		return err
	}
	m.qmp = c
	return nil
}

func (m *Machine) releaseQMP() {
	if m.qmp != nil {
		_ = m.qmp.close()
		m.qmp = nil
	}
}

// Pause implements vmm.Machine (QMP stop).
func (m *Machine) Pause(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.running(); err != nil {
		return fmt.Errorf("pause %s: %w", m.cfg.ID, err)
	}
	if err := m.openQMP(ctx); err != nil {
		return fmt.Errorf("pause %s: %w", m.cfg.ID, err)
	}
	defer m.releaseQMP()
	if err := m.qmp.execute(ctx, "stop", nil, nil); err != nil {
		return fmt.Errorf("pause %s: %w", m.cfg.ID, err)
	}
	m.paused = true
	return nil
}

// Resume implements vmm.Machine (QMP cont). The guest clock stood still
// while paused: the caller should set it (envd /init).
func (m *Machine) Resume(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.running(); err != nil {
		return fmt.Errorf("resume %s: %w", m.cfg.ID, err)
	}
	if err := m.openQMP(ctx); err != nil {
		return fmt.Errorf("resume %s: %w", m.cfg.ID, err)
	}
	defer m.releaseQMP()
	if err := m.qmp.execute(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume %s: %w", m.cfg.ID, err)
	}
	m.paused = false
	return nil
}

// Snapshot implements vmm.Machine: the machine is paused (if it was not),
// its device state streamed to dir/state, its RAM file and disk copied
// sparsely. It stays paused.
func (m *Machine) Snapshot(ctx context.Context, dir string) (vmm.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	snap, err := m.snapshot(ctx, dir)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("snapshot %s: %w", m.cfg.ID, err)
	}
	return snap, nil
}

func (m *Machine) snapshot(ctx context.Context, dir string) (vmm.Snapshot, error) {
	if err := m.running(); err != nil {
		return vmm.Snapshot{}, err
	}
	if !filepath.IsAbs(dir) {
		return vmm.Snapshot{}, fmt.Errorf("snapshot dir %q must be absolute", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("create snapshot dir: %w", err)
	}
	snap := vmm.Snapshot{
		Dir: dir, StatePath: filepath.Join(dir, SnapshotStateName),
		DiskPath: filepath.Join(dir, SnapshotDiskName+"."+m.cfg.DiskFormat), DiskFormat: m.cfg.DiskFormat,
		VCPUs: m.cfg.VCPUs, MemoryMB: m.cfg.MemoryMB, Driver: DriverName,
	}
	if err := checkShellSafe(snap.StatePath); err != nil {
		return vmm.Snapshot{}, err
	}
	if err := m.openQMP(ctx); err != nil {
		return vmm.Snapshot{}, err
	}
	defer m.releaseQMP()
	if !m.paused {
		if err := m.qmp.execute(ctx, "stop", nil, nil); err != nil {
			return vmm.Snapshot{}, err
		}
		m.paused = true
	}
	_ = os.Remove(snap.StatePath)
	if err := m.qmp.execute(ctx, "migrate", map[string]any{"uri": "exec:cat > '" + snap.StatePath + "'"}, nil); err != nil {
		return vmm.Snapshot{}, err
	}
	if err := m.waitMigration(ctx); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("save state: %w", err)
	}
	// The guest is stopped and its block devices flushed: copies are consistent.
	if m.st.MemoryShared {
		snap.MemoryPath = filepath.Join(dir, SnapshotMemoryName)
		if _, err := fileclone.Atomic(ctx, m.st.MemoryPath, snap.MemoryPath, 0o600); err != nil {
			return vmm.Snapshot{}, fmt.Errorf("copy guest memory: %w", err)
		}
	} // else RAM is a private mapping and went into the state stream
	if _, err := fileclone.Atomic(ctx, m.cfg.DiskPath, snap.DiskPath, 0o600); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("copy disk: %w", err)
	}
	data, _ := json.MarshalIndent(snap, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(dir, snapshotMetaName), data, 0o600); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("write snapshot metadata: %w", err)
	}
	return snap, nil
}

// ReadSnapshot loads the description Snapshot wrote into dir.
func ReadSnapshot(dir string) (vmm.Snapshot, error) {
	data, err := os.ReadFile(filepath.Join(dir, snapshotMetaName))
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("%w: %v", vmm.ErrSnapshotInvalid, err)
	}
	var s vmm.Snapshot
	if err := json.Unmarshal(data, &s); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("%w: %v", vmm.ErrSnapshotInvalid, err)
	}
	if s.Driver != DriverName {
		return vmm.Snapshot{}, fmt.Errorf("%w: driver %q", vmm.ErrSnapshotInvalid, s.Driver)
	}
	return s, nil
}

type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

// waitMigration polls query-migrate until the outgoing or incoming
// migration has completed.
func (m *Machine) waitMigration(ctx context.Context) error {
	delay := time.Millisecond
	for {
		var info migrationInfo
		if err := m.qmp.execute(ctx, "query-migrate", nil, &info); err != nil {
			return err
		}
		switch info.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", info.Status, info.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration %q: %w", info.Status, ctx.Err())
		case <-m.done:
			return vmm.ErrNotRunning
		case <-time.After(delay):
		}
		if delay < 10*time.Millisecond {
			delay *= 2
		}
	}
}

// incoming loads a saved state into a QEMU started with -incoming defer
// and runs it.
func (m *Machine) incoming(ctx context.Context, statePath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.openQMP(ctx); err != nil {
		return err
	}
	defer m.releaseQMP()
	if err := m.qmp.execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat '" + statePath + "'"}, nil); err != nil {
		return err
	}
	if err := m.waitMigration(ctx); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	var status struct {
		Status string `json:"status"`
	}
	if err := m.qmp.execute(ctx, "query-status", nil, &status); err != nil {
		return err
	}
	if status.Status != "running" {
		if err := m.qmp.execute(ctx, "cont", nil, nil); err != nil {
			return err
		}
	}
	m.paused = false
	return nil
}

// Stop implements vmm.Machine: QMP quit, SIGKILL after the grace period,
// then the driver's files in RunDir are removed (logs stay). Idempotent.
func (m *Machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	if m.alive() {
		qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		if m.openQMP(qctx) == nil {
			_ = m.qmp.execute(qctx, "quit", nil, nil)
			m.releaseQMP()
		}
		cancel()
		grace := time.NewTimer(m.d.opts.StopGrace)
		defer grace.Stop()
		select {
		case <-m.done:
		case <-grace.C:
		case <-ctx.Done():
		}
		if m.alive() {
			if err := m.kill(); err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("stop %s: kill pid %d: %w", m.cfg.ID, m.pid, err)
			}
			select {
			case <-m.done:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("stop %s: pid %d survived SIGKILL", m.cfg.ID, m.pid)
			}
		}
	}
	m.cleanup()
	m.stopped = true
	return nil
}

// kill sends SIGKILL to exactly our process: through os.Process for a
// child, through the pidfd for an adopted one, never to a reused PID.
func (m *Machine) kill() error {
	if m.proc != nil {
		if err := m.proc.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return err
		}
		return nil
	}
	m.pidMu.Lock()
	defer m.pidMu.Unlock()
	if m.pidfd < 0 {
		return nil // exited and reaped
	}
	return unix.PidfdSendSignal(m.pidfd, unix.SIGKILL, nil, 0)
}

func (m *Machine) cleanup() {
	m.releaseQMP()
	if m.wakeW >= 0 { // the waiter has already seen the exit
		_ = syscall.Close(m.wakeW)
		m.wakeW = -1
	}
	for _, n := range []string{qmpSocketName, pidFileName, stateFileName} {
		_ = os.Remove(filepath.Join(m.cfg.RunDir, n))
	}
	if m.st.MemoryShared && m.st.MemoryPath != "" {
		_ = os.Remove(m.st.MemoryPath)
	}
}

// Detach gives the machine up without stopping it (an agent handing over
// to its successor): this handle becomes unusable, except Done, and Stop on
// it does nothing. Not needed for Adopt to work: no handle holds the QMP
// connection between operations.
func (m *Machine) Detach() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releaseQMP()
	m.stopped = true
}

// Metrics implements vmm.Machine from /proc/PID/stat and status.
func (m *Machine) Metrics(ctx context.Context) (vmm.Metrics, error) {
	if !m.alive() {
		return vmm.Metrics{}, vmm.ErrNotRunning
	}
	ps, err := readProcStat(m.pid)
	if err != nil || ps.StartTime != m.st.StartTime {
		return vmm.Metrics{}, fmt.Errorf("metrics %s: %w", m.cfg.ID, vmm.ErrNotRunning)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.pid))
	if err != nil {
		return vmm.Metrics{}, fmt.Errorf("metrics %s: %w", m.cfg.ID, vmm.ErrNotRunning)
	}
	rss, err := parseVmRSS(status)
	if err != nil {
		return vmm.Metrics{}, fmt.Errorf("metrics %s: %w", m.cfg.ID, err)
	}
	return vmm.Metrics{CPUTime: cpuTime(ps.UTime + ps.STime), RSSBytes: rss}, nil
}

func (m *Machine) writeState() error {
	data, err := json.MarshalIndent(m.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode machine state: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(m.cfg.RunDir, stateFileName), data, 0o600); err != nil {
		return fmt.Errorf("write machine state: %w", err)
	}
	return nil
}

// waitPidfd closes done when an adopted (non-child) process exits, or
// returns without closing it when wakeR becomes readable.
func (m *Machine) waitPidfd(wakeR int) {
	defer syscall.Close(wakeR)
	fds := []unix.PollFd{{Fd: int32(m.pidfd), Events: unix.POLLIN}, {Fd: int32(wakeR), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err != nil && errors.Is(err, syscall.EINTR) {
			continue
		}
		exited := err != nil || fds[0].Revents != 0
		m.pidMu.Lock()
		_ = syscall.Close(m.pidfd)
		m.pidfd = -1
		m.pidMu.Unlock()
		if exited {
			close(m.done)
		}
		return
	}
}

// stopWaiter ends waitPidfd for an adoption that failed.
func (m *Machine) stopWaiter() {
	if m.wakeW >= 0 {
		_, _ = syscall.Write(m.wakeW, []byte{1})
		_ = syscall.Close(m.wakeW)
		m.wakeW = -1
	}
}

func pidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return fd, nil
}

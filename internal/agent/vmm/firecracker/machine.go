package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// machine is one firecracker process and its microVM.
type machine struct {
	d       *Driver
	cfg     vmm.Config
	proc    *proc
	uffd    *proc // page-fault handler of a Uffd restore, else nil
	api     *apiClient
	log     *slog.Logger
	version string

	// mu serialises state changes (pause, resume, snapshot, stop).
	mu      sync.Mutex
	paused  bool
	stopped bool
}

var _ vmm.Machine = (*machine)(nil)

// PID implements vmm.Machine.
func (m *machine) PID() int { return m.proc.pid }

// Done implements vmm.Machine.
func (m *machine) Done() <-chan struct{} { return m.proc.done }

func (m *machine) setPaused(p bool) {
	m.mu.Lock()
	m.paused = p
	m.mu.Unlock()
}

// call is one API request bounded by APITimeout; if the process is gone
// the error says so (vmm.ErrNotRunning) rather than "connection refused".
func (m *machine) call(ctx context.Context, method, path string, body, out any) error {
	if m.proc.exited() {
		return fmt.Errorf("firecracker API %s %s: %w", method, path, vmm.ErrNotRunning)
	}
	ctx, cancel := context.WithTimeout(ctx, m.d.opts.APITimeout)
	defer cancel()
	err := m.api.do(ctx, method, path, body, out)
	if err != nil && !isAPIError(err) && m.proc.exited() {
		return fmt.Errorf("%v: %w", err, vmm.ErrNotRunning)
	}
	return err
}

// waitAPI waits until the new process answers GET /version, failing early
// if it exits (bad binary, bad arguments, socket in use...).
func (m *machine) waitAPI(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.d.opts.APITimeout)
	defer cancel()
	sock := m.api.sock
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		if _, err := os.Stat(sock); err == nil {
			var v struct {
				Version string `json:"firecracker_version"`
			}
			reqCtx, rc := context.WithTimeout(ctx, time.Second)
			lastErr = m.api.do(reqCtx, "GET", "/version", nil, &v)
			rc()
			if lastErr == nil {
				m.version = v.Version
				return nil
			}
		}
		select {
		case <-m.proc.done:
			return fmt.Errorf("firecracker exited before its API came up (%v); see %s: %w",
				m.proc.exitError(), filepath.Join(m.cfg.RunDir, logName), vmm.ErrNotRunning)
		case <-ctx.Done():
			return fmt.Errorf("firecracker API socket %s not answering (last error: %v): %w", sock, lastErr, ctx.Err())
		case <-tick.C:
		}
	}
}

// abort kills a machine that failed to start and removes its run files.
func (m *machine) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.proc.kill(ctx); err != nil {
		m.log.Error("kill failed firecracker", "err", err)
	}
	killQuietly(m.uffd)
	m.api.close()
	m.removeRunFiles()
}

func (m *machine) removeRunFiles() {
	for _, name := range []string{apiSockName, uffdSockName, pidName, stateName, rootfsName} {
		if err := os.Remove(filepath.Join(m.cfg.RunDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("remove run file", "file", name, "err", err)
		}
	}
}

// writeState records what Adopt needs, atomically (write then rename).
func (m *machine) writeState() error {
	st := runState{
		PID:       m.proc.pid,
		StartTime: m.proc.startTime,
		Binary:    m.d.opts.Binary,
		Version:   m.version,
		VCPUs:     m.cfg.VCPUs,
		MemoryMB:  m.cfg.MemoryMB,
		TapDevice: m.cfg.TapDevice,
		MAC:       m.cfg.MAC,
	}
	if m.uffd != nil {
		st.UffdPID, st.UffdStartTime = m.uffd.pid, m.uffd.startTime
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode run state: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(m.cfg.RunDir, stateName), b, 0o640); err != nil {
		return fmt.Errorf("write run state: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(m.cfg.RunDir, pidName), []byte(strconv.Itoa(m.proc.pid)+"\n"), 0o640); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	return nil
}

// Pause implements vmm.Machine (PATCH /vm Paused).
func (m *machine) Pause(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.call(ctx, "PATCH", "/vm", vmState{State: "Paused"}, nil); err != nil {
		return fmt.Errorf("pause microVM %s: %w", m.cfg.ID, err)
	}
	m.paused = true
	return nil
}

// Resume implements vmm.Machine (PATCH /vm Resumed).
func (m *machine) Resume(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.call(ctx, "PATCH", "/vm", vmState{State: "Resumed"}, nil); err != nil {
		return fmt.Errorf("resume microVM %s: %w", m.cfg.ID, err)
	}
	m.paused = false
	return nil
}

// Snapshot implements vmm.Machine: a Full snapshot (state + memory) of the
// paused microVM, plus a copy of its disk (reflink where the filesystem
// can, sparse copy otherwise) so the snapshot stands on its own.
func (m *machine) Snapshot(ctx context.Context, dir string) (vmm.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// Whether the VM is paused is Firecracker's call (it answers 400 if
	// not); the driver's own flag could be stale after an Adopt.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("snapshot dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("create snapshot dir: %w", err)
	}
	snap := vmm.Snapshot{
		Dir:        dir,
		StatePath:  filepath.Join(dir, snapStateName),
		MemoryPath: filepath.Join(dir, snapMemName),
		DiskPath:   filepath.Join(dir, snapDiskName),
		DiskFormat: "raw",
		VCPUs:      m.cfg.VCPUs,
		MemoryMB:   m.cfg.MemoryMB,
		Driver:     Name,
	}
	cleanup := func() {
		for _, p := range []string{snap.StatePath, snap.MemoryPath, snap.DiskPath, filepath.Join(dir, snapMetaName)} {
			os.Remove(p)
		}
	}
	// Unlink earlier files instead of letting Firecracker truncate them: a
	// VM restored from them may still map the memory file (File backend),
	// and truncating a mapped file would fault its guest. The old inodes
	// live on for whoever still uses them.
	cleanup()
	start := time.Now()
	req := snapshotCreate{SnapshotType: "Full", SnapshotPath: snap.StatePath, MemFilePath: snap.MemoryPath}
	if err := m.call(ctx, "PUT", "/snapshot/create", req, nil); err != nil {
		cleanup()
		return vmm.Snapshot{}, fmt.Errorf("snapshot microVM %s: %w", m.cfg.ID, err)
	}
	vmDone := time.Since(start)
	// Firecracker flushed the disk as part of snapshot/create and the vCPUs
	// are stopped, so the disk is consistent with the memory image now.
	if err := copyDisk(ctx, m.cfg.DiskPath, snap.DiskPath); err != nil {
		cleanup()
		return vmm.Snapshot{}, fmt.Errorf("snapshot microVM %s: copy disk: %w", m.cfg.ID, err)
	}
	meta := snapMeta{
		Driver: Name, Version: m.version, VCPUs: m.cfg.VCPUs, MemoryMB: m.cfg.MemoryMB,
		TapDevice: m.cfg.TapDevice, MAC: m.cfg.MAC, Created: time.Now().UTC().Format(time.RFC3339Nano),
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := atomicfile.WriteFile(filepath.Join(dir, snapMetaName), b, 0o640); err != nil {
		cleanup()
		return vmm.Snapshot{}, fmt.Errorf("snapshot microVM %s: write metadata: %w", m.cfg.ID, err)
	}
	m.log.Info("firecracker snapshot created", "dir", dir, "vm_state_and_memory", vmDone, "total", time.Since(start))
	return snap, nil
}

// Stop implements vmm.Machine: SendCtrlAltDel (a running guest with
// reboot=k makes firecracker exit), SIGKILL after StopGrace, then wait
// for (and, for a child, reap) the process. Idempotent.
func (m *machine) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	if !m.proc.exited() && !m.paused {
		// A paused guest cannot see the key press: go straight to SIGKILL.
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err := m.api.do(actx, "PUT", "/actions", instanceAction{ActionType: "SendCtrlAltDel"}, nil)
		cancel()
		if err != nil {
			m.log.Debug("SendCtrlAltDel failed; killing", "err", err)
		} else if m.proc.waitFor(ctx, m.d.opts.StopGrace) {
			m.log.Debug("firecracker exited after SendCtrlAltDel")
		}
	}
	if err := m.proc.kill(ctx); err != nil {
		return fmt.Errorf("stop microVM %s: %w", m.cfg.ID, err)
	}
	if m.uffd != nil {
		if err := m.uffd.kill(ctx); err != nil {
			return fmt.Errorf("stop uffd handler of %s: %w", m.cfg.ID, err)
		}
	}
	m.api.close()
	m.removeRunFiles()
	m.stopped = true
	return nil
}

// Metrics implements vmm.Machine from /proc/PID/stat.
func (m *machine) Metrics(ctx context.Context) (vmm.Metrics, error) {
	if m.proc.exited() {
		return vmm.Metrics{}, fmt.Errorf("metrics of microVM %s: %w", m.cfg.ID, vmm.ErrNotRunning)
	}
	st, err := readProcStat(m.proc.pid)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return vmm.Metrics{}, fmt.Errorf("metrics of microVM %s: %w", m.cfg.ID, vmm.ErrNotRunning)
		}
		return vmm.Metrics{}, fmt.Errorf("metrics of microVM %s: %w", m.cfg.ID, err)
	}
	if m.proc.startTime != 0 && st.StartTime != m.proc.startTime {
		return vmm.Metrics{}, fmt.Errorf("metrics of microVM %s: pid %d was reused: %w", m.cfg.ID, m.proc.pid, vmm.ErrNotRunning)
	}
	rss := uint64(0)
	if st.RSSPages > 0 {
		rss = uint64(st.RSSPages) * uint64(syscall.Getpagesize())
	}
	return vmm.Metrics{CPUTime: st.cpuTime(), RSSBytes: rss}, nil
}

// Package qemu drives QEMU's microvm machine: PVH boot of an uncompressed
// kernel, virtio-mmio disk and network, QMP over a Unix socket for control.
//
// Guest RAM is a file (memory-backend-file) so snapshots can skip it
// (x-ignore-shared): a fresh machine maps RunDir/memory shared; a snapshot
// copies that file sparsely next to a small device-state file; a restore maps
// the snapshot's memory file private (copy-on-write), so one snapshot serves
// any number of clones without ever being modified.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/nsexec"
	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// DriverName is what Name returns and what snapshots record.
const DriverName = "qemu"

// Files the driver keeps in Config.RunDir.
const (
	qmpSocketName = "qmp.sock"
	pidFileName   = "qemu.pid"
	stateFileName = "machine.json"
	memFileName   = "memory"
	// SerialLogName is the guest console log in RunDir.
	SerialLogName = "serial.log"
	// QEMULogName holds QEMU's own stderr in RunDir.
	QEMULogName = "qemu.log"
)

// Options configures the driver.
type Options struct {
	// QEMUPath is the qemu-system-x86_64 binary (default from $PATH).
	QEMUPath string
	// Accel is used when Config.Accel is empty (default TCG).
	Accel vmm.Accel
	// TSCKHz is passed as tsc_early_khz when the kernel command line lacks
	// it (default: read from /proc/cpuinfo).
	TSCKHz int
	// StopGrace is how long Stop waits after QMP quit before SIGKILL.
	StopGrace time.Duration
	// MemoryDir holds the guest RAM files of booted machines (default: each
	// machine's RunDir). Point it at a tmpfs such as /dev/shm to keep guest
	// RAM writes from being written back to disk.
	MemoryDir string
	// BootTimeout bounds waiting for QEMU's QMP socket.
	BootTimeout time.Duration
	Logger      *slog.Logger
}

// Driver implements vmm.Driver with QEMU.
type Driver struct {
	opts Options
}

var _ vmm.Driver = (*Driver)(nil)

// New checks that QEMU is installed and returns a driver.
func New(opts Options) (*Driver, error) {
	if opts.QEMUPath == "" {
		opts.QEMUPath = "qemu-system-x86_64"
	}
	p, err := exec.LookPath(opts.QEMUPath)
	if err != nil {
		return nil, fmt.Errorf("find %s (install Debian's qemu-system-x86): %w", opts.QEMUPath, err)
	}
	opts.QEMUPath = p
	if opts.Accel == "" {
		opts.Accel = vmm.AccelTCG
	}
	if opts.TSCKHz == 0 {
		if opts.TSCKHz, err = HostTSCKHz(); err != nil {
			return nil, fmt.Errorf("host TSC frequency: %w", err)
		}
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 3 * time.Second
	}
	if opts.BootTimeout <= 0 {
		opts.BootTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MemoryDir != "" && (!filepath.IsAbs(opts.MemoryDir) || strings.Contains(opts.MemoryDir, ",")) {
		return nil, fmt.Errorf("memory dir %q must be absolute and free of commas", opts.MemoryDir)
	}
	return &Driver{opts: opts}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return DriverName }

// Forward exposes a guest TCP port on a host address through QEMU's user
// networking (tests and development without TAP devices).
type Forward struct {
	// HostAddr is a loopback address with port, e.g. 127.0.0.1:40000.
	HostAddr  netip.AddrPort
	GuestPort uint16
}

// UserNetGuestIP and UserNetGateway are QEMU user networking's fixed
// addresses (/24); use them in the kernel command line with UserNet.
var (
	UserNetGuestIP = netip.MustParseAddr("10.0.2.15")
	UserNetGateway = netip.MustParseAddr("10.0.2.2")
)

// MachineOptions are QEMU-only settings vmm.Config does not carry.
type MachineOptions struct {
	// UserNet replaces the TAP NIC by QEMU user networking in restricted
	// mode (the guest reaches nothing) with these forwards into the guest.
	UserNet []Forward
}

// state is what a machine leaves in RunDir for Adopt.
type state struct {
	ID         string    `json:"id"`
	PID        int       `json:"pid"`
	StartTime  uint64    `json:"start_time"`
	Accel      vmm.Accel `json:"accel"`
	VCPUs      int       `json:"vcpus"`
	MemoryMB   int       `json:"memory_mb"`
	MemoryPath string    `json:"memory_path,omitempty"`
	// MemoryShared: guest RAM is a shared mapping of MemoryPath that this
	// machine owns (fresh boots); false for private clones of a snapshot.
	MemoryShared bool   `json:"memory_shared"`
	DiskPath     string `json:"disk_path"`
	DiskFormat   string `json:"disk_format"`
}

// Start implements vmm.Driver.
func (d *Driver) Start(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	return d.StartWithOptions(ctx, cfg, MachineOptions{})
}

// StartWithOptions boots a new machine with QEMU-only options.
func (d *Driver) StartWithOptions(ctx context.Context, cfg vmm.Config, mo MachineOptions) (*Machine, error) {
	if err := d.validate(&cfg, mo); err != nil {
		return nil, err
	}
	mem := filepath.Join(cfg.RunDir, memFileName)
	if d.opts.MemoryDir != "" {
		mem = filepath.Join(d.opts.MemoryDir, cfg.ID+".mem")
	}
	st := state{ID: cfg.ID, Accel: cfg.Accel, VCPUs: cfg.VCPUs, MemoryMB: cfg.MemoryMB,
		MemoryPath: mem, MemoryShared: true, DiskPath: cfg.DiskPath, DiskFormat: cfg.DiskFormat}
	_ = os.Remove(mem) // a stale file from a crashed run must not become guest RAM
	m, err := d.launch(ctx, cfg, mo, st, false)
	if err != nil {
		return nil, fmt.Errorf("start qemu %s: %w", cfg.ID, err)
	}
	return m, nil
}

// Restore implements vmm.Driver. cfg.DiskPath must be the clone's own disk
// (e.g. a qcow2 overlay whose backing file is snap.DiskPath).
func (d *Driver) Restore(ctx context.Context, cfg vmm.Config, snap vmm.Snapshot) (vmm.Machine, error) {
	return d.RestoreWithOptions(ctx, cfg, snap, MachineOptions{})
}

// RestoreWithOptions restores a snapshot with QEMU-only options; the device
// set must match the snapshotted machine (user net and TAP both give one
// virtio-net device, so they may differ).
func (d *Driver) RestoreWithOptions(ctx context.Context, cfg vmm.Config, snap vmm.Snapshot, mo MachineOptions) (*Machine, error) {
	if snap.Driver != "" && snap.Driver != DriverName {
		return nil, fmt.Errorf("%w: taken by driver %q, not %q", vmm.ErrSnapshotInvalid, snap.Driver, DriverName)
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = snap.MemoryMB
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = snap.VCPUs
	}
	if cfg.MemoryMB != snap.MemoryMB || cfg.VCPUs != snap.VCPUs {
		return nil, fmt.Errorf("%w: snapshot has %d MiB/%d vCPUs, config asks %d MiB/%d vCPUs",
			vmm.ErrSnapshotInvalid, snap.MemoryMB, snap.VCPUs, cfg.MemoryMB, cfg.VCPUs)
	}
	if err := checkShellSafe(snap.StatePath); err != nil {
		return nil, fmt.Errorf("%w: %v", vmm.ErrSnapshotInvalid, err)
	}
	files := []string{snap.StatePath}
	if snap.MemoryPath != "" { // empty: RAM is inside the state stream
		if !filepath.IsAbs(snap.MemoryPath) || strings.Contains(snap.MemoryPath, ",") {
			return nil, fmt.Errorf("%w: memory path %q must be absolute and free of commas", vmm.ErrSnapshotInvalid, snap.MemoryPath)
		}
		files = append(files, snap.MemoryPath)
	}
	for _, p := range files {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			return nil, fmt.Errorf("%w: %s: %v", vmm.ErrSnapshotInvalid, p, err)
		}
	}
	// The kernel is needed for an identical device set (its PVH option ROM
	// and fw_cfg entries); its contents are not used, the RAM already holds
	// the running kernel.
	if err := d.validate(&cfg, mo); err != nil {
		return nil, err
	}
	st := state{ID: cfg.ID, Accel: cfg.Accel, VCPUs: cfg.VCPUs, MemoryMB: cfg.MemoryMB,
		MemoryPath: snap.MemoryPath, MemoryShared: false, DiskPath: cfg.DiskPath, DiskFormat: cfg.DiskFormat}
	start := time.Now()
	m, err := d.launch(ctx, cfg, mo, st, true)
	if err != nil {
		return nil, fmt.Errorf("restore qemu %s: %w", cfg.ID, err)
	}
	if err := m.incoming(ctx, snap.StatePath); err != nil {
		_ = m.Stop(context.WithoutCancel(ctx))
		if tail := logTail(filepath.Join(cfg.RunDir, QEMULogName)); tail != "" {
			err = fmt.Errorf("%w; qemu said: %s", err, tail)
		}
		return nil, fmt.Errorf("restore qemu %s: %w", cfg.ID, err)
	}
	d.opts.Logger.Debug("qemu restored", "id", cfg.ID, "took", time.Since(start))
	return m, nil
}

func (d *Driver) validate(cfg *vmm.Config, mo MachineOptions) error {
	if cfg.Accel == "" {
		cfg.Accel = d.opts.Accel
	}
	if cfg.DiskFormat == "" {
		cfg.DiskFormat = "qcow2"
	}
	var errs []string
	if cfg.ID == "" || strings.ContainsAny(cfg.ID, ",= \t\n/") {
		errs = append(errs, fmt.Sprintf("bad id %q", cfg.ID))
	}
	if cfg.Accel != vmm.AccelKVM && cfg.Accel != vmm.AccelTCG {
		errs = append(errs, fmt.Sprintf("unknown accel %q", cfg.Accel))
	}
	if cfg.VCPUs < 1 || cfg.VCPUs > 64 {
		errs = append(errs, fmt.Sprintf("vcpus %d out of range 1-64", cfg.VCPUs))
	}
	if cfg.MemoryMB < 32 || cfg.MemoryMB > 1<<20 {
		errs = append(errs, fmt.Sprintf("memory %d MiB out of range", cfg.MemoryMB))
	}
	if cfg.DiskFormat != "qcow2" && cfg.DiskFormat != "raw" {
		errs = append(errs, fmt.Sprintf("disk format %q (want qcow2 or raw)", cfg.DiskFormat))
	}
	for _, f := range []struct{ name, path string }{{"kernel", cfg.KernelPath}, {"disk", cfg.DiskPath}, {"run dir", cfg.RunDir}} {
		if !filepath.IsAbs(f.path) || strings.Contains(f.path, ",") {
			errs = append(errs, fmt.Sprintf("%s path %q must be absolute and free of commas", f.name, f.path))
		}
	}
	if cfg.MAC != "" && !validMAC(cfg.MAC) {
		errs = append(errs, fmt.Sprintf("bad MAC %q", cfg.MAC))
	}
	if strings.ContainsAny(cfg.TapDevice, ",= /") || len(cfg.TapDevice) > 15 {
		errs = append(errs, fmt.Sprintf("bad TAP device %q", cfg.TapDevice))
	}
	for _, f := range mo.UserNet {
		if !f.HostAddr.IsValid() || f.GuestPort == 0 {
			errs = append(errs, fmt.Sprintf("bad forward %v -> %d", f.HostAddr, f.GuestPort))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("qemu config: %s", strings.Join(errs, "; "))
	}
	if _, err := os.Stat(cfg.KernelPath); err != nil {
		return fmt.Errorf("qemu config: kernel: %w (run `wrenn images build`)", err)
	}
	if _, err := os.Stat(cfg.DiskPath); err != nil {
		return fmt.Errorf("qemu config: disk: %w", err)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return fmt.Errorf("qemu config: run dir: %w", err)
	}
	return nil
}

func validMAC(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 {
			return false
		}
		if _, err := strconv.ParseUint(p, 16, 8); err != nil {
			return false
		}
	}
	return true
}

// args builds QEMU's command line. Paths inside RunDir are relative: QEMU
// runs there, which keeps the QMP socket path short.
func (d *Driver) args(cfg vmm.Config, mo MachineOptions, st state, incoming bool) []string {
	cpu := "max"
	if cfg.Accel == vmm.AccelKVM {
		cpu = "host"
	}
	mem := fmt.Sprintf("memory-backend-ram,id=mem,size=%dM", cfg.MemoryMB)
	if st.MemoryPath != "" {
		share := "off"
		if st.MemoryShared {
			share = "on"
		}
		mem = fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s", cfg.MemoryMB, st.MemoryPath, share)
	}
	a := []string{
		"-name", cfg.ID,
		"-M", "microvm,accel=" + string(cfg.Accel) + ",acpi=off,memory-backend=mem",
		"-cpu", cpu, "-m", strconv.Itoa(cfg.MemoryMB) + "M", "-smp", strconv.Itoa(cfg.VCPUs),
		"-object", mem,
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + SerialLogName,
		"-qmp", "unix:" + qmpSocketName + ",server=on,wait=off",
		"-pidfile", pidFileName,
		"-drive", "id=root,file=" + cfg.DiskPath + ",format=" + cfg.DiskFormat + ",if=none,cache=writeback,discard=unmap",
		"-device", "virtio-blk-device,drive=root",
	}
	a = append(a, "-kernel", cfg.KernelPath, "-append", withTSC(cfg.KernelArgs, d.opts.TSCKHz))
	netdev := ""
	switch {
	case len(mo.UserNet) > 0:
		netdev = "user,id=n0,restrict=on"
		for _, f := range mo.UserNet {
			netdev += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", f.HostAddr.Addr(), f.HostAddr.Port(), f.GuestPort)
		}
	case cfg.TapDevice != "":
		netdev = "tap,id=n0,ifname=" + cfg.TapDevice + ",script=no,downscript=no"
	}
	if netdev != "" {
		dev := "virtio-net-device,netdev=n0"
		if cfg.MAC != "" {
			dev += ",mac=" + cfg.MAC
		}
		a = append(a, "-netdev", netdev, "-device", dev)
	}
	if incoming {
		a = append(a, "-incoming", "defer")
	}
	return a
}

// launch starts QEMU (inside cfg.NetNSPath when set), connects QMP and
// writes the state file.
func (d *Driver) launch(ctx context.Context, cfg vmm.Config, mo MachineOptions, st state, incoming bool) (*Machine, error) {
	for _, n := range []string{qmpSocketName, pidFileName, stateFileName} {
		_ = os.Remove(filepath.Join(cfg.RunDir, n))
	}
	logf, err := os.OpenFile(filepath.Join(cfg.RunDir, QEMULogName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open qemu log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(d.opts.QEMUPath, d.args(cfg, mo, st, incoming)...)
	cmd.Dir = cfg.RunDir
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: the VMM survives the agent (and its terminal's signals)
	// so a restarted agent can adopt it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := nsexec.Start(cfg.NetNSPath, cmd); err != nil {
		return nil, err
	}
	m := newMachine(d, cfg, st)
	m.pid = cmd.Process.Pid
	m.proc = cmd.Process
	go func() {
		_ = cmd.Wait()
		close(m.done)
	}()
	fail := func(err error) (*Machine, error) {
		_ = m.kill()
		<-m.done
		m.cleanup()
		if tail := logTail(filepath.Join(cfg.RunDir, QEMULogName)); tail != "" {
			err = fmt.Errorf("%w; qemu said: %s", err, tail)
		}
		return nil, err
	}
	ps, err := readProcStat(m.pid)
	if err != nil {
		return fail(fmt.Errorf("read qemu process: %w", err))
	}
	m.st.PID, m.st.StartTime = m.pid, ps.StartTime
	bctx, cancel := context.WithTimeout(ctx, d.opts.BootTimeout)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.openQMP(bctx); err != nil {
		return fail(err)
	}
	defer m.releaseQMP()
	// Same on both ends of a snapshot: RAM in a named file is skipped by the
	// stream; the default 128 MiB/s bandwidth cap would triple the time.
	if err := m.qmp.execute(bctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	}, nil); err != nil {
		return fail(err)
	}
	if err := m.qmp.execute(bctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return fail(err)
	}
	if err := m.writeState(); err != nil {
		return fail(err)
	}
	d.opts.Logger.Debug("qemu started", "id", cfg.ID, "pid", m.pid, "accel", cfg.Accel, "netns", cfg.NetNSPath)
	return m, nil
}

// Adopt implements vmm.Driver: it reattaches to the QEMU an earlier agent
// started in cfg.RunDir. A VMM that died gives an error wrapping
// vmm.ErrNotRunning.
func (d *Driver) Adopt(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	m, err := d.AdoptMachine(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// AdoptMachine is Adopt returning the concrete type.
func (d *Driver) AdoptMachine(ctx context.Context, cfg vmm.Config) (*Machine, error) {
	if cfg.RunDir == "" {
		return nil, errors.New("adopt qemu: empty run dir")
	}
	data, err := os.ReadFile(filepath.Join(cfg.RunDir, stateFileName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("adopt qemu %s: no state file: %w", cfg.ID, vmm.ErrNotRunning)
		}
		return nil, fmt.Errorf("adopt qemu %s: %w", cfg.ID, err)
	}
	st, err := parseState(data)
	if err != nil {
		return nil, fmt.Errorf("adopt qemu %s: %w", cfg.ID, err)
	}
	if pidData, err := os.ReadFile(filepath.Join(cfg.RunDir, pidFileName)); err == nil {
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(pidData))); perr != nil || pid != st.PID {
			return nil, fmt.Errorf("adopt qemu %s: pid file says %q, state says %d", cfg.ID, strings.TrimSpace(string(pidData)), st.PID)
		}
	}
	ps, err := readProcStat(st.PID)
	if err != nil || ps.StartTime != st.StartTime || ps.State == 'Z' {
		return nil, fmt.Errorf("adopt qemu %s: pid %d is gone: %w", cfg.ID, st.PID, vmm.ErrNotRunning)
	}
	// A pidfd pins this exact process: no PID-reuse races from here on.
	pidfd, err := pidfdOpen(st.PID)
	if err != nil {
		return nil, fmt.Errorf("adopt qemu %s: %w", cfg.ID, err)
	}
	if ps2, err := readProcStat(st.PID); err != nil || ps2.StartTime != st.StartTime {
		syscall.Close(pidfd)
		return nil, fmt.Errorf("adopt qemu %s: pid %d is gone: %w", cfg.ID, st.PID, vmm.ErrNotRunning)
	}
	if cfg.ID == "" {
		cfg.ID = st.ID
	}
	cfg.Accel, cfg.VCPUs, cfg.MemoryMB = st.Accel, st.VCPUs, st.MemoryMB
	cfg.DiskPath, cfg.DiskFormat = st.DiskPath, st.DiskFormat
	var wake [2]int
	if err := syscall.Pipe2(wake[:], syscall.O_CLOEXEC); err != nil {
		syscall.Close(pidfd)
		return nil, fmt.Errorf("adopt qemu %s: pipe: %w", cfg.ID, err)
	}
	m := newMachine(d, cfg, st)
	m.pid = st.PID
	m.pidfd = pidfd
	m.wakeW = wake[1]
	go m.waitPidfd(wake[0])
	bctx, cancel := context.WithTimeout(ctx, d.opts.BootTimeout)
	defer cancel()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.openQMP(bctx); err != nil {
		m.stopWaiter()
		return nil, fmt.Errorf("adopt qemu %s: %w", cfg.ID, err)
	}
	defer m.releaseQMP()
	var status struct {
		Status string `json:"status"`
	}
	if err := m.qmp.execute(bctx, "query-status", nil, &status); err != nil {
		m.stopWaiter()
		return nil, fmt.Errorf("adopt qemu %s: %w", cfg.ID, err)
	}
	m.paused = status.Status != "running"
	d.opts.Logger.Info("qemu adopted", "id", cfg.ID, "pid", st.PID, "status", status.Status)
	return m, nil
}

func parseState(data []byte) (state, error) {
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("parse machine state: %w", err)
	}
	if st.PID <= 1 || st.StartTime == 0 {
		return st, fmt.Errorf("machine state: bad pid %d / start time %d", st.PID, st.StartTime)
	}
	if st.Accel != vmm.AccelKVM && st.Accel != vmm.AccelTCG {
		return st, fmt.Errorf("machine state: bad accel %q", st.Accel)
	}
	return st, nil
}

func logTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 500 {
		s = s[len(s)-500:]
	}
	return s
}

// checkShellSafe rejects paths QEMU's exec: migration URI could not quote.
func checkShellSafe(p string) error {
	if p == "" || !filepath.IsAbs(p) || strings.ContainsAny(p, "'\n\x00") {
		return fmt.Errorf("path %q unusable in a migration command", p)
	}
	return nil
}

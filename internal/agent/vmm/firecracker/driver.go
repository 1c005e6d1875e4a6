// Package firecracker is the vmm.Driver for Firecracker (v1.10 or later):
// it starts one firecracker process per microVM, inside the sandbox's
// network namespace, and drives it through its REST API on a Unix socket.
//
// Disks are raw images. The root disk is configured through a relative
// path ("rootfs", a symlink in the run directory) and firecracker runs with
// the run directory as its working directory: a snapshot records that
// relative path, so a restore in another run directory picks up that
// directory's own disk.
package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/vmm"
)

// Name is the driver name recorded in snapshots.
const Name = "firecracker"

// MemoryBackend selects how a restore loads guest memory.
type MemoryBackend string

const (
	// BackendFile maps the memory file; pages load lazily from the page cache.
	BackendFile MemoryBackend = "File"
	// BackendUffd hands page faults to a userfaultfd handler process.
	BackendUffd MemoryBackend = "Uffd"
)

// Names of the files the driver keeps in Config.RunDir.
const (
	apiSockName   = "fc.sock"
	rootfsName    = "rootfs"
	logName       = "firecracker.log"
	pidName       = "firecracker.pid"
	stateName     = "firecracker.json"
	uffdSockName  = "uffd.sock"
	uffdLogName   = "uffd.log"
	rootDriveID   = "rootfs"
	guestIfaceID  = "eth0"
	snapStateName = "vmstate"
	snapMemName   = "memory"
	snapDiskName  = "rootfs.raw"
	snapMetaName  = "firecracker.json"
)

// Options configure the driver. The zero value is usable.
type Options struct {
	// Binary is the firecracker executable; empty means "firecracker" from PATH.
	Binary string
	// Env is added to the environment of every process the driver starts.
	Env []string
	// MemoryBackend for restores; empty means BackendFile.
	MemoryBackend MemoryBackend
	// UffdHandler is the page-fault handler started for BackendUffd restores,
	// as `UffdHandler <socket path> <memory file>`: it must listen on the
	// socket, accept Firecracker's connection (guest memory layout as JSON
	// plus the userfaultfd as SCM_RIGHTS) and serve faults from the file
	// (Firecracker's examples/uffd handlers follow this convention).
	UffdHandler string
	// UffdHandlerArgs come before the socket and memory file arguments.
	UffdHandlerArgs []string
	// APITimeout bounds the wait for the API socket of a new process and
	// each API call; default 10 s.
	APITimeout time.Duration
	// StopGrace is how long Stop waits after SendCtrlAltDel before SIGKILL;
	// default 2 s.
	StopGrace time.Duration
	Logger    *slog.Logger
}

// Driver implements vmm.Driver for Firecracker.
type Driver struct {
	opts Options
	log  *slog.Logger
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver; it fails when the binary cannot be found.
func New(opts Options) (*Driver, error) {
	if opts.Binary == "" {
		p, err := exec.LookPath("firecracker")
		if err != nil {
			return nil, fmt.Errorf("firecracker binary not found in PATH (install Firecracker v1.10+ or set its path): %w", err)
		}
		opts.Binary = p
	} else if _, err := os.Stat(opts.Binary); err != nil {
		return nil, fmt.Errorf("firecracker binary %s: %w", opts.Binary, err)
	}
	switch opts.MemoryBackend {
	case "":
		opts.MemoryBackend = BackendFile
	case BackendFile:
	case BackendUffd:
		if opts.UffdHandler == "" {
			return nil, fmt.Errorf("memory backend %s needs a UffdHandler program", BackendUffd)
		}
		if _, err := os.Stat(opts.UffdHandler); err != nil {
			return nil, fmt.Errorf("uffd handler %s: %w", opts.UffdHandler, err)
		}
	default:
		return nil, fmt.Errorf("unknown memory backend %q (want %q or %q)", opts.MemoryBackend, BackendFile, BackendUffd)
	}
	if opts.APITimeout <= 0 {
		opts.APITimeout = 10 * time.Second
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Driver{opts: opts, log: opts.Logger.With("driver", Name)}, nil
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return Name }

// runState is what the driver leaves in RunDir for Adopt.
type runState struct {
	PID           int    `json:"pid"`
	StartTime     uint64 `json:"start_time"`
	UffdPID       int    `json:"uffd_pid,omitempty"`
	UffdStartTime uint64 `json:"uffd_start_time,omitempty"`
	Binary        string `json:"binary"`
	Version       string `json:"firecracker_version,omitempty"`
	VCPUs         int    `json:"vcpus"`
	MemoryMB      int    `json:"memory_mb"`
	TapDevice     string `json:"tap_device,omitempty"`
	MAC           string `json:"mac,omitempty"`
}

// snapMeta is written next to a snapshot's files.
type snapMeta struct {
	Driver    string `json:"driver"`
	Version   string `json:"firecracker_version,omitempty"`
	VCPUs     int    `json:"vcpus"`
	MemoryMB  int    `json:"memory_mb"`
	TapDevice string `json:"tap_device,omitempty"`
	MAC       string `json:"mac,omitempty"`
	Created   string `json:"created"`
}

func validateConfig(cfg vmm.Config, boot bool) error {
	var problems []string
	if cfg.RunDir == "" || !filepath.IsAbs(cfg.RunDir) {
		problems = append(problems, fmt.Sprintf("RunDir must be an absolute path (got %q)", cfg.RunDir))
	}
	if cfg.DiskPath == "" {
		problems = append(problems, "DiskPath is empty")
	}
	if cfg.DiskFormat != "raw" {
		problems = append(problems, fmt.Sprintf("DiskFormat %q is not supported: Firecracker only takes raw disk images (convert with `qemu-img convert -O raw`)", cfg.DiskFormat))
	}
	if boot {
		if cfg.KernelPath == "" {
			problems = append(problems, "KernelPath is empty")
		}
		if cfg.VCPUs < 1 {
			problems = append(problems, fmt.Sprintf("VCPUs must be at least 1 (got %d)", cfg.VCPUs))
		}
		if cfg.MemoryMB < 1 {
			problems = append(problems, fmt.Sprintf("MemoryMB must be at least 1 (got %d)", cfg.MemoryMB))
		}
	}
	if cfg.MAC != "" && cfg.TapDevice == "" {
		problems = append(problems, "MAC given without TapDevice")
	}
	if len(problems) > 0 {
		return fmt.Errorf("invalid firecracker config: %s", strings.Join(problems, "; "))
	}
	if cfg.Accel == vmm.AccelTCG {
		return fmt.Errorf("firecracker needs KVM, accel %q requested: %w", cfg.Accel, vmm.ErrUnsupported)
	}
	return nil
}

// instanceID turns a sandbox ID into what firecracker's --id accepts
// (alphanumerics and '-', at most 64 characters).
func instanceID(id string) string {
	var b strings.Builder
	for _, r := range id {
		if b.Len() >= 64 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	return b.String()
}

// prepareRunDir creates RunDir, removes what a previous process left there
// and links the disk under its relative name.
func prepareRunDir(cfg vmm.Config) error {
	if err := os.MkdirAll(cfg.RunDir, 0o750); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	for _, name := range []string{apiSockName, uffdSockName, rootfsName, pidName, stateName} {
		if err := os.Remove(filepath.Join(cfg.RunDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale %s: %w", name, err)
		}
	}
	disk, err := filepath.Abs(cfg.DiskPath)
	if err != nil {
		return fmt.Errorf("disk path: %w", err)
	}
	if _, err := os.Stat(disk); err != nil {
		return fmt.Errorf("disk %s: %w", disk, err)
	}
	if err := os.Symlink(disk, filepath.Join(cfg.RunDir, rootfsName)); err != nil {
		return fmt.Errorf("link disk into run dir: %w", err)
	}
	return nil
}

// launch starts firecracker for cfg and waits for its API.
func (d *Driver) launch(ctx context.Context, cfg vmm.Config) (*machine, error) {
	sock := filepath.Join(cfg.RunDir, apiSockName)
	args := []string{"--api-sock", sock}
	if id := instanceID(cfg.ID); id != "" {
		args = append(args, "--id", id)
	}
	p, err := spawn(spawnSpec{
		path:    d.opts.Binary,
		args:    args,
		env:     d.opts.Env,
		dir:     cfg.RunDir,
		netns:   cfg.NetNSPath,
		logPath: filepath.Join(cfg.RunDir, logName),
	})
	if err != nil {
		return nil, fmt.Errorf("start firecracker: %w", err)
	}
	m := &machine{
		d:    d,
		cfg:  cfg,
		proc: p,
		api:  newAPIClient(sock),
		log:  d.log.With("sandbox", cfg.ID, "pid", p.pid),
	}
	if err := m.waitAPI(ctx); err != nil {
		m.abort()
		return nil, err
	}
	return m, nil
}

// Start implements vmm.Driver: boot a new microVM.
func (d *Driver) Start(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	if err := validateConfig(cfg, true); err != nil {
		return nil, err
	}
	if err := prepareRunDir(cfg); err != nil {
		return nil, err
	}
	m, err := d.launch(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := m.boot(ctx); err != nil {
		m.abort()
		return nil, err
	}
	if err := m.writeState(); err != nil {
		m.abort()
		return nil, err
	}
	m.log.Info("firecracker microVM started", "version", m.version)
	return m, nil
}

// apiStep is one request of a fixed sequence.
type apiStep struct {
	method, path string
	body         any
}

func (m *machine) boot(ctx context.Context) error {
	cfg := m.cfg
	steps := []apiStep{
		{"PUT", "/machine-config", machineConfig{VCPUCount: cfg.VCPUs, MemSizeMiB: cfg.MemoryMB, SMT: false}},
		{"PUT", "/boot-source", bootSource{KernelImagePath: cfg.KernelPath, BootArgs: cfg.KernelArgs}},
		// Relative path: see the package comment.
		{"PUT", "/drives/" + rootDriveID, drive{DriveID: rootDriveID, PathOnHost: rootfsName, IsRootDevice: true, IsReadOnly: false}},
	}
	if cfg.TapDevice != "" {
		steps = append(steps, apiStep{"PUT", "/network-interfaces/" + guestIfaceID,
			networkInterface{IfaceID: guestIfaceID, HostDevName: cfg.TapDevice, GuestMAC: cfg.MAC}})
	}
	steps = append(steps, apiStep{"PUT", "/actions", instanceAction{ActionType: "InstanceStart"}})
	for _, s := range steps {
		if err := m.call(ctx, s.method, s.path, s.body, nil); err != nil {
			return fmt.Errorf("boot microVM %s: %w", cfg.ID, err)
		}
	}
	return nil
}

// Restore implements vmm.Driver: a new firecracker process loads the
// snapshot (with the configured memory backend) and resumes it.
func (d *Driver) Restore(ctx context.Context, cfg vmm.Config, snap vmm.Snapshot) (vmm.Machine, error) {
	if err := validateConfig(cfg, false); err != nil {
		return nil, err
	}
	meta, err := checkSnapshot(cfg, snap)
	if err != nil {
		return nil, err
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = snap.VCPUs
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = snap.MemoryMB
	}
	if err := prepareRunDir(cfg); err != nil {
		return nil, err
	}
	var uffd *proc
	backend := memBackend{BackendType: string(BackendFile), BackendPath: snap.MemoryPath}
	if d.opts.MemoryBackend == BackendUffd {
		sock := filepath.Join(cfg.RunDir, uffdSockName)
		uffd, err = d.startUffdHandler(ctx, cfg, sock, snap.MemoryPath)
		if err != nil {
			return nil, err
		}
		backend = memBackend{BackendType: string(BackendUffd), BackendPath: sock}
	}
	m, err := d.launch(ctx, cfg)
	if err != nil {
		killQuietly(uffd)
		return nil, err
	}
	m.uffd = uffd
	load := snapshotLoad{SnapshotPath: snap.StatePath, MemBackend: &backend, ResumeVM: true}
	// The TAP name is baked into the snapshot; only a different name needs
	// network_overrides (Firecracker v1.13+), so same-name restores work on
	// older versions too.
	if meta.TapDevice != "" && cfg.TapDevice != "" && meta.TapDevice != cfg.TapDevice {
		load.NetworkOverrides = []networkOverride{{IfaceID: guestIfaceID, HostDevName: cfg.TapDevice}}
	}
	if err := m.call(ctx, "PUT", "/snapshot/load", load, nil); err != nil {
		m.abort()
		return nil, fmt.Errorf("restore microVM %s from %s: %w", cfg.ID, snap.Dir, err)
	}
	if err := m.writeState(); err != nil {
		m.abort()
		return nil, err
	}
	m.log.Info("firecracker microVM restored", "snapshot", snap.Dir, "backend", backend.BackendType)
	return m, nil
}

// checkSnapshot verifies the snapshot's files before a process is started,
// so a missing or foreign snapshot gives vmm.ErrSnapshotInvalid.
func checkSnapshot(cfg vmm.Config, snap vmm.Snapshot) (snapMeta, error) {
	bad := func(format string, a ...any) (snapMeta, error) {
		return snapMeta{}, fmt.Errorf("snapshot %s: %s: %w", snap.Dir, fmt.Sprintf(format, a...), vmm.ErrSnapshotInvalid)
	}
	if snap.Driver != Name {
		return bad("written by driver %q, not %q", snap.Driver, Name)
	}
	if snap.StatePath == "" || snap.MemoryPath == "" {
		return bad("state or memory path is empty")
	}
	if _, err := os.Stat(snap.StatePath); err != nil {
		return bad("state file: %v", err)
	}
	mi, err := os.Stat(snap.MemoryPath)
	if err != nil {
		return bad("memory file: %v", err)
	}
	if snap.MemoryMB > 0 && mi.Size() != int64(snap.MemoryMB)<<20 {
		return bad("memory file is %d bytes, want %d MiB", mi.Size(), snap.MemoryMB)
	}
	if cfg.MemoryMB != 0 && snap.MemoryMB != 0 && cfg.MemoryMB != snap.MemoryMB {
		return bad("snapshot has %d MiB of memory, config asks %d MiB", snap.MemoryMB, cfg.MemoryMB)
	}
	if cfg.VCPUs != 0 && snap.VCPUs != 0 && cfg.VCPUs != snap.VCPUs {
		return bad("snapshot has %d vCPUs, config asks %d", snap.VCPUs, cfg.VCPUs)
	}
	var meta snapMeta
	if snap.Dir != "" {
		b, err := os.ReadFile(filepath.Join(snap.Dir, snapMetaName))
		switch {
		case err == nil:
			if err := json.Unmarshal(b, &meta); err != nil {
				return bad("metadata: %v", err)
			}
		case errors.Is(err, os.ErrNotExist):
			// Written elsewhere: no TAP rename is possible, nothing else needed.
		default:
			return bad("metadata: %v", err)
		}
	}
	return meta, nil
}

func (d *Driver) startUffdHandler(ctx context.Context, cfg vmm.Config, sock, memPath string) (*proc, error) {
	args := append(append([]string{}, d.opts.UffdHandlerArgs...), sock, memPath)
	p, err := spawn(spawnSpec{
		path:    d.opts.UffdHandler,
		args:    args,
		env:     d.opts.Env,
		dir:     cfg.RunDir,
		logPath: filepath.Join(cfg.RunDir, uffdLogName),
	})
	if err != nil {
		return nil, fmt.Errorf("start uffd handler: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.APITimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("uffd handler exited before listening on %s (%v); see %s", sock, p.exitError(), filepath.Join(cfg.RunDir, uffdLogName))
		case <-ctx.Done():
			killQuietly(p)
			return nil, fmt.Errorf("uffd handler socket %s: %w", sock, ctx.Err())
		case <-tick.C:
		}
	}
}

// Adopt implements vmm.Driver: reattach to a firecracker process an earlier
// agent started, from the state file in RunDir.
func (d *Driver) Adopt(ctx context.Context, cfg vmm.Config) (vmm.Machine, error) {
	if cfg.RunDir == "" {
		return nil, errors.New("adopt: RunDir is empty")
	}
	b, err := os.ReadFile(filepath.Join(cfg.RunDir, stateName))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("adopt %s: no state file in %s: %w", cfg.ID, cfg.RunDir, vmm.ErrNotRunning)
		}
		return nil, fmt.Errorf("adopt %s: read state: %w", cfg.ID, err)
	}
	var st runState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("adopt %s: parse state: %w", cfg.ID, err)
	}
	if pb, err := os.ReadFile(filepath.Join(cfg.RunDir, pidName)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(pb))); err != nil || pid != st.PID {
			return nil, fmt.Errorf("adopt %s: pid file %q disagrees with state file pid %d", cfg.ID, strings.TrimSpace(string(pb)), st.PID)
		}
	}
	p, err := adoptProc(st.PID, st.StartTime)
	if err != nil {
		return nil, fmt.Errorf("adopt %s: %v: %w", cfg.ID, err, vmm.ErrNotRunning)
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = st.VCPUs
	}
	if cfg.MemoryMB == 0 {
		cfg.MemoryMB = st.MemoryMB
	}
	if cfg.TapDevice == "" {
		cfg.TapDevice, cfg.MAC = st.TapDevice, st.MAC
	}
	if cfg.DiskPath == "" {
		// Snapshot copies the disk: find it through the run dir's link.
		if target, err := os.Readlink(filepath.Join(cfg.RunDir, rootfsName)); err == nil {
			cfg.DiskPath = target
		}
	}
	if cfg.DiskFormat == "" {
		cfg.DiskFormat = "raw"
	}
	m := &machine{
		d:       d,
		cfg:     cfg,
		proc:    p,
		api:     newAPIClient(filepath.Join(cfg.RunDir, apiSockName)),
		log:     d.log.With("sandbox", cfg.ID, "pid", p.pid),
		version: st.Version,
	}
	if st.UffdPID != 0 {
		if u, err := adoptProc(st.UffdPID, st.UffdStartTime); err == nil {
			m.uffd = u
		} else {
			m.log.Warn("uffd handler of adopted microVM is gone", "err", err)
		}
	}
	var info instanceInfo
	if err := m.call(ctx, "GET", "/", nil, &info); err != nil {
		// Alive but not answering: do not leave it half-adopted.
		m.log.Error("adopted firecracker does not answer its API; killing it", "err", err)
		_ = m.Stop(ctx)
		return nil, fmt.Errorf("adopt %s: %w", cfg.ID, err)
	}
	m.setPaused(info.State == statePaused)
	m.log.Info("firecracker microVM adopted", "state", info.State)
	return m, nil
}

func killQuietly(p *proc) {
	if p == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.kill(ctx)
}

// Package vmm defines the interface between the host agent's sandbox manager
// and the virtual machine monitors that run sandboxes (QEMU microvm,
// Firecracker). Drivers live in sub-packages; this package holds only the
// contract and small shared types so the manager never depends on a driver.
package vmm

import (
	"context"
	"errors"
	"time"
)

// Accel is the CPU virtualisation a driver uses.
type Accel string

const (
	AccelKVM Accel = "kvm"
	AccelTCG Accel = "tcg"
)

// Errors drivers return so callers can react without matching strings.
var (
	// ErrNotRunning: the VMM process is gone.
	ErrNotRunning = errors.New("vmm: machine is not running")
	// ErrUnsupported: the driver or host cannot do what was asked.
	ErrUnsupported = errors.New("vmm: operation not supported")
	// ErrSnapshotInvalid: snapshot files are missing or do not match the config.
	ErrSnapshotInvalid = errors.New("vmm: snapshot is missing or invalid")
)

// Config describes one microVM. Paths are absolute.
type Config struct {
	// ID is the sandbox ID; drivers use it in process titles and file names.
	ID string
	// KernelPath is an uncompressed, PVH-bootable vmlinux.
	KernelPath string
	// KernelArgs is the full kernel command line.
	KernelArgs string
	// DiskPath is the sandbox's own copy-on-write root disk.
	DiskPath string
	// DiskFormat is "qcow2" or "raw".
	DiskFormat string
	VCPUs      int
	MemoryMB   int
	// TapDevice is the name of the TAP device inside NetNSPath.
	TapDevice string
	// MAC is the guest NIC's MAC address (fixed so snapshots can be cloned).
	MAC string
	// NetNSPath is the network namespace (e.g. /var/run/netns/NAME) the VMM
	// process is started in; empty means the caller's namespace.
	NetNSPath string
	// RunDir holds the VMM's sockets, pid file and serial log.
	RunDir string
	// Accel is the acceleration to use; drivers that cannot honour it fail.
	Accel Accel
}

// Snapshot names the files of a saved machine: device/CPU state, guest
// memory and the disk as it was when the snapshot was taken.
type Snapshot struct {
	Dir        string
	StatePath  string
	MemoryPath string
	DiskPath   string
	// DiskFormat of DiskPath, "qcow2" or "raw".
	DiskFormat string
	VCPUs      int
	MemoryMB   int
	// Driver that wrote the snapshot; restores need the same one.
	Driver string
}

// Metrics is a point-in-time reading of the VMM process on the host.
type Metrics struct {
	// CPUTime is the VMM process's cumulative user+system CPU time.
	CPUTime time.Duration
	// RSSBytes is the VMM process's resident memory on the host.
	RSSBytes uint64
}

// Driver starts, restores and re-adopts machines.
type Driver interface {
	// Name is "qemu" or "firecracker".
	Name() string
	// Start boots a new machine from cfg.
	Start(ctx context.Context, cfg Config) (Machine, error)
	// Restore starts a machine from a snapshot taken with the same driver,
	// memory size and device set; cfg supplies the new disk, network and RunDir.
	Restore(ctx context.Context, cfg Config, snap Snapshot) (Machine, error)
	// Adopt reattaches to a machine started by an earlier agent process,
	// from what that process left in cfg.RunDir.
	Adopt(ctx context.Context, cfg Config) (Machine, error)
}

// Machine is one running (or paused) microVM.
type Machine interface {
	// PID of the VMM process on the host.
	PID() int
	// Pause stops the vCPUs in place; memory stays resident.
	Pause(ctx context.Context) error
	// Resume continues a paused machine.
	Resume(ctx context.Context) error
	// Snapshot saves a paused machine into dir (created if needed).
	// The machine stays paused; the caller decides whether to resume or stop.
	Snapshot(ctx context.Context, dir string) (Snapshot, error)
	// Stop ends the VMM process and waits for it; idempotent.
	Stop(ctx context.Context) error
	// Done is closed when the VMM process has exited, for any reason.
	Done() <-chan struct{}
	// Metrics reads the VMM process's host resource use.
	Metrics(ctx context.Context) (Metrics, error)
}

package sandbox

import (
	"context"
	"encoding/json"
)

// NetSlot is what the manager needs of one sandbox's network. Data is the
// network package's own record, persisted so a restarted agent can adopt
// or release the slot.
type NetSlot struct {
	// Name identifies the slot (the network namespace name).
	Name string `json:"name"`
	// NetNSPath is where the VMM runs; empty means the agent's namespace.
	NetNSPath string `json:"netns_path"`
	TapDevice string `json:"tap_device"`
	GuestMAC  string `json:"guest_mac"`
	// KernelIPArg configures the guest NIC on the kernel command line.
	KernelIPArg string `json:"kernel_ip_arg"`
	// EnvdAddr is host:port at which the agent reaches envd.
	EnvdAddr string          `json:"envd_addr"`
	Data     json.RawMessage `json:"data,omitempty"`
}

// NetworkAllocator hands out per-sandbox networks (consumer-side view of
// internal/agent/network).
type NetworkAllocator interface {
	Allocate(ctx context.Context, sandboxID string, internet bool) (NetSlot, error)
	Release(ctx context.Context, slot NetSlot) error
	// Adopt takes over a slot allocated by an earlier agent process.
	Adopt(ctx context.Context, slot NetSlot) error
}

// DiskMaker makes sandbox root disks (consumer-side view of
// internal/agent/storage).
type DiskMaker interface {
	// CreateOverlay makes a copy-on-write disk at dst on top of base
	// (never copying it) with a virtual size of sizeMB (0: base's size) and
	// returns dst's format ("qcow2" or "raw").
	CreateOverlay(ctx context.Context, base, baseFormat, dst string, sizeMB int) (format string, err error)
	// Clone copies src (with its backing chain intact) to dst so dst stays
	// valid while src keeps changing; it returns dst's format.
	Clone(ctx context.Context, src, srcFormat, dst string) (format string, err error)
	// Flatten merges src and its backing chain into a standalone, shrunk,
	// fsck-clean raw ext4 image at dst and returns its size in bytes.
	Flatten(ctx context.Context, src, srcFormat, dst string) (int64, error)
}

package agentapp

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/wrenn-dev/wrenn/internal/agent/network"
	"github.com/wrenn-dev/wrenn/internal/agent/sandbox"
	"github.com/wrenn-dev/wrenn/internal/agent/storage"
)

// NetAdapter presents a network.Manager as a sandbox.NetworkAllocator.
type NetAdapter struct{ M *network.Manager }

var _ sandbox.NetworkAllocator = NetAdapter{}

func toNetSlot(s *network.Slot) (sandbox.NetSlot, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return sandbox.NetSlot{}, fmt.Errorf("encode network slot: %w", err)
	}
	return sandbox.NetSlot{
		Name: s.Name, NetNSPath: s.NetNSPath, TapDevice: s.TapDevice, GuestMAC: s.GuestMAC,
		KernelIPArg: s.KernelIPArg(), EnvdAddr: s.HostReachableAddr.String(), Data: data,
	}, nil
}

func fromNetSlot(ns sandbox.NetSlot) (*network.Slot, error) {
	var s network.Slot
	if err := json.Unmarshal(ns.Data, &s); err != nil {
		return nil, fmt.Errorf("decode network slot %s: %w", ns.Name, err)
	}
	return &s, nil
}

// Allocate implements sandbox.NetworkAllocator.
func (a NetAdapter) Allocate(ctx context.Context, id string, internet bool) (sandbox.NetSlot, error) {
	s, err := a.M.Allocate(ctx, id, network.Options{InternetAccess: internet})
	if err != nil {
		return sandbox.NetSlot{}, err
	}
	ns, err := toNetSlot(s)
	if err != nil {
		a.M.Release(ctx, s)
		return sandbox.NetSlot{}, err
	}
	return ns, nil
}

// Release implements sandbox.NetworkAllocator.
func (a NetAdapter) Release(ctx context.Context, ns sandbox.NetSlot) error {
	s, err := fromNetSlot(ns)
	if err != nil {
		return err
	}
	return a.M.Release(ctx, s)
}

// Adopt implements sandbox.NetworkAllocator.
func (a NetAdapter) Adopt(ctx context.Context, ns sandbox.NetSlot) error {
	s, err := fromNetSlot(ns)
	if err != nil {
		return err
	}
	return a.M.Adopt(ctx, s)
}

// DiskAdapter presents a storage.Store as a sandbox.DiskMaker. Raw makes
// raw clones (Firecracker) instead of qcow2 overlays (QEMU).
type DiskAdapter struct {
	S   *storage.Store
	Raw bool
}

var _ sandbox.DiskMaker = DiskAdapter{}

// CreateOverlay implements sandbox.DiskMaker.
func (a DiskAdapter) CreateOverlay(ctx context.Context, base, baseFormat, dst string, sizeMB int) (string, error) {
	size := int64(sizeMB) << 20
	if a.Raw {
		if baseFormat != string(storage.FormatRaw) {
			return "", fmt.Errorf("raw disks need a raw base, got %s", baseFormat)
		}
		if _, err := a.S.CloneRaw(ctx, base, dst); err != nil {
			return "", err
		}
		if size > 0 {
			if err := a.S.Resize(ctx, dst, storage.FormatRaw, size); err != nil {
				os.Remove(dst)
				return "", err
			}
		}
		return string(storage.FormatRaw), nil
	}
	// A qcow2 base is a snapshot template's disk: the overlay chains on it.
	if err := a.S.NewQcow2Overlay(ctx, base, storage.Format(baseFormat), dst, size); err != nil {
		return "", err
	}
	return string(storage.FormatQcow2), nil
}

// Clone implements sandbox.DiskMaker.
func (a DiskAdapter) Clone(ctx context.Context, src, srcFormat, dst string) (string, error) {
	if _, err := a.S.CloneRaw(ctx, src, dst); err != nil {
		return "", err
	}
	return srcFormat, nil
}

// Flatten implements sandbox.DiskMaker.
func (a DiskAdapter) Flatten(ctx context.Context, src, srcFormat, dst string) (int64, error) {
	return a.S.Flatten(ctx, src, storage.Format(srcFormat), dst)
}

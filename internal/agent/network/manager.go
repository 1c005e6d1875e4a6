package network

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrExhausted is returned by Allocate when every slot of the range is taken.
var ErrExhausted = errors.New("network: no free slot in the host range")

// errNotReady: building a slot without the host rules would leave the
// guest unprotected (and without NAT).
var errNotReady = errors.New("network: Init has not run; host rules are missing")

// Manager hands out and takes back per-sandbox networks. It is safe for
// concurrent use. It needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for mounts)
// and must run in the host's root network namespace.
type Manager struct {
	st *settings

	mu    sync.Mutex
	used  map[int]string // slot index -> sandbox ID
	ready bool           // Init succeeded: host rules are in place

	// guestLink creates the guest-facing device inside the slot's namespace
	// (the calling thread is already in it). Production: a TAP. Tests swap
	// it for a veth into a stand-in "guest" namespace; nothing else changes.
	guestLink func(s *Slot) error
}

// New validates cfg. It does not touch the system: call Init, then
// CleanupStale, before the first Allocate.
func New(cfg Config) (*Manager, error) {
	st, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("network config: %w", err)
	}
	m := &Manager{st: st, used: make(map[int]string)}
	m.guestLink = m.createTap
	return m, nil
}

// Init enables IPv4 forwarding on the host and installs (or replaces) the
// host nft table. Idempotent.
func (m *Manager) Init(ctx context.Context) error {
	if err := writeSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	if err := ensureNSDirMount(NetNSDir); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	m.st.addHostTable(c)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install host nft table %s: %w", m.st.hostTableName(), err)
	}
	m.mu.Lock()
	m.ready = true
	m.mu.Unlock()
	m.st.log.InfoContext(ctx, "network: host rules installed", "table", m.st.hostTableName(), "range", m.st.hostRange.String())
	return nil
}

// Shutdown removes the host nft table. Slots still in use lose their NAT
// and host-side protections, so it refuses while any are allocated. An
// agent that restarts with VMs left running must not call it.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	n := len(m.used)
	m.mu.Unlock()
	if n > 0 {
		return fmt.Errorf("network shutdown: %d slots still allocated", n)
	}
	return m.deleteRootTables(func(name string) bool { return name == m.st.hostTableName() }, nil)
}

// Allocate builds a network for one sandbox. On failure nothing is left
// behind.
func (m *Manager) Allocate(ctx context.Context, sandboxID string, opts Options) (*Slot, error) {
	if sandboxID == "" {
		return nil, errors.New("allocate network: empty sandbox ID")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("allocate network: %w", err)
	}
	idx, err := m.reserve(sandboxID)
	if err != nil {
		return nil, err
	}
	s, err := m.st.slotFor(idx, sandboxID, opts)
	if err != nil {
		m.unreserve(idx)
		return nil, err
	}
	if err := m.build(s); err != nil {
		if cerr := m.teardown(s); cerr != nil {
			m.st.log.WarnContext(ctx, "network: cleanup after failed allocate", "slot", s.Name, "err", cerr)
		}
		m.unreserve(idx)
		return nil, fmt.Errorf("allocate network for %s: %w", sandboxID, err)
	}
	m.st.log.DebugContext(ctx, "network: slot allocated", "sandbox", sandboxID, "slot", s.Name, "envd", s.HostReachableAddr.String())
	return s, nil
}

// Release removes everything Allocate created for s. The VMM must have
// exited: a process still inside keeps the namespace alive.
func (m *Manager) Release(ctx context.Context, s *Slot) error {
	if s == nil {
		return errors.New("release network: nil slot")
	}
	if err := m.checkSlot(s); err != nil {
		return fmt.Errorf("release network: %w", err)
	}
	err := m.teardown(s)
	m.mu.Lock()
	if m.used[s.Index] == s.SandboxID {
		delete(m.used, s.Index)
	}
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("release network %s: %w", s.Name, err)
	}
	m.st.log.DebugContext(ctx, "network: slot released", "sandbox", s.SandboxID, "slot", s.Name)
	return nil
}

// Adopt takes over a slot built by an earlier agent process (from the JSON
// it persisted): it checks the namespace and host link still exist, marks
// the index used and re-applies the namespace rules.
func (m *Manager) Adopt(ctx context.Context, s *Slot) error {
	if s == nil {
		return errors.New("adopt network: nil slot")
	}
	if err := m.checkSlot(s); err != nil {
		return fmt.Errorf("adopt network: %w", err)
	}
	m.mu.Lock()
	ready := m.ready
	m.mu.Unlock()
	if !ready {
		return fmt.Errorf("adopt network %s: %w", s.Name, errNotReady)
	}
	if _, err := os.Stat(s.NetNSPath); err != nil {
		return fmt.Errorf("adopt network %s: namespace: %w", s.Name, err)
	}
	if _, err := netlink.LinkByName(s.HostVeth); err != nil {
		return fmt.Errorf("adopt network %s: host link %s: %w", s.Name, s.HostVeth, err)
	}
	m.mu.Lock()
	if owner, ok := m.used[s.Index]; ok {
		m.mu.Unlock()
		return fmt.Errorf("adopt network %s: slot already used by sandbox %s", s.Name, owner)
	}
	m.used[s.Index] = s.SandboxID
	m.mu.Unlock()
	if err := m.applyNSRules(s); err != nil {
		m.unreserve(s.Index)
		return fmt.Errorf("adopt network %s: %w", s.Name, err)
	}
	m.st.log.InfoContext(ctx, "network: slot adopted", "sandbox", s.SandboxID, "slot", s.Name)
	return nil
}

// SetInternetAccess switches a live slot's egress on or off (atomically
// replaces its namespace rules). Turning it off stops new guest-initiated
// connections; flows already established keep going until they end.
func (m *Manager) SetInternetAccess(ctx context.Context, s *Slot, on bool) error {
	if s == nil {
		return errors.New("set internet access: nil slot")
	}
	if err := m.checkSlot(s); err != nil {
		return fmt.Errorf("set internet access: %w", err)
	}
	s.Options.InternetAccess = on
	if err := m.applyNSRules(s); err != nil {
		return fmt.Errorf("set internet access %s: %w", s.Name, err)
	}
	return nil
}

// CleanupStale removes what a crashed agent left behind: namespaces, host
// links and root-namespace nft tables carrying our prefix, except slots for
// which keep(name) is true (live VMs to re-adopt), slots this Manager holds,
// and the current host table. keep may be nil. It returns what it removed.
func (m *Manager) CleanupStale(ctx context.Context, keep func(name string) bool) ([]string, error) {
	skip := func(name string) bool {
		idx := m.st.indexOf(name)
		if idx < 0 {
			return true // not ours
		}
		m.mu.Lock()
		_, inUse := m.used[idx]
		m.mu.Unlock()
		return inUse || (keep != nil && keep(name))
	}
	var removed []string
	var errs []error

	// Links first: deleting a host veth is synchronous, while a namespace
	// is freed asynchronously after it is unpinned.
	links, err := listLinks()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		if skip(name) {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", name, err))
			continue
		}
		removed = append(removed, "link/"+name)
	}

	entries, err := os.ReadDir(NetNSDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", NetNSDir, err))
	}
	for _, e := range entries {
		if skip(e.Name()) {
			continue
		}
		if err := deleteNamedNS(NetNSDir + "/" + e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns/"+e.Name())
	}

	isStaleTable := func(name string) bool {
		return len(name) > len(m.st.prefix) && name[:len(m.st.prefix)] == m.st.prefix && name != m.st.hostTableName()
	}
	if err := m.deleteRootTables(isStaleTable, &removed); err != nil {
		errs = append(errs, err)
	}
	sort.Strings(removed)
	if len(removed) > 0 {
		m.st.log.InfoContext(ctx, "network: removed stale state", "items", removed)
	}
	return removed, errors.Join(errs...)
}

// Slots returns the slot names this Manager currently holds.
func (m *Manager) Slots() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string, len(m.used))
	for idx, id := range m.used {
		out[m.st.prefix+fmt.Sprint(idx)] = id
	}
	return out
}

func (m *Manager) deleteRootTables(match func(string) bool, removed *[]string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return fmt.Errorf("list nft tables: %w", err)
	}
	n := 0
	for _, t := range tables {
		if match(t.Name) {
			c.DelTable(t)
			n++
			if removed != nil {
				*removed = append(*removed, "nft/"+t.Name)
			}
		}
	}
	if n == 0 {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nft tables: %w", err)
	}
	return nil
}

func (m *Manager) reserve(sandboxID string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ready {
		return 0, errNotReady
	}
	for i := 0; i < m.st.maxSlots; i++ {
		if _, ok := m.used[i]; ok {
			continue
		}
		// A leftover namespace (not yet cleaned, or one the kernel will not
		// let go of) makes an index unusable: skip it rather than fail.
		if _, err := os.Lstat(NetNSDir + "/" + m.st.prefix + strconv.Itoa(i)); err == nil {
			continue
		}
		m.used[i] = sandboxID
		return i, nil
	}
	return 0, ErrExhausted
}

func (m *Manager) unreserve(idx int) {
	m.mu.Lock()
	delete(m.used, idx)
	m.mu.Unlock()
}

// checkSlot rejects slots that do not belong to this configuration (a
// corrupt state file, or one from an agent with another range).
func (m *Manager) checkSlot(s *Slot) error {
	want, err := m.st.slotFor(s.Index, s.SandboxID, s.Options)
	if err != nil {
		return err
	}
	if s.Name != want.Name || s.NetNSPath != want.NetNSPath || s.HostVeth != want.HostVeth ||
		s.HostAddr != want.HostAddr || s.PeerAddr != want.PeerAddr || s.PeerVeth != want.PeerVeth ||
		s.TapDevice != want.TapDevice || s.GuestAddr != want.GuestAddr || s.GatewayAddr != want.GatewayAddr {
		return fmt.Errorf("slot %q (index %d) does not match this agent's network configuration", s.Name, s.Index)
	}
	return nil
}

// build creates namespace, devices, addresses, routes and rules for s.
func (m *Manager) build(s *Slot) error {
	if _, err := createNamedNS(NetNSDir, s.Name); err != nil {
		return err
	}
	nsFd, err := unix.Open(s.NetNSPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer unix.Close(nsFd)

	// The veth is created from the root namespace with its peer placed
	// straight into the sandbox namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostVeth},
		PeerName:      s.PeerVeth,
		PeerNamespace: netlink.NsFd(nsFd),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", s.HostVeth, err)
	}
	host, err := netlink.LinkByName(s.HostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", s.HostVeth, err)
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: ipNet(s.HostAddr)}); err != nil {
		return fmt.Errorf("address %s on %s: %w", s.HostAddr, s.HostVeth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("up %s: %w", s.HostVeth, err)
	}

	err = runInNS(s.NetNSPath, func() error {
		for _, kv := range [][2]string{
			{"net/ipv4/ip_forward", "1"},
			// The guest gets IPv4 only; no IPv6 means no IPv6 path to audit.
			{"net/ipv6/conf/all/disable_ipv6", "1"},
			{"net/ipv6/conf/default/disable_ipv6", "1"},
		} {
			if err := writeSysctl(kv[0], kv[1]); err != nil {
				return err
			}
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("up lo: %w", err)
		}
		peer, err := netlink.LinkByName(s.PeerVeth)
		if err != nil {
			return fmt.Errorf("find %s: %w", s.PeerVeth, err)
		}
		if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: ipNet(s.PeerAddr)}); err != nil {
			return fmt.Errorf("address %s on %s: %w", s.PeerAddr, s.PeerVeth, err)
		}
		if err := netlink.LinkSetUp(peer); err != nil {
			return fmt.Errorf("up %s: %w", s.PeerVeth, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: s.HostAddr.Addr().AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", s.HostAddr.Addr(), err)
		}

		if err := m.guestLink(s); err != nil {
			return err
		}
		gl, err := netlink.LinkByName(s.TapDevice)
		if err != nil {
			return fmt.Errorf("find %s: %w", s.TapDevice, err)
		}
		if err := netlink.AddrAdd(gl, &netlink.Addr{IPNet: ipNet(s.GatewayAddr)}); err != nil {
			return fmt.Errorf("address %s on %s: %w", s.GatewayAddr, s.TapDevice, err)
		}
		if err := netlink.LinkSetUp(gl); err != nil {
			return fmt.Errorf("up %s: %w", s.TapDevice, err)
		}
		// A permanent neighbour entry: the first packet to the guest does
		// not wait for ARP (runtime-notes: +300 ms otherwise).
		mac, err := net.ParseMAC(s.GuestMAC)
		if err != nil {
			return fmt.Errorf("guest MAC: %w", err)
		}
		if err := netlink.NeighSet(&netlink.Neigh{
			LinkIndex: gl.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: s.GuestAddr.Addr().AsSlice(), HardwareAddr: mac,
		}); err != nil {
			return fmt.Errorf("neighbour %s on %s: %w", s.GuestAddr.Addr(), s.TapDevice, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return m.applyNSRules(s)
}

// createTap makes the persistent TAP the VMM attaches to. Flags match what
// QEMU and Firecracker request (no packet info, virtio-net header), so
// their TUNSETIFF on the existing device succeeds.
func (m *Manager) createTap(s *Slot) error {
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: s.TapDevice},
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Owner:     m.st.tapUID,
		Group:     m.st.tapGID,
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("create tap %s: %w", s.TapDevice, err)
	}
	l, err := netlink.LinkByName(s.TapDevice)
	if err != nil {
		return fmt.Errorf("find tap %s: %w", s.TapDevice, err)
	}
	if err := netlink.LinkSetHardwareAddr(l, m.st.gatewayMAC); err != nil {
		return fmt.Errorf("set MAC of tap %s: %w", s.TapDevice, err)
	}
	return nil
}

func (m *Manager) applyNSRules(s *Slot) error {
	f, err := os.Open(s.NetNSPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", s.Name, err)
	}
	m.st.addNSTable(c, s)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nft table in %s: %w", s.Name, err)
	}
	return nil
}

// teardown deletes the host veth (which takes its peer with it) and the
// namespace (which takes the TAP and the namespace's nft table with it).
func (m *Manager) teardown(s *Slot) error {
	var errs []error
	if l, err := netlink.LinkByName(s.HostVeth); err == nil {
		if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete link %s: %w", s.HostVeth, err))
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		errs = append(errs, fmt.Errorf("find link %s: %w", s.HostVeth, err))
	}
	if err := deleteNamedNS(s.NetNSPath); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

package network

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
)

// NetNSDir is where named network namespaces are bind-mounted (the same
// place iproute2 uses, so `ip netns` shows them).
const NetNSDir = "/var/run/netns"

// Options are per-sandbox network choices.
type Options struct {
	// InternetAccess lets the guest open connections to public addresses.
	// Without it the guest can only answer connections the host opened.
	InternetAccess bool `json:"internet_access"`
}

// Slot is one sandbox's network. It is plain data, JSON-serialisable, so the
// agent can persist it and Adopt it again after a restart.
type Slot struct {
	SandboxID string `json:"sandbox_id"`
	// Index numbers the slot inside the host range; Name derives from it.
	Index int `json:"index"`
	// Name is both the network namespace name and the host-side veth name.
	Name string `json:"name"`
	// NetNSPath is where the VMM process must be started
	// (vmm.Config.NetNSPath).
	NetNSPath string `json:"netns_path"`
	// HostVeth is the veth end in the root namespace, with HostAddr.
	HostVeth string       `json:"host_veth"`
	HostAddr netip.Prefix `json:"host_addr"`
	// PeerVeth is the veth end inside the namespace, with PeerAddr; its
	// default route points at HostAddr.
	PeerVeth string       `json:"peer_veth"`
	PeerAddr netip.Prefix `json:"peer_addr"`
	// TapDevice lives inside the namespace with GatewayAddr; the VMM attaches
	// the guest NIC to it (vmm.Config.TapDevice).
	TapDevice   string       `json:"tap_device"`
	GatewayAddr netip.Prefix `json:"gateway_addr"`
	// GuestAddr and GuestMAC are the guest's fixed address and MAC
	// (identical in every slot).
	GuestAddr netip.Prefix `json:"guest_addr"`
	GuestMAC  string       `json:"guest_mac"`
	// HostReachableAddr is where the host reaches envd: the namespace's veth
	// address, DNAT'ed to the guest. Any other guest TCP port P is reachable
	// at the same address with port P (see GuestPortAddr).
	HostReachableAddr netip.AddrPort `json:"host_reachable_addr"`
	Options           Options        `json:"options"`
}

// GuestPortAddr is the host-reachable address of guest TCP port p.
func (s *Slot) GuestPortAddr(p uint16) netip.AddrPort {
	return netip.AddrPortFrom(s.PeerAddr.Addr(), p)
}

// KernelIPArg is the kernel command-line argument that configures the guest
// NIC statically (ip=client::gateway:netmask::eth0:off), so no DHCP is
// needed inside the guest.
func (s *Slot) KernelIPArg() string {
	mask := net.CIDRMask(s.GuestAddr.Bits(), 32)
	return fmt.Sprintf("ip=%s::%s:%s::eth0:off", s.GuestAddr.Addr(), s.GatewayAddr.Addr(), net.IP(mask).String())
}

// slotFor computes the addresses of slot idx.
func (st *settings) slotFor(idx int, sandboxID string, opts Options) (*Slot, error) {
	if idx < 0 || idx >= st.maxSlots {
		return nil, fmt.Errorf("slot index %d out of range 0..%d", idx, st.maxSlots-1)
	}
	base := st.hostRange.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(idx) * 4
	at := func(off uint32) netip.Addr {
		v := n + off
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	name := st.prefix + strconv.Itoa(idx)
	peer := at(2)
	return &Slot{
		SandboxID:         sandboxID,
		Index:             idx,
		Name:              name,
		NetNSPath:         filepath.Join(NetNSDir, name),
		HostVeth:          name,
		HostAddr:          netip.PrefixFrom(at(1), 30),
		PeerVeth:          st.peerVethName,
		PeerAddr:          netip.PrefixFrom(peer, 30),
		TapDevice:         st.tapName,
		GatewayAddr:       netip.PrefixFrom(st.gatewayIP, st.guestPrefixLen),
		GuestAddr:         netip.PrefixFrom(st.guestIP, st.guestPrefixLen),
		GuestMAC:          st.guestMAC.String(),
		HostReachableAddr: netip.AddrPortFrom(peer, st.envdPort),
		Options:           opts,
	}, nil
}

// indexOf returns the slot index encoded in a name with our prefix, or -1.
func (st *settings) indexOf(name string) int {
	if len(name) <= len(st.prefix) || name[:len(st.prefix)] != st.prefix {
		return -1
	}
	rest := name[len(st.prefix):]
	for _, r := range rest {
		if r < '0' || r > '9' {
			return -1
		}
	}
	if len(rest) > 1 && rest[0] == '0' {
		return -1
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i >= st.maxSlots {
		return -1
	}
	return i
}

// Package network gives every sandbox its own network namespace: a TAP
// device for the microVM, a veth pair to the host, NAT out, and nftables
// rules that keep the guest away from the host, other sandboxes and private
// ranges. Everything is done with netlink and nftables through Go libraries;
// nothing shells out to ip, iptables or nft.
//
// See docs/network.md for the topology.
package network

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
)

// Defaults used when a Config field is left zero.
const (
	// DefaultHostRange is the pool the per-slot /30s are cut from. 10.200/16
	// is rarely used by cloud VPCs, Docker (172.17/16) or Kubernetes pod
	// ranges (10.244/16, 10.42/16).
	DefaultHostRange = "10.200.0.0/16"
	// DefaultPrefix starts every netns, host link and root-namespace nft
	// table name we create, so cleanup can find them.
	DefaultPrefix = "wrn-"
	// DefaultGuestIP, DefaultGatewayIP and DefaultGuestPrefixLen are the
	// guest's address inside every namespace (the same everywhere, so a memory
	// snapshot carrying them can be cloned into any slot).
	DefaultGuestIP        = "169.254.0.21"
	DefaultGatewayIP      = "169.254.0.22"
	DefaultGuestPrefixLen = 30
	// DefaultGuestMAC is locally administered and fixed for the same reason.
	DefaultGuestMAC = "02:fc:00:00:00:05"
	// DefaultGatewayMAC is the TAP's own MAC, fixed too: a restored guest
	// keeps the gateway's MAC in its ARP cache, and with a new one per slot it
	// would wait for that entry to expire (~60 s) before it could answer.
	DefaultGatewayMAC = "02:fc:00:00:00:06"
	// DefaultTapName and DefaultPeerVethName are device names inside each
	// namespace (no clash possible between namespaces).
	DefaultTapName      = "tap0"
	DefaultPeerVethName = "veth0"
	// DefaultEnvdPort is the guest agent's port.
	DefaultEnvdPort = 49983
)

// maxNameLen is IFNAMSIZ-1: link names longer than this are rejected by the
// kernel.
const maxNameLen = 15

// Config configures a Manager. Zero fields take the defaults above.
type Config struct {
	// HostRange is an IPv4 prefix no longer than /29 split into one /30 per
	// slot: .1 on the host end of the veth, .2 on the namespace end.
	HostRange string
	// Prefix names everything we create in the root namespace: netns
	// "<Prefix><index>", host veth "<Prefix><index>", nft table
	// "<Prefix>host".
	Prefix         string
	GuestIP        string
	GatewayIP      string
	GuestPrefixLen int
	GuestMAC       string
	GatewayMAC     string
	TapName        string
	PeerVethName   string
	EnvdPort       uint16
	// TapUID and TapGID own the TAP: the user a VMM runs as must match to
	// attach (Firecracker's jailer drops to its own uid). Default root.
	TapUID, TapGID uint32
	// ExtraDeny lists additional IPv4 prefixes the guest may never reach
	// (e.g. a control plane on a public address).
	ExtraDeny []string
	Logger    *slog.Logger
}

// settings is a validated Config.
type settings struct {
	hostRange      netip.Prefix
	prefix         string
	guestIP        netip.Addr
	gatewayIP      netip.Addr
	guestPrefixLen int
	guestMAC       net.HardwareAddr
	gatewayMAC     net.HardwareAddr
	tapName        string
	peerVethName   string
	envdPort       uint16
	tapUID, tapGID uint32
	deny           []netip.Prefix
	maxSlots       int
	log            *slog.Logger
}

// alwaysDenied are the destinations no guest may reach, whatever its
// internet setting: "this network", private (RFC 1918), carrier-grade NAT
// (often used by overlay networks such as Tailscale), loopback, link-local
// (cloud metadata at 169.254.169.254), multicast and reserved/broadcast.
var alwaysDenied = []string{
	"0.0.0.0/8",
	"10.0.0.0/8",
	"100.64.0.0/10",
	"127.0.0.0/8",
	"169.254.0.0/16",
	"172.16.0.0/12",
	"192.168.0.0/16",
	"224.0.0.0/4",
	"240.0.0.0/4",
}

func (c Config) validate() (*settings, error) {
	s := &settings{
		prefix:         orDefault(c.Prefix, DefaultPrefix),
		tapName:        orDefault(c.TapName, DefaultTapName),
		peerVethName:   orDefault(c.PeerVethName, DefaultPeerVethName),
		envdPort:       c.EnvdPort,
		tapUID:         c.TapUID,
		tapGID:         c.TapGID,
		guestPrefixLen: c.GuestPrefixLen,
		log:            c.Logger,
	}
	if s.envdPort == 0 {
		s.envdPort = DefaultEnvdPort
	}
	if s.guestPrefixLen == 0 {
		s.guestPrefixLen = DefaultGuestPrefixLen
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	var err error
	if s.hostRange, err = netip.ParsePrefix(orDefault(c.HostRange, DefaultHostRange)); err != nil {
		return nil, fmt.Errorf("host range: %w", err)
	}
	s.hostRange = s.hostRange.Masked()
	if !s.hostRange.Addr().Is4() || s.hostRange.Bits() > 29 || s.hostRange.Bits() < 8 {
		return nil, fmt.Errorf("host range %s: need an IPv4 prefix between /8 and /29", s.hostRange)
	}
	s.maxSlots = 1 << (30 - s.hostRange.Bits())
	if err := validName(s.prefix, "prefix"); err != nil {
		return nil, err
	}
	// The longest name is "<prefix><maxSlots-1>" (host veth).
	if l := len(s.prefix) + len(fmt.Sprint(s.maxSlots-1)); l > maxNameLen {
		return nil, fmt.Errorf("prefix %q too long: link names would be %d characters, the kernel allows %d", s.prefix, l, maxNameLen)
	}
	// Slot names are the prefix plus a number: a trailing digit would make
	// them ambiguous.
	if last := s.prefix[len(s.prefix)-1]; last >= '0' && last <= '9' {
		return nil, fmt.Errorf("prefix %q must not end in a digit", s.prefix)
	}
	for _, n := range []struct{ v, what string }{{s.tapName, "tap name"}, {s.peerVethName, "peer veth name"}} {
		if err := validName(n.v, n.what); err != nil {
			return nil, err
		}
	}
	if s.tapName == s.peerVethName {
		return nil, errors.New("tap name and peer veth name must differ")
	}
	if s.guestIP, err = netip.ParseAddr(orDefault(c.GuestIP, DefaultGuestIP)); err != nil || !s.guestIP.Is4() {
		return nil, fmt.Errorf("guest IP %q: not an IPv4 address", orDefault(c.GuestIP, DefaultGuestIP))
	}
	if s.gatewayIP, err = netip.ParseAddr(orDefault(c.GatewayIP, DefaultGatewayIP)); err != nil || !s.gatewayIP.Is4() {
		return nil, fmt.Errorf("gateway IP %q: not an IPv4 address", orDefault(c.GatewayIP, DefaultGatewayIP))
	}
	if s.guestPrefixLen < 8 || s.guestPrefixLen > 30 {
		return nil, fmt.Errorf("guest prefix length %d: need 8..30", s.guestPrefixLen)
	}
	gnet := netip.PrefixFrom(s.guestIP, s.guestPrefixLen).Masked()
	if s.guestIP == s.gatewayIP || !gnet.Contains(s.gatewayIP) {
		return nil, fmt.Errorf("guest %s and gateway %s must be different addresses of one /%d", s.guestIP, s.gatewayIP, s.guestPrefixLen)
	}
	if gnet.Overlaps(s.hostRange) {
		return nil, fmt.Errorf("guest network %s overlaps host range %s", gnet, s.hostRange)
	}
	if s.guestMAC, err = net.ParseMAC(orDefault(c.GuestMAC, DefaultGuestMAC)); err != nil || len(s.guestMAC) != 6 {
		return nil, fmt.Errorf("guest MAC %q: not an Ethernet address", orDefault(c.GuestMAC, DefaultGuestMAC))
	}
	if s.gatewayMAC, err = net.ParseMAC(orDefault(c.GatewayMAC, DefaultGatewayMAC)); err != nil || len(s.gatewayMAC) != 6 {
		return nil, fmt.Errorf("gateway MAC %q: not an Ethernet address", orDefault(c.GatewayMAC, DefaultGatewayMAC))
	}
	if s.gatewayMAC.String() == s.guestMAC.String() {
		return nil, errors.New("gateway MAC and guest MAC must differ")
	}
	deny := append(append([]string{}, alwaysDenied...), s.hostRange.String())
	deny = append(deny, c.ExtraDeny...)
	for _, d := range deny {
		p, err := netip.ParsePrefix(d)
		if err != nil || !p.Addr().Is4() {
			return nil, fmt.Errorf("deny prefix %q: not an IPv4 prefix", d)
		}
		s.deny = append(s.deny, p.Masked())
	}
	return s, nil
}

func validName(v, what string) error {
	if v == "" || len(v) > maxNameLen {
		return fmt.Errorf("%s %q: need 1..%d characters", what, v, maxNameLen)
	}
	for _, r := range v {
		ok := r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("%s %q: only letters, digits, '-' and '_' allowed", what, v)
		}
	}
	return nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

package network

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Small builders for nftables expressions. Each returns the expressions of
// one match so rules read like their nft equivalent.

type match []expr.Any

func rule(parts ...match) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifname pads to IFNAMSIZ like nft does for an exact name.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) match {
	return match{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// iif / oif match an exact interface name.
func iif(n string) match { return metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, ifname(n)) }
func oif(n string) match { return metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, ifname(n)) }

// iifPrefix / oifPrefix match "prefix*": comparing only the prefix bytes is
// how nft encodes a wildcard name.
func iifPrefix(p string) match { return metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, []byte(p)) }
func oifPrefix(p string) match { return metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, []byte(p)) }
func oifNotPrefix(p string) match {
	return metaCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, []byte(p))
}

func ipv4() match {
	return metaCmp(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV4})
}

func ipv6() match {
	return metaCmp(expr.MetaKeyNFPROTO, expr.CmpOpEq, []byte{unix.NFPROTO_IPV6})
}

func tcp() match {
	return metaCmp(expr.MetaKeyL4PROTO, expr.CmpOpEq, []byte{unix.IPPROTO_TCP})
}

// ctEstablished matches "ct state established,related".
func ctEstablished() match {
	return match{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
	}
}

// IPv4 header offsets of the source and destination address.
const (
	offSaddr = 12
	offDaddr = 16
)

// ipIn matches the IPv4 address at off against a prefix (caller must have
// matched ipv4 first).
func ipIn(off uint32, p netip.Prefix) match {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	a := p.Masked().Addr().As4()
	return match{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

func ipIs(off uint32, a netip.Addr) match {
	b := a.As4()
	return match{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]},
	}
}

func accept() match { return match{&expr.Verdict{Kind: expr.VerdictAccept}} }
func drop() match   { return match{&expr.Verdict{Kind: expr.VerdictDrop}} }

func masquerade() match { return match{&expr.Masq{}} }

// dnatTo rewrites the destination address, keeping the port.
func dnatTo(a netip.Addr) match {
	b := a.As4()
	return match{
		&expr.Immediate{Register: 1, Data: b[:]},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

func policy(p nftables.ChainPolicy) *nftables.ChainPolicy { return &p }

// hostTableName is the root-namespace table shared by all slots.
func (st *settings) hostTableName() string { return st.prefix + "host" }

// nsTableName is the table inside each sandbox namespace.
func (st *settings) nsTableName() string { return st.prefix + "ns" }

// addHostTable queues (re)creation of the root-namespace table on c:
//
//	input:       nothing from a sandbox veth reaches the host itself,
//	             except replies to connections the host opened
//	forward:     no sandbox-to-sandbox traffic, nothing from outside opens a
//	             connection into a sandbox, denied ranges dropped again
//	             (defence in depth; the namespace already drops them)
//	postrouting: masquerade the sandbox range on its way out
func (st *settings) addHostTable(c *nftables.Conn) {
	t := &nftables.Table{Name: st.hostTableName(), Family: nftables.TableFamilyINet}
	// Add then delete then add: replaces an older table atomically in one
	// batch, whether or not it existed.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	input := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
		Policy: policy(nftables.ChainPolicyAccept),
	})
	forward := c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
		Policy: policy(nftables.ChainPolicyAccept),
	})
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	add := func(ch *nftables.Chain, e []expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}
	p := st.prefix
	add(input, rule(iifPrefix(p), ctEstablished(), accept()))
	add(input, rule(iifPrefix(p), drop()))

	add(forward, rule(iifPrefix(p), oifPrefix(p), drop()))
	add(forward, rule(oifPrefix(p), ctEstablished(), accept()))
	add(forward, rule(oifPrefix(p), drop()))
	add(forward, rule(iifPrefix(p), ipv6(), drop()))
	for _, d := range st.deny {
		add(forward, rule(iifPrefix(p), ipv4(), ipIn(offDaddr, d), drop()))
	}

	add(post, rule(ipv4(), ipIn(offSaddr, st.hostRange), oifNotPrefix(p), masquerade()))
}

// addNSTable queues (re)creation of the table inside a slot's namespace:
//
//	prerouting:  TCP to the namespace's veth address, arriving from the host,
//	             is DNAT'ed to the guest (envd and any guest port)
//	postrouting: guest traffic leaving by the veth is masqueraded
//	forward:     replies pass; host-to-guest passes; guest-to-outside passes
//	             only with internet access and never to a denied range;
//	             everything else (policy) is dropped
//	input:       the guest cannot talk to the namespace itself (gateway,
//	             veth address) except for replies
func (st *settings) addNSTable(c *nftables.Conn, s *Slot) {
	t := &nftables.Table{Name: st.nsTableName(), Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)

	pre := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	post := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	forward := c.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
		Policy: policy(nftables.ChainPolicyDrop),
	})
	input := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
		Policy: policy(nftables.ChainPolicyAccept),
	})
	add := func(ch *nftables.Chain, e []expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}

	add(pre, rule(iif(s.PeerVeth), ipv4(), ipIs(offDaddr, s.PeerAddr.Addr()), tcp(), dnatTo(s.GuestAddr.Addr())))
	add(post, rule(oif(s.PeerVeth), ipv4(), masquerade()))

	add(forward, rule(ctEstablished(), accept()))
	add(forward, rule(iif(s.PeerVeth), oif(s.TapDevice), accept()))
	if s.Options.InternetAccess {
		for _, d := range st.deny {
			add(forward, rule(iif(s.TapDevice), ipv4(), ipIn(offDaddr, d), drop()))
		}
		add(forward, rule(iif(s.TapDevice), oif(s.PeerVeth), ipv4(), accept()))
	}

	add(input, rule(iif(s.TapDevice), ctEstablished(), accept()))
	add(input, rule(iif(s.TapDevice), drop()))
}

package network

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"defaults", Config{}, ""},
		{"custom range", Config{HostRange: "172.30.0.0/20", Prefix: "sbx-"}, ""},
		{"bad range", Config{HostRange: "nope"}, "host range"},
		{"ipv6 range", Config{HostRange: "fd00::/64"}, "IPv4"},
		{"range too small", Config{HostRange: "10.0.0.0/30"}, "between"},
		{"prefix too long", Config{Prefix: "averyverylong-"}, "too long"},
		{"prefix with slash", Config{Prefix: "a/b"}, "only letters"},
		{"prefix ends in digit", Config{Prefix: "wrn1"}, "digit"},
		{"names clash", Config{TapName: "x0", PeerVethName: "x0"}, "differ"},
		{"bad guest ip", Config{GuestIP: "300.1.1.1"}, "guest IP"},
		{"gateway outside", Config{GatewayIP: "169.254.9.9"}, "one /30"},
		{"guest overlaps range", Config{HostRange: "169.254.0.0/16"}, "overlaps"},
		{"bad mac", Config{GuestMAC: "zz"}, "MAC"},
		{"bad deny", Config{ExtraDeny: []string{"1.2.3.4"}}, "deny prefix"},
		{"bad prefix len", Config{GuestPrefixLen: 31}, "prefix length"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestSlotAddressesAndJSON(t *testing.T) {
	m, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		idx                  int
		name, host, peer, rc string
	}{
		{0, "wrn-0", "10.200.0.1/30", "10.200.0.2/30", "10.200.0.2:49983"},
		{1, "wrn-1", "10.200.0.5/30", "10.200.0.6/30", "10.200.0.6:49983"},
		{64, "wrn-64", "10.200.1.1/30", "10.200.1.2/30", "10.200.1.2:49983"},
		{16383, "wrn-16383", "10.200.255.253/30", "10.200.255.254/30", "10.200.255.254:49983"},
	}
	for _, tc := range tests {
		s, err := m.st.slotFor(tc.idx, "sb", Options{InternetAccess: true})
		if err != nil {
			t.Fatal(err)
		}
		if s.Name != tc.name || s.HostAddr.String() != tc.host || s.PeerAddr.String() != tc.peer || s.HostReachableAddr.String() != tc.rc {
			t.Errorf("slot %d = %s %s %s %s", tc.idx, s.Name, s.HostAddr, s.PeerAddr, s.HostReachableAddr)
		}
		if got := m.st.indexOf(s.Name); got != tc.idx {
			t.Errorf("indexOf(%s) = %d", s.Name, got)
		}
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var back Slot
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back != *s {
			t.Errorf("JSON round trip: %+v != %+v", back, *s)
		}
		if err := m.checkSlot(&back); err != nil {
			t.Errorf("checkSlot after round trip: %v", err)
		}
	}
	if _, err := m.st.slotFor(16384, "sb", Options{}); err == nil {
		t.Error("slot beyond the range accepted")
	}
	s, _ := m.st.slotFor(0, "sb", Options{})
	if got, want := s.KernelIPArg(), "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"; got != want {
		t.Errorf("KernelIPArg = %q, want %q", got, want)
	}
	bad := *s
	bad.HostAddr = netip.MustParsePrefix("10.9.9.9/30")
	if err := m.checkSlot(&bad); err == nil {
		t.Error("checkSlot accepted a slot with foreign addresses")
	}
}

func FuzzIndexOf(f *testing.F) {
	for _, s := range []string{"wrn-0", "wrn-16383", "wrn-16384", "wrn-01", "wrn-", "wrn-host", "eth0", "wrn--1", "wrn-9999999999999999999999"} {
		f.Add(s)
	}
	m, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name string) {
		idx := m.st.indexOf(name)
		if idx < 0 {
			return
		}
		s, err := m.st.slotFor(idx, "x", Options{})
		if err != nil {
			t.Fatalf("indexOf(%q) = %d, not a valid slot: %v", name, idx, err)
		}
		if s.Name != name {
			t.Fatalf("indexOf(%q) = %d, whose name is %q", name, idx, s.Name)
		}
	})
}

func FuzzConfig(f *testing.F) {
	f.Add("10.200.0.0/16", "wrn-", "169.254.0.21", "169.254.0.22", "02:fc:00:00:00:05", 30)
	f.Add("1.2.3.4/8", "x", "1.1.1.1", "1.1.1.2", "", 24)
	f.Fuzz(func(t *testing.T, rng, prefix, guest, gw, mac string, bits int) {
		m, err := New(Config{HostRange: rng, Prefix: prefix, GuestIP: guest, GatewayIP: gw, GuestMAC: mac, GuestPrefixLen: bits})
		if err != nil {
			return
		}
		// Any accepted config must produce valid, short link names.
		s, err := m.st.slotFor(m.st.maxSlots-1, "x", Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(s.HostVeth) > maxNameLen {
			t.Fatalf("name %q too long", s.HostVeth)
		}
		if m.st.indexOf(s.Name) != m.st.maxSlots-1 {
			t.Fatalf("name %q does not parse back", s.Name)
		}
	})
}

// TestIsolation builds three sandboxes (two with internet access, one
// without) with stand-in guests, a fake LAN server, a fake internet server
// and servers on the host, then checks who can reach whom.
func TestIsolation(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, true)
	ctx := t.Context()

	lanAddrs := []netip.Addr{
		tip("172.31.N.2"),
		tip("192.168.N.2"),
		tip("100.100.N.2"),
	}
	lan := helperNS(t, helperPrefix+"lan", tprefix("10.232.N.1/30"), tprefix("10.232.N.2/30"), lanAddrs...)
	pub := helperNS(t, helperPrefix+"pub", tprefix("198.18.N.1/30"), tprefix("198.18.N.2/30"))
	serve(t, listenIn(t, lan, "0.0.0.0:8080"), "lan")
	serve(t, listenIn(t, pub, "0.0.0.0:8080"), "pub")

	// An address of the host that is neither private nor loopback, to show
	// the host input rule (not the private-range list) protects the host.
	// (A veth pair: this kernel has no dummy driver.)
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: helperPrefix + "dum"}, PeerName: helperPrefix + "dump"}
	if err := netlink.LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(dummy) })
	hostPublic := tip("198.51.100.N")
	if err := netlink.AddrAdd(dummy, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(hostPublic, 32))}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(dummy); err != nil {
		t.Fatal(err)
	}
	hostL := listenIn(t, "", "0.0.0.0:0")
	hostPort := uint16(hostL.Addr().(*net.TCPAddr).Port)
	serve(t, hostL, "host")

	slots := map[string]*Slot{}
	for _, sb := range []struct {
		id       string
		internet bool
	}{{"a", true}, {"b", true}, {"c", false}} {
		s, err := m.Allocate(ctx, sb.id, Options{InternetAccess: sb.internet})
		if err != nil {
			t.Fatal(err)
		}
		slots[sb.id] = s
		t.Cleanup(func() {
			if err := m.Release(ctx, s); err != nil {
				t.Error(err)
			}
			_ = deleteNamedNS(guestNSPath(s))
		})
		serve(t, listenIn(t, guestNSPath(s), fmt.Sprintf("0.0.0.0:%d", DefaultEnvdPort)), "guest-"+sb.id)
		// A server in the sandbox namespace itself (where QEMU runs).
		serve(t, listenIn(t, s.NetNSPath, "0.0.0.0:7000"), "ns-"+sb.id)
	}
	a, b, c := slots["a"], slots["b"], slots["c"]
	guest := func(s *Slot) string { return guestNSPath(s) }
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }
	loop := netip.MustParseAddr("127.0.0.1")

	tests := []struct {
		name string
		from string // namespace path, "" = host
		to   netip.AddrPort
		want string // greeting, "" = must not connect
	}{
		// Controls: every server is up and routable.
		{"host to guest a envd", "", a.HostReachableAddr, "guest-a"},
		{"host to guest b envd", "", b.HostReachableAddr, "guest-b"},
		{"host to guest c envd (no internet)", "", c.HostReachableAddr, "guest-c"},
		{"host to lan 10/8", "", ap(tip("10.232.N.2"), 8080), "lan"},
		{"host to lan 172.16/12", "", ap(lanAddrs[0], 8080), "lan"},
		{"host to lan 192.168/16", "", ap(lanAddrs[1], 8080), "lan"},
		{"host to lan 100.64/10", "", ap(lanAddrs[2], 8080), "lan"},
		{"host to public", "", ap(tip("198.18.N.2"), 8080), "pub"},
		{"host own public address", "", ap(hostPublic, hostPort), "host"},
		{"guest a to public", guest(a), ap(tip("198.18.N.2"), 8080), "pub"},
		{"guest b to public", guest(b), ap(tip("198.18.N.2"), 8080), "pub"},

		// Denied.
		{"guest c (no internet) to public", guest(c), ap(tip("198.18.N.2"), 8080), ""},
		{"guest a to host loopback", guest(a), ap(loop, hostPort), ""},
		{"guest a to host public address", guest(a), ap(hostPublic, hostPort), ""},
		{"guest a to its host veth", guest(a), ap(a.HostAddr.Addr(), hostPort), ""},
		{"guest a to its gateway", guest(a), ap(a.GatewayAddr.Addr(), 7000), ""},
		{"guest a to its namespace veth", guest(a), ap(a.PeerAddr.Addr(), 7000), ""},
		{"guest a to guest b envd", guest(a), b.HostReachableAddr, ""},
		{"guest a to host veth of b", guest(a), ap(b.HostAddr.Addr(), hostPort), ""},
		{"guest b to guest a envd", guest(b), a.HostReachableAddr, ""},
		{"guest a to lan 10/8", guest(a), ap(tip("10.232.N.2"), 8080), ""},
		{"guest a to lan 172.16/12", guest(a), ap(lanAddrs[0], 8080), ""},
		{"guest a to lan 192.168/16", guest(a), ap(lanAddrs[1], 8080), ""},
		{"guest a to lan 100.64/10", guest(a), ap(lanAddrs[2], 8080), ""},
		{"guest c to host loopback", guest(c), ap(loop, hostPort), ""},
		{"guest c to its gateway", guest(c), ap(c.GatewayAddr.Addr(), 7000), ""},
		{"guest c to guest a envd", guest(c), a.HostReachableAddr, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := fetch(tc.from, tc.to, 700*time.Millisecond)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("connected to %s and got %q; want blocked", tc.to, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("fetch %s = %q, %v; want %q", tc.to, got, err, tc.want)
			}
		})
	}
}

// TestSetInternetAccess flips egress of a live slot both ways.
func TestSetInternetAccess(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, true)
	ctx := t.Context()
	pub := helperNS(t, helperPrefix+"pub2", tprefix("198.19.N.1/30"), tprefix("198.19.N.2/30"))
	serve(t, listenIn(t, pub, "0.0.0.0:8080"), "pub")
	s, err := m.Allocate(ctx, "flip", Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Release(ctx, s); _ = deleteNamedNS(guestNSPath(s)) })
	to := netip.AddrPortFrom(tip("198.19.N.2"), 8080)
	for _, step := range []bool{false, true, false} {
		if err := m.SetInternetAccess(ctx, s, step); err != nil {
			t.Fatal(err)
		}
		got, err := fetch(guestNSPath(s), to, 700*time.Millisecond)
		if reached := err == nil && got == "pub"; reached != step {
			t.Fatalf("internet=%v: reached=%v (%q, %v)", step, reached, got, err)
		}
	}
}

// TestParallelAllocate allocates ten slots at once, checks each guest is
// reachable through its own address, releases them and checks nothing is
// left.
func TestParallelAllocate(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, true)
	ctx := t.Context()
	const n = 10
	slots := make([]*Slot, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots[i], errs[i] = m.Allocate(ctx, fmt.Sprintf("p%d", i), Options{InternetAccess: i%2 == 0})
		}()
	}
	wg.Wait()
	t.Logf("%d slots allocated in parallel in %v", n, time.Since(start))
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[netip.AddrPort]bool{}
	for i, s := range slots {
		if seen[s.HostReachableAddr] {
			t.Fatalf("address %s handed out twice", s.HostReachableAddr)
		}
		seen[s.HostReachableAddr] = true
		want := fmt.Sprintf("guest-%d", i)
		serve(t, listenIn(t, guestNSPath(s), fmt.Sprintf("0.0.0.0:%d", DefaultEnvdPort)), want)
		if got, err := fetch("", s.HostReachableAddr, 2*time.Second); err != nil || got != want {
			t.Fatalf("slot %s: fetch = %q, %v; want %q", s.Name, got, err, want)
		}
	}
	if got := len(m.Slots()); got != n {
		t.Fatalf("Slots() has %d entries, want %d", got, n)
	}
	start = time.Now()
	for _, s := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Release(ctx, s); err != nil {
				t.Error(err)
			}
			_ = deleteNamedNS(guestNSPath(s))
		}()
	}
	wg.Wait()
	t.Logf("%d slots released in %v", n, time.Since(start))
	if left := leftovers(t, testPrefix); !slices.Equal(left, []string{"nft/" + testPrefix + "host"}) {
		t.Fatalf("after release: %v, want only the host table", left)
	}
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, testPrefix); len(left) != 0 {
		t.Fatalf("after shutdown: %v", left)
	}
}

// TestRealTap uses the production TAP path: it opens tap0 the way a VMM
// does and checks that a connection from the host to HostReachableAddr
// arrives on it as a frame for the guest's MAC, IP and envd port.
func TestRealTap(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, false)
	m.st.tapUID, m.st.tapGID = 4242, 4343
	ctx := t.Context()
	s, err := m.Allocate(ctx, "tap", Options{InternetAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Release(ctx, s) })

	var tap *os.File
	err = runInNS(s.NetNSPath, func() error {
		l, err := netlink.LinkByName(s.TapDevice)
		if err != nil {
			return err
		}
		tt, ok := l.(*netlink.Tuntap)
		if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP || tt.NonPersist || tt.Owner != 4242 || tt.Group != 4343 {
			return fmt.Errorf("tap device %+v: want a persistent TAP owned by 4242:4343", l)
		}
		if a := l.Attrs(); a.Flags&net.FlagUp == 0 {
			return fmt.Errorf("tap is not up")
		}
		// Every slot's TAP has the same MAC so restored guests' ARP caches stay right.
		if got := l.Attrs().HardwareAddr.String(); got != DefaultGatewayMAC {
			return fmt.Errorf("tap MAC = %s, want the fixed gateway MAC %s", got, DefaultGatewayMAC)
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		var req [unix.IFNAMSIZ + 64]byte
		copy(req[:], s.TapDevice)
		binary.NativeEndian.PutUint16(req[unix.IFNAMSIZ:], unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req[0]))); e != 0 {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s with QEMU's flags: %w", s.TapDevice, e)
		}
		if err := unix.SetNonblock(fd, true); err != nil {
			return err
		}
		tap = os.NewFile(uintptr(fd), "tap")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()

	go func() {
		c, err := net.DialTimeout("tcp4", s.HostReachableAddr.String(), 3*time.Second)
		if err == nil {
			c.Close()
		}
	}()
	mac, _ := net.ParseMAC(s.GuestMAC)
	guest := s.GuestAddr.Addr().As4()
	tap.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 65536)
	const vnetHdr = 10 // struct virtio_net_hdr
	for {
		n, err := tap.Read(buf)
		if err != nil {
			t.Fatalf("no SYN for the guest arrived on %s: %v", s.TapDevice, err)
		}
		f := buf[vnetHdr:n]
		// Ethernet(14) + IPv4 + TCP.
		if len(f) < 14+20+20 || binary.BigEndian.Uint16(f[12:14]) != 0x0800 {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+20 {
			continue
		}
		tcp := ip[ihl:]
		if string(f[0:6]) == string(mac) && [4]byte(ip[16:20]) == guest &&
			binary.BigEndian.Uint16(tcp[2:4]) == DefaultEnvdPort && tcp[13]&0x02 != 0 {
			return // SYN for the guest, DNAT'ed and addressed to its MAC
		}
	}
}

// TestCleanupStaleAndAdopt simulates a crashed agent: a new Manager
// removes the slot nobody keeps plus a stray table, adopts the kept one
// (from its JSON) and the kept guest stays reachable.
func TestCleanupStaleAndAdopt(t *testing.T) {
	requireRoot(t)
	old := newTestManager(t, true)
	ctx := t.Context()
	keep, err := old.Allocate(ctx, "keep", Options{InternetAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := old.Allocate(ctx, "gone", Options{InternetAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamedNS(guestNSPath(keep)); _ = deleteNamedNS(guestNSPath(gone)) })
	serve(t, listenIn(t, guestNSPath(keep), fmt.Sprintf("0.0.0.0:%d", DefaultEnvdPort)), "kept")
	persisted, err := json.Marshal(keep)
	if err != nil {
		t.Fatal(err)
	}
	// A stray table from an older agent version.
	strayCfg := *old.st
	strayCfg.prefix = testPrefix + "old"
	if err := (&Manager{st: &strayCfg}).Init(ctx); err != nil {
		t.Fatal(err)
	}

	// "Restart": a fresh Manager with the same configuration.
	m, err := New(Config{Prefix: testPrefix, HostRange: testRange, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Init(ctx); err != nil {
		t.Fatal(err)
	}
	removed, err := m.CleanupStale(ctx, func(name string) bool { return name == keep.Name })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"link/" + gone.Name, "netns/" + gone.Name, "nft/" + testPrefix + "oldhost"}
	if !slices.Equal(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	var back Slot
	if err := json.Unmarshal(persisted, &back); err != nil {
		t.Fatal(err)
	}
	if err := m.Adopt(ctx, &back); err != nil {
		t.Fatal(err)
	}
	if err := m.Adopt(ctx, &back); err == nil {
		t.Fatal("adopting the same slot twice succeeded")
	}
	if got, err := fetch("", back.HostReachableAddr, 2*time.Second); err != nil || got != "kept" {
		t.Fatalf("kept guest after adopt: %q, %v", got, err)
	}
	// A new allocation must not reuse the adopted index.
	s2, err := m.Allocate(ctx, "new", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Index == back.Index {
		t.Fatalf("allocated index %d which is adopted", s2.Index)
	}
	// A second cleanup with nothing kept must leave held slots alone.
	if removed, err := m.CleanupStale(ctx, nil); err != nil || len(removed) != 0 {
		t.Fatalf("cleanup with all slots held removed %v (%v)", removed, err)
	}
	for _, s := range []*Slot{&back, s2} {
		if err := m.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	_ = deleteNamedNS(guestNSPath(s2))
	if left := leftovers(t, testPrefix); !slices.Equal(left, []string{"nft/" + testPrefix + "host"}) {
		t.Fatalf("leftovers: %v", left)
	}
	// Adopting a slot whose namespace is gone fails clearly.
	if err := m.Adopt(ctx, &back); err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("adopt of a released slot: %v", err)
	}
}

// TestAllocateFailureLeavesNothing makes the guest-link step fail and
// checks the half-built slot is gone and its index reusable.
func TestAllocateFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	m := newTestManager(t, false)
	ctx := t.Context()
	m.guestLink = func(*Slot) error { return errors.New("injected failure") }
	if _, err := m.Allocate(ctx, "bad", Options{}); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Allocate error = %v", err)
	}
	if left := leftovers(t, testPrefix); !slices.Equal(left, []string{"nft/" + testPrefix + "host"}) {
		t.Fatalf("leftovers after failed allocate: %v", left)
	}
	m.guestLink = m.createTap
	s, err := m.Allocate(ctx, "good", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Index != 0 {
		t.Fatalf("index %d, want 0 (failed allocation must free its index)", s.Index)
	}
	// Release is idempotent: a second call (e.g. a retried destroy) is fine.
	for range 2 {
		if err := m.Release(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBadInput(t *testing.T) {
	m, err := New(Config{Prefix: testPrefix, HostRange: testRange, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if _, err := m.Allocate(ctx, "", Options{}); err == nil {
		t.Error("empty sandbox ID accepted")
	}
	if err := m.Release(ctx, nil); err == nil {
		t.Error("nil slot accepted by Release")
	}
	if err := m.Adopt(ctx, nil); err == nil {
		t.Error("nil slot accepted by Adopt")
	}
	if err := m.Adopt(ctx, &Slot{Index: 99999}); err == nil {
		t.Error("out-of-range slot accepted by Adopt")
	}
	if err := m.SetInternetAccess(ctx, &Slot{Index: 1, Name: "x"}, true); err == nil {
		t.Error("foreign slot accepted by SetInternetAccess")
	}
	// Before Init no slot may be built: it would have no host protection.
	if _, err := m.Allocate(ctx, "early", Options{}); !errors.Is(err, errNotReady) {
		t.Errorf("Allocate before Init: %v", err)
	}
	s, _ := m.st.slotFor(0, "early", Options{})
	if err := m.Adopt(ctx, s); !errors.Is(err, errNotReady) {
		t.Errorf("Adopt before Init: %v", err)
	}
}

// BenchmarkAllocateRelease measures building and tearing down one
// production slot (TAP path).
func BenchmarkAllocateRelease(b *testing.B) {
	testenv.Require(b, os.Geteuid() == 0, "needs root")
	m, err := New(Config{Prefix: testPrefix, HostRange: testRange, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	if err := m.Init(ctx); err != nil {
		b.Fatal(err)
	}
	defer m.Shutdown(ctx)
	var alloc time.Duration
	for b.Loop() {
		start := time.Now()
		s, err := m.Allocate(ctx, "bench", Options{InternetAccess: true})
		if err != nil {
			b.Fatal(err)
		}
		alloc += time.Since(start)
		if err := m.Release(ctx, s); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(alloc.Microseconds())/float64(b.N)/1000, "alloc-ms/op")
}

// TestQemuAttachesToTap starts QEMU (paused, no guest needed) inside a
// production slot's namespace on its TAP, as the qemu driver does, and
// checks the TAP gets a carrier only once QEMU holds it.
func TestQemuAttachesToTap(t *testing.T) {
	requireRoot(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	testenv.Require(t, err == nil, "qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
	m := newTestManager(t, false)
	ctx := t.Context()
	s, err := m.Allocate(ctx, "qemu", Options{InternetAccess: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Release(ctx, s) })

	carrier := func() bool {
		var up bool
		if err := runInNS(s.NetNSPath, func() error {
			l, err := netlink.LinkByName(s.TapDevice)
			if err != nil {
				return err
			}
			up = l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return up
	}
	if carrier() {
		t.Fatal("TAP has a carrier before any VMM attached")
	}
	cmd := exec.Command(qemu, "-M", "microvm", "-nodefaults", "-no-user-config", "-S", "-display", "none",
		"-netdev", "tap,id=n0,ifname="+s.TapDevice+",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac="+s.GuestMAC)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	// Forked from a thread inside the namespace, QEMU starts there.
	if err := runInNS(s.NetNSPath, cmd.Start); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !carrier() {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("qemu exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("TAP never got a carrier; qemu output:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

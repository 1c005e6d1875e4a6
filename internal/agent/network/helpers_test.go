package network

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// Test names use their own prefix and range so they never touch a real
// agent's state. The process ID is part of every name and of the test
// addresses, so two test processes (another engineer running ./... at the
// same time) do not collide either. Helper namespaces the tests build
// ("fake LAN", "fake internet") use a prefix that does not start with the
// manager prefix.
var (
	testID        = os.Getpid() % 200
	testPrefix    = fmt.Sprintf("wnt%d-", testID)
	testRange     = fmt.Sprintf("10.231.%d.0/24", testID)
	helperPrefix  = fmt.Sprintf("wnx%d-", testID)
	guestNSPrefix = fmt.Sprintf("wng%d-", testID)
)

// tip is a test address with the process's test ID in place of N.
func tip(format string) netip.Addr {
	return netip.MustParseAddr(strings.ReplaceAll(format, "N", fmt.Sprint(testID)))
}

func tprefix(format string) netip.Prefix {
	return netip.MustParsePrefix(strings.ReplaceAll(format, "N", fmt.Sprint(testID)))
}

// requireRoot skips (or fails under CI=true) when the test cannot create
// namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	var why string
	switch {
	case os.Geteuid() != 0:
		why = "needs root (network namespaces, nftables)"
	default:
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			why = "needs /dev/net/tun: " + err.Error()
		}
	}
	testenv.Require(t, why == "", "%s", why)
}

// newTestManager returns an initialised Manager with the test prefix whose
// guest end is a veth into a stand-in guest namespace instead of a TAP.
func newTestManager(t *testing.T, standIn bool) *Manager {
	t.Helper()
	m, err := New(Config{Prefix: testPrefix, HostRange: testRange, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if standIn {
		m.guestLink = standInGuest
	}
	if err := m.Init(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { wipeTestState(t, m) })
	return m
}

func guestNSPath(s *Slot) string { return filepath.Join(NetNSDir, guestNSPrefix+s.SandboxID) }

// standInGuest replaces only the guest end: "tap0" becomes a veth whose
// peer "eth0" sits in a namespace of its own, configured exactly as the
// kernel command line configures a real guest (fixed IP, MAC, gateway).
func standInGuest(s *Slot) error {
	gpath := guestNSPath(s)
	_ = deleteNamedNS(gpath)
	if _, err := createNamedNS(NetNSDir, filepath.Base(gpath)); err != nil {
		return err
	}
	fd, err := unix.Open(gpath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	mac, err := net.ParseMAC(s.GuestMAC)
	if err != nil {
		return err
	}
	if err := netlink.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: s.TapDevice}, PeerName: "eth0",
		PeerHardwareAddr: mac, PeerNamespace: netlink.NsFd(fd),
	}); err != nil {
		return fmt.Errorf("stand-in guest veth: %w", err)
	}
	return runInNS(gpath, func() error {
		for _, n := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if n == "eth0" {
				if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(s.GuestAddr)}); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		l, _ := netlink.LinkByName("eth0")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: s.GatewayAddr.Addr().AsSlice()})
	})
}

// wipeTestState removes every trace of the test prefix, so a failing test
// does not poison the next run.
func wipeTestState(t *testing.T, m *Manager) {
	t.Helper()
	entries, _ := os.ReadDir(NetNSDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), testPrefix) || strings.HasPrefix(e.Name(), helperPrefix) || strings.HasPrefix(e.Name(), guestNSPrefix) {
			_ = deleteNamedNS(filepath.Join(NetNSDir, e.Name()))
		}
	}
	links, _ := listLinks()
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, testPrefix) || strings.HasPrefix(n, helperPrefix) {
			_ = netlink.LinkDel(l)
		}
	}
	_ = m.deleteRootTables(func(n string) bool { return strings.HasPrefix(n, testPrefix) }, nil)
}

// leftovers lists namespaces, root links and root nft tables with prefix p.
func leftovers(t *testing.T, p string) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(NetNSDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), p) {
			out = append(out, "netns/"+e.Name())
		}
	}
	links, err := listLinks()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, p) {
			out = append(out, "link/"+l.Attrs().Name)
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, p) {
			out = append(out, "nft/"+tb.Name)
		}
	}
	return out
}

// serve answers every connection on l with greeting and closes it.
func serve(t *testing.T, l net.Listener, greeting string) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, greeting)
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
}

// listenIn opens a TCP listener inside the namespace at path ("" = root).
func listenIn(t *testing.T, path, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	listen := func() (err error) { l, err = net.Listen("tcp4", addr); return err }
	var err error
	if path == "" {
		err = listen()
	} else {
		err = runInNS(path, listen)
	}
	if err != nil {
		t.Fatalf("listen %s in %q: %v", addr, path, err)
	}
	return l
}

// fetch connects from the namespace at path ("" = root) and returns the
// greeting line.
func fetch(path string, to netip.AddrPort, timeout time.Duration) (string, error) {
	var line string
	do := func() error {
		c, err := net.DialTimeout("tcp4", to.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		line, err = bufio.NewReader(c).ReadString('\n')
		line = strings.TrimSpace(line)
		return err
	}
	if path == "" {
		return line, do()
	}
	return line, runInNS(path, do)
}

// helperNS is a namespace the test itself builds, wired to the host by a
// veth "<name>" (host) / "eth0" (inside), with extra /32 addresses routed to
// it from the host. It stands for a LAN server or an internet server that
// exists only inside this machine.
func helperNS(t *testing.T, name string, hostAddr, nsAddr netip.Prefix, extra ...netip.Addr) string {
	t.Helper()
	path, err := createNamedNS(NetNSDir, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNamedNS(path) })
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(fd)}); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(h) })
	if err := netlink.AddrAdd(h, &netlink.Addr{IPNet: ipNet(hostAddr)}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(h); err != nil {
		t.Fatal(err)
	}
	for _, a := range extra {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: h.Attrs().Index, Dst: ipNet(netip.PrefixFrom(a, 32)), Gw: nsAddr.Addr().AsSlice()}); err != nil {
			t.Fatalf("route %s: %v", a, err)
		}
	}
	err = runInNS(path, func() error {
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		e, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(e, &netlink.Addr{IPNet: ipNet(nsAddr)}); err != nil {
			return err
		}
		for _, a := range extra {
			if err := netlink.AddrAdd(e, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, 32))}); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(e); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: e.Attrs().Index, Gw: hostAddr.Addr().AsSlice()})
	})
	if err != nil {
		t.Fatalf("configure %s: %v", name, err)
	}
	return path
}

// quiet keeps the manager's progress logs out of test output.
var quiet = slog.New(slog.DiscardHandler)

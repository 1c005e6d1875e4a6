package pid1

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// inNewNetns runs fn on a thread moved into a fresh network namespace.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	testenv.Require(t, os.Getuid() == 0, "needs root to create a network namespace")
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("new netns: %v", err)
	}
	defer ns.Close()
	defer func() {
		// Only a thread back in its namespace may serve other goroutines.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
	}()
	fn()
}

func TestConfigureNetwork(t *testing.T) {
	cfg, err := ParseIPArg("10.77.0.2::10.77.0.1:255.255.255.252::eth0:off")
	if err != nil {
		t.Fatal(err)
	}
	inNewNetns(t, func() {
		// A veth pair (no dummy driver on every kernel); its peer stays down.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			t.Fatalf("add veth eth0: %v", err)
		}
		// Twice: the second run is what happens when the kernel's IP_PNP
		// already configured the device.
		for i := range 2 {
			if err := ConfigureNetwork(cfg); err != nil {
				t.Fatalf("configure (run %d): %v", i, err)
			}
		}
		lo, _ := netlink.LinkByName("lo")
		if lo.Attrs().Flags&1 == 0 { // net.FlagUp
			t.Error("lo is down")
		}
		eth, _ := netlink.LinkByName("eth0")
		addrs, _ := netlink.AddrList(eth, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.2/30" {
			t.Errorf("eth0 addresses %v", addrs)
		}
		routes, _ := netlink.RouteList(eth, netlink.FAMILY_V4)
		var def bool
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.String() == "10.77.0.1" {
				def = true
			}
		}
		if !def {
			t.Errorf("no default route via 10.77.0.1: %v", routes)
		}
		if err := ConfigureNetwork(&IPConfig{ClientIP: cfg.ClientIP, Netmask: cfg.Netmask, Device: "eth9"}); err == nil {
			t.Error("configuring a missing device succeeded")
		}
		if err := ConfigureNetwork(nil); err != nil {
			t.Errorf("lo only: %v", err)
		}
	})
}

func TestWriteResolvConf(t *testing.T) {
	dir := t.TempDir()
	// A dangling symlink, as systemd images have, is followed.
	os.MkdirAll(filepath.Join(dir, "run"), 0o755)
	link := filepath.Join(dir, "resolv.conf")
	os.Symlink("run/sub/resolv.conf", link)
	cl, _ := ParseCmdline("wrenn.dns=192.0.2.1,192.0.2.2")
	if err := writeResolvConf(link, cl.DNS); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(link)
	if err != nil || string(b) != "nameserver 192.0.2.1\nnameserver 192.0.2.2\n" {
		t.Fatalf("resolv.conf = %q %v", b, err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("the symlink was replaced")
	}
	if strings.Contains(string(b), "8.8.8.8") {
		t.Error("public resolver")
	}
}

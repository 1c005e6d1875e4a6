package pid1

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/atomicfile"
)

// DefaultPath is set as PATH when the kernel gave init none.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultHostname is used when neither wrenn.hostname= nor ip= name the host.
const DefaultHostname = "wrenn"

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var mounts = []mountSpec{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666,gid=5"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// Setup does the init duties that must precede serving: environment,
// mounts, hostname, network and resolv.conf. Failures of optional parts are
// logged; the returned error is only for what makes the VM unusable.
func Setup(ctx context.Context, log *slog.Logger) error {
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", DefaultPath)
	}
	if os.Getenv("HOME") == "" || os.Getenv("HOME") == "/" {
		os.Setenv("HOME", "/root")
	}
	if err := mountAll(log); err != nil {
		return err
	}
	devLinks(log)
	growRoot(log)
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", err)
	}
	cl, err := ParseCmdline(string(raw))
	if err != nil {
		// A bad argument must not leave the VM without envd: log and go on
		// with what could be parsed (nothing network related).
		log.Error("parse kernel command line", "err", err)
	}
	host := DefaultHostname
	if cl.IP != nil && cl.IP.Hostname != "" {
		host = cl.IP.Hostname
	}
	if cl.Hostname != "" {
		host = cl.Hostname
	}
	if err := unix.Sethostname([]byte(host)); err != nil {
		log.Error("set hostname", "hostname", host, "err", err)
	}
	writeHosts(log, host)
	if err := ConfigureNetwork(cl.IP); err != nil {
		log.Error("configure network", "err", err)
	}
	if len(cl.DNS) > 0 {
		if err := writeResolvConf("/etc/resolv.conf", cl.DNS); err != nil {
			log.Error("write resolv.conf", "err", err)
		}
	}
	return nil
}

func mountAll(log *slog.Logger) error {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			log.Error("create mount point", "target", m.target, "err", err)
			continue
		}
		// The kernel (devtmpfs automount) or an initramfs may have mounted
		// some of these already; mounting again would stack a second copy.
		if mounted(m.target) {
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			if m.target == "/proc" {
				return fmt.Errorf("mount /proc: %w", err)
			}
			log.Error("mount", "target", m.target, "fstype", m.fstype, "err", err)
		}
	}
	return nil
}

// mounted reports whether target is a mount point, per /proc/self/mounts
// (before /proc is mounted nothing is).
func mounted(target string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && fields[1] == target {
			return true
		}
	}
	return false
}

func devLinks(log *slog.Logger) {
	links := map[string]string{
		"/dev/fd":     "/proc/self/fd",
		"/dev/stdin":  "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1",
		"/dev/stderr": "/proc/self/fd/2",
	}
	for name, target := range links {
		if _, err := os.Lstat(name); err == nil {
			continue
		}
		if err := os.Symlink(target, name); err != nil {
			log.Warn("create /dev link", "name", name, "err", err)
		}
	}
}

func writeHosts(log *slog.Logger, host string) {
	// Only when the image has no /etc/hosts: never clobber the template's.
	if _, err := os.Stat("/etc/hosts"); err == nil {
		return
	}
	content := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t%s\n", host)
	if err := os.WriteFile("/etc/hosts", []byte(content), 0o644); err != nil {
		log.Warn("write /etc/hosts", "err", err)
	}
}

// ConfigureNetwork brings up lo and, when c is not nil, the device it names
// with its address and default route. It is idempotent, so it also works
// when the kernel (CONFIG_IP_PNP) already configured the device.
func ConfigureNetwork(c *IPConfig) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	if c == nil {
		return nil
	}
	link, err := netlink.LinkByName(c.Device)
	if err != nil {
		return fmt.Errorf("find %s: %w", c.Device, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.ClientIP, Mask: c.Netmask}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("set address %s on %s: %w", addr.IPNet, c.Device, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring %s up: %w", c.Device, err)
	}
	if c.Gateway != nil {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: c.Gateway}
		if err := netlink.RouteReplace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", c.Gateway, err)
		}
	}
	return nil
}

func writeResolvConf(path string, servers []net.IP) error {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	// /etc/resolv.conf may be a dangling symlink into /run (systemd images).
	if target, err := os.Readlink(path); err == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		os.MkdirAll(filepath.Dir(target), 0o755)
		path = target
	}
	return atomicfile.WriteFile(path, []byte(b.String()), 0o644)
}

// PowerOff syncs the filesystems and powers the VM off. It returns only on
// failure.
func PowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("reboot(POWER_OFF): %w", err)
	}
	return nil
}

// SignalAll sends sig to every process except envd itself (kill(-1)).
func SignalAll(sig syscall.Signal) error {
	if err := syscall.Kill(-1, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill(-1, %s): %w", sig, err)
	}
	return nil
}

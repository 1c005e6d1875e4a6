package network

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// inThread runs fn on a fresh OS thread that is thrown away afterwards.
// Namespace switches are per thread; because the goroutine exits while still
// locked, the Go runtime terminates the thread instead of reusing it, so a
// thread left in a sandbox namespace can never run other goroutines.
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see above.
		errc <- fn()
	}()
	return <-errc
}

// runInNS runs fn with the calling thread inside the network namespace at
// path. TAP devices and /proc/sys/net are bound to the namespace of the
// thread that touches them, hence the thread switch.
func runInNS(path string, fn func() error) error {
	return inThread(func() error {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", path, err)
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", path, err)
		}
		return fn()
	})
}

// nsDirMu serialises making the netns directory a mount point: two
// concurrent first binds would stack and hide each other's namespaces.
// It guards a machine-wide operation, not program state.
var nsDirMu sync.Mutex

// ensureNSDirMount makes dir a shared bind mount of itself, as iproute2
// does on its first `ip netns add`. Doing it before pinning any namespace
// matters: if iproute2 (or anyone) binds dir over itself later, every
// namespace pinned beneath becomes invisible and its file undeletable
// (EBUSY) until reboot.
func ensureNSDirMount(dir string) error {
	nsDirMu.Lock()
	defer nsDirMu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: not a mount point yet.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount: %w", dir, err)
		}
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", dir, err)
		}
	}
}

// createNamedNS creates an empty network namespace and pins it with a bind
// mount at dir/name, the way `ip netns add` does.
func createNamedNS(dir, name string) (path string, err error) {
	if err := ensureNSDirMount(dir); err != nil {
		return "", err
	}
	path = filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("netns %s already exists (left by a crashed agent? CleanupStale removes it): %w", name, err)
		}
		return "", fmt.Errorf("create netns file %s: %w", path, err)
	}
	f.Close()
	err = inThread(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare netns: %w", err)
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount netns to %s: %w", path, err)
		}
		return nil
	})
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// deleteNamedNS unpins a namespace; the kernel frees it (and every device
// and nft table in it) once no process is left inside. Missing is not an
// error.
func deleteNamedNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// writeSysctl writes a /proc/sys value (in the calling thread's network
// namespace for net.* keys).
func writeSysctl(key, value string) error {
	p := filepath.Join("/proc/sys", filepath.FromSlash(key))
	if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// listLinks lists the links of the calling thread's namespace. A dump that
// races with another process changing links is flagged as interrupted and
// may be incomplete: retry a few times before giving up.
func listLinks() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = netlink.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

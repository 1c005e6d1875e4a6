package nsexec

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestStartInNamespace(t *testing.T) {
	testenv.Require(t, os.Geteuid() == 0, "network namespaces need root")
	// Pin a fresh namespace on a file, as `ip netns add` does, without
	// touching /run/netns.
	pin := filepath.Join(t.TempDir(), "ns")
	if err := os.WriteFile(pin, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ns := make(chan error, 1)
	go func() {
		// This thread is left in the new namespace and dies with the goroutine.
		lockAndCreate := func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return err
			}
			return unix.Mount("/proc/thread-self/ns/net", pin, "none", unix.MS_BIND, "")
		}
		runtimeLock()
		ns <- lockAndCreate()
	}()
	if err := <-ns; err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(pin, unix.MNT_DETACH) })

	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	var pinStat unix.Stat_t
	if err := unix.Stat(pin, &pinStat); err != nil {
		t.Fatal(err)
	}
	pinned := fmt.Sprintf("net:[%d]", pinStat.Ino)
	tests := []struct {
		name   string
		nsPath string
		want   func(link string) bool
	}{
		// Compared with this goroutine's own thread, not /proc/self (the
		// thread group leader, which may sit in another namespace).
		{"caller's namespace", "", func(l string) bool { return l == ownNS(t) && l != pinned }},
		{"pinned namespace", pin, func(l string) bool { return l == pinned }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("readlink", "/proc/self/ns/net")
			var out strings.Builder
			cmd.Stdout = &out
			if err := Start(tt.nsPath, cmd); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(out.String()); !tt.want(got) {
				t.Fatalf("child namespace %s is wrong (pinned %s, caller %s)", got, pinned, ownNS(t))
			}
		})
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !before.Equal(after) {
		t.Fatal("the calling goroutine's namespace changed")
	}
}

func TestStartErrors(t *testing.T) {
	if err := Start(filepath.Join(t.TempDir(), "missing"), exec.Command("true")); err == nil || !strings.Contains(err.Error(), "open network namespace") {
		t.Fatalf("missing namespace: err = %v", err)
	}
	if err := Start("", exec.Command(filepath.Join(t.TempDir(), "no-such-binary"))); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

// ownNS is the network namespace of the calling goroutine's thread.
func ownNS(t *testing.T) string {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Package nsexec starts processes inside a network namespace. Namespaces
// belong to OS threads, so the fork happens on a locked thread switched into
// the namespace and back; VMM drivers start their processes with it.
package nsexec

import (
	"fmt"
	"os/exec"
	"runtime"

	"github.com/vishvananda/netns"
)

// Start starts cmd with its network namespace set to the one pinned at
// nsPath (empty: the caller's). The thread is switched back before being
// unlocked; if that fails it stays locked, so the Go runtime discards it
// with its goroutine instead of reusing it in the wrong namespace, and the
// started process is killed since the state of its start is unknown.
func Start(nsPath string, cmd *exec.Cmd) error {
	if nsPath == "" {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", cmd.Path, err)
		}
		return nil
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			// The thread may be half-switched: let it die with the goroutine.
			errc <- fmt.Errorf("enter network namespace %s: %w", nsPath, err)
			return
		}
		startErr := cmd.Start()
		if err := netns.Set(orig); err != nil {
			if startErr == nil {
				_ = cmd.Process.Kill()
				_, _ = cmd.Process.Wait()
			}
			errc <- fmt.Errorf("restore network namespace after start: %w", err)
			return
		}
		runtime.UnlockOSThread()
		if startErr != nil {
			startErr = fmt.Errorf("start %s in %s: %w", cmd.Path, nsPath, startErr)
		}
		errc <- startErr
	}()
	return <-errc
}

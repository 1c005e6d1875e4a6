// Package childproc starts child processes whose parent-death signal
// really means "when this process dies".
//
// Linux delivers Pdeathsig when the OS thread that forked the child ends,
// not the process, and Go ends threads whenever a goroutine locked to one
// exits (namespace code does this on purpose). A child started from an
// arbitrary goroutine can therefore be killed at a random moment.
package childproc

import (
	"fmt"
	"os/exec"
	"runtime"
)

// Start starts cmd on a goroutine locked to its OS thread and waits for it
// there, so the thread lives exactly as long as the child. The returned
// channel receives cmd.Wait's result once the child has exited.
func Start(cmd *exec.Cmd) (<-chan error, error) {
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the child
		if err := cmd.Start(); err != nil {
			started <- fmt.Errorf("start %s: %w", cmd.Path, err)
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

package nsexec

import "runtime"

// runtimeLock pins the goroutine to its thread for good: the thread is
// discarded when the goroutine exits.
func runtimeLock() { runtime.LockOSThread() }

// Package cleanup records how to give back what an operation acquires, as
// it acquires it, and gives it all back in one place: whichever way a VM
// ends (its boot fails, it is destroyed, its VMM dies, it is paused), the
// same recorded steps run, so no ending forgets a resource another one
// remembers.
package cleanup

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Stack holds undo steps, newest on top. The zero value is empty and ready.
type Stack struct {
	// running makes Runs take turns, so a Run sees the steps an earlier
	// one kept after they failed.
	running sync.Mutex
	mu      sync.Mutex
	steps   []step
}

type step struct {
	name string
	undo func(context.Context) error
}

// Push records undo as the way to give back what was just acquired; name
// says what it undoes in errors.
func (s *Stack) Push(name string, undo func(context.Context) error) {
	s.mu.Lock()
	s.steps = append(s.steps, step{name, undo})
	s.mu.Unlock()
}

// Run runs the recorded steps newest first, each at most once: a step that
// succeeds is gone, so running again (or concurrently) never repeats it. A
// step that fails is kept, below anything pushed later, for the next Run to
// retry, and the remaining steps still run. The failures are returned
// joined, each naming its step. Callers pass a ctx the requester cannot
// cancel: a teardown cut short helps nobody.
func (s *Stack) Run(ctx context.Context) error {
	s.running.Lock()
	defer s.running.Unlock()
	s.mu.Lock()
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()
	var errs []error
	var failed []step
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].undo(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].name, err))
			failed = append(failed, steps[i])
		}
	}
	if len(failed) > 0 {
		// failed is newest first; keep the stack's order, oldest at the bottom.
		kept := make([]step, 0, len(failed))
		for i := len(failed) - 1; i >= 0; i-- {
			kept = append(kept, failed[i])
		}
		s.mu.Lock()
		s.steps = append(kept, s.steps...)
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Len is how many steps are left to run.
func (s *Stack) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.steps)
}

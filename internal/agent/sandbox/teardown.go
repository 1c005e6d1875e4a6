package sandbox

import (
	"context"
	"errors"
	"os"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/cleanup"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
)

// A sandbox's resources are given back in one way, whatever ends its VM
// (a failed create or resume, destroy, the VMM dying, pause): each is
// recorded with its undo step as it is acquired (the hold functions below)
// on one of the sandbox's two stacks, and the endings run the stacks.
//
//	s.vm     what the current VM holds: network slot, VMM, envd client.
//	         Run when the VM ends (pause, VMM death, failure, destroy).
//	s.files  what outlives a VM: the sandbox and snapshot directories.
//	         Run by destroy and by a failed create only.
//
// A step that fails stays on its stack and the next run retries it (a slot
// a pause could not release is released by the resume or destroy after).
// The stacks are run without s.mu held: steps take it.

// teardownTimeout bounds one run of a stack.
const teardownTimeout = time.Minute

// undo runs st on a context the requester cannot cancel.
func undo(ctx context.Context, st *cleanup.Stack) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
	defer cancel()
	return st.Run(ctx)
}

// teardown gives back everything s holds: its VM's resources, then its
// files.
func (m *Manager) teardown(ctx context.Context, s *Sandbox) error {
	return errors.Join(undo(ctx, &s.vm), undo(ctx, &s.files))
}

// teardownVM gives back what s's VM holds, for callers that go on
// whatever fails: failures are logged and retried at the next teardown.
func (m *Manager) teardownVM(ctx context.Context, s *Sandbox, id, during string) {
	if err := undo(ctx, &s.vm); err != nil {
		m.log.Warn(during+": tear down vm (what failed is retried at the next teardown)", "sandbox", id, "err", err)
	}
}

// holdFiles records the removal of the sandbox's directories.
func (m *Manager) holdFiles(s *Sandbox, id string) {
	s.files.Push("remove sandbox directory", func(context.Context) error { return os.RemoveAll(m.sandboxDir(id)) })
	s.files.Push("remove snapshot directory", func(context.Context) error { return os.RemoveAll(m.snapshotDir(id)) })
}

// holdSlot records the release of slot, which s's VM uses. Once released,
// the slot is dropped from the record if the record still names it.
func (m *Manager) holdSlot(s *Sandbox, slot NetSlot) {
	s.vm.Push("release network slot "+slot.Name, func(ctx context.Context) error {
		if err := m.cfg.Net.Release(ctx, slot); err != nil {
			return err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.rec.Slot.Name == slot.Name {
			s.rec.Slot = NetSlot{}
			if err := m.persistLocked(s); err != nil {
				// The slot is free all the same; the record on disk names
				// it until the sandbox's next write.
				m.log.Warn("persist released network slot", "sandbox", s.rec.ID, "slot", slot.Name, "err", err)
			}
		}
		return nil
	})
}

// holdMachine records the stop of s's VMM. The stop is expected, so the
// watcher does not report it as a death.
func (m *Manager) holdMachine(s *Sandbox, mref *machineRef) {
	s.vm.Push("stop vm", func(ctx context.Context) error {
		mref.stopping.Store(true)
		return mref.m.Stop(ctx)
	})
}

// holdClient records the close of s's envd client.
func (m *Manager) holdClient(s *Sandbox, client *envdclient.Client) {
	s.vm.Push("close envd client", func(context.Context) error {
		client.Close()
		return nil
	})
}

package api

import (
	"slices"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Destroying a sandbox whose host is away answers 202 with the row
// stopping, never stopped while the VM may run; the stopping sandbox frees
// its place in the team's limit at once; the reconciler destroys the VM
// when the host answers and only then records stopped.
func TestDestroyWhileHostAway(t *testing.T) {
	cases := []struct {
		name string
		// The agent always stops answering; markUnreachable also marks the
		// host unreachable and the sandbox missing, as the reconciler does.
		markUnreachable bool
		// vmGone: the VM vanished while the host was away.
		vmGone bool
	}{
		{name: "agent unreachable, VM still there"},
		{name: "host unreachable, sandbox missing", markUnreachable: true},
		{name: "VM already gone when the host answers", vmGone: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, func(o *envOpts) { o.limits = service.Limits{MaxRunningPerTeam: 1} })
			owner := e.signup("owner@example.com")
			cr := owner.cred()
			sb := e.createSandbox(cr, nil)
			e.agent.SetReachable(false)
			if c.markUnreachable {
				if _, err := e.pool.Exec(t.Context(), "UPDATE hosts SET status = 'unreachable'"); err != nil {
					t.Fatal(err)
				}
				if _, err := e.pool.Exec(t.Context(), "UPDATE sandboxes SET status = 'missing' WHERE id = $1", sb.ID); err != nil {
					t.Fatal(err)
				}
			}
			var got sandboxResp
			e.want("DELETE", sbPath(sb.ID), nil, cr, 202, &got)
			if got.ID != sb.ID || got.Status != "stopping" {
				t.Fatalf("destroy answered %+v, want the sandbox stopping", got)
			}
			// Retried while the host is still away: the same answer.
			e.want("DELETE", sbPath(sb.ID), nil, cr, 202, &got)
			if got.Status != "stopping" {
				t.Fatalf("second destroy: %s", got.Status)
			}
			if res := e.rec.Pass(t.Context()); res.StoppingDestroyed != 0 {
				t.Fatalf("pass while away = %+v", res)
			}
			e.want("GET", sbPath(sb.ID), nil, cr, 200, &got)
			if got.Status != "stopping" {
				t.Fatalf("after a pass while away: %s, want stopping", got.Status)
			}
			if !e.agent.Has(sb.ID) {
				t.Fatal("the VM vanished from the agent before it answered")
			}

			if c.vmGone {
				e.agent.Forget(sb.ID)
			}
			e.agent.SetReachable(true)
			// The stopping sandbox does not count against the limit of one
			// (a host marked unreachable takes a pass to come back first).
			var other sandboxResp
			if !c.markUnreachable {
				other = e.createSandbox(cr, nil)
			}
			res := e.rec.Pass(t.Context())
			if c.markUnreachable {
				if res.HostsBack != 1 {
					t.Fatalf("pass = %+v, want the host back", res)
				}
				other = e.createSandbox(cr, nil)
			}
			e.want("GET", sbPath(sb.ID), nil, cr, 200, &got)
			if got.Status != "stopped" {
				t.Fatalf("after the host answered: %s, want stopped", got.Status)
			}
			if e.agent.Has(sb.ID) {
				t.Fatal("the VM still runs on the agent")
			}
			wantDestroyed := 1
			if c.vmGone {
				wantDestroyed = 0
			}
			if res.StoppingDestroyed != wantDestroyed || slices.Contains(e.agent.Destroyed(), sb.ID) != !c.vmGone {
				t.Fatalf("pass = %+v, agent destroyed %v", res, e.agent.Destroyed())
			}
			if st := e.agent.State(other.ID); st != pb.SandboxState_SANDBOX_STATE_RUNNING {
				t.Fatalf("the other sandbox is %v on the agent", st)
			}
			// Destroying a stopped sandbox stays a no-op.
			e.want("DELETE", sbPath(sb.ID), nil, cr, 204, nil)
		})
	}
}

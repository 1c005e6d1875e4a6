package service

import (
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// NoRow stands for "the database places no live sandbox with this ID on
// the host" in Reconcile. A stopped or error row behaves the same: nothing
// should run for it.
const NoRow Status = ""

// AgentView is what a host agent lists for one sandbox.
type AgentView struct {
	// Listed is false when the agent does not know the sandbox.
	Listed bool
	State  pb.SandboxState
}

// Listed is the view of a sandbox the agent reports in state st.
func Listed(st pb.SandboxState) AgentView { return AgentView{Listed: true, State: st} }

// Decision is what to do about one (row, agent) pair.
type Decision struct {
	// To is the row's new state; "" leaves it.
	To Status
	// Destroy asks the agent to destroy a VM nothing should run for; with
	// To set, the row changes only once the destroy succeeded.
	Destroy bool
	Actor   Actor
	Reason  string
	// ErrorMessage is shown to users on the row, when set.
	ErrorMessage string
}

// errVMExited is the message a sandbox whose VMM died shows.
const errVMExited = "the sandbox VM exited unexpectedly"

// Reconcile is the one mapping from a row's state and the agent's view of
// the sandbox to what the control plane does (docs/architecture.md has it
// as a table). The agent is the truth about its machine, with these rules:
//   - pending rows belong to the create call in flight: never touched;
//   - STARTING (and an unknown state) is transient: wait for a settled one;
//   - a live row the agent does not list is stopped: its VM and files are
//     gone, so neither resume nor restore can bring it back;
//   - DEAD (the VMM exited on its own) is an error for every live row,
//     missing included: the user sees why the sandbox ended;
//   - a VM with no live row (none, stopped, error) is destroyed, unless the
//     agent already reports it STOPPED;
//   - a stopping row (destroyed while its host was away) has its VM
//     destroyed whatever state the agent lists, and becomes stopped once
//     the destroy succeeded or the agent does not list it.
//
// state_seq is not used: a decision is applied only if the row is unchanged
// since it was read before the agent was asked (Change.SeenUpdatedAt), which
// already orders it after every transition the control plane recorded.
func Reconcile(row Status, agent AgentView) Decision {
	switch row {
	case StatusPending:
		return Decision{}
	case NoRow, StatusStopped, StatusError:
		if agent.Listed && agent.State != pb.SandboxState_SANDBOX_STATE_STOPPED {
			return Decision{Destroy: true, Actor: ActorReconciler, Reason: "the host runs a sandbox with no live row"}
		}
		return Decision{}
	}
	if !agent.Listed {
		return Decision{To: StatusStopped, Actor: ActorReconciler, Reason: "the host no longer has the sandbox"}
	}
	if row == StatusStopping {
		return Decision{To: StatusStopped, Destroy: true, Actor: ActorReconciler, Reason: "destroyed once its host answered"}
	}
	var d Decision
	switch agent.State {
	case pb.SandboxState_SANDBOX_STATE_RUNNING:
		d = Decision{To: StatusRunning, Actor: ActorReconciler, Reason: "the host reports it running"}
	case pb.SandboxState_SANDBOX_STATE_PAUSED:
		d = Decision{To: StatusPaused, Actor: ActorReconciler, Reason: "the host reports it paused"}
	case pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED:
		d = Decision{To: StatusPaused, Actor: ActorAutoPause, Reason: "paused by the host after the idle timeout"}
	case pb.SandboxState_SANDBOX_STATE_DEAD:
		d = Decision{To: StatusError, Actor: ActorReconciler, Reason: "the VMM exited", ErrorMessage: errVMExited}
	case pb.SandboxState_SANDBOX_STATE_STOPPED:
		d = Decision{To: StatusStopped, Actor: ActorReconciler, Reason: "the host reports it stopped"}
	default: // STARTING, or a state this control plane does not know
		return Decision{}
	}
	if d.To == row {
		return Decision{}
	}
	return d
}

// Change is the decision as a change of row r, applied only if r is
// unchanged since it was read.
func (d Decision) Change(r db.Sandbox) Change {
	c := Change{SandboxID: r.ID, TeamID: r.TeamID, From: []Status{Status(r.Status)}, SeenUpdatedAt: &r.UpdatedAt,
		To: d.To, Actor: d.Actor, Reason: d.Reason}
	if d.ErrorMessage != "" {
		c.ErrorMessage = &d.ErrorMessage
	}
	return c
}

package service

import (
	"fmt"

	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// NoRow stands for "the database places no live sandbox with this ID on
// the host" in Reconcile. A stopped or error row behaves the same: nothing
// should run for it.
const NoRow Status = ""

// Op is a lifecycle operation recorded on a sandbox row while it runs.
type Op string

// Operations.
const (
	OpNone     Op = ""
	OpCreate   Op = "create"
	OpPause    Op = "pause"
	OpResume   Op = "resume"
	OpDestroy  Op = "destroy"
	OpSnapshot Op = "snapshot"
)

// Row is what Reconcile knows of a sandbox row: its state and the
// operation recorded on it.
type Row struct {
	Status Status
	Op     Op
	// OpLive says the operation's lease still runs: the replica that owns
	// it is alive and renewing it.
	OpLive bool
}

// RowOf is a row with no operation recorded.
func RowOf(st Status) Row { return Row{Status: st} }

// RowFrom is what Reconcile knows of r; opLive is judged by the database
// clock (the query that read r).
func RowFrom(r db.Sandbox, opLive bool) Row {
	if r.Op == nil {
		return RowOf(Status(r.Status))
	}
	return Row{Status: Status(r.Status), Op: Op(*r.Op), OpLive: opLive}
}

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

// errInterrupted is the message of a sandbox whose operation was cut off
// (its control plane replica died) and whose VM the host does not have.
func errInterrupted(op Op) string {
	return fmt.Sprintf("the sandbox's %s was interrupted (its control plane stopped) and its host has no VM for it", op)
}

// Reconcile is the one mapping from a row's state and the agent's view of
// the sandbox to what the control plane does (docs/architecture.md has it
// as a table). The agent is the truth about its machine, with these rules:
//   - a row with an operation in flight (its lease live) belongs to that
//     call: never touched; pending rows are always in a create's hands;
//   - an operation whose lease expired (its replica died or froze) is
//     settled: the row takes the state the agent reports (even the one it
//     had, which ends the operation), waiting out STARTING; a VM the agent
//     does not have is an error naming the interrupted operation; an
//     interrupted destroy is finished like a stopping row;
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
func Reconcile(r Row, agent AgentView) Decision {
	if r.Op != OpNone {
		if r.OpLive {
			return Decision{}
		}
		return settle(r, agent)
	}
	row := r.Status
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
	d := fromAgentState(agent.State)
	if d.To == row {
		return Decision{}
	}
	return d
}

// fromAgentState is the row state for an agent state, with who did it; no
// decision for STARTING and states this control plane does not know.
func fromAgentState(st pb.SandboxState) Decision {
	var d Decision
	switch st {
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
	return d
}

// settle decides about a row whose operation's lease expired.
func settle(r Row, agent AgentView) Decision {
	prefix := fmt.Sprintf("settled the interrupted %s: ", r.Op)
	if r.Op == OpDestroy {
		if !agent.Listed {
			return Decision{To: StatusStopped, Actor: ActorReconciler, Reason: prefix + "the host no longer has the sandbox"}
		}
		return Decision{To: StatusStopped, Destroy: true, Actor: ActorReconciler, Reason: prefix + "destroyed its VM"}
	}
	if !agent.Listed {
		return Decision{To: StatusError, Actor: ActorReconciler, Reason: prefix + "the host has no VM for it", ErrorMessage: errInterrupted(r.Op)}
	}
	d := fromAgentState(agent.State)
	if d.To != "" {
		d.Reason = prefix + d.Reason
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

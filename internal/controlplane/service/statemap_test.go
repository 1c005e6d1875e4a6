package service

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// agentColumns are the agent's possible answers about one sandbox: not
// listed, then every state of the proto enum in its order.
func agentColumns() []AgentView {
	states := make([]pb.SandboxState, 0, len(pb.SandboxState_name))
	for n := range pb.SandboxState_name {
		states = append(states, pb.SandboxState(n))
	}
	slices.Sort(states)
	cols := []AgentView{{}}
	for _, st := range states {
		cols = append(cols, Listed(st))
	}
	return cols
}

// rowLines are the table's lines: every state with no operation recorded,
// an operation in flight (the same for every state and operation), and
// each operation interrupted in the states it starts from (a destroy is
// settled the same from every state).
func rowLines() []Row {
	lines := []Row{RowOf(NoRow)}
	for _, st := range AllStatuses() {
		lines = append(lines, RowOf(st))
	}
	return append(lines, inFlight,
		Row{Status: StatusPending, Op: OpCreate}, Row{Status: StatusRunning, Op: OpPause}, Row{Status: StatusPaused, Op: OpResume},
		Row{Status: StatusRunning, Op: OpSnapshot}, Row{Status: StatusPaused, Op: OpSnapshot}, Row{Status: StatusRunning, Op: OpDestroy})
}

var inFlight = Row{Status: StatusRunning, Op: OpPause, OpLive: true}

// settledLikeAgent is an interrupted operation's line: the agent's state,
// an error when it has no VM.
var settledLikeAgent = []string{"error", "-", "-", "running", "paused", "paused/auto-pause", "error", "stopped"}

// The mapping, written out: for each row state, one cell per agent column
// (absent, UNSPECIFIED, STARTING, RUNNING, PAUSED, AUTO_PAUSED, DEAD,
// STOPPED). "-" keeps the row, "destroy" destroys the VM ("destroy, then
// stopped": the row changes once the destroy succeeded), otherwise the new
// state and, after a slash, the actor when it is not the reconciler.
var wantReconcile = map[Row][]string{
	RowOf(NoRow):         {"-", "destroy", "destroy", "destroy", "destroy", "destroy", "destroy", "-"},
	RowOf(StatusPending): {"-", "-", "-", "-", "-", "-", "-", "-"},
	RowOf(StatusRunning): {"stopped", "-", "-", "-", "paused", "paused/auto-pause", "error", "stopped"},
	RowOf(StatusPaused):  {"stopped", "-", "-", "running", "-", "-", "error", "stopped"},
	RowOf(StatusStopped): {"-", "destroy", "destroy", "destroy", "destroy", "destroy", "destroy", "-"},
	RowOf(StatusError):   {"-", "destroy", "destroy", "destroy", "destroy", "destroy", "destroy", "-"},
	RowOf(StatusMissing): {"stopped", "-", "-", "running", "paused", "paused/auto-pause", "error", "stopped"},
	RowOf(StatusStopping): {"stopped", "destroy, then stopped", "destroy, then stopped", "destroy, then stopped", "destroy, then stopped",
		"destroy, then stopped", "destroy, then stopped", "destroy, then stopped"},
	inFlight:                                {"-", "-", "-", "-", "-", "-", "-", "-"},
	{Status: StatusPending, Op: OpCreate}:   settledLikeAgent,
	{Status: StatusRunning, Op: OpPause}:    settledLikeAgent,
	{Status: StatusPaused, Op: OpResume}:    settledLikeAgent,
	{Status: StatusRunning, Op: OpSnapshot}: settledLikeAgent,
	{Status: StatusPaused, Op: OpSnapshot}:  settledLikeAgent,
	{Status: StatusRunning, Op: OpDestroy}: {"stopped", "destroy, then stopped", "destroy, then stopped", "destroy, then stopped", "destroy, then stopped",
		"destroy, then stopped", "destroy, then stopped", "destroy, then stopped"},
}

func cell(d Decision) string {
	switch {
	case d.Destroy && d.To != "":
		return "destroy, then " + string(d.To)
	case d.Destroy:
		return "destroy"
	case d.To == "":
		return "-"
	case d.Actor != ActorReconciler:
		return string(d.To) + "/" + d.Actor.ID
	}
	return string(d.To)
}

// Every (row state x agent state) pair, missing + DEAD included, against
// the written-out table; a new state on either side fails until it is
// decided here.
func TestReconcileEveryPair(t *testing.T) {
	cols := agentColumns()
	if len(wantReconcile) != len(rowLines()) {
		t.Fatalf("the table has %d row states, the code %d", len(wantReconcile), len(rowLines()))
	}
	for _, row := range rowLines() {
		want, ok := wantReconcile[row]
		if !ok || len(want) != len(cols) {
			t.Fatalf("row %q: table has %d cells, want %d (one per agent column)", rowName(row), len(want), len(cols))
		}
		for i, col := range cols {
			t.Run(fmt.Sprintf("%s/%s", rowName(row), colName(col)), func(t *testing.T) {
				d := Reconcile(row, col)
				if got := cell(d); got != want[i] {
					t.Fatalf("got %s, want %s", got, want[i])
				}
				if (d.To != "" || d.Destroy) && (d.Actor.Type != ActorSystem || d.Reason == "") {
					t.Fatalf("decision without a system actor and reason: %+v", d)
				}
				if (d.To == StatusError) != (d.ErrorMessage != "") {
					t.Fatalf("error message %q for a move to %q", d.ErrorMessage, d.To)
				}
			})
		}
	}
}

func rowName(r Row) string {
	switch {
	case r.Status == NoRow:
		return "no live row"
	case r.OpLive:
		return "any, operation in flight"
	case r.Op == OpDestroy:
		return "any, destroy interrupted"
	case r.Op != OpNone:
		return fmt.Sprintf("%s, %s interrupted", r.Status, r.Op)
	}
	return string(r.Status)
}

func colName(v AgentView) string {
	if !v.Listed {
		return "absent"
	}
	return strings.TrimPrefix(v.State.String(), "SANDBOX_STATE_")
}

// reconcileTable renders the mapping as the Markdown table in
// docs/architecture.md.
func reconcileTable() string {
	var b strings.Builder
	cols := agentColumns()
	b.WriteString("| row \\ agent |")
	for _, c := range cols {
		fmt.Fprintf(&b, " %s |", colName(c))
	}
	b.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for _, row := range rowLines() {
		fmt.Fprintf(&b, "| %s |", rowName(row))
		for _, c := range cols {
			fmt.Fprintf(&b, " %s |", cell(Reconcile(row, c)))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// The documented table is the code's.
func TestReconcileTableDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	if table := reconcileTable(); !strings.Contains(string(doc), table) {
		t.Fatalf("docs/architecture.md does not hold the reconciler's table; it is:\n%s", table)
	}
}

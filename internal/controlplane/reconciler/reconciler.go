// Package reconciler keeps the database in step with the host agents, in
// one loop and one poller per host. Each pass takes every online and every
// unreachable host in turn (several at once) and asks its agent for its
// sandboxes. An answer counts as the host's heartbeat (any replica that
// reaches the agent keeps it online, and an unreachable host that answers
// comes back); the list is compared with the host's rows by
// service.Reconcile, the one mapping of (row state, agent state) to a new
// state, and VMs nothing should run for are destroyed. A host that does not
// answer and is silent for longer than the threshold becomes unreachable
// and its running sandboxes missing (reversible). Every status change goes
// through service.States.
package reconciler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Agents reaches host agents; *hosts.Pool implements it.
type Agents interface {
	ForHost(h db.Host) hosts.Client
}

// Config sets the pace; zero fields take the defaults.
type Config struct {
	// Interval between passes (5 s).
	Interval time.Duration
	// UnreachableAfter is the silence (no heartbeat, no answer to the
	// reconciler) that marks a host unreachable (90 s).
	UnreachableAfter time.Duration
	// RPCTimeout bounds each agent call (10 s).
	RPCTimeout time.Duration
	// Samples, when set, stores the resource samples each agent's list
	// carries (the per-sandbox metric history), so no second poller asks
	// the agents for them.
	Samples SampleSink
}

// SampleSink stores the per-sandbox samples an agent listed;
// *metrics.SampleStore implements it.
type SampleSink interface {
	StoreListed(ctx context.Context, hostID string, series []*pb.SandboxMetricsSeries) error
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	if c.UnreachableAfter <= 0 {
		c.UnreachableAfter = 90 * time.Second
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 10 * time.Second
	}
	return c
}

// parallelHosts bounds the hosts synced at once, so one slow agent does not
// hold up the others for its RPC timeout.
const parallelHosts = 8

// Reconciler is the control plane's one sync loop with the hosts.
type Reconciler struct {
	q      *db.Queries
	states *service.States
	agents Agents
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
}

// New builds a reconciler; a nil states writes through a new service.States
// on pool.
func New(pool *pgxpool.Pool, states *service.States, agents Agents, cfg Config, logger *slog.Logger) *Reconciler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if states == nil {
		states = service.NewStates(pool, logger)
	}
	return &Reconciler{q: db.New(pool), states: states, agents: agents, cfg: cfg.withDefaults(), log: logger, now: time.Now}
}

// Run makes a pass every interval until ctx ends. For the first threshold
// after it starts no host is marked unreachable: while the control plane
// was down no agent could send a heartbeat, and a restart must not flap
// every host.
func (r *Reconciler) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	started := r.now()
	for {
		r.pass(ctx, r.now().Sub(started) >= r.cfg.UnreachableAfter)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PassResult counts what one pass changed.
type PassResult struct {
	// Unreachable counts hosts marked unreachable, Missing their sandboxes
	// marked missing.
	Unreachable, Missing int
	// Sandboxes moved to each state by what their agent reports.
	Running, Paused, Stopped, Errored int
	// OrphansDestroyed counts VMs with no live row destroyed on hosts;
	// StoppingDestroyed the VMs of stopping rows.
	OrphansDestroyed, StoppingDestroyed int
	// Settled counts rows whose interrupted operation (lease expired) was
	// settled; they are counted by their new state too.
	Settled int
	// HostsFailed counts hosts whose agent did not answer, HostsBack
	// unreachable hosts that answered again.
	HostsFailed, HostsBack int
}

func (p *PassResult) add(o PassResult) {
	p.Unreachable += o.Unreachable
	p.Missing += o.Missing
	p.Running += o.Running
	p.Paused += o.Paused
	p.Stopped += o.Stopped
	p.Errored += o.Errored
	p.OrphansDestroyed += o.OrphansDestroyed
	p.StoppingDestroyed += o.StoppingDestroyed
	p.Settled += o.Settled
	p.HostsFailed += o.HostsFailed
	p.HostsBack += o.HostsBack
}

func (p *PassResult) count(to service.Status) {
	switch to {
	case service.StatusRunning:
		p.Running++
	case service.StatusPaused:
		p.Paused++
	case service.StatusStopped:
		p.Stopped++
	case service.StatusError:
		p.Errored++
	}
}

// Pass syncs every online and unreachable host once, marking silent ones.
func (r *Reconciler) Pass(ctx context.Context) PassResult { return r.pass(ctx, true) }

func (r *Reconciler) pass(ctx context.Context, markSilent bool) PassResult {
	var res PassResult
	// Idempotency keys are kept for a window; the one loop forgets them.
	if _, err := r.q.DeleteOldIdempotencyKeys(ctx, service.IdempotencyWindow.Seconds()); err != nil {
		r.log.WarnContext(ctx, "reconcile: delete old idempotency keys", "err", err)
	}
	hs, err := r.q.ListReconciledHosts(ctx)
	if err != nil {
		r.log.WarnContext(ctx, "reconcile: list hosts", "err", err)
		return res
	}
	results := make([]PassResult, len(hs))
	sem := make(chan struct{}, parallelHosts)
	var wg sync.WaitGroup
	for i, h := range hs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = r.syncHost(ctx, h, markSilent)
		})
	}
	wg.Wait()
	for _, hr := range results {
		res.add(hr)
	}
	return res
}

// syncHost is one host's part of a pass: its sandboxes, and when its agent
// does not answer, its liveness (when markSilent).
func (r *Reconciler) syncHost(ctx context.Context, h db.Host, markSilent bool) PassResult {
	res, err := r.syncSandboxes(ctx, h)
	if err != nil {
		if h.Status == hosts.StatusUnreachable && res.HostsFailed > 0 {
			// Probed every pass until it answers: not worth a warning each time.
			r.log.DebugContext(ctx, "reconcile: unreachable host still silent", "host_id", h.ID, "err", err)
		} else {
			r.log.WarnContext(ctx, "reconcile: sync host", "host_id", h.ID, "err", err)
		}
	}
	if res.HostsFailed == 0 || !markSilent || h.Status != hosts.StatusOnline {
		return res
	}
	mres, err := r.markIfSilent(ctx, h)
	if err != nil {
		r.log.WarnContext(ctx, "reconcile: mark silent host", "host_id", h.ID, "err", err)
	}
	res.add(mres)
	return res
}

// markIfSilent marks the host unreachable, and its running sandboxes
// missing, in one transaction, if its last heartbeat is older than the
// threshold.
func (r *Reconciler) markIfSilent(ctx context.Context, h db.Host) (PassResult, error) {
	var res PassResult
	reason := fmt.Sprintf("host %s sent no heartbeat and did not answer for %s", h.ID, r.cfg.UnreachableAfter)
	err := r.states.InTx(ctx, func(tx *service.StateTx) error {
		res = PassResult{}
		n, err := tx.Q.MarkHostUnreachable(ctx, db.MarkHostUnreachableParams{ID: h.ID, Cutoff: r.now().Add(-r.cfg.UnreachableAfter)})
		if err != nil || n == 0 {
			return err
		}
		res.Unreachable = 1
		if err := tx.Audit.HostMarkedDown(ctx, tx.Tail, service.ActorHostMonitor, h, reason); err != nil {
			return err
		}
		running, err := tx.Q.ListHostSandboxes(ctx, db.ListHostSandboxesParams{HostID: &h.ID, Statuses: []string{string(service.StatusRunning)}})
		if err != nil {
			return err
		}
		for _, sb := range running {
			_, ok, err := tx.Change(ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusRunning}, To: service.StatusMissing,
				Actor: service.ActorHostMonitor, Reason: reason})
			if err != nil {
				return err
			}
			if ok {
				res.Missing++
			}
		}
		return nil
	})
	if err != nil {
		return PassResult{}, fmt.Errorf("mark host %s unreachable: %w", h.ID, err)
	}
	if res.Unreachable > 0 {
		r.log.WarnContext(ctx, "host marked unreachable", "host_id", h.ID, "silent_for_more_than", r.cfg.UnreachableAfter, "sandboxes_missing", res.Missing)
	}
	return res, nil
}

// agentSandbox is one entry of the agent's list.
type agentSandbox struct {
	view         service.AgentView
	lastActiveAt *time.Time
}

// syncSandboxes applies service.Reconcile to the host's rows and its
// agent's list. The rows are read before the agent is asked, and each change
// is conditional on its row being unchanged since, so a transition made in
// between is never undone. A VM without a row is destroyed only if it still
// has none after the agent answered: a sandbox being created has its row
// before the agent hears of it.
func (r *Reconciler) syncSandboxes(ctx context.Context, h db.Host) (PassResult, error) {
	var res PassResult
	live := service.StatusStrings(service.LiveStatuses())
	rows, err := r.q.ListSyncedSandboxes(ctx, db.ListSyncedSandboxesParams{HostID: &h.ID, Statuses: live})
	if err != nil {
		return res, fmt.Errorf("list sandboxes of %s: %w", h.ID, err)
	}
	client := r.agents.ForHost(h)
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	resp, err := client.ListSandboxes(cctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	cancel()
	if err != nil {
		res.HostsFailed = 1
		return res, fmt.Errorf("list agent sandboxes on %s: %w", h.ID, err)
	}
	back, err := r.recordAnswer(ctx, h)
	if err != nil {
		return res, err
	}
	if r.cfg.Samples != nil {
		if err := r.cfg.Samples.StoreListed(ctx, h.ID, resp.Msg.GetMetrics()); err != nil {
			r.log.WarnContext(ctx, "reconcile: store sandbox metrics", "host_id", h.ID, "err", err)
		}
	}
	if back {
		res.HostsBack = 1
	}
	onAgent := map[string]agentSandbox{}
	for _, sb := range resp.Msg.GetSandboxes() {
		a := agentSandbox{view: service.Listed(sb.GetState())}
		if sb.GetLastActiveAt() != nil {
			at := sb.GetLastActiveAt().AsTime()
			a.lastActiveAt = &at
		}
		onAgent[sb.GetSandboxId()] = a
	}
	for _, id := range resp.Msg.GetAutoPausedSandboxIds() {
		a := onAgent[id]
		a.view = service.Listed(pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
		onAgent[id] = a
	}

	known := make(map[string]bool, len(rows))
	for _, synced := range rows {
		row := synced.Sandbox
		known[row.ID] = true
		a := onAgent[row.ID]
		rv := service.RowFrom(row, synced.OpLive)
		d := service.Reconcile(rv, a.view)
		if d.To == "" {
			r.syncActivity(ctx, row, a)
			continue
		}
		if d.Destroy {
			if err := r.destroy(ctx, client, h.ID, row.ID); err != nil {
				continue // the row keeps its state until the VM is gone
			}
			res.StoppingDestroyed++
		}
		_, ok, err := r.states.Change(ctx, d.Change(row))
		if err != nil {
			r.log.WarnContext(ctx, "reconcile: record sandbox state", "sandbox_id", row.ID, "err", err)
			continue
		}
		if ok {
			res.count(d.To)
			if rv.Op != service.OpNone {
				res.Settled++
			}
		}
	}

	var orphans []string
	for id, a := range onAgent {
		if !known[id] && service.Reconcile(service.RowOf(service.NoRow), a.view).Destroy {
			orphans = append(orphans, id)
		}
	}
	if len(orphans) == 0 {
		return res, nil
	}
	fresh, err := r.q.ListSyncedSandboxes(ctx, db.ListSyncedSandboxesParams{HostID: &h.ID, Statuses: live})
	if err != nil {
		return res, fmt.Errorf("list sandboxes of %s: %w", h.ID, err)
	}
	for _, row := range fresh {
		known[row.Sandbox.ID] = true
	}
	for _, id := range orphans {
		if known[id] {
			continue
		}
		if err := r.destroy(ctx, client, h.ID, id); err == nil {
			res.OrphansDestroyed++
		}
	}
	return res, nil
}

// recordAnswer records that the host's agent answered this replica, as a
// heartbeat does; back reports an unreachable host made online again.
func (r *Reconciler) recordAnswer(ctx context.Context, h db.Host) (back bool, err error) {
	// No resources in the answer: the stored ones are kept (NULLs).
	err = r.states.InTx(ctx, func(tx *service.StateTx) error {
		_, back, err = tx.HostAnswered(ctx, db.HeartbeatHostParams{ID: h.ID}, service.ActorReconciler)
		return err
	})
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil // deleted (or pending) meanwhile
		}
		return false, fmt.Errorf("record that %s answered: %w", h.ID, err)
	}
	if back {
		r.log.InfoContext(ctx, "unreachable host answered; online again", "host_id", h.ID)
		return true, nil
	}
	return false, nil
}

// destroy destroys one VM on the host; one the agent does not know is gone
// already.
func (r *Reconciler) destroy(ctx context.Context, client hosts.Client, hostID, id string) error {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	_, err := client.DestroySandbox(cctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
	cancel()
	if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
		r.log.WarnContext(ctx, "reconcile: destroy sandbox VM", "sandbox_id", id, "host_id", hostID, "err", err)
		return fmt.Errorf("destroy %s on %s: %w", id, hostID, err)
	}
	r.log.InfoContext(ctx, "sandbox VM destroyed", "sandbox_id", id, "host_id", hostID)
	return nil
}

// syncActivity copies the agent's last-activity time of a running sandbox
// into its row when it is newer.
func (r *Reconciler) syncActivity(ctx context.Context, row db.Sandbox, a agentSandbox) {
	at := a.lastActiveAt
	if at == nil || service.Status(row.Status) != service.StatusRunning || (row.LastActiveAt != nil && !at.After(*row.LastActiveAt)) {
		return
	}
	if _, err := r.q.SyncSandboxActivity(ctx, db.SyncSandboxActivityParams{ID: row.ID, LastActiveAt: at}); err != nil {
		r.log.WarnContext(ctx, "reconcile: record activity", "sandbox_id", row.ID, "err", err)
	}
}

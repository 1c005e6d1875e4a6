// Package reconciler keeps the database in step with the host agents, in
// one loop and one poller per host. Each pass takes every online host in
// turn (several at once): a host silent for longer than the threshold
// becomes unreachable and its running sandboxes missing (reversible);
// otherwise its agent's sandbox list is compared with the host's rows by
// service.Reconcile, the one mapping of (row state, agent state) to a new
// state, and VMs nothing should run for are destroyed. Every status change
// goes through service.States.
package reconciler

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
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
	// UnreachableAfter is the heartbeat silence that marks a host
	// unreachable (90 s).
	UnreachableAfter time.Duration
	// RPCTimeout bounds each agent call (10 s).
	RPCTimeout time.Duration
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
	// OrphansDestroyed counts VMs destroyed on hosts.
	OrphansDestroyed int
	// HostsFailed counts online hosts whose agent did not answer.
	HostsFailed int
}

func (p *PassResult) add(o PassResult) {
	p.Unreachable += o.Unreachable
	p.Missing += o.Missing
	p.Running += o.Running
	p.Paused += o.Paused
	p.Stopped += o.Stopped
	p.Errored += o.Errored
	p.OrphansDestroyed += o.OrphansDestroyed
	p.HostsFailed += o.HostsFailed
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

// Pass syncs every online host once, silent ones included.
func (r *Reconciler) Pass(ctx context.Context) PassResult { return r.pass(ctx, true) }

func (r *Reconciler) pass(ctx context.Context, markSilent bool) PassResult {
	var res PassResult
	online, err := r.q.ListAllOnlineHosts(ctx)
	if err != nil {
		r.log.WarnContext(ctx, "reconcile: list online hosts", "err", err)
		return res
	}
	results := make([]PassResult, len(online))
	sem := make(chan struct{}, parallelHosts)
	var wg sync.WaitGroup
	for i, h := range online {
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

// syncHost is one host's part of a pass: its liveness (when markSilent),
// then its sandboxes.
func (r *Reconciler) syncHost(ctx context.Context, h db.Host, markSilent bool) PassResult {
	if markSilent {
		res, err := r.markIfSilent(ctx, h)
		if err != nil {
			r.log.WarnContext(ctx, "reconcile: mark silent host", "host_id", h.ID, "err", err)
		}
		if res.Unreachable > 0 {
			return res
		}
	}
	res, err := r.syncSandboxes(ctx, h)
	if err != nil {
		r.log.WarnContext(ctx, "reconcile: sync host", "host_id", h.ID, "err", err)
	}
	return res
}

// markIfSilent marks the host unreachable, and its running sandboxes
// missing, in one transaction, if its last heartbeat is older than the
// threshold.
func (r *Reconciler) markIfSilent(ctx context.Context, h db.Host) (PassResult, error) {
	var res PassResult
	reason := fmt.Sprintf("host %s sent no heartbeat for %s", h.ID, r.cfg.UnreachableAfter)
	err := r.states.InTx(ctx, func(tx *service.StateTx) error {
		res = PassResult{}
		n, err := tx.Q.MarkHostUnreachable(ctx, db.MarkHostUnreachableParams{ID: h.ID, Cutoff: r.now().Add(-r.cfg.UnreachableAfter)})
		if err != nil || n == 0 {
			return err
		}
		res.Unreachable = 1
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
	rows, err := r.q.ListHostSandboxes(ctx, db.ListHostSandboxesParams{HostID: &h.ID, Statuses: live})
	if err != nil {
		return res, fmt.Errorf("list sandboxes of %s: %w", h.ID, err)
	}
	client := r.agents.ForHost(h)
	cctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
	resp, err := client.ListSandboxes(cctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	cancel()
	if err != nil {
		// Host health comes from heartbeats alone; try again next pass.
		res.HostsFailed = 1
		return res, fmt.Errorf("list agent sandboxes on %s: %w", h.ID, err)
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
	for _, row := range rows {
		known[row.ID] = true
		a := onAgent[row.ID]
		d := service.Reconcile(service.Status(row.Status), a.view)
		if d.To == "" {
			r.syncActivity(ctx, row, a)
			continue
		}
		_, ok, err := r.states.Change(ctx, d.Change(row))
		if err != nil {
			r.log.WarnContext(ctx, "reconcile: record sandbox state", "sandbox_id", row.ID, "err", err)
			continue
		}
		if ok {
			res.count(d.To)
		}
	}

	var orphans []string
	for id, a := range onAgent {
		if !known[id] && service.Reconcile(service.NoRow, a.view).Destroy {
			orphans = append(orphans, id)
		}
	}
	if len(orphans) == 0 {
		return res, nil
	}
	fresh, err := r.q.ListHostSandboxes(ctx, db.ListHostSandboxesParams{HostID: &h.ID, Statuses: live})
	if err != nil {
		return res, fmt.Errorf("list sandboxes of %s: %w", h.ID, err)
	}
	for _, row := range fresh {
		known[row.ID] = true
	}
	for _, id := range orphans {
		if known[id] {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, r.cfg.RPCTimeout)
		_, err := client.DestroySandbox(cctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
		cancel()
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			r.log.WarnContext(ctx, "destroy orphan sandbox", "sandbox_id", id, "host_id", h.ID, "err", err)
			continue
		}
		r.log.InfoContext(ctx, "orphan sandbox destroyed", "sandbox_id", id, "host_id", h.ID)
		res.OrphansDestroyed++
	}
	return res, nil
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

// Package hostmonitor watches host agents. Passively, a host whose last
// heartbeat is older than a threshold becomes unreachable and its running
// sandboxes missing (reversible, unlike stopped). Actively, each online
// host's live sandbox list is compared with the database: missing sandboxes
// that are alive again return to running (or paused), missing ones that
// are gone become stopped, and orphans (sandboxes on the host the database
// does not place there, or holds as stopped) are destroyed.
package hostmonitor

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/db"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// Agents reaches host agents; *hosts.Pool implements it.
type Agents interface {
	ForHost(h db.Host) hosts.Client
}

// Config sets the monitor's pace; zero fields take the defaults.
type Config struct {
	// Interval between passes (10 s).
	Interval time.Duration
	// UnreachableAfter is the heartbeat silence that marks a host
	// unreachable (90 s).
	UnreachableAfter time.Duration
	// RPCTimeout bounds each agent call (10 s).
	RPCTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.UnreachableAfter <= 0 {
		c.UnreachableAfter = 90 * time.Second
	}
	if c.RPCTimeout <= 0 {
		c.RPCTimeout = 10 * time.Second
	}
	return c
}

// Monitor is the host monitor.
type Monitor struct {
	pool   *pgxpool.Pool
	q      *db.Queries
	agents Agents
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
}

// New builds a monitor.
func New(pool *pgxpool.Pool, agents Agents, cfg Config, logger *slog.Logger) *Monitor {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Monitor{pool: pool, q: db.New(pool), agents: agents, cfg: cfg.withDefaults(), log: logger, now: time.Now}
}

// Run makes a pass every interval until ctx ends. For the first threshold
// after it starts no host is marked unreachable: while the control plane
// was down no agent could send a heartbeat, and a restart must not flap
// every host.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	started := m.now()
	for {
		m.pass(ctx, m.now().Sub(started) >= m.cfg.UnreachableAfter)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// PassResult counts what one pass changed.
type PassResult struct {
	// Unreachable lists the hosts marked unreachable.
	Unreachable []string
	// Missing counts sandboxes marked missing.
	Missing int
	// Restored counts missing sandboxes found alive again.
	Restored int
	// Lost counts missing sandboxes found gone (now stopped).
	Lost int
	// OrphansDestroyed counts sandboxes destroyed on hosts.
	OrphansDestroyed int
	// HostsFailed counts online hosts whose agent did not answer.
	HostsFailed int
}

// Pass runs the staleness check, then reconciles every online host.
func (m *Monitor) Pass(ctx context.Context) PassResult { return m.pass(ctx, true) }

func (m *Monitor) pass(ctx context.Context, markStale bool) PassResult {
	var res PassResult
	if markStale {
		hostsDown, missing, err := m.MarkStale(ctx)
		if err != nil {
			m.log.WarnContext(ctx, "host monitor: mark stale hosts", "err", err)
		}
		res.Unreachable, res.Missing = hostsDown, missing
	}
	online, err := m.q.ListAllOnlineHosts(ctx)
	if err != nil {
		m.log.WarnContext(ctx, "host monitor: list online hosts", "err", err)
		return res
	}
	for _, h := range online {
		r, err := m.ReconcileHost(ctx, h)
		if err != nil {
			res.HostsFailed++
			m.log.WarnContext(ctx, "host monitor: reconcile host", "host_id", h.ID, "err", err)
			continue
		}
		res.Restored += r.Restored
		res.Lost += r.Lost
		res.OrphansDestroyed += r.OrphansDestroyed
	}
	return res
}

// MarkStale marks online hosts silent for longer than the threshold
// unreachable, and their running sandboxes missing, in one transaction.
func (m *Monitor) MarkStale(ctx context.Context) (hostIDs []string, missing int, err error) {
	cutoff := m.now().Add(-m.cfg.UnreachableAfter)
	err = pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		q := m.q.WithTx(tx)
		stale, err := q.MarkStaleHostsUnreachable(ctx, cutoff)
		if err != nil {
			return fmt.Errorf("mark hosts unreachable: %w", err)
		}
		for _, h := range stale {
			ids, err := q.MarkHostSandboxesMissing(ctx, &h.ID)
			if err != nil {
				return fmt.Errorf("mark sandboxes of %s missing: %w", h.ID, err)
			}
			hostIDs = append(hostIDs, h.ID)
			missing += len(ids)
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	for _, id := range hostIDs {
		m.log.WarnContext(ctx, "host marked unreachable", "host_id", id, "silent_for_more_than", m.cfg.UnreachableAfter)
	}
	return hostIDs, missing, nil
}

// HostResult counts what reconciling one host changed.
type HostResult struct {
	Restored, Lost, OrphansDestroyed int
}

// ReconcileHost compares one online host with the database. The agent is
// asked first and the database read second: a sandbox being created has its
// row before the agent hears of it, so it is never taken for an orphan.
func (m *Monitor) ReconcileHost(ctx context.Context, h db.Host) (HostResult, error) {
	var res HostResult
	client := m.agents.ForHost(h)
	cctx, cancel := context.WithTimeout(ctx, m.cfg.RPCTimeout)
	resp, err := client.ListSandboxes(cctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	cancel()
	if err != nil {
		return res, fmt.Errorf("list sandboxes on %s: %w", h.ID, err)
	}
	live := map[string]pb.SandboxState{}
	for _, sb := range resp.Msg.GetSandboxes() {
		live[sb.GetSandboxId()] = sb.GetState()
	}
	for _, id := range resp.Msg.GetAutoPausedSandboxIds() {
		live[id] = pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
	}
	rows, err := m.q.ListHostSandboxesForReconcile(ctx, &h.ID)
	if err != nil {
		return res, fmt.Errorf("list sandboxes of %s: %w", h.ID, err)
	}
	known := make(map[string]string, len(rows))
	for _, r := range rows {
		known[r.ID] = r.Status
		if r.Status != "missing" {
			continue
		}
		to := "stopped"
		switch live[r.ID] {
		case pb.SandboxState_SANDBOX_STATE_RUNNING, pb.SandboxState_SANDBOX_STATE_STARTING:
			to = "running"
		case pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED:
			to = "paused"
		}
		// Conditional on the row being unchanged since read, so a user's
		// destroy in between is never undone.
		n, err := m.q.ReconcileSandbox(ctx, db.ReconcileSandboxParams{ID: r.ID, FromStatus: "missing", ToStatus: to, SeenUpdatedAt: r.UpdatedAt})
		if err != nil {
			return res, fmt.Errorf("reconcile sandbox %s: %w", r.ID, err)
		}
		if n == 0 {
			continue
		}
		m.log.InfoContext(ctx, "missing sandbox reconciled", "sandbox_id", r.ID, "host_id", h.ID, "to", to)
		if to == "stopped" {
			res.Lost++
		} else {
			res.Restored++
		}
	}
	for id, st := range live {
		status, ok := known[id]
		if ok && status != "stopped" && status != "error" {
			continue
		}
		if st == pb.SandboxState_SANDBOX_STATE_STOPPED {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, m.cfg.RPCTimeout)
		_, err := client.DestroySandbox(cctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
		cancel()
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			m.log.WarnContext(ctx, "destroy orphan sandbox", "sandbox_id", id, "host_id", h.ID, "err", err)
			continue
		}
		m.log.InfoContext(ctx, "orphan sandbox destroyed", "sandbox_id", id, "host_id", h.ID, "db_status", status)
		res.OrphansDestroyed++
	}
	return res, nil
}

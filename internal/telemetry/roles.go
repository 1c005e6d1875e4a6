package telemetry

import (
	"context"
	"log/slog"
	"path"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// Counts reads a gauge family at scrape time (e.g. sandboxes by state):
// label value -> value.
type Counts func(ctx context.Context) (map[string]float64, error)

// countsCollector asks Counts at every scrape, bounded by a timeout, so
// the numbers are never stale and nothing polls between scrapes.
type countsCollector struct {
	desc  *prometheus.Desc
	read  Counts
	log   *slog.Logger
	limit time.Duration
}

func newCounts(name, help, label string, read Counts, log *slog.Logger) *countsCollector {
	return &countsCollector{desc: prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, []string{label}, nil),
		read: read, log: log, limit: 2 * time.Second}
}

func (c *countsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *countsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.limit)
	defer cancel()
	counts, err := c.read(ctx)
	if err != nil {
		// An invalid metric makes the scrape report the error; the other
		// series are still served.
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for v, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, n, v)
	}
}

// rpcName is a Connect procedure's method name ("CreateSandbox").
func rpcName(procedure string) string { return path.Base(procedure) }

// ControlPlane is every series of the control plane. Later features add
// theirs here (event relay backlog, channel deliveries by outcome, build
// queue depth), registered in NewControlPlane.
type ControlPlane struct {
	Registry *prometheus.Registry
	// HTTP times the REST API by chi route pattern.
	HTTP *HTTP
	// agentErrors counts failed calls to host agents; agentOps times the
	// lifecycle calls (create, pause, resume, destroy, snapshot).
	agentErrors *prometheus.CounterVec
	agentOps    *prometheus.HistogramVec
}

// lifecycleOps names the agent calls whose duration the control plane
// records, by procedure.
var lifecycleOps = map[string]string{
	"CreateSandbox": "create", "PauseSandbox": "pause", "ResumeSandbox": "resume",
	"DestroySandbox": "destroy", "CreateSnapshot": "snapshot",
}

// NewControlPlane registers the control plane's series; sandboxes reads
// the sandbox rows by state at each scrape.
func NewControlPlane(sandboxes Counts, log *slog.Logger) *ControlPlane {
	reg := newRegistry()
	c := &ControlPlane{Registry: reg, HTTP: newHTTP(reg),
		agentErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "agent_rpc_errors_total",
			Help: "Calls from the control plane to host agents that failed, by procedure and Connect code."}, []string{"procedure", "code"}),
		agentOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "sandbox_operation_duration_seconds",
			Help: "Duration of sandbox lifecycle calls to host agents, by operation and outcome (ok or error).", Buckets: durationBuckets},
			[]string{"operation", "outcome"}),
	}
	for _, op := range lifecycleOps {
		initOutcomes(c.agentOps, op)
	}
	reg.MustRegister(c.agentErrors, c.agentOps,
		newCounts("sandboxes", "Sandboxes by state, from the database (the same in every replica).", "state", sandboxes, log))
	return c
}

// AgentInterceptor records every unary call to a host agent (errors by
// code, lifecycle durations); install it on the agent clients.
func (c *ControlPlane) AgentInterceptor() connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			start := time.Now()
			resp, err := next(ctx, req)
			name := rpcName(req.Spec().Procedure)
			if err != nil {
				c.agentErrors.WithLabelValues(name, rpcCode(err)).Inc()
			}
			if op, ok := lifecycleOps[name]; ok {
				c.agentOps.WithLabelValues(op, outcome(err)).Observe(time.Since(start).Seconds())
			}
			return resp, err
		}
	})
}

// initOutcomes creates an operation's series up front, so dashboards and
// alerts see zero rather than no series before the first one.
func initOutcomes(h *prometheus.HistogramVec, op string) {
	h.WithLabelValues(op, "ok")
	h.WithLabelValues(op, "error")
}

func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// Agent is every series of a host agent.
type Agent struct {
	Registry *prometheus.Registry
	rpcs     *prometheus.CounterVec
	ops      *prometheus.HistogramVec
}

// Agent sandbox operations, the values of the operation label.
const (
	OpCreate  = "create"
	OpRestore = "restore" // create from a snapshot template
	OpPause   = "pause"
	OpResume  = "resume"
)

// NewAgent registers the agent's series; sandboxes reads the manager's
// sandboxes by state at each scrape.
func NewAgent(sandboxes Counts, log *slog.Logger) *Agent {
	reg := newRegistry()
	a := &Agent{Registry: reg,
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "agent_rpc_requests_total",
			Help: "RPCs this agent served, by procedure and Connect code (ok for success)."}, []string{"procedure", "code"}),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "agent_sandbox_operation_duration_seconds",
			Help: "Duration of sandbox operations on this host (create, restore, pause, resume), by outcome.", Buckets: durationBuckets},
			[]string{"operation", "outcome"}),
	}
	for _, op := range []string{OpCreate, OpRestore, OpPause, OpResume} {
		initOutcomes(a.ops, op)
	}
	reg.MustRegister(a.rpcs, a.ops,
		newCounts("agent_sandboxes", "Sandboxes this agent holds, by state.", "state", sandboxes, log))
	return a
}

// ObserveOperation records one sandbox operation.
func (a *Agent) ObserveOperation(op string, took time.Duration, err error) {
	a.ops.WithLabelValues(op, outcome(err)).Observe(took.Seconds())
}

// ServerInterceptor counts every RPC the agent serves by its outcome.
func (a *Agent) ServerInterceptor() connect.Interceptor { return serverCounter{a.rpcs} }

type serverCounter struct{ rpcs *prometheus.CounterVec }

func (s serverCounter) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		resp, err := next(ctx, req)
		s.rpcs.WithLabelValues(rpcName(req.Spec().Procedure), rpcCode(err)).Inc()
		return resp, err
	}
}

func (s serverCounter) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (s serverCounter) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		err := next(ctx, conn)
		s.rpcs.WithLabelValues(rpcName(conn.Spec().Procedure), rpcCode(err)).Inc()
		return err
	}
}

// Package agenttest is an in-memory host agent served over real Connect RPC
// on loopback: the one fake agent of the control plane's tests. It follows
// the hostagent contract without booting VMs, so control plane tests and
// benchmarks can drive every REST route, the reconciler and the schedulers
// end to end. internal/agentconformance checks it against the real agent
// server: when the two disagree the fake is wrong.
//
// Commands understood by Exec/ExecStream: echo ARGS... (ExecStream sends
// one stdout chunk per argument), false (exit 1), cat (stdin to stdout),
// binary (non-UTF-8 stdout), stderr ARGS (to stderr, exit 2), sleep
// SECONDS; anything else exits 127.
package agenttest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/wrenn-dev/wrenn/internal/agentwire"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

type sandbox struct {
	info *pb.SandboxInfo
	// created is the CreateSandbox request that made it (nil for Put).
	created *pb.CreateSandboxRequest
	files   map[string][]byte
	dirs    map[string]bool
	procs   map[uint32]*pb.ProcessInfo
	ptys    map[string]chan []byte
}

// Limits are the sizes the agent accepts, with the defaults it applies;
// the zero value takes the real agent's defaults.
type Limits struct {
	MaxVCPUs, MaxMemoryMB, MaxDiskMB int
	DefaultVCPUs, DefaultMemoryMB    int
}

// The real agent's defaults (internal/agent/sandbox.Config).
const (
	defaultMaxVCPUs    = 4
	defaultMaxMemoryMB = 4096
	defaultMaxDiskMB   = 20480
	minMemoryMB        = 64
)

func (l *Limits) setDefaults() {
	for _, f := range []struct {
		p *int
		v int
	}{{&l.MaxVCPUs, defaultMaxVCPUs}, {&l.MaxMemoryMB, defaultMaxMemoryMB}, {&l.MaxDiskMB, defaultMaxDiskMB}, {&l.DefaultVCPUs, 1}, {&l.DefaultMemoryMB, 256}} {
		if *f.p <= 0 {
			*f.p = f.v
		}
	}
}

// Agent is the in-memory agent.
type Agent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler

	mu        sync.Mutex
	sandboxes map[string]*sandbox
	templates map[string]bool
	destroyed []string
	nextPID   uint32
	// seq is agent-wide, like the real agent's: state_seq only grows.
	seq   uint64
	calls map[string]int

	srv *http.Server
	ln  net.Listener
	// down: see SetReachable.
	down atomic.Bool
	stop chan struct{}
	// URL is the agent's base URL (http://127.0.0.1:port, or https://
	// with TLS).
	URL string
	// TLS, when set before Start, serves the agent over TLS with it (the
	// real agent's mTLS configuration, pki.HostCertStore.ServerConfig).
	TLS *tls.Config

	// Limits, when set before Start, bound CreateSandbox.
	Limits Limits
	// ReapInterval, when set before Start, is how often the idle reaper
	// auto-pauses sandboxes past their timeout_sec (default 100 ms).
	ReapInterval time.Duration
	// AfterPause, when set before Start, runs after a pause has taken
	// effect and before PauseSandbox answers (outside the agent's lock), so
	// tests can interleave another reader of the agent's state.
	AfterPause func(id string)
	// BeforeResume, when set before Start, runs when ResumeSandbox is
	// called, before it takes effect (outside the agent's lock).
	BeforeResume func(id string)
	// OnCall, when set before Start, runs at the start of every RPC the
	// agent answers, as the real agent's server.Config.OnCall.
	OnCall func()
	// diskLimit: see SetDiskLimit.
	diskLimit int64
}

// SetDiskLimit sets how many bytes a sandbox's files may hold (0: no
// limit); a write past it answers the agent's disk-full error, as a real
// agent does when the guest's disk fills.
func (a *Agent) SetDiskLimit(n int64) {
	a.mu.Lock()
	a.diskLimit = n
	a.mu.Unlock()
}

// New builds an agent knowing the "minimal" template.
func New() *Agent {
	return &Agent{sandboxes: map[string]*sandbox{}, templates: map[string]bool{"minimal": true}, nextPID: 100, calls: map[string]int{}}
}

// Start serves the agent on a loopback port and runs its idle reaper until
// Close.
func (a *Agent) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	scheme := "http://"
	if a.TLS != nil {
		ln, scheme = tls.NewListener(ln, a.TLS), "https://"
	}
	a.Limits.setDefaults()
	if a.ReapInterval <= 0 {
		a.ReapInterval = 100 * time.Millisecond
	}
	mux := http.NewServeMux()
	mux.Handle(hostagentv1connect.NewHostAgentServiceHandler(a))
	a.ln = ln
	a.srv = &http.Server{Handler: a.unlessDown(mux), ReadHeaderTimeout: 10 * time.Second}
	a.URL = scheme + ln.Addr().String()
	a.stop = make(chan struct{})
	go func() { _ = a.srv.Serve(ln) }()
	go a.reap()
	return nil
}

// SetReachable(false) makes every call fail as a network error (the
// connection is closed unanswered) until SetReachable(true), keeping the
// address and the sandboxes: a host cut off and back.
func (a *Agent) SetReachable(ok bool) { a.down.Store(!ok) }

func (a *Agent) unlessDown(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.down.Load() {
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close()
					return
				}
			}
			http.Error(w, "agent unreachable", http.StatusServiceUnavailable)
			return
		}
		if a.OnCall != nil {
			a.OnCall()
		}
		h.ServeHTTP(w, r)
	})
}

// Address is host:port, the form stored in the hosts table.
func (a *Agent) Address() string { return a.ln.Addr().String() }

// Close stops serving (the agent becomes unreachable) and the reaper.
func (a *Agent) Close() {
	if a.srv != nil {
		_ = a.srv.Close()
	}
	if a.stop != nil {
		select {
		case <-a.stop:
		default:
			close(a.stop)
		}
	}
}

// reap auto-pauses running sandboxes idle past their timeout, as the real
// agent's reaper does.
func (a *Agent) reap() {
	t := time.NewTicker(a.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
		}
		a.mu.Lock()
		now := time.Now()
		for _, sb := range a.sandboxes {
			i := sb.info
			if i.State == pb.SandboxState_SANDBOX_STATE_RUNNING && i.TimeoutSec > 0 && now.Sub(i.LastActiveAt.AsTime()) >= time.Duration(i.TimeoutSec)*time.Second {
				a.setState(sb, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
			}
		}
		a.mu.Unlock()
	}
}

// Put sets a sandbox's state (a new state_seq), adding a sandbox of the
// minimal template when absent, as if it had been created earlier.
func (a *Agent) Put(id string, st pb.SandboxState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, ok := a.sandboxes[id]
	if !ok {
		sb = a.add(&pb.CreateSandboxRequest{SandboxId: id, Template: "minimal"})
	}
	a.setState(sb, st)
}

// Has reports whether the agent holds the sandbox.
func (a *Agent) Has(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.sandboxes[id]
	return ok
}

// Destroyed lists the sandboxes destroyed through DestroySandbox, sorted.
func (a *Agent) Destroyed() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := slices.Clone(a.destroyed)
	slices.Sort(out)
	return out
}

// Calls reports how often an RPC was called.
func (a *Agent) Calls(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[method]
}

// AutoPause simulates the idle reaper pausing a sandbox now.
func (a *Agent) AutoPause(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sb, ok := a.sandboxes[id]; ok {
		a.setState(sb, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
	}
}

// Forget drops a sandbox as if its VM vanished.
func (a *Agent) Forget(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.sandboxes, id)
}

// State reports a sandbox's state (UNSPECIFIED when unknown).
func (a *Agent) State(id string) pb.SandboxState {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sb, ok := a.sandboxes[id]; ok {
		return sb.info.State
	}
	return pb.SandboxState_SANDBOX_STATE_UNSPECIFIED
}

// Created is the CreateSandbox request that made sandbox id, nil when none.
func (a *Agent) Created(id string) *pb.CreateSandboxRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sb, ok := a.sandboxes[id]; ok && sb.created != nil {
		return proto.Clone(sb.created).(*pb.CreateSandboxRequest)
	}
	return nil
}

// HasTemplate reports whether a template or snapshot exists.
func (a *Agent) HasTemplate(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.templates[name]
}

// checkPath refuses a path the guest would, as the real agent does.
func checkPath(p string) error {
	if err := agentwire.CheckGuestPath(p); err != nil {
		return agentwire.NewError(connect.CodeInvalidArgument, pb.ErrorReason_ERROR_REASON_UNSPECIFIED, "path", err)
	}
	return nil
}

func notFound(id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("sandbox %s not found", id))
}

// get returns a sandbox; want, if not UNSPECIFIED, is the required state.
// Callers hold a.mu.
func (a *Agent) get(method, id string, want ...pb.SandboxState) (*sandbox, error) {
	a.calls[method]++
	sb, ok := a.sandboxes[id]
	if !ok {
		return nil, notFound(id)
	}
	if len(want) == 0 {
		return sb, nil
	}
	for _, w := range want {
		if sb.info.State == w {
			return sb, nil
		}
	}
	return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("sandbox %s is %s", id, sb.info.State))
}

func (a *Agent) running(method, id string) (*sandbox, error) {
	return a.get(method, id, pb.SandboxState_SANDBOX_STATE_RUNNING)
}

// info copies a sandbox's description: answers are marshalled after the
// lock is released, while the reaper may change the original.
func info(sb *sandbox) *pb.SandboxInfo { return proto.Clone(sb.info).(*pb.SandboxInfo) }

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// validID is the real agent's rule for sandbox IDs (they name directories).
var validID = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$`)

// validToken is the real agent's rule for envd access tokens.
var validToken = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)

// checkCreate applies the real agent's defaults and bounds; callers hold a.mu.
func (a *Agent) checkCreate(m *pb.CreateSandboxRequest) error {
	if m.SandboxId == "" {
		m.SandboxId = fmt.Sprintf("sb-%016x", a.seq+1)
	}
	if m.Template == "" {
		m.Template = "minimal"
	}
	if m.Vcpus == 0 {
		m.Vcpus = uint32(a.Limits.DefaultVCPUs)
	}
	if m.MemoryMb == 0 {
		m.MemoryMb = uint32(a.Limits.DefaultMemoryMB)
	}
	l := a.Limits
	switch {
	case !validID.MatchString(m.SandboxId):
		return invalid("sandbox_id %q: use 1-64 letters, digits, '-' or '_'", m.SandboxId)
	case int(m.Vcpus) > l.MaxVCPUs:
		return invalid("vcpus %d out of range 1..%d", m.Vcpus, l.MaxVCPUs)
	case int(m.MemoryMb) < minMemoryMB || int(m.MemoryMb) > l.MaxMemoryMB:
		return invalid("memory_mb %d out of range %d..%d", m.MemoryMb, minMemoryMB, l.MaxMemoryMB)
	case int(m.DiskMb) > l.MaxDiskMB:
		return invalid("disk_mb %d above the maximum %d", m.DiskMb, l.MaxDiskMB)
	case m.TimeoutSec < 0:
		return invalid("timeout_sec %d is negative", m.TimeoutSec)
	case m.EnvdAccessToken != "" && !validToken.MatchString(m.EnvdAccessToken):
		return invalid("envd_access_token: use 16-128 letters, digits, '-' or '_'")
	}
	return nil
}

// add records a running sandbox; callers hold a.mu.
func (a *Agent) add(m *pb.CreateSandboxRequest) *sandbox {
	now := timestamppb.Now()
	a.seq++
	sb := &sandbox{
		info: &pb.SandboxInfo{SandboxId: m.GetSandboxId(), State: pb.SandboxState_SANDBOX_STATE_RUNNING, StateSeq: a.seq, Template: m.GetTemplate(),
			Vcpus: m.GetVcpus(), MemoryMb: m.GetMemoryMb(), DiskMb: m.GetDiskMb(), TimeoutSec: m.GetTimeoutSec(), StartedAt: now, LastActiveAt: now,
			Metadata: maps.Clone(m.GetMetadata()), Vmm: "test"},
		files: map[string][]byte{}, dirs: map[string]bool{"/": true, "/root": true}, procs: map[uint32]*pb.ProcessInfo{}, ptys: map[string]chan []byte{},
	}
	a.sandboxes[m.GetSandboxId()] = sb
	return sb
}

func (a *Agent) CreateSandbox(_ context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["CreateSandbox"]++
	m := proto.Clone(req.Msg).(*pb.CreateSandboxRequest)
	if err := a.checkCreate(m); err != nil {
		return nil, err
	}
	if _, ok := a.sandboxes[m.GetSandboxId()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("sandbox %s exists", m.GetSandboxId()))
	}
	if !a.templates[m.GetTemplate()] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("template %q not found", m.GetTemplate()))
	}
	sb := a.add(m)
	sb.created = m
	return connect.NewResponse(&pb.CreateSandboxResponse{Sandbox: info(sb)}), nil
}

func (a *Agent) DestroySandbox(_ context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.get("DestroySandbox", req.Msg.GetSandboxId()); err != nil {
		return nil, err
	}
	delete(a.sandboxes, req.Msg.GetSandboxId())
	a.destroyed = append(a.destroyed, req.Msg.GetSandboxId())
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

// setState changes a sandbox's state with a new state_seq; callers hold a.mu.
func (a *Agent) setState(sb *sandbox, st pb.SandboxState) {
	a.seq++
	sb.info.State = st
	sb.info.StateSeq = a.seq
}

func (a *Agent) PauseSandbox(_ context.Context, req *connect.Request[pb.PauseSandboxRequest]) (*connect.Response[pb.PauseSandboxResponse], error) {
	a.mu.Lock()
	sb, err := a.running("PauseSandbox", req.Msg.GetSandboxId())
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	a.setState(sb, pb.SandboxState_SANDBOX_STATE_PAUSED)
	paused := info(sb)
	a.mu.Unlock()
	if a.AfterPause != nil {
		a.AfterPause(paused.GetSandboxId())
	}
	return connect.NewResponse(&pb.PauseSandboxResponse{Sandbox: paused}), nil
}

func (a *Agent) ResumeSandbox(_ context.Context, req *connect.Request[pb.ResumeSandboxRequest]) (*connect.Response[pb.ResumeSandboxResponse], error) {
	if a.BeforeResume != nil {
		a.BeforeResume(req.Msg.GetSandboxId())
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.get("ResumeSandbox", req.Msg.GetSandboxId(), pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
	if err != nil {
		return nil, err
	}
	if req.Msg.TimeoutSec != nil {
		if req.Msg.GetTimeoutSec() < 0 {
			return nil, invalid("timeout_sec %d is negative", req.Msg.GetTimeoutSec())
		}
		sb.info.TimeoutSec = req.Msg.GetTimeoutSec()
	}
	sb.info.LastActiveAt = timestamppb.Now()
	a.setState(sb, pb.SandboxState_SANDBOX_STATE_RUNNING)
	return connect.NewResponse(&pb.ResumeSandboxResponse{Sandbox: info(sb)}), nil
}

func (a *Agent) PingSandbox(_ context.Context, req *connect.Request[pb.PingSandboxRequest]) (*connect.Response[pb.PingSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Like the real agent, any state: a ping only resets the idle timer.
	sb, err := a.get("PingSandbox", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	sb.info.LastActiveAt = timestamppb.Now()
	return connect.NewResponse(&pb.PingSandboxResponse{LastActiveAt: timestamppb.New(sb.info.LastActiveAt.AsTime())}), nil
}

func (a *Agent) GetSandbox(_ context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.get("GetSandbox", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: info(sb)}), nil
}

func (a *Agent) ListSandboxes(context.Context, *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["ListSandboxes"]++
	resp := &pb.ListSandboxesResponse{}
	for _, id := range slices.Sorted(maps.Keys(a.sandboxes)) {
		sb := a.sandboxes[id]
		resp.Sandboxes = append(resp.Sandboxes, info(sb))
		if sb.info.State == pb.SandboxState_SANDBOX_STATE_RUNNING {
			// Like the real agent's 5-second sampler: one sample per slot.
			resp.Metrics = append(resp.Metrics, &pb.SandboxMetricsSeries{SandboxId: id,
				Samples: []*pb.SandboxMetrics{fakeSample(time.Now().Truncate(5 * time.Second))}})
		}
		if sb.info.State == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED {
			resp.AutoPausedSandboxIds = append(resp.AutoPausedSandboxIds, id)
		}
	}
	return connect.NewResponse(resp), nil
}

// PauseAll pauses every running sandbox, as an agent does when it loses the
// control plane.
func (a *Agent) PauseAll(context.Context, *connect.Request[pb.PauseAllRequest]) (*connect.Response[pb.PauseAllResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["PauseAll"]++
	resp := &pb.PauseAllResponse{}
	for _, id := range slices.Sorted(maps.Keys(a.sandboxes)) {
		if sb := a.sandboxes[id]; sb.info.State == pb.SandboxState_SANDBOX_STATE_RUNNING {
			a.setState(sb, pb.SandboxState_SANDBOX_STATE_PAUSED)
			resp.PausedSandboxIds = append(resp.PausedSandboxIds, id)
		}
	}
	return connect.NewResponse(resp), nil
}

// run interprets the small command set.
func run(ctx context.Context, cmd string, args []string, stdin []byte) (stdout, stderr []byte, code int32) {
	switch cmd {
	case "echo":
		return []byte(strings.Join(args, " ") + "\n"), nil, 0
	case "false":
		return nil, nil, 1
	case "cat":
		return stdin, nil, 0
	case "binary":
		return []byte{0xff, 0xfe, 0x00, 'x'}, nil, 0
	case "stderr":
		return nil, []byte(strings.Join(args, " ")), 2
	case "sleep":
		d := time.Second
		if len(args) > 0 {
			if f, err := strconv.ParseFloat(args[0], 64); err == nil {
				d = time.Duration(f * float64(time.Second))
			}
		}
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, nil, 137
		}
		return nil, nil, 0
	}
	return nil, []byte(cmd + ": command not found\n"), 127
}

func (a *Agent) Exec(ctx context.Context, req *connect.Request[pb.ExecRequest]) (*connect.Response[pb.ExecResponse], error) {
	a.mu.Lock()
	sb, err := a.running("Exec", req.Msg.GetSandboxId())
	if err == nil {
		// Like the real agent: any exec is activity.
		sb.info.LastActiveAt = timestamppb.Now()
	}
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	out, errOut, code := run(ctx, req.Msg.GetCmd(), req.Msg.GetArgs(), req.Msg.GetStdin())
	// Like the real agent: a command whose sandbox was paused or destroyed
	// while it ran lost its guest; that is the sandbox's state, not a fault.
	a.mu.Lock()
	_, err = a.get("", req.Msg.GetSandboxId(), pb.SandboxState_SANDBOX_STATE_RUNNING)
	a.mu.Unlock()
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("exec: sandbox %s changed state while the command ran", req.Msg.GetSandboxId()))
	}
	return connect.NewResponse(&pb.ExecResponse{Stdout: out, Stderr: errOut, ExitCode: code, DurationMs: time.Since(start).Milliseconds()}), nil
}

func (a *Agent) newPID() uint32 {
	a.nextPID++
	return a.nextPID
}

func (a *Agent) ExecStream(ctx context.Context, req *connect.Request[pb.ExecStreamRequest], st *connect.ServerStream[pb.ExecStreamResponse]) error {
	a.mu.Lock()
	_, err := a.running("ExecStream", req.Msg.GetSandboxId())
	pid := a.newPID()
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Start_{Start: &pb.ExecStreamResponse_Start{Pid: pid}}}); err != nil {
		return err
	}
	// echo streams one message per argument, to exercise multi-chunk
	// output; together they are what echo prints.
	if req.Msg.GetCmd() == "echo" {
		for i, arg := range req.Msg.GetArgs() {
			chunk := arg
			if i > 0 {
				chunk = " " + arg
			}
			if i == len(req.Msg.GetArgs())-1 {
				chunk += "\n"
			}
			if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: []byte(chunk)}}); err != nil {
				return err
			}
		}
		return st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End_{End: &pb.ExecStreamResponse_End{ExitCode: 0, Exited: true, Status: "exit status 0"}}})
	}
	out, errOut, code := run(ctx, req.Msg.GetCmd(), req.Msg.GetArgs(), nil)
	if len(out) > 0 {
		if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: out}}); err != nil {
			return err
		}
	}
	if len(errOut) > 0 {
		if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stderr{Stderr: errOut}}); err != nil {
			return err
		}
	}
	return st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End_{End: &pb.ExecStreamResponse_End{ExitCode: code, Exited: true, Status: fmt.Sprintf("exit status %d", code)}}})
}

func (a *Agent) StartProcess(_ context.Context, req *connect.Request[pb.StartProcessRequest]) (*connect.Response[pb.StartProcessResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("StartProcess", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	pid := a.newPID()
	tag := req.Msg.GetTag()
	if tag == "" {
		tag = "proc-" + strconv.Itoa(int(pid))
	}
	sb.procs[pid] = &pb.ProcessInfo{Pid: pid, Tag: tag, Cmd: req.Msg.GetCmd(), Args: req.Msg.GetArgs(), Cwd: req.Msg.GetCwd(), Env: req.Msg.GetEnv()}
	return connect.NewResponse(&pb.StartProcessResponse{Pid: pid, Tag: tag}), nil
}

func (a *Agent) ListProcesses(_ context.Context, req *connect.Request[pb.ListProcessesRequest]) (*connect.Response[pb.ListProcessesResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("ListProcesses", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	resp := &pb.ListProcessesResponse{}
	for _, p := range sb.procs {
		resp.Processes = append(resp.Processes, p)
	}
	sort.Slice(resp.Processes, func(i, j int) bool { return resp.Processes[i].Pid < resp.Processes[j].Pid })
	return connect.NewResponse(resp), nil
}

func findProc(sb *sandbox, sel *pb.ProcessSelector) (*pb.ProcessInfo, error) {
	for _, p := range sb.procs {
		if (sel.GetTag() != "" && p.Tag == sel.GetTag()) || (sel.GetPid() != 0 && p.Pid == sel.GetPid()) {
			return p, nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("process not found"))
}

func (a *Agent) KillProcess(_ context.Context, req *connect.Request[pb.KillProcessRequest]) (*connect.Response[pb.KillProcessResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("KillProcess", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	p, err := findProc(sb, req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	delete(sb.procs, p.Pid)
	return connect.NewResponse(&pb.KillProcessResponse{}), nil
}

func (a *Agent) ConnectProcess(_ context.Context, req *connect.Request[pb.ConnectProcessRequest], st *connect.ServerStream[pb.ExecStreamResponse]) error {
	a.mu.Lock()
	sb, err := a.running("ConnectProcess", req.Msg.GetSandboxId())
	var p *pb.ProcessInfo
	if err == nil {
		p, err = findProc(sb, req.Msg.GetProcess())
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Start_{Start: &pb.ExecStreamResponse_Start{Pid: p.Pid}}}); err != nil {
		return err
	}
	if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: []byte("output of " + p.Tag + "\n")}}); err != nil {
		return err
	}
	return st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End_{End: &pb.ExecStreamResponse_End{Exited: true, Status: "exit status 0"}}})
}

func (a *Agent) PtyAttach(ctx context.Context, req *connect.Request[pb.PtyAttachRequest], st *connect.ServerStream[pb.PtyAttachResponse]) error {
	a.mu.Lock()
	sb, err := a.running("PtyAttach", req.Msg.GetSandboxId())
	var (
		ch  chan []byte
		tag string
		pid uint32
	)
	if err == nil {
		tag = req.Msg.GetTag()
		pid = a.newPID()
		if tag == "" {
			tag = "pty-" + strconv.Itoa(int(pid))
			ch = make(chan []byte, 64)
			sb.ptys[tag] = ch
		} else if ch = sb.ptys[tag]; ch == nil {
			err = connect.NewError(connect.CodeNotFound, fmt.Errorf("terminal %q not found", tag))
		}
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := st.Send(&pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Started_{Started: &pb.PtyAttachResponse_Started{Pid: pid, Tag: tag}}}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case data, ok := <-ch:
			if !ok {
				return st.Send(&pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Exit_{Exit: &pb.PtyAttachResponse_Exit{ExitCode: 0, Status: "killed"}}})
			}
			// The terminal echoes its input, like a shell with echo on.
			if err := st.Send(&pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Output{Output: data}}); err != nil {
				return err
			}
		}
	}
}

func (a *Agent) pty(method, id, tag string) (chan []byte, error) {
	sb, err := a.running(method, id)
	if err != nil {
		return nil, err
	}
	ch := sb.ptys[tag]
	if ch == nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("terminal %q not found", tag))
	}
	return ch, nil
}

func (a *Agent) PtyInput(_ context.Context, req *connect.Request[pb.PtyInputRequest]) (*connect.Response[pb.PtyInputResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch, err := a.pty("PtyInput", req.Msg.GetSandboxId(), req.Msg.GetTag())
	if err != nil {
		return nil, err
	}
	select {
	case ch <- append([]byte(nil), req.Msg.GetData()...):
	default:
		return nil, connect.NewError(connect.CodeResourceExhausted, errors.New("terminal input buffer full"))
	}
	return connect.NewResponse(&pb.PtyInputResponse{}), nil
}

func (a *Agent) PtyResize(_ context.Context, req *connect.Request[pb.PtyResizeRequest]) (*connect.Response[pb.PtyResizeResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.pty("PtyResize", req.Msg.GetSandboxId(), req.Msg.GetTag()); err != nil {
		return nil, err
	}
	if req.Msg.GetCols() == 0 || req.Msg.GetRows() == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("cols and rows must be positive"))
	}
	return connect.NewResponse(&pb.PtyResizeResponse{}), nil
}

func (a *Agent) PtyKill(_ context.Context, req *connect.Request[pb.PtyKillRequest]) (*connect.Response[pb.PtyKillResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ch, err := a.pty("PtyKill", req.Msg.GetSandboxId(), req.Msg.GetTag())
	if err != nil {
		return nil, err
	}
	close(ch)
	delete(a.sandboxes[req.Msg.GetSandboxId()].ptys, req.Msg.GetTag())
	return connect.NewResponse(&pb.PtyKillResponse{}), nil
}

func (a *Agent) WriteFileStream(_ context.Context, st *connect.ClientStream[pb.WriteFileStreamRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if !st.Receive() {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("missing header"))
	}
	h := st.Msg().GetHeader()
	if h == nil || h.GetPath() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("first message must be a header with a path"))
	}
	if err := checkPath(h.GetPath()); err != nil {
		return nil, err
	}
	a.mu.Lock()
	_, err := a.running("WriteFileStream", h.GetSandboxId())
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	var data []byte
	for st.Receive() {
		data = append(data, st.Msg().GetChunk()...)
	}
	if err := st.Err(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("", h.GetSandboxId())
	if err != nil {
		return nil, err
	}
	p := path.Clean("/" + h.GetPath())
	if !sb.dirs[path.Dir(p)] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("directory %s does not exist", path.Dir(p)))
	}
	if a.diskLimit > 0 {
		used := int64(len(data))
		for f, b := range sb.files {
			if f != p {
				used += int64(len(b))
			}
		}
		if used > a.diskLimit {
			return nil, agentwire.DiskFull(fmt.Errorf("write file %q: no space left on device", p))
		}
	}
	sb.files[p] = data
	return connect.NewResponse(&pb.WriteFileResponse{Path: p, Size: int64(len(data))}), nil
}

const readChunk = 32 << 10

func (a *Agent) ReadFileStream(_ context.Context, req *connect.Request[pb.ReadFileStreamRequest], st *connect.ServerStream[pb.ReadFileStreamResponse]) error {
	if err := checkPath(req.Msg.GetPath()); err != nil {
		return err
	}
	a.mu.Lock()
	sb, err := a.running("ReadFileStream", req.Msg.GetSandboxId())
	var data []byte
	if err == nil {
		p := path.Clean("/" + req.Msg.GetPath())
		var ok bool
		if data, ok = sb.files[p]; !ok {
			if sb.dirs[p] {
				err = connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s is a directory", p))
			} else {
				err = connect.NewError(connect.CodeNotFound, fmt.Errorf("%s does not exist", p))
			}
		}
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := st.Send(&pb.ReadFileStreamResponse{Part: &pb.ReadFileStreamResponse_Size{Size: int64(len(data))}}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(readChunk, len(data))
		if err := st.Send(&pb.ReadFileStreamResponse{Part: &pb.ReadFileStreamResponse_Chunk{Chunk: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (a *Agent) ListDir(_ context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	if err := checkPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("ListDir", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	dir := path.Clean("/" + req.Msg.GetPath())
	if !sb.dirs[dir] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s does not exist", dir))
	}
	resp := &pb.ListDirResponse{}
	for p, data := range sb.files {
		if path.Dir(p) == dir {
			resp.Entries = append(resp.Entries, &pb.EntryInfo{Name: path.Base(p), Path: p, Type: "file", Size: int64(len(data)), Mode: 0o644, ModifiedAt: timestamppb.Now()})
		}
	}
	for p := range sb.dirs {
		if p != dir && path.Dir(p) == dir {
			resp.Entries = append(resp.Entries, &pb.EntryInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755, ModifiedAt: timestamppb.Now()})
		}
	}
	sort.Slice(resp.Entries, func(i, j int) bool { return resp.Entries[i].Path < resp.Entries[j].Path })
	return connect.NewResponse(resp), nil
}

func (a *Agent) MakeDir(_ context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	if err := checkPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("MakeDir", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	p := path.Clean("/" + req.Msg.GetPath())
	if _, ok := sb.files[p]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s is a file", p))
	}
	for d := p; d != "/"; d = path.Dir(d) {
		sb.dirs[d] = true
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: &pb.EntryInfo{Name: path.Base(p), Path: p, Type: "dir", Mode: 0o755, ModifiedAt: timestamppb.Now()}}), nil
}

func (a *Agent) RemovePath(_ context.Context, req *connect.Request[pb.RemovePathRequest]) (*connect.Response[pb.RemovePathResponse], error) {
	if err := checkPath(req.Msg.GetPath()); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("RemovePath", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	p := path.Clean("/" + req.Msg.GetPath())
	_, isFile := sb.files[p]
	if !isFile && !sb.dirs[p] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("%s does not exist", p))
	}
	delete(sb.files, p)
	for d := range sb.dirs {
		if d == p || strings.HasPrefix(d, p+"/") {
			delete(sb.dirs, d)
		}
	}
	for f := range sb.files {
		if strings.HasPrefix(f, p+"/") {
			delete(sb.files, f)
		}
	}
	return connect.NewResponse(&pb.RemovePathResponse{}), nil
}

// CreateSnapshot records the template; like the real agent, a running
// sandbox keeps running (it is stopped only while the snapshot is taken)
// and a paused one stays paused.
func (a *Agent) CreateSnapshot(_ context.Context, req *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.get("CreateSnapshot", req.Msg.GetSandboxId(), pb.SandboxState_SANDBOX_STATE_RUNNING, pb.SandboxState_SANDBOX_STATE_PAUSED)
	if err != nil {
		return nil, err
	}
	if a.templates[req.Msg.GetName()] {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("template %s exists", req.Msg.GetName()))
	}
	a.templates[req.Msg.GetName()] = true
	return connect.NewResponse(&pb.CreateSnapshotResponse{Name: req.Msg.GetName(), SizeBytes: 4096, Vcpus: sb.info.Vcpus, MemoryMb: sb.info.MemoryMb}), nil
}

func (a *Agent) DeleteSnapshot(_ context.Context, req *connect.Request[pb.DeleteSnapshotRequest]) (*connect.Response[pb.DeleteSnapshotResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["DeleteSnapshot"]++
	if !a.templates[req.Msg.GetName()] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("template %s not found", req.Msg.GetName()))
	}
	delete(a.templates, req.Msg.GetName())
	return connect.NewResponse(&pb.DeleteSnapshotResponse{}), nil
}

func (a *Agent) GetSandboxMetrics(_ context.Context, req *connect.Request[pb.GetSandboxMetricsRequest]) (*connect.Response[pb.GetSandboxMetricsResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.running("GetSandboxMetrics", req.Msg.GetSandboxId()); err != nil {
		return nil, err
	}
	m := fakeSample(time.Now())
	return connect.NewResponse(&pb.GetSandboxMetricsResponse{Current: m, History: []*pb.SandboxMetrics{m}}), nil
}

// fakeSample is the one resource sample the fake reports for a running sandbox.
func fakeSample(at time.Time) *pb.SandboxMetrics {
	return &pb.SandboxMetrics{SampledAt: timestamppb.New(at), CpuPercent: 12.5, HostCpuPercent: 14, MemoryUsedBytes: 64 << 20, MemoryTotalBytes: 256 << 20, DiskUsedBytes: 100 << 20, DiskTotalBytes: 1 << 30}
}

func (a *Agent) GetHostInfo(context.Context, *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	// Like the real agent: capacity is the machine's, committed what the
	// starting and running sandboxes hold.
	capacity := &pb.HostCapacity{Vcpus: 2, MemoryMb: 1024}
	for _, sb := range a.sandboxes {
		if st := sb.info.GetState(); st == pb.SandboxState_SANDBOX_STATE_RUNNING || st == pb.SandboxState_SANDBOX_STATE_STARTING {
			capacity.CommittedVcpus += sb.info.GetVcpus()
			capacity.CommittedMemoryMb += uint64(sb.info.GetMemoryMb())
		}
	}
	return connect.NewResponse(&pb.GetHostInfoResponse{Version: "test", Vmm: "test", Accel: "tcg", CpuCount: capacity.Vcpus, MemoryBytes: capacity.MemoryMb << 20, Healthy: true, Arch: "amd64",
		Templates: slices.Sorted(maps.Keys(a.templates)),
		Limits:    &pb.SandboxLimits{MaxVcpus: uint32(a.Limits.MaxVCPUs), MaxMemoryMb: uint32(a.Limits.MaxMemoryMB), MaxDiskMb: uint32(a.Limits.MaxDiskMB)},
		Capacity:  capacity}), nil
}

// Serve starts a new agent, configured by opts before it starts, and
// closes it when the test ends.
func Serve(tb testing.TB, opts ...func(*Agent)) *Agent {
	tb.Helper()
	a := New()
	for _, o := range opts {
		o(a)
	}
	if err := a.Start(); err != nil {
		tb.Fatalf("agenttest: %v", err)
	}
	tb.Cleanup(a.Close)
	return a
}

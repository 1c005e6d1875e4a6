// Package agenttest is an in-memory host agent served over real Connect RPC
// on loopback. It follows the hostagent contract (NotFound for unknown
// sandboxes, FailedPrecondition for the wrong state, streams for exec,
// files and terminals) without booting VMs, so control plane tests and
// benchmarks can drive every REST route end to end.
//
// Commands understood by Exec/ExecStream: echo ARGS..., false (exit 1),
// cat (stdin to stdout), binary (non-UTF-8 stdout), stderr ARGS (to stderr,
// exit 2), sleep SECONDS; anything else exits 127.
package agenttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

type sandbox struct {
	info  *pb.SandboxInfo
	files map[string][]byte
	dirs  map[string]bool
	procs map[uint32]*pb.ProcessInfo
	ptys  map[string]chan []byte
}

// Agent is the in-memory agent.
type Agent struct {
	hostagentv1connect.UnimplementedHostAgentServiceHandler

	mu        sync.Mutex
	sandboxes map[string]*sandbox
	templates map[string]bool
	nextPID   uint32
	calls     map[string]int

	srv *http.Server
	ln  net.Listener
	// URL is the agent's base URL (http://127.0.0.1:port).
	URL string

	// AfterPause, when set before Start, runs after a pause has taken
	// effect and before PauseSandbox answers (outside the agent's lock), so
	// tests can interleave another reader of the agent's state.
	AfterPause func(id string)
}

// New builds an agent knowing the "minimal" template.
func New() *Agent {
	return &Agent{sandboxes: map[string]*sandbox{}, templates: map[string]bool{"minimal": true}, nextPID: 100, calls: map[string]int{}}
}

// Start serves the agent on a loopback port until Close.
func (a *Agent) Start() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(hostagentv1connect.NewHostAgentServiceHandler(a))
	a.ln = ln
	a.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	a.URL = "http://" + ln.Addr().String()
	go func() { _ = a.srv.Serve(ln) }()
	return nil
}

// Address is host:port, the form stored in the hosts table.
func (a *Agent) Address() string { return a.ln.Addr().String() }

// Close stops serving (the agent becomes unreachable).
func (a *Agent) Close() {
	if a.srv != nil {
		_ = a.srv.Close()
	}
}

// Calls reports how often an RPC was called.
func (a *Agent) Calls(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[method]
}

// AutoPause simulates the idle reaper pausing a sandbox.
func (a *Agent) AutoPause(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sb, ok := a.sandboxes[id]; ok {
		sb.info.State = pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
		sb.info.StateSeq++
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

// HasTemplate reports whether a template or snapshot exists.
func (a *Agent) HasTemplate(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.templates[name]
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

func (a *Agent) CreateSandbox(_ context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["CreateSandbox"]++
	m := req.Msg
	if m.GetSandboxId() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("sandbox_id is required"))
	}
	if _, ok := a.sandboxes[m.GetSandboxId()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("sandbox %s exists", m.GetSandboxId()))
	}
	if !a.templates[m.GetTemplate()] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("template %q not found", m.GetTemplate()))
	}
	now := timestamppb.Now()
	info := &pb.SandboxInfo{SandboxId: m.GetSandboxId(), State: pb.SandboxState_SANDBOX_STATE_RUNNING, StateSeq: 1, Template: m.GetTemplate(),
		Vcpus: m.GetVcpus(), MemoryMb: m.GetMemoryMb(), DiskMb: m.GetDiskMb(), TimeoutSec: m.GetTimeoutSec(), StartedAt: now, LastActiveAt: now,
		Metadata: m.GetMetadata(), Vmm: "test"}
	a.sandboxes[m.GetSandboxId()] = &sandbox{info: info, files: map[string][]byte{}, dirs: map[string]bool{"/": true, "/root": true}, procs: map[uint32]*pb.ProcessInfo{}, ptys: map[string]chan []byte{}}
	return connect.NewResponse(&pb.CreateSandboxResponse{Sandbox: info}), nil
}

func (a *Agent) DestroySandbox(_ context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.get("DestroySandbox", req.Msg.GetSandboxId()); err != nil {
		return nil, err
	}
	delete(a.sandboxes, req.Msg.GetSandboxId())
	return connect.NewResponse(&pb.DestroySandboxResponse{}), nil
}

func (a *Agent) setState(sb *sandbox, st pb.SandboxState) {
	sb.info.State = st
	sb.info.StateSeq++
}

func (a *Agent) PauseSandbox(_ context.Context, req *connect.Request[pb.PauseSandboxRequest]) (*connect.Response[pb.PauseSandboxResponse], error) {
	a.mu.Lock()
	sb, err := a.running("PauseSandbox", req.Msg.GetSandboxId())
	if err != nil {
		a.mu.Unlock()
		return nil, err
	}
	a.setState(sb, pb.SandboxState_SANDBOX_STATE_PAUSED)
	info := proto.Clone(sb.info).(*pb.SandboxInfo)
	a.mu.Unlock()
	if a.AfterPause != nil {
		a.AfterPause(info.GetSandboxId())
	}
	return connect.NewResponse(&pb.PauseSandboxResponse{Sandbox: info}), nil
}

func (a *Agent) ResumeSandbox(_ context.Context, req *connect.Request[pb.ResumeSandboxRequest]) (*connect.Response[pb.ResumeSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.get("ResumeSandbox", req.Msg.GetSandboxId(), pb.SandboxState_SANDBOX_STATE_PAUSED, pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED)
	if err != nil {
		return nil, err
	}
	if req.Msg.TimeoutSec != nil {
		sb.info.TimeoutSec = req.Msg.GetTimeoutSec()
	}
	a.setState(sb, pb.SandboxState_SANDBOX_STATE_RUNNING)
	return connect.NewResponse(&pb.ResumeSandboxResponse{Sandbox: sb.info}), nil
}

func (a *Agent) PingSandbox(_ context.Context, req *connect.Request[pb.PingSandboxRequest]) (*connect.Response[pb.PingSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.running("PingSandbox", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	sb.info.LastActiveAt = timestamppb.Now()
	return connect.NewResponse(&pb.PingSandboxResponse{LastActiveAt: sb.info.LastActiveAt}), nil
}

func (a *Agent) GetSandbox(_ context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	sb, err := a.get("GetSandbox", req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: sb.info}), nil
}

func (a *Agent) ListSandboxes(context.Context, *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls["ListSandboxes"]++
	resp := &pb.ListSandboxesResponse{}
	for id, sb := range a.sandboxes {
		resp.Sandboxes = append(resp.Sandboxes, sb.info)
		if sb.info.State == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED {
			resp.AutoPausedSandboxIds = append(resp.AutoPausedSandboxIds, id)
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
	// echo streams one message per argument, to exercise multi-chunk output.
	if req.Msg.GetCmd() == "echo" {
		for _, arg := range req.Msg.GetArgs() {
			if err := st.Send(&pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: []byte(arg + "\n")}}); err != nil {
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
	sb.files[p] = data
	return connect.NewResponse(&pb.WriteFileResponse{Path: p, Size: int64(len(data))}), nil
}

const readChunk = 32 << 10

func (a *Agent) ReadFileStream(_ context.Context, req *connect.Request[pb.ReadFileStreamRequest], st *connect.ServerStream[pb.ReadFileStreamResponse]) error {
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

// CreateSnapshot records the template and leaves the sandbox paused, as a
// memory snapshot requires stopping the guest.
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
	a.setState(sb, pb.SandboxState_SANDBOX_STATE_PAUSED)
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
	m := &pb.SandboxMetrics{SampledAt: timestamppb.Now(), CpuPercent: 12.5, MemoryUsedBytes: 64 << 20, MemoryTotalBytes: 256 << 20, DiskUsedBytes: 100 << 20, DiskTotalBytes: 1 << 30}
	return connect.NewResponse(&pb.GetSandboxMetricsResponse{Current: m, History: []*pb.SandboxMetrics{m}}), nil
}

func (a *Agent) GetHostInfo(context.Context, *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return connect.NewResponse(&pb.GetHostInfoResponse{Version: "test", Vmm: "test", Accel: "tcg", CpuCount: 2, MemoryBytes: 1 << 30, Healthy: true, Arch: "amd64"}), nil
}

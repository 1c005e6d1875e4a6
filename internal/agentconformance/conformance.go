// Package agentconformance checks that an implementation of the host-agent
// RPC contract (proto/hostagent/v1) behaves the way the control plane
// relies on, the way testing/fstest.TestFS checks an fs.FS. It runs
// against the real agent server (internal/agent/server, with test doubles
// below the sandbox manager) and against the control plane's fake
// (internal/controlplane/agenttest), so the fake cannot drift from the
// agent: when they disagree, one of the two suites fails.
//
// The suite uses only commands both understand: echo, false, cat and sleep.
package agentconformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agentwire"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Template is the image template every agent under test must have.
const Template = "minimal"

// Options tune the suite to the agent under test.
type Options struct {
	// AutoPauseWithin is how long the agent's idle reaper may take to
	// pause a sandbox whose timeout_sec (1) has passed; 0 means 15 s.
	AutoPauseWithin time.Duration
}

// Run runs the suite against c. Every sandbox it creates has an ID starting
// with "conf-" and is destroyed when its subtest ends.
func Run(t *testing.T, c hostagentv1connect.HostAgentServiceClient, opt Options) {
	if opt.AutoPauseWithin == 0 {
		opt.AutoPauseWithin = 15 * time.Second
	}
	s := &suite{c: c, opt: opt}
	t.Run("Lifecycle", s.lifecycle)
	t.Run("UnknownSandboxIsNotFound", s.unknownSandbox)
	t.Run("CreateRejectsBadInput", s.createRejects)
	t.Run("Exec", s.exec)
	t.Run("ExecStream", s.execStream)
	t.Run("Files", s.files)
	t.Run("GuestPathLimits", s.guestPaths)
	t.Run("Processes", s.processes)
	t.Run("Terminal", s.terminal)
	t.Run("Snapshots", s.snapshots)
	t.Run("AutoPause", s.autoPause)
	t.Run("PauseAll", s.pauseAll)
	t.Run("Metrics", s.metrics)
	t.Run("HostInfo", s.hostInfo)
}

type suite struct {
	c   hostagentv1connect.HostAgentServiceClient
	opt Options
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// create makes a running sandbox destroyed at the end of the test.
func (s *suite) create(t *testing.T, req *pb.CreateSandboxRequest) *pb.SandboxInfo {
	t.Helper()
	if req.Template == "" {
		req.Template = Template
	}
	resp, err := s.c.CreateSandbox(ctxFor(t), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("CreateSandbox(%s): %v", req.GetSandboxId(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := s.c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: req.GetSandboxId()}))
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("cleanup: destroy %s: %v", req.GetSandboxId(), err)
		}
	})
	return resp.Msg.GetSandbox()
}

func wantCode(t *testing.T, what string, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Errorf("%s: err = %v, want code %v", what, err, code)
	}
}

func (s *suite) get(t *testing.T, id string) *pb.SandboxInfo {
	t.Helper()
	resp, err := s.c.GetSandbox(ctxFor(t), connect.NewRequest(&pb.GetSandboxRequest{SandboxId: id}))
	if err != nil {
		t.Fatalf("GetSandbox(%s): %v", id, err)
	}
	return resp.Msg.GetSandbox()
}

// listed returns the sandbox's entry in ListSandboxes (nil when absent) and
// whether it is among auto_paused_sandbox_ids.
func (s *suite) listed(t *testing.T, id string) (*pb.SandboxInfo, bool) {
	t.Helper()
	resp, err := s.c.ListSandboxes(ctxFor(t), connect.NewRequest(&pb.ListSandboxesRequest{}))
	if err != nil {
		t.Fatalf("ListSandboxes: %v", err)
	}
	var found *pb.SandboxInfo
	for _, sb := range resp.Msg.GetSandboxes() {
		if sb.GetSandboxId() == id {
			found = sb
		}
	}
	return found, slices.Contains(resp.Msg.GetAutoPausedSandboxIds(), id)
}

// wantState checks a transition's answer and what Get and List say after
// it, and that state_seq grew past prev. It returns the new state_seq.
func (s *suite) wantState(t *testing.T, what string, got *pb.SandboxInfo, want pb.SandboxState, prev uint64) uint64 {
	t.Helper()
	if got.GetState() != want {
		t.Fatalf("%s: state %v, want %v", what, got.GetState(), want)
	}
	if got.GetStateSeq() <= prev {
		t.Fatalf("%s: state_seq %d, want > %d", what, got.GetStateSeq(), prev)
	}
	if g := s.get(t, got.GetSandboxId()); g.GetState() != want || g.GetStateSeq() != got.GetStateSeq() {
		t.Fatalf("%s: GetSandbox says %v/%d, the call answered %v/%d", what, g.GetState(), g.GetStateSeq(), want, got.GetStateSeq())
	}
	l, auto := s.listed(t, got.GetSandboxId())
	if l == nil || l.GetState() != want || l.GetStateSeq() != got.GetStateSeq() {
		t.Fatalf("%s: ListSandboxes has %v, want state %v seq %d", what, l, want, got.GetStateSeq())
	}
	if auto != (want == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED) {
		t.Fatalf("%s: listed among auto_paused_sandbox_ids = %v in state %v", what, auto, want)
	}
	return got.GetStateSeq()
}

func (s *suite) lifecycle(t *testing.T) {
	ctx := ctxFor(t)
	const id = "conf-life"
	sb := s.create(t, &pb.CreateSandboxRequest{SandboxId: id, TimeoutSec: 600, Metadata: map[string]string{"k": "v"}})
	if sb.GetSandboxId() != id || sb.GetTemplate() != Template || sb.GetTimeoutSec() != 600 || sb.GetMetadata()["k"] != "v" {
		t.Fatalf("created %v", sb)
	}
	if sb.GetVcpus() == 0 || sb.GetMemoryMb() == 0 || sb.GetStartedAt() == nil || sb.GetLastActiveAt() == nil {
		t.Fatalf("created without sizes or times: %v", sb)
	}
	seq := s.wantState(t, "create", sb, pb.SandboxState_SANDBOX_STATE_RUNNING, 0)

	_, err := s.c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: id, Template: Template}))
	wantCode(t, "create a duplicate", err, connect.CodeAlreadyExists)
	_, err = s.c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id}))
	wantCode(t, "resume a running sandbox", err, connect.CodeFailedPrecondition)

	ping, err := s.c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: id}))
	if err != nil || ping.Msg.GetLastActiveAt() == nil {
		t.Fatalf("ping: %v %v", ping, err)
	}

	p, err := s.c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id}))
	if err != nil {
		t.Fatalf("pause: %v", err)
	}
	seq = s.wantState(t, "pause", p.Msg.GetSandbox(), pb.SandboxState_SANDBOX_STATE_PAUSED, seq)
	_, err = s.c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id}))
	wantCode(t, "pause a paused sandbox", err, connect.CodeFailedPrecondition)
	_, err = s.c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: "echo"}))
	wantCode(t, "exec in a paused sandbox", err, connect.CodeFailedPrecondition)
	if _, err := s.c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: id})); err != nil {
		t.Errorf("ping a paused sandbox: %v", err)
	}
	if g := s.get(t, id); g.GetStateSeq() != seq {
		t.Fatalf("ping changed state_seq to %d", g.GetStateSeq())
	}

	timeout := int64(120)
	r, err := s.c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id, TimeoutSec: &timeout}))
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if r.Msg.GetSandbox().GetTimeoutSec() != timeout {
		t.Errorf("resume with timeout_sec %d: sandbox has %d", timeout, r.Msg.GetSandbox().GetTimeoutSec())
	}
	seq = s.wantState(t, "resume", r.Msg.GetSandbox(), pb.SandboxState_SANDBOX_STATE_RUNNING, seq)
	if out := s.run(t, id, "echo", "back"); out != "back\n" {
		t.Fatalf("exec after resume: %q", out)
	}

	// A paused sandbox can be destroyed, and then it is gone everywhere.
	if _, err := s.c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id})); err != nil {
		t.Fatalf("pause again: %v", err)
	}
	if g := s.get(t, id); g.GetStateSeq() <= seq {
		t.Fatalf("second pause: state_seq %d, want > %d", g.GetStateSeq(), seq)
	}
	if _, err := s.c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id})); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	_, err = s.c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: id}))
	wantCode(t, "get after destroy", err, connect.CodeNotFound)
	if l, _ := s.listed(t, id); l != nil {
		t.Fatalf("listed after destroy: %v", l)
	}
	_, err = s.c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
	wantCode(t, "destroy twice", err, connect.CodeNotFound)
}

// unary returns a call of f with msg that yields only its error.
func unary[Req, Resp any](ctx context.Context, f func(context.Context, *connect.Request[Req]) (*connect.Response[Resp], error), msg *Req) func() error {
	return func() error {
		_, err := f(ctx, connect.NewRequest(msg))
		return err
	}
}

// streamErr drains a server stream and returns its error.
func streamErr[T any](st *connect.ServerStreamForClient[T], err error) error {
	if err != nil {
		return err
	}
	defer st.Close()
	for st.Receive() {
	}
	return st.Err()
}

func (s *suite) unknownSandbox(t *testing.T) {
	ctx := ctxFor(t)
	const id = "conf-missing"
	tag := &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "x"}}
	calls := map[string]func() error{
		"GetSandbox":     unary(ctx, s.c.GetSandbox, &pb.GetSandboxRequest{SandboxId: id}),
		"DestroySandbox": unary(ctx, s.c.DestroySandbox, &pb.DestroySandboxRequest{SandboxId: id}),
		"PauseSandbox":   unary(ctx, s.c.PauseSandbox, &pb.PauseSandboxRequest{SandboxId: id}),
		"ResumeSandbox":  unary(ctx, s.c.ResumeSandbox, &pb.ResumeSandboxRequest{SandboxId: id}),
		"PingSandbox":    unary(ctx, s.c.PingSandbox, &pb.PingSandboxRequest{SandboxId: id}),
		"Exec":           unary(ctx, s.c.Exec, &pb.ExecRequest{SandboxId: id, Cmd: "echo"}),
		"ExecStream": func() error {
			return streamErr(s.c.ExecStream(ctx, connect.NewRequest(&pb.ExecStreamRequest{SandboxId: id, Cmd: "echo"})))
		},
		"StartProcess":  unary(ctx, s.c.StartProcess, &pb.StartProcessRequest{SandboxId: id, Cmd: "sleep", Args: []string{"1"}}),
		"ListProcesses": unary(ctx, s.c.ListProcesses, &pb.ListProcessesRequest{SandboxId: id}),
		"KillProcess":   unary(ctx, s.c.KillProcess, &pb.KillProcessRequest{SandboxId: id, Process: tag}),
		"ConnectProcess": func() error {
			return streamErr(s.c.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{SandboxId: id, Process: tag})))
		},
		"PtyAttach": func() error {
			return streamErr(s.c.PtyAttach(ctx, connect.NewRequest(&pb.PtyAttachRequest{SandboxId: id})))
		},
		"PtyInput": unary(ctx, s.c.PtyInput, &pb.PtyInputRequest{SandboxId: id, Tag: "x", Data: []byte("x")}),
		"PtyKill":  unary(ctx, s.c.PtyKill, &pb.PtyKillRequest{SandboxId: id, Tag: "x"}),
		"WriteFileStream": func() error {
			st := s.c.WriteFileStream(ctx)
			_ = st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Header_{Header: &pb.WriteFileStreamRequest_Header{SandboxId: id, Path: "/f"}}})
			_ = st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: []byte("x")}})
			_, err := st.CloseAndReceive()
			return err
		},
		"ReadFileStream": func() error {
			return streamErr(s.c.ReadFileStream(ctx, connect.NewRequest(&pb.ReadFileStreamRequest{SandboxId: id, Path: "/f"})))
		},
		"ListDir":           unary(ctx, s.c.ListDir, &pb.ListDirRequest{SandboxId: id, Path: "/"}),
		"MakeDir":           unary(ctx, s.c.MakeDir, &pb.MakeDirRequest{SandboxId: id, Path: "/d"}),
		"RemovePath":        unary(ctx, s.c.RemovePath, &pb.RemovePathRequest{SandboxId: id, Path: "/f"}),
		"CreateSnapshot":    unary(ctx, s.c.CreateSnapshot, &pb.CreateSnapshotRequest{SandboxId: id, Name: "conf-nosnap"}),
		"GetSandboxMetrics": unary(ctx, s.c.GetSandboxMetrics, &pb.GetSandboxMetricsRequest{SandboxId: id}),
	}
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		t.Run(name, func(t *testing.T) { wantCode(t, name, calls[name](), connect.CodeNotFound) })
	}
	_, err := s.c.DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: "conf-nosnap"}))
	wantCode(t, "DeleteSnapshot of an unknown template", err, connect.CodeNotFound)
}

func (s *suite) createRejects(t *testing.T) {
	ctx := ctxFor(t)
	tests := []struct {
		name string
		req  *pb.CreateSandboxRequest
		code connect.Code
	}{
		{"too many vcpus", &pb.CreateSandboxRequest{SandboxId: "conf-bad1", Template: Template, Vcpus: 1000}, connect.CodeInvalidArgument},
		{"too much memory", &pb.CreateSandboxRequest{SandboxId: "conf-bad2", Template: Template, MemoryMb: 1 << 30}, connect.CodeInvalidArgument},
		{"negative timeout", &pb.CreateSandboxRequest{SandboxId: "conf-bad3", Template: Template, TimeoutSec: -1}, connect.CodeInvalidArgument},
		{"bad id", &pb.CreateSandboxRequest{SandboxId: "../conf", Template: Template}, connect.CodeInvalidArgument},
		{"unknown template", &pb.CreateSandboxRequest{SandboxId: "conf-bad4", Template: "conf-no-such-template"}, connect.CodeNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.c.CreateSandbox(ctx, connect.NewRequest(tt.req))
			wantCode(t, "create", err, tt.code)
			if _, gerr := s.c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: tt.req.GetSandboxId()})); connect.CodeOf(gerr) != connect.CodeNotFound {
				t.Errorf("a refused create left a sandbox behind: %v", gerr)
			}
		})
	}
}

// run execs cmd and returns its stdout, failing on a non-zero exit.
func (s *suite) run(t *testing.T, id, cmd string, args ...string) string {
	t.Helper()
	r, err := s.c.Exec(ctxFor(t), connect.NewRequest(&pb.ExecRequest{SandboxId: id, Cmd: cmd, Args: args}))
	if err != nil {
		t.Fatalf("exec %s: %v", cmd, err)
	}
	if r.Msg.GetExitCode() != 0 {
		t.Fatalf("exec %s: exit %d, stderr %q", cmd, r.Msg.GetExitCode(), r.Msg.GetStderr())
	}
	return string(r.Msg.GetStdout())
}

func (s *suite) exec(t *testing.T) {
	const id = "conf-exec"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	before := s.get(t, id).GetLastActiveAt().AsTime()
	tests := []struct {
		name   string
		req    *pb.ExecRequest
		stdout string
		code   int32
	}{
		{"echo", &pb.ExecRequest{Cmd: "echo", Args: []string{"hello", "world"}}, "hello world\n", 0},
		{"exit code", &pb.ExecRequest{Cmd: "false"}, "", 1},
		{"stdin", &pb.ExecRequest{Cmd: "cat", Stdin: []byte("from stdin")}, "from stdin", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.SandboxId = id
			r, err := s.c.Exec(ctxFor(t), connect.NewRequest(tt.req))
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			if string(r.Msg.GetStdout()) != tt.stdout || r.Msg.GetExitCode() != tt.code {
				t.Fatalf("stdout %q exit %d, want %q exit %d", r.Msg.GetStdout(), r.Msg.GetExitCode(), tt.stdout, tt.code)
			}
		})
	}
	if after := s.get(t, id).GetLastActiveAt().AsTime(); after.Before(before) {
		t.Errorf("last_active_at went back from %v to %v", before, after)
	}
}

// drainExec collects an exec stream: the pid of its Start event (which must
// come first), stdout, and the End event.
func drainExec(t *testing.T, st *connect.ServerStreamForClient[pb.ExecStreamResponse], err error) (pid uint32, stdout string, end *pb.ExecStreamResponse_End) {
	t.Helper()
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	defer st.Close()
	var out bytes.Buffer
	first := true
	for st.Receive() {
		m := st.Msg()
		if first {
			if m.GetStart() == nil {
				t.Fatalf("first event is %v, want start", m)
			}
			pid = m.GetStart().GetPid()
			first = false
			continue
		}
		if m.GetKeepalive() {
			continue
		}
		if end != nil {
			t.Fatalf("event %v after end", m)
		}
		out.Write(m.GetStdout())
		end = m.GetEnd()
	}
	if err := st.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	if end == nil {
		t.Fatal("stream ended without an end event")
	}
	return pid, out.String(), end
}

func (s *suite) execStream(t *testing.T) {
	const id = "conf-stream"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	tests := []struct {
		name   string
		cmd    string
		args   []string
		stdout string
		code   int32
	}{
		{"echo", "echo", []string{"a", "b"}, "a b\n", 0},
		{"exit code", "false", nil, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := s.c.ExecStream(ctxFor(t), connect.NewRequest(&pb.ExecStreamRequest{SandboxId: id, Cmd: tt.cmd, Args: tt.args}))
			pid, out, end := drainExec(t, st, err)
			if pid == 0 {
				t.Error("start event without a pid")
			}
			if out != tt.stdout || end.GetExitCode() != tt.code || !end.GetExited() {
				t.Fatalf("stdout %q end %v, want %q exit %d", out, end, tt.stdout, tt.code)
			}
		})
	}
}

func (s *suite) writeFile(t *testing.T, id, path string, data []byte) *pb.WriteFileResponse {
	t.Helper()
	st := s.c.WriteFileStream(ctxFor(t))
	if err := st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Header_{Header: &pb.WriteFileStreamRequest_Header{SandboxId: id, Path: path}}}); err != nil {
		t.Fatalf("send header: %v", err)
	}
	for off := 0; off < len(data); off += 1000 {
		if err := st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: data[off:min(off+1000, len(data))]}}); err != nil {
			t.Fatalf("send chunk: %v", err)
		}
	}
	resp, err := st.CloseAndReceive()
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return resp.Msg
}

// readFile returns the file's content, the size its first message
// announced (-1 when none) and the stream's error.
func (s *suite) readFile(t *testing.T, id, path string) ([]byte, int64, error) {
	t.Helper()
	st, err := s.c.ReadFileStream(ctxFor(t), connect.NewRequest(&pb.ReadFileStreamRequest{SandboxId: id, Path: path}))
	if err != nil {
		return nil, -1, err
	}
	defer st.Close()
	var data []byte
	size := int64(-1)
	first := true
	for st.Receive() {
		if sz, ok := st.Msg().GetPart().(*pb.ReadFileStreamResponse_Size); ok {
			if !first {
				t.Fatal("size announced after data")
			}
			size = sz.Size
		}
		first = false
		data = append(data, st.Msg().GetChunk()...)
	}
	return data, size, st.Err()
}

func (s *suite) files(t *testing.T) {
	ctx := ctxFor(t)
	const id = "conf-files"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	dir := "/conf-dir/sub"
	md, err := s.c.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{SandboxId: id, Path: dir}))
	if err != nil {
		t.Fatalf("mkdir (with parents): %v", err)
	}
	if md.Msg.GetEntry().GetType() != "dir" || md.Msg.GetEntry().GetPath() != dir {
		t.Errorf("mkdir entry %v", md.Msg.GetEntry())
	}
	data := bytes.Repeat([]byte("conformance\n"), 700) // several chunks
	w := s.writeFile(t, id, dir+"/a.txt", data)
	if w.GetPath() != dir+"/a.txt" || w.GetSize() != int64(len(data)) {
		t.Errorf("write answered %v, want path %s size %d", w, dir+"/a.txt", len(data))
	}
	got, size, err := s.readFile(t, id, dir+"/a.txt")
	if err != nil || !bytes.Equal(got, data) || size != int64(len(data)) {
		t.Fatalf("read back %d bytes (announced %d), err %v; want %d", len(got), size, err, len(data))
	}
	ls, err := s.c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: id, Path: dir}))
	if err != nil {
		t.Fatalf("list dir: %v", err)
	}
	if n := len(ls.Msg.GetEntries()); n != 1 {
		t.Fatalf("list dir: %d entries, want 1: %v", n, ls.Msg.GetEntries())
	}
	if e := ls.Msg.GetEntries()[0]; e.GetName() != "a.txt" || e.GetPath() != dir+"/a.txt" || e.GetType() != "file" || e.GetSize() != int64(len(data)) {
		t.Errorf("entry %v", e)
	}
	_, _, err = s.readFile(t, id, dir+"/missing")
	wantCode(t, "read a missing file", err, connect.CodeNotFound)
	_, err = s.c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: id, Path: "/conf-no-dir"}))
	wantCode(t, "list a missing directory", err, connect.CodeNotFound)

	st := s.c.WriteFileStream(ctx)
	_ = st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Chunk{Chunk: []byte("x")}})
	_, err = st.CloseAndReceive()
	wantCode(t, "write stream without a header", err, connect.CodeInvalidArgument)

	if _, err := s.c.RemovePath(ctx, connect.NewRequest(&pb.RemovePathRequest{SandboxId: id, Path: "/conf-dir"})); err != nil {
		t.Fatalf("remove a tree: %v", err)
	}
	_, _, err = s.readFile(t, id, dir+"/a.txt")
	wantCode(t, "read a removed file", err, connect.CodeNotFound)
	// envd takes a missing path as removed (E2B); the agent's contract says not found.
	_, err = s.c.RemovePath(ctx, connect.NewRequest(&pb.RemovePathRequest{SandboxId: id, Path: "/conf-dir"}))
	wantCode(t, "remove a missing path", err, connect.CodeNotFound)
}

// guestPaths: a path the guest's kernel would refuse (agentwire's
// CheckGuestPath) is INVALID_ARGUMENT naming the field "path", on every
// file call, so the control plane answers 400 naming it.
func (s *suite) guestPaths(t *testing.T) {
	s.create(t, &pb.CreateSandboxRequest{SandboxId: "conf-paths"})
	ctx := ctxFor(t)
	longName := "/root/" + strings.Repeat("a", 3994)
	overPathMax := "/" + strings.Repeat("d/", 2100)
	tests := []struct {
		name string
		call func() error
	}{
		{"write a 4000-byte name", func() error {
			st := s.c.WriteFileStream(ctx)
			if err := st.Send(&pb.WriteFileStreamRequest{Part: &pb.WriteFileStreamRequest_Header_{Header: &pb.WriteFileStreamRequest_Header{SandboxId: "conf-paths", Path: longName}}}); err != nil {
				return err
			}
			_, err := st.CloseAndReceive()
			return err
		}},
		{"read a 4000-byte name", func() error {
			_, _, err := s.readFile(t, "conf-paths", longName)
			return err
		}},
		{"list over PATH_MAX", unary(ctx, s.c.ListDir, &pb.ListDirRequest{SandboxId: "conf-paths", Path: overPathMax})},
		{"mkdir a 4000-byte name", unary(ctx, s.c.MakeDir, &pb.MakeDirRequest{SandboxId: "conf-paths", Path: longName})},
		{"remove a NUL path", unary(ctx, s.c.RemovePath, &pb.RemovePathRequest{SandboxId: "conf-paths", Path: "/root/a\x00b"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if connect.CodeOf(err) != connect.CodeInvalidArgument || agentwire.Detail(err).GetField() != "path" {
				t.Fatalf("err = %v (detail %v), want INVALID_ARGUMENT naming path", err, agentwire.Detail(err))
			}
		})
	}
}

func (s *suite) processes(t *testing.T) {
	ctx := ctxFor(t)
	const id = "conf-procs"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	sp, err := s.c.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{SandboxId: id, Cmd: "sleep", Args: []string{"60"}, Tag: "conf-job"}))
	if err != nil {
		t.Fatalf("start process: %v", err)
	}
	if sp.Msg.GetPid() == 0 || sp.Msg.GetTag() != "conf-job" {
		t.Fatalf("started %v", sp.Msg)
	}
	has := func() bool {
		ls, err := s.c.ListProcesses(ctx, connect.NewRequest(&pb.ListProcessesRequest{SandboxId: id}))
		if err != nil {
			t.Fatalf("list processes: %v", err)
		}
		return slices.ContainsFunc(ls.Msg.GetProcesses(), func(p *pb.ProcessInfo) bool {
			return p.GetPid() == sp.Msg.GetPid() && p.GetTag() == "conf-job" && p.GetCmd() == "sleep"
		})
	}
	if !has() {
		t.Fatal("the started process is not listed")
	}
	if _, err := s.c.KillProcess(ctx, connect.NewRequest(&pb.KillProcessRequest{SandboxId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "conf-job"}}})); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if err := eventually(5*time.Second, func() bool { return !has() }); err != nil {
		t.Fatalf("killed process still listed: %v", err)
	}
	_, err = s.c.KillProcess(ctx, connect.NewRequest(&pb.KillProcessRequest{SandboxId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "conf-none"}}}))
	wantCode(t, "kill an unknown process", err, connect.CodeNotFound)
	err = streamErr(s.c.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{SandboxId: id, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: "conf-none"}}})))
	wantCode(t, "connect to an unknown process", err, connect.CodeNotFound)
}

func eventually(within time.Duration, cond func() bool) error {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", within)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (s *suite) terminal(t *testing.T) {
	ctx := ctxFor(t)
	const id = "conf-pty"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	st, err := s.c.PtyAttach(ctx, connect.NewRequest(&pb.PtyAttachRequest{SandboxId: id, Cols: 80, Rows: 24}))
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer st.Close()
	if !st.Receive() {
		t.Fatalf("attach: no first event: %v", st.Err())
	}
	started := st.Msg().GetStarted()
	if started == nil || started.GetTag() == "" || started.GetPid() == 0 {
		t.Fatalf("first event %v, want started with a tag and pid", st.Msg())
	}
	tag := started.GetTag()
	if _, err := s.c.PtyInput(ctx, connect.NewRequest(&pb.PtyInputRequest{SandboxId: id, Tag: tag, Data: []byte("echo hi\n")})); err != nil {
		t.Fatalf("input: %v", err)
	}
	if _, err := s.c.PtyResize(ctx, connect.NewRequest(&pb.PtyResizeRequest{SandboxId: id, Tag: tag, Cols: 100, Rows: 30})); err != nil {
		t.Fatalf("resize: %v", err)
	}
	_, err = s.c.PtyInput(ctx, connect.NewRequest(&pb.PtyInputRequest{SandboxId: id, Tag: "conf-none", Data: []byte("x")}))
	wantCode(t, "input to an unknown terminal", err, connect.CodeNotFound)
	if _, err := s.c.PtyKill(ctx, connect.NewRequest(&pb.PtyKillRequest{SandboxId: id, Tag: tag})); err != nil {
		t.Fatalf("kill: %v", err)
	}
	var exit *pb.PtyAttachResponse_Exit
	for st.Receive() {
		if e := st.Msg().GetExit(); e != nil {
			exit = e
		}
	}
	if err := st.Err(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("stream after kill: %v", err)
	}
	if exit == nil {
		t.Fatal("terminal stream ended without an exit event")
	}
}

func (s *suite) snapshots(t *testing.T) {
	ctx := ctxFor(t)
	const id, name = "conf-snapsrc", "conf-snap"
	src := s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	cs, err := s.c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, Name: name}))
	if err != nil {
		t.Fatalf("snapshot a running sandbox: %v", err)
	}
	t.Cleanup(func() {
		_, err := s.c.DeleteSnapshot(context.Background(), connect.NewRequest(&pb.DeleteSnapshotRequest{Name: name}))
		if err != nil && connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("cleanup: delete snapshot: %v", err)
		}
	})
	if cs.Msg.GetName() != name || cs.Msg.GetSizeBytes() <= 0 || cs.Msg.GetVcpus() != src.GetVcpus() || cs.Msg.GetMemoryMb() != src.GetMemoryMb() {
		t.Errorf("snapshot answered %v for a sandbox of %d vcpus %d MiB", cs.Msg, src.GetVcpus(), src.GetMemoryMb())
	}
	// The source keeps running: a snapshot is not a pause.
	if g := s.get(t, id); g.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Errorf("source after snapshot is %v, want running", g.GetState())
	}
	_, err = s.c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, Name: name}))
	wantCode(t, "snapshot under a taken name", err, connect.CodeAlreadyExists)

	hi, err := s.c.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil || !slices.Contains(hi.Msg.GetTemplates(), name) {
		t.Errorf("host info templates %v (err %v) lack the snapshot %s", hi.Msg.GetTemplates(), err, name)
	}
	child := s.create(t, &pb.CreateSandboxRequest{SandboxId: "conf-snapchild", Template: name})
	if child.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING || child.GetTemplate() != name {
		t.Fatalf("sandbox from the snapshot: %v", child)
	}
	if out := s.run(t, "conf-snapchild", "echo", "child"); out != "child\n" {
		t.Fatalf("exec in the child: %q", out)
	}

	// A paused sandbox can be snapshotted too, and stays paused.
	seq := s.get(t, id).GetStateSeq()
	if _, err := s.c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id})); err != nil {
		t.Fatalf("pause: %v", err)
	}
	if _, err := s.c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: id, Name: "conf-snap2"})); err != nil {
		t.Fatalf("snapshot a paused sandbox: %v", err)
	}
	if g := s.get(t, id); g.GetState() != pb.SandboxState_SANDBOX_STATE_PAUSED || g.GetStateSeq() <= seq {
		t.Errorf("source after snapshot while paused: %v seq %d (was %d)", g.GetState(), g.GetStateSeq(), seq)
	}
	for _, n := range []string{"conf-snap2", name} {
		if n == name {
			// Its child goes first: a template in use is not for deleting.
			if _, err := s.c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: "conf-snapchild"})); err != nil {
				t.Fatalf("destroy child: %v", err)
			}
		}
		if _, err := s.c.DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: n})); err != nil {
			t.Fatalf("delete snapshot %s: %v", n, err)
		}
		_, err = s.c.DeleteSnapshot(ctx, connect.NewRequest(&pb.DeleteSnapshotRequest{Name: n}))
		wantCode(t, "delete a deleted snapshot", err, connect.CodeNotFound)
	}
	_, err = s.c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "conf-snapgone", Template: name}))
	wantCode(t, "create from a deleted snapshot", err, connect.CodeNotFound)
}

// autoPause: a sandbox idle past its timeout_sec is paused by the agent and
// reported as AUTO_PAUSED (also by ID) until someone acts; the report is
// not drained by reading it.
func (s *suite) autoPause(t *testing.T) {
	const id = "conf-idle"
	sb := s.create(t, &pb.CreateSandboxRequest{SandboxId: id, TimeoutSec: 1})
	if err := eventually(s.opt.AutoPauseWithin, func() bool {
		return s.get(t, id).GetState() == pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED
	}); err != nil {
		t.Fatalf("idle sandbox not auto-paused: %v (state %v)", err, s.get(t, id).GetState())
	}
	seq := s.wantState(t, "auto-pause", s.get(t, id), pb.SandboxState_SANDBOX_STATE_AUTO_PAUSED, sb.GetStateSeq())
	if l, auto := s.listed(t, id); !auto || l.GetStateSeq() != seq {
		t.Fatalf("second list: %v auto=%v, want the same report", l, auto)
	}
	r, err := s.c.ResumeSandbox(ctxFor(t), connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id}))
	if err != nil {
		t.Fatalf("resume an auto-paused sandbox: %v", err)
	}
	s.wantState(t, "resume after auto-pause", r.Msg.GetSandbox(), pb.SandboxState_SANDBOX_STATE_RUNNING, seq)
}

// pauseAll: what an agent does when it loses the control plane; it pauses
// the running sandboxes and leaves paused ones alone.
func (s *suite) pauseAll(t *testing.T) {
	ctx := ctxFor(t)
	s.create(t, &pb.CreateSandboxRequest{SandboxId: "conf-all-run"})
	s.create(t, &pb.CreateSandboxRequest{SandboxId: "conf-all-paused"})
	if _, err := s.c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: "conf-all-paused"})); err != nil {
		t.Fatalf("pause: %v", err)
	}
	before := s.get(t, "conf-all-paused").GetStateSeq()
	resp, err := s.c.PauseAll(ctx, connect.NewRequest(&pb.PauseAllRequest{}))
	if err != nil {
		t.Fatalf("pause all: %v", err)
	}
	if got := resp.Msg.GetPausedSandboxIds(); !slices.Equal(got, []string{"conf-all-run"}) || len(resp.Msg.GetFailed()) != 0 {
		t.Fatalf("paused %v, failed %v; want only conf-all-run paused", got, resp.Msg.GetFailed())
	}
	if st := s.get(t, "conf-all-run").GetState(); st != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Errorf("conf-all-run is %v after pause all", st)
	}
	if g := s.get(t, "conf-all-paused"); g.GetState() != pb.SandboxState_SANDBOX_STATE_PAUSED || g.GetStateSeq() != before {
		t.Errorf("an already paused sandbox changed: %v seq %d (was %d)", g.GetState(), g.GetStateSeq(), before)
	}
}

func (s *suite) metrics(t *testing.T) {
	const id = "conf-metrics"
	s.create(t, &pb.CreateSandboxRequest{SandboxId: id})
	m, err := s.c.GetSandboxMetrics(ctxFor(t), connect.NewRequest(&pb.GetSandboxMetricsRequest{SandboxId: id}))
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	cur := m.Msg.GetCurrent()
	if cur == nil || cur.GetSampledAt() == nil || cur.GetMemoryTotalBytes() == 0 || cur.GetDiskTotalBytes() == 0 {
		t.Fatalf("current sample %v", cur)
	}
}

func (s *suite) hostInfo(t *testing.T) {
	hi, err := s.c.GetHostInfo(ctxFor(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("host info: %v", err)
	}
	m := hi.Msg
	if !m.GetHealthy() || m.GetVmm() == "" || m.GetAccel() == "" || m.GetArch() == "" || m.GetCpuCount() == 0 || m.GetMemoryBytes() == 0 || !slices.Contains(m.GetTemplates(), Template) {
		t.Fatalf("host info %v", m)
	}
	// The limits reported to the control plane are the ones CreateSandbox
	// enforces: one more of anything is refused.
	lim, c := m.GetLimits(), m.GetCapacity()
	if lim.GetMaxVcpus() == 0 || lim.GetMaxMemoryMb() == 0 || lim.GetMaxDiskMb() == 0 || c.GetVcpus() == 0 || c.GetMemoryMb() == 0 {
		t.Fatalf("host info limits %v capacity %v", lim, c)
	}
	for _, req := range []*pb.CreateSandboxRequest{
		{SandboxId: "conf-over-vcpus", Template: Template, Vcpus: lim.GetMaxVcpus() + 1},
		{SandboxId: "conf-over-memory", Template: Template, MemoryMb: lim.GetMaxMemoryMb() + 1},
		{SandboxId: "conf-over-disk", Template: Template, DiskMb: lim.GetMaxDiskMb() + 1},
	} {
		_, err := s.c.CreateSandbox(ctxFor(t), connect.NewRequest(req))
		wantCode(t, req.SandboxId, err, connect.CodeInvalidArgument)
	}
	// Committed counts a new running sandbox.
	sb := s.create(t, &pb.CreateSandboxRequest{SandboxId: "conf-committed", Vcpus: 1, MemoryMb: 128})
	hi2, err := s.c.GetHostInfo(ctxFor(t), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("host info: %v", err)
	}
	c2 := hi2.Msg.GetCapacity()
	if c2.GetCommittedVcpus() != c.GetCommittedVcpus()+sb.GetVcpus() || c2.GetCommittedMemoryMb() != c.GetCommittedMemoryMb()+uint64(sb.GetMemoryMb()) {
		t.Fatalf("committed %v after creating %v; was %v", c2, sb, c)
	}
}

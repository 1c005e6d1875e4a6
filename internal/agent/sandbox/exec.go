package sandbox

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/agent/agenterr"
	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// envdErr wraps a failed call to envd, classified by envdclient.Classify.
func envdErr(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, envdclient.Classify(err))...)
}

// guestErr is envdErr for a call into s's guest through c, obtained from
// running: when the call failed because the sandbox left RUNNING while it
// ran (a pause or destroy tore the VM down under it), the answer is
// ErrInvalidState, as it would have been had the call come a moment
// later, and not a fault of the guest.
func (m *Manager) guestErr(s *Sandbox, c *envdclient.Client, err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	s.mu.Lock()
	left := s.removed || s.client != c || s.rec.State != pb.SandboxState_SANDBOX_STATE_RUNNING
	id, state := s.rec.ID, stateName(s.rec.State)
	s.mu.Unlock()
	if left {
		return wrapErr(agenterr.ErrInvalidState, err, format+": sandbox %q became %s while the call ran", append(args, id, state)...)
	}
	return envdErr(err, format, args...)
}

func (m *Manager) execTimeout(sec int64) (time.Duration, error) {
	if sec < 0 {
		return 0, agenterr.Invalid("timeout_sec", "timeout_sec %d is negative", sec)
	}
	if sec == 0 {
		return m.cfg.ExecTimeout, nil
	}
	d := time.Duration(sec) * time.Second
	if d > m.cfg.MaxExecTimeout {
		return 0, agenterr.Invalid("timeout_sec", "timeout_sec %d above the maximum %v", sec, m.cfg.MaxExecTimeout)
	}
	return d, nil
}

func processConfig(cmd string, args []string, env map[string]string, cwd string) *procpb.ProcessConfig {
	pc := &procpb.ProcessConfig{Cmd: cmd, Args: args, Envs: env}
	if cwd != "" {
		pc.Cwd = &cwd
	}
	return pc
}

// killProc sends SIGKILL to pid on a context of its own.
func killProc(c *envdclient.Client, pid uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.Process.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{
		Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}},
		Signal:  procpb.Signal_SIGNAL_SIGKILL,
	}))
}

// capBuf keeps the first max bytes written to it.
type capBuf struct {
	b         []byte
	max       int
	truncated bool
}

func (c *capBuf) write(p []byte) {
	if room := c.max - len(c.b); room < len(p) {
		c.truncated = true
		p = p[:max(room, 0)]
	}
	c.b = append(c.b, p...)
}

// Exec runs a command to completion and returns its output (each stream
// capped), killing it when the timeout runs out.
func (m *Manager) Exec(ctx context.Context, req *pb.ExecRequest) (*pb.ExecResponse, error) {
	if req.GetCmd() == "" {
		return nil, agenterr.Invalid("cmd", "cmd is required")
	}
	timeout, err := m.execTimeout(req.GetTimeoutSec())
	if err != nil {
		return nil, err
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	defer m.touch(s)
	start := time.Now()
	// The deadline is ours, not the stream's: when it passes the process is
	// killed and its end still arrives, so the output so far is kept.
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	var pidv atomic.Uint32
	var timedOut atomic.Bool
	timer := time.AfterFunc(timeout, func() {
		timedOut.Store(true)
		if p := pidv.Load(); p != 0 {
			killProc(c, p)
		}
		// If the end never comes (envd gone), give up on the stream.
		time.AfterFunc(5*time.Second, cancel)
	})
	defer timer.Stop()
	hasStdin := len(req.GetStdin()) > 0
	stream, err := c.Process.Start(ectx, envdclient.NewRequest(&procpb.StartRequest{
		Process: processConfig(req.GetCmd(), req.GetArgs(), req.GetEnv(), req.GetCwd()),
		Stdin:   &hasStdin,
	}, req.GetUser()))
	if err != nil {
		return nil, m.guestErr(s, c, err, "exec")
	}
	defer stream.Close()
	out := capBuf{max: m.cfg.ExecOutputCap}
	errb := capBuf{max: m.cfg.ExecOutputCap}
	res := &pb.ExecResponse{ExitCode: -1}
	var pid uint32
	ended := false
	for !ended && stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			pid = ev.GetStart().GetPid()
			pidv.Store(pid)
			if timedOut.Load() {
				killProc(c, pid)
			}
			if hasStdin {
				if err := sendStdin(ectx, c, pid, req.GetStdin()); err != nil {
					killProc(c, pid)
					return nil, m.guestErr(s, c, err, "exec: stdin")
				}
			}
		case ev.GetData() != nil:
			out.write(ev.GetData().GetStdout())
			errb.write(ev.GetData().GetStderr())
		case ev.GetEnd() != nil:
			res.ExitCode = ev.GetEnd().GetExitCode()
			ended = true
		}
	}
	res.Stdout, res.Stderr = out.b, errb.b
	res.Truncated = out.truncated || errb.truncated
	res.DurationMs = time.Since(start).Milliseconds()
	res.TimedOut = timedOut.Load()
	if !ended {
		if res.TimedOut && ctx.Err() == nil {
			return res, nil
		}
		if pid != 0 && ctx.Err() != nil {
			// The caller went away: do not leave the command running.
			killProc(c, pid)
		}
		if err := stream.Err(); err != nil {
			return nil, m.guestErr(s, c, err, "exec")
		}
		return nil, errorf(agenterr.ErrUnavailable, "exec: stream ended without the process's end")
	}
	return res, nil
}

func sendStdin(ctx context.Context, c *envdclient.Client, pid uint32, data []byte) error {
	sel := &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}
	const chunk = 1 << 20
	for len(data) > 0 {
		n := min(len(data), chunk)
		if _, err := c.Process.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
			Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: data[:n]}},
		})); err != nil {
			return err
		}
		data = data[n:]
	}
	_, err := c.Process.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel}))
	return err
}

// processEvent converts an envd event; nil for events not forwarded.
func processEvent(ev *procpb.ProcessEvent) *pb.ExecStreamResponse {
	switch {
	case ev.GetStart() != nil:
		return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Start_{Start: &pb.ExecStreamResponse_Start{Pid: ev.GetStart().GetPid()}}}
	case ev.GetData() != nil:
		d := ev.GetData()
		switch {
		case d.GetStdout() != nil:
			return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: d.GetStdout()}}
		case d.GetStderr() != nil:
			return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stderr{Stderr: d.GetStderr()}}
		case d.GetPty() != nil:
			return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: d.GetPty()}}
		}
	case ev.GetEnd() != nil:
		e := ev.GetEnd()
		return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End_{End: &pb.ExecStreamResponse_End{
			ExitCode: e.GetExitCode(), Exited: e.GetExited(), Status: e.GetStatus(), Error: e.GetError(),
		}}}
	case ev.GetKeepalive() != nil:
		return &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Keepalive{Keepalive: true}}
	}
	return nil
}

// eventStream is envd's Start or Connect stream.
type eventStream interface {
	Receive() bool
	Err() error
	Close() error
}

// forward sends every event of a process stream until its end.
func (m *Manager) forward(s *Sandbox, c *envdclient.Client, st eventStream, next func() *procpb.ProcessEvent, send func(*pb.ExecStreamResponse) error) error {
	for st.Receive() {
		m.touch(s)
		if out := processEvent(next()); out != nil {
			if err := send(out); err != nil {
				return err
			}
			if out.GetEnd() != nil {
				return nil
			}
		}
	}
	if err := st.Err(); err != nil {
		return m.guestErr(s, c, err, "process stream")
	}
	return nil
}

// ExecStream runs a command and streams its events (start, output, end).
// A timeout_sec above zero kills the process when it runs out.
func (m *Manager) ExecStream(ctx context.Context, req *pb.ExecStreamRequest, send func(*pb.ExecStreamResponse) error) error {
	if req.GetCmd() == "" {
		return agenterr.Invalid("cmd", "cmd is required")
	}
	if req.GetTimeoutSec() < 0 {
		return agenterr.Invalid("timeout_sec", "timeout_sec %d is negative", req.GetTimeoutSec())
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	noStdin := false
	preq := &procpb.StartRequest{
		Process: processConfig(req.GetCmd(), req.GetArgs(), req.GetEnv(), req.GetCwd()),
		Stdin:   &noStdin,
	}
	if req.GetTag() != "" {
		tag := req.GetTag()
		preq.Tag = &tag
	}
	st, err := c.Process.Start(sctx, envdclient.NewRequest(preq, req.GetUser()))
	if err != nil {
		return m.guestErr(s, c, err, "exec stream")
	}
	defer st.Close()
	var pid atomic.Uint32
	if req.GetTimeoutSec() > 0 {
		t := time.AfterFunc(time.Duration(req.GetTimeoutSec())*time.Second, func() {
			if p := pid.Load(); p != 0 {
				killProc(c, p)
			}
		})
		defer t.Stop()
	}
	return m.forward(s, c, st, func() *procpb.ProcessEvent {
		ev := st.Msg().GetEvent()
		if ev.GetStart() != nil {
			pid.Store(ev.GetStart().GetPid())
		}
		return ev
	}, send)
}

func selector(sel *pb.ProcessSelector) (*procpb.ProcessSelector, error) {
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if v.Pid == 0 {
			return nil, agenterr.Invalid("process", "process pid must not be 0")
		}
		return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: v.Pid}}, nil
	case *pb.ProcessSelector_Tag:
		if v.Tag == "" {
			return nil, agenterr.Invalid("process", "process tag must not be empty")
		}
		return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: v.Tag}}, nil
	}
	return nil, agenterr.Invalid("process", "process selector (pid or tag) is required")
}

// StartProcess starts a background process and returns once it runs; its
// output is kept by envd for ConnectProcess.
func (m *Manager) StartProcess(ctx context.Context, req *pb.StartProcessRequest) (*pb.StartProcessResponse, error) {
	if req.GetCmd() == "" {
		return nil, agenterr.Invalid("cmd", "cmd is required")
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	// Closing the stream does not stop the process: envd keeps it and its
	// output for a later Connect.
	defer cancel()
	noStdin := false
	preq := &procpb.StartRequest{
		Process: processConfig(req.GetCmd(), req.GetArgs(), req.GetEnv(), req.GetCwd()),
		Stdin:   &noStdin,
	}
	if req.GetTag() != "" {
		tag := req.GetTag()
		preq.Tag = &tag
	}
	sreq := envdclient.NewRequest(preq, req.GetUser())
	sreq.Header().Set(envdwire.DetachHeader, "true")
	st, err := c.Process.Start(sctx, sreq)
	if err != nil {
		return nil, m.guestErr(s, c, err, "start process")
	}
	defer st.Close()
	for st.Receive() {
		if p := st.Msg().GetEvent().GetStart(); p != nil {
			return &pb.StartProcessResponse{Pid: p.GetPid(), Tag: req.GetTag()}, nil
		}
	}
	if err := st.Err(); err != nil {
		return nil, m.guestErr(s, c, err, "start process")
	}
	return nil, errorf(agenterr.ErrUnavailable, "start process: envd ended the stream before the start event")
}

// ListProcesses lists the processes envd runs.
func (m *Manager) ListProcesses(ctx context.Context, id string) (*pb.ListProcessesResponse, error) {
	s, c, err := m.running(id)
	if err != nil {
		return nil, err
	}
	res, err := c.Process.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
	if err != nil {
		return nil, m.guestErr(s, c, err, "list processes")
	}
	out := &pb.ListProcessesResponse{}
	for _, p := range res.Msg.GetProcesses() {
		cfg := p.GetConfig()
		out.Processes = append(out.Processes, &pb.ProcessInfo{
			Pid: p.GetPid(), Tag: p.GetTag(), Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Cwd: cfg.GetCwd(), Env: cfg.GetEnvs(),
		})
	}
	return out, nil
}

func parseSignal(name string) (procpb.Signal, error) {
	switch name {
	case "", "SIGTERM", "TERM", "15":
		return procpb.Signal_SIGNAL_SIGTERM, nil
	case "SIGKILL", "KILL", "9":
		return procpb.Signal_SIGNAL_SIGKILL, nil
	}
	return 0, agenterr.Invalid("signal", "signal %q: use SIGTERM or SIGKILL", name)
}

// KillProcess signals a process by pid or tag.
func (m *Manager) KillProcess(ctx context.Context, req *pb.KillProcessRequest) error {
	sel, err := selector(req.GetProcess())
	if err != nil {
		return err
	}
	sig, err := parseSignal(req.GetSignal())
	if err != nil {
		return err
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return err
	}
	_, err = c.Process.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: sig}))
	return m.guestErr(s, c, err, "kill process")
}

// ConnectProcess reattaches to a process: buffered output first, then live
// events until it ends.
func (m *Manager) ConnectProcess(ctx context.Context, req *pb.ConnectProcessRequest, send func(*pb.ExecStreamResponse) error) error {
	sel, err := selector(req.GetProcess())
	if err != nil {
		return err
	}
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return err
	}
	st, err := c.Process.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: sel}))
	if err != nil {
		return m.guestErr(s, c, err, "connect process")
	}
	defer st.Close()
	return m.forward(s, c, st, func() *procpb.ProcessEvent { return st.Msg().GetEvent() }, send)
}

// PtyAttach starts a terminal (empty tag) or attaches to one by tag and
// streams its output until it exits.
func (m *Manager) PtyAttach(ctx context.Context, req *pb.PtyAttachRequest, send func(*pb.PtyAttachResponse) error) error {
	s, c, err := m.running(req.GetSandboxId())
	if err != nil {
		return err
	}
	tag := req.GetTag()
	var st interface {
		eventStream
		event() *procpb.ProcessEvent
	}
	if tag == "" {
		tag = "pty-" + randomHex(6)
		cmd, args := req.GetCmd(), req.GetArgs()
		if cmd == "" {
			cmd, args = "/bin/sh", []string{"-l"}
		}
		cols, rows := req.GetCols(), req.GetRows()
		if cols == 0 {
			cols = 80
		}
		if rows == 0 {
			rows = 24
		}
		env := copyMap(req.GetEnv())
		if env == nil {
			env = map[string]string{}
		}
		if _, ok := env["TERM"]; !ok {
			env["TERM"] = "xterm-256color"
		}
		ss, err := c.Process.Start(ctx, envdclient.NewRequest(&procpb.StartRequest{
			Process: processConfig(cmd, args, env, req.GetCwd()),
			Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: cols, Rows: rows}},
			Tag:     &tag,
		}, req.GetUser()))
		if err != nil {
			return m.guestErr(s, c, err, "start terminal")
		}
		st = startStream{ss}
	} else {
		cs, err := c.Process.Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{
			Process: &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}},
		}))
		if err != nil {
			return m.guestErr(s, c, err, "attach terminal %q", tag)
		}
		st = connectStream{cs}
	}
	defer st.Close()
	for st.Receive() {
		m.touch(s)
		ev := st.event()
		var out *pb.PtyAttachResponse
		switch {
		case ev.GetStart() != nil:
			out = &pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Started_{Started: &pb.PtyAttachResponse_Started{Pid: ev.GetStart().GetPid(), Tag: tag}}}
		case ev.GetData() != nil:
			d := ev.GetData()
			b := d.GetPty()
			if b == nil {
				b = append(d.GetStdout(), d.GetStderr()...)
			}
			out = &pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Output{Output: b}}
		case ev.GetEnd() != nil:
			out = &pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Exit_{Exit: &pb.PtyAttachResponse_Exit{ExitCode: ev.GetEnd().GetExitCode(), Status: ev.GetEnd().GetStatus()}}}
		case ev.GetKeepalive() != nil:
			out = &pb.PtyAttachResponse{Event: &pb.PtyAttachResponse_Keepalive{Keepalive: true}}
		}
		if out == nil {
			continue
		}
		if err := send(out); err != nil {
			return err
		}
		if out.GetExit() != nil {
			return nil
		}
	}
	return m.guestErr(s, c, st.Err(), "terminal stream")
}

type startStream struct {
	*connect.ServerStreamForClient[procpb.StartResponse]
}

func (s startStream) event() *procpb.ProcessEvent { return s.Msg().GetEvent() }

type connectStream struct {
	*connect.ServerStreamForClient[procpb.ConnectResponse]
}

func (s connectStream) event() *procpb.ProcessEvent { return s.Msg().GetEvent() }

func ptySelector(tag string) (*procpb.ProcessSelector, error) {
	if tag == "" {
		return nil, agenterr.Invalid("tag", "tag is required")
	}
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: tag}}, nil
}

// PtyInput types into a terminal.
func (m *Manager) PtyInput(ctx context.Context, id, tag string, data []byte) error {
	sel, err := ptySelector(tag)
	if err != nil {
		return err
	}
	s, c, err := m.running(id)
	if err != nil {
		return err
	}
	_, err = c.Process.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
		Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: data}},
	}))
	return m.guestErr(s, c, err, "terminal input")
}

// PtyResize changes a terminal's size.
func (m *Manager) PtyResize(ctx context.Context, id, tag string, cols, rows uint32) error {
	sel, err := ptySelector(tag)
	if err != nil {
		return err
	}
	if cols == 0 || rows == 0 || cols > 65535 || rows > 65535 {
		return agenterr.Invalid("cols", "terminal size %dx%d out of range", cols, rows)
	}
	s, c, err := m.running(id)
	if err != nil {
		return err
	}
	_, err = c.Process.Update(ctx, connect.NewRequest(&procpb.UpdateRequest{
		Process: sel, Pty: &procpb.PTY{Size: &procpb.PTY_Size{Cols: cols, Rows: rows}},
	}))
	return m.guestErr(s, c, err, "terminal resize")
}

// PtyKill ends a terminal.
func (m *Manager) PtyKill(ctx context.Context, id, tag string) error {
	sel, err := ptySelector(tag)
	if err != nil {
		return err
	}
	s, c, err := m.running(id)
	if err != nil {
		return err
	}
	_, err = c.Process.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: procpb.Signal_SIGNAL_SIGKILL}))
	return m.guestErr(s, c, err, "kill terminal %q", tag)
}

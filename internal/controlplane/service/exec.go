package service

import (
	"context"
	"encoding/base64"
	"strconv"
	"strings"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// ExecInput is POST /v1/sandboxes/{id}/exec and the first message of the
// exec stream.
type ExecInput struct {
	Cmd        string            `json:"cmd"`
	Args       []string          `json:"args"`
	Env        map[string]string `json:"env"`
	Cwd        string            `json:"cwd"`
	TimeoutSec *int              `json:"timeout_sec"`
	User       string            `json:"user"`
	// Background starts the process and answers with its pid and tag.
	Background bool   `json:"background"`
	Tag        string `json:"tag"`
	// Stdin is passed to foreground commands (UTF-8 text).
	Stdin string `json:"stdin"`
}

// Check validates the input (exported for the WebSocket handler).
func (s *Service) CheckExec(in ExecInput) error {
	if strings.TrimSpace(in.Cmd) == "" {
		return Invalid("cmd", "cmd is required")
	}
	if len(in.Cmd) > 4096 || strings.ContainsRune(in.Cmd, 0) {
		return Invalid("cmd", "cmd must be at most 4096 bytes without NUL")
	}
	if len(in.Args) > 1024 {
		return Invalid("args", "args may have at most 1024 entries")
	}
	for _, a := range in.Args {
		if strings.ContainsRune(a, 0) {
			return Invalid("args", "args must not contain NUL")
		}
	}
	if err := checkEnv(in.Env); err != nil {
		return err
	}
	if len(in.Tag) > 128 {
		return Invalid("tag", "tag must be at most 128 bytes")
	}
	return s.checkTimeout("timeout_sec", in.TimeoutSec)
}

func checkEnv(env map[string]string) error {
	if len(env) > 500 {
		return Invalid("env", "env may have at most 500 entries")
	}
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return Invalid("env", "env names must be non-empty without '=' or NUL, values without NUL")
		}
	}
	return nil
}

// ExecResult is the answer to a foreground exec.
type ExecResult struct {
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ExitCode   int32  `json:"exit_code"`
	DurationMS int64  `json:"duration_ms"`
	// Encoding is "utf-8", or "base64" when the output is not valid UTF-8
	// (then both stdout and stderr are base64).
	Encoding  string `json:"encoding"`
	Truncated bool   `json:"truncated"`
	TimedOut  bool   `json:"timed_out"`
}

// BackgroundResult is the answer to a background exec.
type BackgroundResult struct {
	PID uint32 `json:"pid"`
	Tag string `json:"tag"`
}

// EncodeOutput returns text as is when it is UTF-8, else base64.
func EncodeOutput(b []byte) (data, encoding string) {
	if utf8.Valid(b) {
		return string(b), "utf-8"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

// Exec runs a command to completion, or starts it in the background.
func (s *Service) Exec(ctx context.Context, a auth.AuthContext, id string, in ExecInput) (*ExecResult, *BackgroundResult, error) {
	if err := s.CheckExec(in); err != nil {
		return nil, nil, err
	}
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, nil, err
	}
	if in.Background {
		resp, err := c.StartProcess(ctx, connect.NewRequest(&pb.StartProcessRequest{SandboxId: r.ID, Cmd: in.Cmd, Args: in.Args, Env: in.Env, Cwd: in.Cwd, User: in.User, Tag: in.Tag}))
		if err != nil {
			return nil, nil, FromAgent("start the process", err)
		}
		return nil, &BackgroundResult{PID: resp.Msg.GetPid(), Tag: resp.Msg.GetTag()}, nil
	}
	var timeout int64
	if in.TimeoutSec != nil {
		timeout = int64(*in.TimeoutSec)
	}
	resp, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: r.ID, Cmd: in.Cmd, Args: in.Args, Env: in.Env, Cwd: in.Cwd, TimeoutSec: timeout, User: in.User, Stdin: []byte(in.Stdin)}))
	if err != nil {
		return nil, nil, FromAgent("run the command", err)
	}
	m := resp.Msg
	res := &ExecResult{ExitCode: m.GetExitCode(), DurationMS: m.GetDurationMs(), Truncated: m.GetTruncated(), TimedOut: m.GetTimedOut(), Encoding: "utf-8"}
	if utf8.Valid(m.GetStdout()) && utf8.Valid(m.GetStderr()) {
		res.Stdout, res.Stderr = string(m.GetStdout()), string(m.GetStderr())
	} else {
		res.Stdout, res.Stderr = base64.StdEncoding.EncodeToString(m.GetStdout()), base64.StdEncoding.EncodeToString(m.GetStderr())
		res.Encoding = "base64"
	}
	return res, nil, nil
}

// ExecStream starts a command and returns the agent's event stream; the
// caller must Close it.
func (s *Service) ExecStream(ctx context.Context, a auth.AuthContext, id string, in ExecInput) (*connect.ServerStreamForClient[pb.ExecStreamResponse], error) {
	if err := s.CheckExec(in); err != nil {
		return nil, err
	}
	// The agent's stream carries no stdin: refuse it rather than drop it.
	if in.Stdin != "" {
		return nil, Invalid("stdin", "stdin is not supported on the stream; use POST /exec")
	}
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	var timeout int64
	if in.TimeoutSec != nil {
		timeout = int64(*in.TimeoutSec)
	}
	st, err := c.ExecStream(ctx, connect.NewRequest(&pb.ExecStreamRequest{SandboxId: r.ID, Cmd: in.Cmd, Args: in.Args, Env: in.Env, Cwd: in.Cwd, TimeoutSec: timeout, User: in.User, Tag: in.Tag}))
	if err != nil {
		return nil, FromAgent("start the command", err)
	}
	return st, nil
}

// Process is a background process.
type Process struct {
	PID  uint32            `json:"pid"`
	Tag  string            `json:"tag"`
	Cmd  string            `json:"cmd"`
	Args []string          `json:"args"`
	Cwd  string            `json:"cwd"`
	Env  map[string]string `json:"env"`
}

// ListProcesses lists the sandbox's background processes.
func (s *Service) ListProcesses(ctx context.Context, a auth.AuthContext, id string) ([]Process, error) {
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	resp, err := c.ListProcesses(ctx, connect.NewRequest(&pb.ListProcessesRequest{SandboxId: r.ID}))
	if err != nil {
		return nil, FromAgent("list processes", err)
	}
	out := make([]Process, 0, len(resp.Msg.GetProcesses()))
	for _, p := range resp.Msg.GetProcesses() {
		// Empty, not null: the API documents an array and an object.
		args, env := p.GetArgs(), p.GetEnv()
		if args == nil {
			args = []string{}
		}
		if env == nil {
			env = map[string]string{}
		}
		out = append(out, Process{PID: p.GetPid(), Tag: p.GetTag(), Cmd: p.GetCmd(), Args: args, Cwd: p.GetCwd(), Env: env})
	}
	return out, nil
}

// ParseSelector reads a process selector from a path segment: digits are a
// pid, anything else a tag.
func ParseSelector(sel string) (*pb.ProcessSelector, error) {
	if sel == "" || len(sel) > 128 || !utf8.ValidString(sel) || strings.ContainsRune(sel, 0) {
		return nil, Invalid("process", "process must be a pid or a tag")
	}
	if n, err := strconv.ParseUint(sel, 10, 32); err == nil {
		if n == 0 {
			return nil, Invalid("process", "pid must be positive")
		}
		return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: uint32(n)}}, nil
	}
	return &pb.ProcessSelector{Selector: &pb.ProcessSelector_Tag{Tag: sel}}, nil
}

// KillProcess signals a background process.
func (s *Service) KillProcess(ctx context.Context, a auth.AuthContext, id, selector, signal string) error {
	sel, err := ParseSelector(selector)
	if err != nil {
		return err
	}
	signal = strings.ToUpper(signal)
	switch signal {
	case "":
		signal = "SIGTERM"
	case "SIGTERM", "SIGKILL":
	default:
		return Invalid("signal", "signal must be SIGTERM or SIGKILL")
	}
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return err
	}
	if _, err := c.KillProcess(ctx, connect.NewRequest(&pb.KillProcessRequest{SandboxId: r.ID, Process: sel, Signal: signal})); err != nil {
		return FromAgent("kill the process", err)
	}
	return nil
}

// ConnectProcess re-attaches to a background process's output.
func (s *Service) ConnectProcess(ctx context.Context, a auth.AuthContext, id, selector string) (*connect.ServerStreamForClient[pb.ExecStreamResponse], error) {
	sel, err := ParseSelector(selector)
	if err != nil {
		return nil, err
	}
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	st, err := c.ConnectProcess(ctx, connect.NewRequest(&pb.ConnectProcessRequest{SandboxId: r.ID, Process: sel}))
	if err != nil {
		return nil, FromAgent("connect to the process", err)
	}
	return st, nil
}

// PtyInput are the terminal's start parameters.
type PtyInput struct {
	Tag  string
	Cmd  string
	Args []string
	Env  map[string]string
	Cwd  string
	User string
	Cols uint32
	Rows uint32
}

// PtySession is an attached terminal; its methods go straight to the agent
// so keystrokes cost no database query.
type PtySession struct {
	Stream    *connect.ServerStreamForClient[pb.PtyAttachResponse]
	client    hosts.Client
	sandboxID string
}

// Input sends keystrokes.
func (p *PtySession) Input(ctx context.Context, tag string, data []byte) error {
	_, err := p.client.PtyInput(ctx, connect.NewRequest(&pb.PtyInputRequest{SandboxId: p.sandboxID, Tag: tag, Data: data}))
	return errOrNil(FromAgent("send terminal input", err))
}

// Resize changes the window size.
func (p *PtySession) Resize(ctx context.Context, tag string, cols, rows uint32) error {
	_, err := p.client.PtyResize(ctx, connect.NewRequest(&pb.PtyResizeRequest{SandboxId: p.sandboxID, Tag: tag, Cols: cols, Rows: rows}))
	return errOrNil(FromAgent("resize the terminal", err))
}

// Kill ends the terminal.
func (p *PtySession) Kill(ctx context.Context, tag string) error {
	_, err := p.client.PtyKill(ctx, connect.NewRequest(&pb.PtyKillRequest{SandboxId: p.sandboxID, Tag: tag}))
	return errOrNil(FromAgent("kill the terminal", err))
}

// errOrNil avoids a typed-nil error interface.
func errOrNil(e *Error) error {
	if e == nil {
		return nil
	}
	return e
}

// CheckPty validates terminal parameters (exported so the WebSocket
// handler can answer 400 before upgrading).
func CheckPty(in PtyInput) error {
	if in.Cols > 1000 || in.Rows > 1000 {
		return Invalid("cols", "cols and rows must be at most 1000")
	}
	for field, v := range map[string]string{"tag": in.Tag, "cmd": in.Cmd, "cwd": in.Cwd, "user": in.User} {
		if len(v) > 4096 || !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
			return Invalid(field, "%s must be UTF-8 text of at most 4096 bytes without NUL", field)
		}
	}
	if err := checkEnv(in.Env); err != nil {
		return err
	}
	return nil
}

// AttachPty starts (or re-attaches to, by tag) a terminal.
func (s *Service) AttachPty(ctx context.Context, a auth.AuthContext, id string, in PtyInput) (*PtySession, error) {
	if err := CheckPty(in); err != nil {
		return nil, err
	}
	r, c, err := s.runningSandbox(ctx, a, id)
	if err != nil {
		return nil, err
	}
	st, err := c.PtyAttach(ctx, connect.NewRequest(&pb.PtyAttachRequest{SandboxId: r.ID, Tag: in.Tag, Cmd: in.Cmd, Args: in.Args, Env: in.Env, Cwd: in.Cwd, User: in.User, Cols: in.Cols, Rows: in.Rows}))
	if err != nil {
		return nil, FromAgent("attach the terminal", err)
	}
	return &PtySession{Stream: st, client: c, sandboxID: r.ID}, nil
}

package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/rpcutil"
	"github.com/wrenn-dev/wrenn/internal/envdwire"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// Service implements the process.Process Connect service.
type Service struct {
	env rpcutil.Env
	m   *Manager
}

var _ processconnect.ProcessHandler = (*Service)(nil)

// NewService returns the Connect service over m.
func NewService(env rpcutil.Env, m *Manager) *Service {
	return &Service{env: env, m: m}
}

func toConnectErr(err error) error {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return err
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrEnded):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, ErrTagInUse):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, ErrInvalidSize), errors.Is(err, ErrNotPTY), errors.Is(err, ErrStdinClosed):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

func (s *Service) get(sel *pb.ProcessSelector) (*Proc, error) {
	switch v := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return s.m.Get(v.Pid, "")
	case *pb.ProcessSelector_Tag:
		if v.Tag == "" {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty tag"))
		}
		return s.m.Get(0, v.Tag)
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process selector needs a pid or a tag"))
	}
}

func info(p *Proc) *pb.ProcessInfo {
	pi := &pb.ProcessInfo{
		Config: &pb.ProcessConfig{Cmd: p.Config.Cmd, Args: p.Config.Args, Envs: p.Config.Envs, Cwd: p.Config.Cwd},
		Pid:    p.PID,
	}
	if p.Tag != "" {
		pi.Tag = &p.Tag
	}
	return pi
}

// List implements Process.List.
func (s *Service) List(ctx context.Context, req *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	res := &pb.ListResponse{}
	for _, p := range s.m.List() {
		res.Processes = append(res.Processes, info(p))
	}
	return connect.NewResponse(res), nil
}

// Start implements Process.Start.
func (s *Service) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	cfg := req.Msg.GetProcess()
	if cfg == nil || cfg.GetCmd() == "" {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	u, err := s.env.User(req.Header())
	if err != nil {
		return err
	}
	cwd := cfg.GetCwd()
	if cwd == "" {
		cwd = s.env.State.DefaultWorkdir()
	}
	dir := ""
	if cwd != "" {
		if dir, err = s.env.Resolve(cwd, u); err != nil {
			return err
		}
	} else {
		dir, _ = s.env.Resolver.Resolve(u.Home, "/")
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			dir = "" // a user without a home directory starts in envd's
		}
	}
	if dir != "" {
		st, err := os.Stat(dir)
		if err != nil {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd %q: %w", cwd, err))
		}
		if !st.IsDir() {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd %q is not a directory", cwd))
		}
	}
	o := StartOptions{
		Config:  Config{Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Envs: cfg.GetEnvs(), Cwd: cfg.Cwd},
		Dir:     dir,
		User:    u,
		BaseEnv: s.env.State.Envs(),
		Tag:     req.Msg.GetTag(),
		Stdin:   req.Msg.Stdin == nil || req.Msg.GetStdin(),
	}
	if req.Msg.Pty != nil {
		size := req.Msg.GetPty().GetSize()
		o.PTY = &Winsize{Cols: size.GetCols(), Rows: size.GetRows()}
		if size == nil {
			o.PTY = &Winsize{Cols: 80, Rows: 24}
		}
	}
	p, sub, err := s.m.Start(o)
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) || errors.Is(err, ErrTagInUse) {
			return toConnectErr(err)
		}
		if errors.Is(err, ErrInvalidSize) {
			return connect.NewError(connect.CodeInvalidArgument, err)
		}
		// Command not found, permission denied, bad credentials: the
		// client's input, not an envd fault.
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	defer p.Unsubscribe(sub)
	if err := stream.Send(&pb.StartResponse{Event: startEvent(p)}); err != nil {
		return err
	}
	if req.Header().Get(envdwire.DetachHeader) == "true" {
		// The caller wants only the pid: end the stream now so no output is
		// counted as delivered, and a later Connect replays all of it.
		return nil
	}
	return follow(ctx, p, sub, nil, rpcutil.Keepalive(req.Header()), func(e *pb.ProcessEvent) error {
		return stream.Send(&pb.StartResponse{Event: e})
	})
}

// Connect implements Process.Connect.
func (s *Service) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := s.get(req.Msg.GetProcess())
	if err != nil {
		return toConnectErr(err)
	}
	sub, replay := p.Subscribe(true)
	defer p.Unsubscribe(sub)
	if err := stream.Send(&pb.ConnectResponse{Event: startEvent(p)}); err != nil {
		return err
	}
	return follow(ctx, p, sub, replay, rpcutil.Keepalive(req.Header()), func(e *pb.ProcessEvent) error {
		return stream.Send(&pb.ConnectResponse{Event: e})
	})
}

func startEvent(p *Proc) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.PID}}}
}

// follow sends replayed then live events until the End event or ctx ends.
func follow(ctx context.Context, p *Proc, sub *Sub, replay []Event, keepalive time.Duration, send func(*pb.ProcessEvent) error) error {
	deliver := func(e Event) (bool, error) {
		if err := send(toPB(e)); err != nil {
			return false, err
		}
		if e.Kind == End {
			return true, nil
		}
		p.Delivered(e.Seq)
		return false, nil
	}
	for _, e := range replay {
		if done, err := deliver(e); done || err != nil {
			return err
		}
	}
	t := time.NewTicker(keepalive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
		case e := <-sub.C:
			if ctx.Err() != nil {
				// Detached meanwhile: leave the event for a later Connect.
				return nil
			}
			if done, err := deliver(e); done || err != nil {
				return err
			}
		}
	}
}

func toPB(e Event) *pb.ProcessEvent {
	switch e.Kind {
	case End:
		end := &pb.ProcessEvent_EndEvent{ExitCode: e.End.ExitCode, Exited: e.End.Exited, Status: e.End.Status}
		if e.End.Error != "" {
			end.Error = &e.End.Error
		}
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	case Stderr:
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: e.Data}}}}
	case PTY:
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: e.Data}}}}
	default:
		return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: &pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: e.Data}}}}
	}
}

// Update implements Process.Update (PTY resize).
func (s *Service) Update(ctx context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := s.get(req.Msg.GetProcess())
	if err != nil {
		return nil, toConnectErr(err)
	}
	if size := req.Msg.GetPty().GetSize(); size != nil {
		if size.Cols == 0 || size.Rows == 0 || size.Cols > 65535 || size.Rows > 65535 {
			return nil, connect.NewError(connect.CodeInvalidArgument, ErrInvalidSize)
		}
		if err := p.Resize(uint16(size.Cols), uint16(size.Rows)); err != nil {
			return nil, toConnectErr(err)
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

func input(in *pb.ProcessInput) ([]byte, error) {
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		return v.Stdin, nil
	case *pb.ProcessInput_Pty:
		return v.Pty, nil
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("input needs stdin or pty data"))
	}
}

// SendInput implements Process.SendInput.
func (s *Service) SendInput(ctx context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := s.get(req.Msg.GetProcess())
	if err != nil {
		return nil, toConnectErr(err)
	}
	data, err := input(req.Msg.GetInput())
	if err != nil {
		return nil, err
	}
	if err := p.WriteInput(ctx, data); err != nil {
		return nil, toConnectErr(err)
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// StreamInput implements Process.StreamInput.
func (s *Service) StreamInput(ctx context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *Proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			got, err := s.get(ev.Start.GetProcess())
			if err != nil {
				return nil, toConnectErr(err)
			}
			p = got
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("data before start event"))
			}
			data, err := input(ev.Data.GetInput())
			if err != nil {
				return nil, err
			}
			if err := p.WriteInput(ctx, data); err != nil {
				return nil, toConnectErr(err)
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty stream input event"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// SendSignal implements Process.SendSignal.
func (s *Service) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unsupported signal %d", req.Msg.GetSignal()))
	}
	p, err := s.get(req.Msg.GetProcess())
	if err != nil {
		return nil, toConnectErr(err)
	}
	if err := p.Signal(sig); err != nil {
		return nil, toConnectErr(err)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

// CloseStdin implements Process.CloseStdin.
func (s *Service) CloseStdin(ctx context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := s.get(req.Msg.GetProcess())
	if err != nil {
		return nil, toConnectErr(err)
	}
	if err := p.CloseStdin(); err != nil {
		return nil, toConnectErr(err)
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"

	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// streamMsg is every message the streaming endpoints send. Output data is
// UTF-8 text, or base64 with encoding "base64" when a chunk is not UTF-8.
type streamMsg struct {
	Type     string `json:"type"` // start, stdout, stderr, exit, error, started, output
	PID      uint32 `json:"pid,omitempty"`
	Tag      string `json:"tag,omitempty"`
	Data     string `json:"data,omitempty"`
	Encoding string `json:"encoding,omitempty"`
	ExitCode *int32 `json:"exit_code,omitempty"`
	Exited   *bool  `json:"exited,omitempty"`
	Status   string `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
	Field    string `json:"field,omitempty"`
}

const wsWriteTimeout = 30 * time.Second

// precheck answers plain HTTP errors (404, 409, 503) before the upgrade, so
// clients see the same statuses as on the REST endpoints.
func (s *Server) precheck(w http.ResponseWriter, r *http.Request) bool {
	sb, err := s.deps.Service.GetSandbox(r.Context(), caller(r), sandboxID(r))
	if err != nil {
		s.writeErr(w, r, err)
		return false
	}
	if sb.Status != service.StatusRunning {
		s.writeErr(w, r, service.Errorf(service.CodeInvalidState, "sandbox %s is %s; it must be running", sb.ID, sb.Status))
		return false
	}
	return true
}

func (s *Server) accept(w http.ResponseWriter, r *http.Request) (*websocket.Conn, bool) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		// Accept has already answered the client.
		s.deps.Logger.DebugContext(r.Context(), "websocket accept failed", "err", err)
		return nil, false
	}
	return c, true
}

func wsSend(ctx context.Context, c *websocket.Conn, m streamMsg) error {
	ctx, cancel := context.WithTimeout(ctx, wsWriteTimeout)
	defer cancel()
	return wsjson.Write(ctx, c, m)
}

// wsFail sends an error message and closes the socket.
func wsFail(ctx context.Context, c *websocket.Conn, err error) {
	se := asServiceError("stream", err)
	_ = wsSend(ctx, c, errorMsg(se))
	code := websocket.StatusPolicyViolation
	if StatusOf(se.Kind) >= 500 {
		code = websocket.StatusInternalError
	}
	_ = c.Close(code, string(se.Code))
}

// errorMsg is a stream's error message.
func errorMsg(se *service.Error) streamMsg {
	return streamMsg{Type: "error", Code: string(se.Code), Message: se.Message, Field: se.Field}
}

func outputMsg(typ string, b []byte) streamMsg {
	data, enc := service.EncodeOutput(b)
	m := streamMsg{Type: typ, Data: data}
	if enc != "utf-8" {
		m.Encoding = enc
	}
	return m
}

// pumpExec forwards an agent exec stream to the socket.
func (s *Server) pumpExec(ctx context.Context, c *websocket.Conn, st *connect.ServerStreamForClient[pb.ExecStreamResponse]) {
	defer st.Close()
	for st.Receive() {
		var m streamMsg
		switch ev := st.Msg().GetEvent().(type) {
		case *pb.ExecStreamResponse_Start_:
			m = streamMsg{Type: "start", PID: ev.Start.GetPid()}
		case *pb.ExecStreamResponse_Stdout:
			m = outputMsg("stdout", ev.Stdout)
		case *pb.ExecStreamResponse_Stderr:
			m = outputMsg("stderr", ev.Stderr)
		case *pb.ExecStreamResponse_End_:
			code, exited := ev.End.GetExitCode(), ev.End.GetExited()
			m = streamMsg{Type: "exit", ExitCode: &code, Exited: &exited, Status: ev.End.GetStatus(), Error: ev.End.GetError()}
		default:
			continue // keepalive
		}
		if err := wsSend(ctx, c, m); err != nil {
			return
		}
		if m.Type == "exit" {
			_ = c.Close(websocket.StatusNormalClosure, "exited")
			return
		}
	}
	if err := st.Err(); err != nil && ctx.Err() == nil {
		wsFail(ctx, c, service.FromAgent("stream from the host agent", err))
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// execStream: the client sends one {"type":"start", cmd, args, env, cwd,
// timeout_sec, tag, user}; the server answers start, stdout/stderr..., exit.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request) {
	if !s.precheck(w, r) {
		return
	}
	c, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer c.CloseNow()
	ctx := r.Context()
	readCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, raw, err := c.Read(readCtx)
	cancel()
	if err != nil {
		return
	}
	var start struct {
		Type string `json:"type"`
		service.ExecInput
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&start); err != nil {
		wsFail(ctx, c, jsonError(err))
		return
	}
	if start.Type != "start" {
		wsFail(ctx, c, service.Invalid("type", "the first message must have type \"start\""))
		return
	}
	if start.Background {
		wsFail(ctx, c, service.Invalid("background", "background is not supported on the stream; use POST /exec"))
		return
	}
	// From here on the client only closes; CloseRead ends ctx when it does.
	ctx = c.CloseRead(ctx)
	st, err := s.deps.Service.ExecStream(ctx, caller(r), sandboxID(r), start.ExecInput)
	if err != nil {
		wsFail(ctx, c, err)
		return
	}
	s.pumpExec(ctx, c, st)
}

// processStream re-attaches to a background process's output.
func (s *Server) processStream(w http.ResponseWriter, r *http.Request) {
	if !s.precheck(w, r) {
		return
	}
	if _, err := service.ParseSelector(pathParam(r, "process")); err != nil {
		s.writeErr(w, r, err)
		return
	}
	c, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer c.CloseNow()
	ctx := c.CloseRead(r.Context())
	st, err := s.deps.Service.ConnectProcess(ctx, caller(r), sandboxID(r), pathParam(r, "process"))
	if err != nil {
		wsFail(ctx, c, err)
		return
	}
	s.pumpExec(ctx, c, st)
}

// ptyClientMsg is what a terminal client sends.
type ptyClientMsg struct {
	Type     string `json:"type"` // input, resize, kill
	Data     string `json:"data"`
	Encoding string `json:"encoding"`
	Cols     uint32 `json:"cols"`
	Rows     uint32 `json:"rows"`
}

func queryUint(r *http.Request, name string, def uint32) (uint32, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, service.Invalid(name, "%s must be a whole number", name)
	}
	return uint32(n), nil
}

// pty opens a terminal: query cols, rows, tag (re-attach), cmd. Server
// messages: started {pid, tag}, output {data, encoding}, exit {exit_code},
// error. Client messages: input {data[, encoding: base64]}, resize {cols,
// rows}, kill. A terminal started by this socket is killed when it closes;
// one re-attached by tag is left running.
func (s *Server) pty(w http.ResponseWriter, r *http.Request) {
	cols, err := queryUint(r, "cols", 80)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	rows, err := queryUint(r, "rows", 24)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	q := r.URL.Query()
	in := service.PtyInput{Tag: q.Get("tag"), Cmd: q.Get("cmd"), Cwd: q.Get("cwd"), Cols: cols, Rows: rows}
	if err := service.CheckPty(in); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if !s.precheck(w, r) {
		return
	}
	s.runPty(w, r, in)
}

func (s *Server) runPty(w http.ResponseWriter, r *http.Request, in service.PtyInput) {
	reattach := in.Tag != ""
	c, ok := s.accept(w, r)
	if !ok {
		return
	}
	defer c.CloseNow()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	sess, err := s.deps.Service.AttachPty(ctx, caller(r), sandboxID(r), in)
	if err != nil {
		wsFail(ctx, c, err)
		return
	}
	defer sess.Stream.Close()
	tagc := make(chan string, 1)
	go func() {
		// Client -> agent. Ends when the socket closes.
		defer cancel()
		tag := ""
		select {
		case tag = <-tagc:
		case <-ctx.Done():
			return
		}
		for {
			var m ptyClientMsg
			if err := wsjson.Read(ctx, c, &m); err != nil {
				if !reattach {
					kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
					_ = sess.Kill(kctx, tag)
					kcancel()
				}
				return
			}
			var err error
			switch m.Type {
			case "input":
				data := []byte(m.Data)
				if m.Encoding == "base64" {
					if data, err = base64.StdEncoding.DecodeString(m.Data); err != nil {
						err = service.Invalid("data", "data is not valid base64")
						break
					}
				}
				err = sess.Input(ctx, tag, data)
			case "resize":
				err = sess.Resize(ctx, tag, m.Cols, m.Rows)
			case "kill":
				err = sess.Kill(ctx, tag)
			default:
				err = service.Invalid("type", "unknown message type %q; use input, resize or kill", m.Type)
			}
			if err != nil {
				_ = wsSend(ctx, c, errorMsg(asServiceError("pty", err)))
			}
		}
	}()
	for sess.Stream.Receive() {
		var m streamMsg
		switch ev := sess.Stream.Msg().GetEvent().(type) {
		case *pb.PtyAttachResponse_Started_:
			select {
			case tagc <- ev.Started.GetTag():
			default:
			}
			m = streamMsg{Type: "started", PID: ev.Started.GetPid(), Tag: ev.Started.GetTag()}
		case *pb.PtyAttachResponse_Output:
			m = outputMsg("output", ev.Output)
		case *pb.PtyAttachResponse_Exit_:
			code := ev.Exit.GetExitCode()
			m = streamMsg{Type: "exit", ExitCode: &code, Status: ev.Exit.GetStatus()}
		default:
			continue
		}
		if err := wsSend(ctx, c, m); err != nil {
			return
		}
		if m.Type == "exit" {
			_ = c.Close(websocket.StatusNormalClosure, "exited")
			return
		}
	}
	if err := sess.Stream.Err(); err != nil && ctx.Err() == nil {
		wsFail(ctx, c, service.FromAgent("stream from the host agent", err))
		return
	}
	_ = c.Close(websocket.StatusNormalClosure, "")
}

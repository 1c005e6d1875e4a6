package wrenn

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

// streamMsg is a message of the exec and terminal WebSockets (the server's
// side is internal/controlplane/api/handlers_streams.go).
type streamMsg struct {
	Type     string `json:"type"`
	PID      uint32 `json:"pid,omitempty"`
	Tag      string `json:"tag,omitempty"`
	Data     string `json:"data,omitempty"`
	Encoding string `json:"encoding,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Exited   *bool  `json:"exited,omitempty"`
	Status   string `json:"status,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     string `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
	Field    string `json:"field,omitempty"`
}

func (m streamMsg) bytes() ([]byte, error) {
	if m.Encoding == "base64" {
		return base64.StdEncoding.DecodeString(m.Data)
	}
	return []byte(m.Data), nil
}

// ErrConnectionLost is returned when a stream ends before its command or
// terminal exited.
var ErrConnectionLost = errors.New("wrenn: the connection to the sandbox was lost before the command exited")

// maxStreamMsg bounds one WebSocket message (output chunks are far smaller).
const maxStreamMsg = 8 << 20

// dial opens a sandbox WebSocket; an answer before the upgrade is an *APIError.
func (s *Sandbox) dial(ctx context.Context, path string, q url.Values) (*websocket.Conn, error) {
	u := s.c.base.JoinPath("v1", "sandboxes", s.Id, path)
	u.RawQuery = q.Encode()
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: s.c.hc})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.StatusCode >= 300 {
			return nil, readAPIError(resp)
		}
		return nil, fmt.Errorf("wrenn: open %s: %w", u.Path, ctxErr(ctx, err))
	}
	conn.SetReadLimit(maxStreamMsg)
	return conn, nil
}

// apiError is an error message of a stream. Status is 0: the socket was
// upgraded, so the error has no HTTP status of its own.
func (m streamMsg) apiError() error {
	return &APIError{Code: m.Code, Message: m.Message, Field: m.Field}
}

// ExitStatus is how a streamed command or a terminal ended.
type ExitStatus struct {
	PID      uint32
	ExitCode int
	// Exited is false when a signal ended the process.
	Exited bool
	Status string
}

// ExecStream runs a command, writing its output to opts.Stdout and
// opts.Stderr as it comes, and returns how it ended. It takes no stdin
// (opts.Stdin must be nil). A non-zero exit is
// not an error; a stream cut before the exit is ErrConnectionLost.
func (s *Sandbox) ExecStream(ctx context.Context, cmd string, opts ExecOptions) (*ExitStatus, error) {
	if opts.Stdin != nil {
		// The host agent's exec stream has no stdin: it would be dropped.
		return nil, errors.New("wrenn: ExecStream does not take stdin; use Exec, or write the input to a file")
	}
	conn, err := s.dial(ctx, "exec/stream", nil)
	if err != nil {
		return nil, err
	}
	defer conn.CloseNow()
	start := map[string]any{"type": "start", "cmd": cmd, "args": opts.Args, "env": opts.Env, "cwd": opts.Cwd, "user": opts.User}
	if opts.Timeout > 0 {
		start["timeout_sec"] = int(opts.Timeout.Round(time.Second) / time.Second)
	}
	if err := wsjson.Write(ctx, conn, start); err != nil {
		return nil, fmt.Errorf("wrenn: start the command: %w", ctxErr(ctx, err))
	}
	out := map[string]io.Writer{"stdout": orDiscard(opts.Stdout), "stderr": orDiscard(opts.Stderr)}
	st := &ExitStatus{}
	for {
		var m streamMsg
		if err := wsjson.Read(ctx, conn, &m); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %v", ErrConnectionLost, err)
		}
		switch m.Type {
		case "start":
			st.PID = m.PID
		case "stdout", "stderr":
			b, err := m.bytes()
			if err != nil {
				return nil, fmt.Errorf("wrenn: decode %s: %w", m.Type, err)
			}
			if _, err := out[m.Type].Write(b); err != nil {
				return nil, fmt.Errorf("wrenn: write %s: %w", m.Type, err)
			}
		case "exit":
			if m.ExitCode != nil {
				st.ExitCode = *m.ExitCode
			}
			st.Exited = m.Exited == nil || *m.Exited
			st.Status = m.Status
			conn.Close(websocket.StatusNormalClosure, "")
			return st, nil
		case "error":
			return nil, m.apiError()
		}
	}
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// PtyOptions are a terminal's settings.
type PtyOptions struct {
	// Cmd is the program (default: the sandbox user's login shell).
	Cmd        string
	Cwd        string
	Cols, Rows uint16
}

// Terminal is an interactive terminal in a sandbox: Read its output,
// Write keystrokes, Resize it, Wait for it to exit. Closing it kills the
// process it started.
type Terminal struct {
	conn *websocket.Conn
	out  *io.PipeReader
	PID  uint32
	Tag  string

	done chan struct{}
	// Set before done closes.
	exit *ExitStatus
	err  error

	closeOnce sync.Once
}

// Shell opens a terminal (a PTY) running opts.Cmd or the login shell.
func (s *Sandbox) Shell(ctx context.Context, opts PtyOptions) (*Terminal, error) {
	q := url.Values{}
	if opts.Cols > 0 {
		q.Set("cols", strconv.Itoa(int(opts.Cols)))
	}
	if opts.Rows > 0 {
		q.Set("rows", strconv.Itoa(int(opts.Rows)))
	}
	if opts.Cmd != "" {
		q.Set("cmd", opts.Cmd)
	}
	if opts.Cwd != "" {
		q.Set("cwd", opts.Cwd)
	}
	// The socket outlives ctx's dial deadline: only the dial uses ctx.
	conn, err := s.dial(ctx, "pty", q)
	if err != nil {
		return nil, err
	}
	var first streamMsg
	if err := wsjson.Read(ctx, conn, &first); err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("%w: %v", ErrConnectionLost, ctxErr(ctx, err))
	}
	if first.Type == "error" {
		conn.CloseNow()
		return nil, first.apiError()
	}
	if first.Type != "started" {
		conn.CloseNow()
		return nil, fmt.Errorf("wrenn: the terminal answered %q before starting", first.Type)
	}
	pr, pw := io.Pipe()
	t := &Terminal{conn: conn, out: pr, PID: first.PID, Tag: first.Tag, done: make(chan struct{})}
	go t.pump(pw)
	return t, nil
}

// pump copies output to the pipe until the terminal exits or the socket
// closes.
func (t *Terminal) pump(pw *io.PipeWriter) {
	defer close(t.done)
	ctx := context.Background()
	// The server sends an error and goes on when input or a resize
	// fails, and sends one before closing when the terminal fails.
	var last error
	for {
		var m streamMsg
		if err := wsjson.Read(ctx, t.conn, &m); err != nil {
			t.err = fmt.Errorf("%w: %v", ErrConnectionLost, err)
			if last != nil {
				t.err = fmt.Errorf("%w: %w", ErrConnectionLost, last)
			}
			pw.CloseWithError(t.err)
			return
		}
		switch m.Type {
		case "output":
			b, err := m.bytes()
			if err == nil {
				_, err = pw.Write(b)
			}
			if err != nil {
				t.err = err
				t.conn.CloseNow()
				return
			}
		case "exit":
			t.exit = &ExitStatus{PID: t.PID, Exited: true, Status: m.Status}
			if m.ExitCode != nil {
				t.exit.ExitCode = *m.ExitCode
			}
			pw.Close()
			t.conn.Close(websocket.StatusNormalClosure, "")
			return
		case "error":
			last = m.apiError()
		}
	}
}

// Read reads the terminal's output; io.EOF after it exited.
func (t *Terminal) Read(p []byte) (int, error) { return t.out.Read(p) }

// Write sends keystrokes.
func (t *Terminal) Write(p []byte) (int, error) {
	err := wsjson.Write(context.Background(), t.conn, map[string]string{"type": "input", "data": base64.StdEncoding.EncodeToString(p), "encoding": "base64"})
	if err != nil {
		return 0, fmt.Errorf("wrenn: terminal input: %w", err)
	}
	return len(p), nil
}

// Resize changes the terminal's size.
func (t *Terminal) Resize(ctx context.Context, cols, rows uint16) error {
	if err := wsjson.Write(ctx, t.conn, map[string]any{"type": "resize", "cols": cols, "rows": rows}); err != nil {
		return fmt.Errorf("wrenn: resize the terminal: %w", err)
	}
	return nil
}

// Wait waits until the terminal exits (or its connection is lost).
func (t *Terminal) Wait(ctx context.Context) (*ExitStatus, error) {
	select {
	case <-t.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if t.exit != nil {
		return t.exit, nil
	}
	return nil, t.err
}

// Close kills the terminal's process and closes the connection.
func (t *Terminal) Close() error {
	t.closeOnce.Do(func() {
		t.conn.Close(websocket.StatusNormalClosure, "")
		t.out.Close()
	})
	return nil
}

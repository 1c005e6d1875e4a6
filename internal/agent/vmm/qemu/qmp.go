package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// qmpClient is a small QEMU Machine Protocol client: one command at a time,
// asynchronous events skipped. Commands carry ids so a reply to a command
// abandoned on timeout is never taken for the next command's reply.
type qmpClient struct {
	mu     sync.Mutex
	conn   net.Conn
	r      *bufio.Reader
	nextID uint64
}

// QMPError is an error reply from QEMU.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

type qmpMessage struct {
	Return   json.RawMessage `json:"return"`
	Error    *QMPError       `json:"error"`
	Event    string          `json:"event"`
	QMP      json.RawMessage `json:"QMP"`
	ID       json.RawMessage `json:"id"`
	hasReply bool
}

// parseQMPMessage decodes one line from QEMU.
func parseQMPMessage(line []byte) (qmpMessage, error) {
	var m qmpMessage
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return m, errors.New("qmp: empty message")
	}
	if err := json.Unmarshal(line, &m); err != nil {
		return m, fmt.Errorf("qmp: decode %q: %w", truncate(line, 200), err)
	}
	m.hasReply = m.Return != nil || m.Error != nil
	if !m.hasReply && m.Event == "" && m.QMP == nil {
		return m, fmt.Errorf("qmp: unexpected message %q", truncate(line, 200))
	}
	return m, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// dialQMP connects to a QMP socket, retrying until ctx ends or alive reports
// the VMM gone, and negotiates capabilities.
func dialQMP(ctx context.Context, path string, alive func() bool) (*qmpClient, error) {
	var conn net.Conn
	var err error
	for {
		conn, err = dialUnix(ctx, path)
		if err == nil {
			break
		}
		if alive != nil && !alive() {
			return nil, fmt.Errorf("connect qmp: vmm exited: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect qmp %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	c := &qmpClient{conn: conn, r: bufio.NewReaderSize(conn, 64<<10)}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting: %w", err)
	}
	m, err := parseQMPMessage(line)
	if err != nil || m.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: unexpected %q", truncate(line, 200))
	}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// dialUnix dials path; paths too long for sockaddr_un go through
// /proc/self/fd of the directory.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	if len(path) < 100 {
		return d.DialContext(ctx, "unix", path)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	return d.DialContext(ctx, "unix", fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path)))
}

// execute runs one command; out (if non-nil) receives the "return" value.
func (c *qmpClient) execute(ctx context.Context, cmd string, args any, out any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nextID++
	id := c.nextID
	req := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	data, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: encode: %w", cmd, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetDeadline(dl)
	} else {
		_ = c.conn.SetDeadline(time.Time{})
	}
	if _, err := c.conn.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("qmp %s: write: %w", cmd, ctxErr(ctx, err))
	}
	want := []byte(fmt.Sprint(id))
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("qmp %s: read: %w", cmd, ctxErr(ctx, err))
		}
		m, err := parseQMPMessage(line)
		if err != nil {
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if !m.hasReply || !bytes.Equal(m.ID, want) {
			continue // event, or a reply to an abandoned command
		}
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %w", cmd, m.Error)
		}
		if out != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
			}
		}
		return nil
	}
}

func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

func (c *qmpClient) close() error { return c.conn.Close() }

package api

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
)

func (e *env) dialWS(t *testing.T, path string, c cred) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := http.Header{}
	if c.jwt != "" {
		h.Set("Authorization", "Bearer "+c.jwt)
	}
	if c.key != "" {
		h.Set("X-API-Key", c.key)
	}
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+path, &websocket.DialOptions{HTTPHeader: h})
	if conn != nil {
		t.Cleanup(func() { conn.CloseNow() })
	}
	return conn, resp, err
}

// readAll reads messages until the server closes the socket.
func readAll(t *testing.T, c *websocket.Conn) []streamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []streamMsg
	for {
		var m streamMsg
		if err := wsjson.Read(ctx, c, &m); err != nil {
			if ctx.Err() != nil {
				t.Fatalf("stream did not end: %v (got %+v)", err, out)
			}
			return out
		}
		out = append(out, m)
	}
}

func TestExecStream(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "ws")
	sb := e.createSandbox(owner.cred(), nil)
	ctx := context.Background()

	t.Run("echo streams each chunk then exit", func(t *testing.T) {
		c, _, err := e.dialWS(t, sbPath(sb.ID, "/exec/stream"), cred{key: key})
		if err != nil {
			t.Fatal(err)
		}
		if err := wsjson.Write(ctx, c, map[string]any{"type": "start", "cmd": "echo", "args": []string{"one", "two", "three"}}); err != nil {
			t.Fatal(err)
		}
		msgs := readAll(t, c)
		var types []string
		var out string
		for _, m := range msgs {
			types = append(types, m.Type)
			out += m.Data
		}
		if strings.Join(types, ",") != "start,stdout,stdout,stdout,exit" || out != "one two three\n" {
			t.Fatalf("messages %+v", msgs)
		}
		last := msgs[len(msgs)-1]
		if last.ExitCode == nil || *last.ExitCode != 0 || msgs[0].PID == 0 {
			t.Fatalf("exit/start %+v", msgs)
		}
	})
	t.Run("stderr and exit code, JWT in query", func(t *testing.T) {
		c, _, err := e.dialWS(t, sbPath(sb.ID, "/exec/stream?token="+owner.Token), cred{})
		if err != nil {
			t.Fatal(err)
		}
		_ = wsjson.Write(ctx, c, map[string]any{"type": "start", "cmd": "stderr", "args": []string{"bad"}})
		msgs := readAll(t, c)
		if len(msgs) != 3 || msgs[1].Type != "stderr" || msgs[1].Data != "bad" || *msgs[2].ExitCode != 2 {
			t.Fatalf("messages %+v", msgs)
		}
	})
	t.Run("binary output is base64", func(t *testing.T) {
		c, _, err := e.dialWS(t, sbPath(sb.ID, "/exec/stream"), cred{key: key})
		if err != nil {
			t.Fatal(err)
		}
		_ = wsjson.Write(ctx, c, map[string]any{"type": "start", "cmd": "binary"})
		msgs := readAll(t, c)
		if len(msgs) != 3 || msgs[1].Encoding != "base64" || msgs[1].Data != "//4AeA==" {
			t.Fatalf("messages %+v", msgs)
		}
	})
	bad := []struct {
		name, msg, field string
	}{
		{"missing cmd", `{"type":"start"}`, "cmd"},
		{"wrong type", `{"type":"begin","cmd":"echo"}`, "type"},
		{"unknown field", `{"type":"start","cmd":"echo","shell":true}`, "shell"},
		{"args wrong type", `{"type":"start","cmd":"echo","args":"x"}`, "args"},
		{"background", `{"type":"start","cmd":"echo","background":true}`, "background"},
		{"stdin", `{"type":"start","cmd":"cat","stdin":"data"}`, "stdin"},
	}
	for _, tt := range bad {
		t.Run("bad start "+tt.name, func(t *testing.T) {
			c, _, err := e.dialWS(t, sbPath(sb.ID, "/exec/stream"), cred{key: key})
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Write(ctx, websocket.MessageText, []byte(tt.msg))
			msgs := readAll(t, c)
			if len(msgs) != 1 || msgs[0].Type != "error" || msgs[0].Field != tt.field {
				t.Fatalf("messages %+v", msgs)
			}
		})
	}
	t.Run("HTTP errors before the upgrade", func(t *testing.T) {
		other := e.signup("other@example.com")
		for _, tc := range []struct {
			path   string
			c      cred
			status int
		}{
			{sbPath(sb.ID, "/exec/stream"), cred{}, 401},
			{sbPath(sb.ID, "/exec/stream"), other.cred(), 404},
			{sbPath("sb-aaaaaaaaaaaaaaaaaaaa", "/exec/stream"), cred{key: key}, 404},
		} {
			_, resp, err := e.dialWS(t, tc.path, tc.c)
			if err == nil || resp == nil || resp.StatusCode != tc.status {
				t.Fatalf("%s: err %v resp %v, want %d", tc.path, err, resp, tc.status)
			}
		}
		paused := e.createSandbox(owner.cred(), nil)
		e.want("POST", sbPath(paused.ID, "/pause"), nil, owner.cred(), 200, nil)
		_, resp, err := e.dialWS(t, sbPath(paused.ID, "/exec/stream"), cred{key: key})
		if err == nil || resp.StatusCode != 409 {
			t.Fatalf("paused: %v %v", err, resp)
		}
	})
}

func TestProcessStreamAndPty(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	c := owner.cred()
	sb := e.createSandbox(c, nil)
	ctx := context.Background()

	e.want("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "sleep", "args": []string{"100"}, "background": true, "tag": "srv"}, c, 200, nil)
	conn, _, err := e.dialWS(t, sbPath(sb.ID, "/processes/srv/stream"), c)
	if err != nil {
		t.Fatal(err)
	}
	msgs := readAll(t, conn)
	if len(msgs) != 3 || msgs[1].Data != "output of srv\n" || msgs[2].Type != "exit" {
		t.Fatalf("process stream %+v", msgs)
	}
	conn, _, err = e.dialWS(t, sbPath(sb.ID, "/processes/nope/stream"), c)
	if err != nil {
		t.Fatal(err)
	}
	msgs = readAll(t, conn)
	if len(msgs) != 1 || msgs[0].Type != "error" || msgs[0].Code != "not_found" {
		t.Fatalf("unknown process %+v", msgs)
	}

	pty, _, err := e.dialWS(t, sbPath(sb.ID, "/pty?cols=100&rows=30"), c)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var m streamMsg
	if err := wsjson.Read(rctx, pty, &m); err != nil || m.Type != "started" || m.Tag == "" {
		t.Fatalf("started: %+v %v", m, err)
	}
	_ = wsjson.Write(rctx, pty, map[string]any{"type": "input", "data": "ls\r"})
	_ = wsjson.Write(rctx, pty, map[string]any{"type": "input", "data": "AAE=", "encoding": "base64"})
	if err := wsjson.Read(rctx, pty, &m); err != nil || m.Type != "output" || m.Data != "ls\r" {
		t.Fatalf("echo: %+v %v", m, err)
	}
	if err := wsjson.Read(rctx, pty, &m); err != nil || m.Type != "output" || m.Data != "\x00\x01" {
		t.Fatalf("binary echo: %+v %v", m, err)
	}
	_ = wsjson.Write(rctx, pty, map[string]any{"type": "resize", "cols": 0, "rows": 0})
	if err := wsjson.Read(rctx, pty, &m); err != nil || m.Type != "error" || m.Code != "invalid_request" {
		t.Fatalf("bad resize: %+v %v", m, err)
	}
	_ = wsjson.Write(rctx, pty, map[string]any{"type": "dance"})
	if err := wsjson.Read(rctx, pty, &m); err != nil || m.Type != "error" || m.Field != "type" {
		t.Fatalf("bad type: %+v %v", m, err)
	}
	_ = wsjson.Write(rctx, pty, map[string]any{"type": "kill"})
	msgs = readAll(t, pty)
	if len(msgs) != 1 || msgs[0].Type != "exit" {
		t.Fatalf("after kill %+v", msgs)
	}
	e.wantErr("GET", sbPath(sb.ID, "/pty?cols=abc"), nil, c, 400, "", "cols")
	e.wantErr("GET", sbPath(sb.ID, "/pty?cols=5000"), nil, c, 400, "", "cols")
	e.wantErr("GET", sbPath(sb.ID, "/pty?cmd=%ff"), nil, c, 400, "", "cmd")
	e.wantErr("GET", sbPath(sb.ID, "/processes/%ff/stream"), nil, c, 400, "", "process")
}

package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envd/reaper"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	"github.com/wrenn-dev/wrenn/proto/envd/filesystem/filesystemconnect"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
	"github.com/wrenn-dev/wrenn/proto/envd/process/processconnect"
)

// env is one envd served in-process on a loopback port.
type env struct {
	t      *testing.T
	url    string
	hc     *http.Client // h2c
	h1     *http.Client // HTTP/1.1
	token  string
	proc   processconnect.ProcessClient
	fs     filesystemconnect.FilesystemClient
	cancel context.CancelFunc
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Reaper == nil {
		cfg.Reaper = reaper.NewDirect()
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	e := &env{
		t:      t,
		url:    "http://" + ln.Addr().String(),
		hc:     &http.Client{Transport: &http.Transport{Protocols: &protos}},
		h1:     &http.Client{Transport: &http.Transport{}},
		cancel: cancel,
	}
	e.proc = processconnect.NewProcessClient(e.hc, e.url, connect.WithInterceptors(e.auth()))
	e.fs = filesystemconnect.NewFilesystemClient(e.hc, e.url, connect.WithInterceptors(e.auth()))
	t.Cleanup(func() {
		srv.StopProcesses(9)
		cancel()
		<-done
		e.hc.CloseIdleConnections()
		e.h1.CloseIdleConnections()
	})
	return e
}

// auth adds the access token the test env currently holds.
func (e *env) auth() connect.Interceptor { return tokenInterceptor{e} }

type tokenInterceptor struct{ e *env }

func (ti tokenInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if ti.e.token != "" {
			req.Header().Set("X-Access-Token", ti.e.token)
		}
		return next(ctx, req)
	}
}

func (ti tokenInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if ti.e.token != "" {
			conn.RequestHeader().Set("X-Access-Token", ti.e.token)
		}
		return conn
	}
}

func (ti tokenInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

func (e *env) do(method, path string, body io.Reader, hdr map[string]string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+path, body)
	if err != nil {
		e.t.Fatalf("request: %v", err)
	}
	if e.token != "" {
		req.Header.Set("X-Access-Token", e.token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := e.h1.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

func readAll(t *testing.T, r *http.Response) string {
	t.Helper()
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}

// result is what one process produced.
type result struct {
	pid    uint32
	stdout strings.Builder
	stderr strings.Builder
	pty    strings.Builder
	end    *pb.ProcessEvent_EndEvent
}

// run starts a process and collects its events until it ends.
func (e *env) run(ctx context.Context, req *pb.StartRequest, hdr map[string]string) (*result, error) {
	r := connect.NewRequest(req)
	for k, v := range hdr {
		r.Header().Set(k, v)
	}
	st, err := e.proc.Start(ctx, r)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	res := &result{}
	for st.Receive() {
		collect(res, st.Msg().GetEvent())
	}
	return res, st.Err()
}

func collect(res *result, ev *pb.ProcessEvent) {
	switch v := ev.GetEvent().(type) {
	case *pb.ProcessEvent_Start:
		res.pid = v.Start.GetPid()
	case *pb.ProcessEvent_Data:
		res.stdout.Write(v.Data.GetStdout())
		res.stderr.Write(v.Data.GetStderr())
		res.pty.Write(v.Data.GetPty())
	case *pb.ProcessEvent_End:
		res.end = v.End
	}
}

func sh(script string) *pb.StartRequest {
	return &pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}}}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func codeOf(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

// requireRoot skips (or fails under CI) when the test needs root.
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.Require(t, os.Getuid() == 0, "this test needs root")
}

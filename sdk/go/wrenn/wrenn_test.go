package wrenn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/cptest"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	"github.com/wrenn-dev/wrenn/sdk/go/wrenn"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

// platform is a served control plane, a session client and an API-key
// client of the same team.
type platform struct {
	cp      *cptest.ControlPlane
	session *wrenn.Client
	key     *wrenn.Client
}

func newPlatform(t *testing.T) platform {
	t.Helper()
	cp := cptest.Start(t, nil)
	tok := cp.Signup(t, "sdk@example.com", "a long sdk passphrase")
	session, err := wrenn.New(wrenn.Config{URL: cp.URL, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	k, err := session.CreateAPIKey(t.Context(), "sdk-test")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Key, "wrn_") {
		t.Fatalf("new key %q", k.Key)
	}
	key, err := wrenn.New(wrenn.Config{URL: cp.URL, APIKey: k.Key, Retry: wrenn.RetryPolicy{Attempts: 3, Base: time.Millisecond, Max: 5 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return platform{cp: cp, session: session, key: key}
}

func TestSandboxLifecycle(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{VCPUs: 1, MemoryMB: 512, Timeout: 10 * time.Minute, Metadata: map[string]string{"owner": "sdk"}})
	if err != nil {
		t.Fatal(err)
	}
	if sb.Status != "running" || sb.Vcpus != 1 || sb.MemoryMb != 512 || sb.TimeoutSec != 600 || sb.Metadata["owner"] != "sdk" || !p.cp.Agent.Has(sb.Id) {
		t.Fatalf("created %+v", sb.Sandbox)
	}
	got, err := p.key.GetSandbox(ctx, sb.Id)
	if err != nil || got.Id != sb.Id {
		t.Fatalf("get = %+v, %v", got, err)
	}
	list, err := p.key.ListSandboxes(ctx, wrenn.ListOptions{Metadata: map[string]string{"owner": "sdk"}})
	if err != nil || len(list) != 1 || list[0].Id != sb.Id {
		t.Fatalf("list = %v, %v", list, err)
	}
	if _, err := sb.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		op   func() error
		want string
	}{
		{"pause", func() error { return sb.Pause(ctx) }, "paused"},
		{"resume", func() error { return sb.Resume(ctx, time.Minute) }, "running"},
		{"destroy", func() error { return sb.Destroy(ctx) }, "stopped"},
	}
	for _, st := range steps {
		if err := st.op(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if err := sb.Refresh(ctx); err != nil || string(sb.Status) != st.want {
			t.Fatalf("after %s: status %s, %v", st.name, sb.Status, err)
		}
	}
}

func TestErrorsAreTyped(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	bad, err := wrenn.New(wrenn.Config{URL: p.cp.URL, APIKey: "wrn_" + strings.Repeat("x", 40)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := wrenn.New(wrenn.Config{URL: p.cp.URL, Token: p.cp.Signup(t, "other@example.com", "another long passphrase")})
	if err != nil {
		t.Fatal(err)
	}
	mine, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		call   func() error
		status int
		code   string
	}{
		{"unknown sandbox", func() error { _, err := p.key.GetSandbox(ctx, "sb-nope"); return err }, 404, "sandbox_not_found"},
		{"another team's sandbox", func() error { _, err := other.GetSandbox(ctx, mine.Id); return err }, 404, "sandbox_not_found"},
		{"bad key", func() error { _, err := bad.ListSandboxes(ctx, wrenn.ListOptions{}); return err }, 401, "invalid_api_key"},
		{"bad input", func() error { _, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{VCPUs: 1000}); return err }, 400, "invalid_request"},
		{"keys need a session", func() error { _, err := p.key.CreateAPIKey(ctx, "x"); return err }, 403, ""},
		{"stream on a missing sandbox", func() error {
			_, err := p.key.Sandbox("sb-nope").ExecStream(ctx, "echo", wrenn.ExecOptions{})
			return err
		}, 404, "sandbox_not_found"},
		{"file of a missing sandbox", func() error { _, err := p.key.Sandbox("sb-nope").Files().Read(ctx, "/x"); return err }, 404, "sandbox_not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			var ae *wrenn.APIError
			if !errors.As(err, &ae) || ae.Status != c.status || (c.code != "" && ae.Code != c.code) || ae.Message == "" {
				t.Fatalf("err = %#v (%v), want status %d code %q", ae, err, c.status, c.code)
			}
		})
	}
	if !wrenn.IsNotFound(cases[0].call()) || !wrenn.IsUnauthorized(cases[2].call()) {
		t.Fatal("IsNotFound / IsUnauthorized")
	}
}

func TestExec(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name           string
		cmd            string
		opts           wrenn.ExecOptions
		stdout, stderr string
		code           int
	}{
		{"output", "echo", wrenn.ExecOptions{Args: []string{"hello", "sdk"}}, "hello sdk\n", "", 0},
		{"failure", "false", wrenn.ExecOptions{}, "", "", 1},
		{"stderr", "stderr", wrenn.ExecOptions{Args: []string{"oops"}}, "", "oops", 2},
		{"stdin", "cat", wrenn.ExecOptions{Stdin: strings.NewReader("piped in")}, "piped in", "", 0},
		{"unknown command", "nope", wrenn.ExecOptions{}, "", "", 127},
	}
	for _, c := range cases {
		t.Run(c.name+"/unary", func(t *testing.T) {
			if c.opts.Stdin != nil {
				c.opts.Stdin = strings.NewReader("piped in")
			}
			res, err := sb.Exec(ctx, c.cmd, c.opts)
			if err != nil || res.Stdout != c.stdout || res.ExitCode != c.code || (c.stderr != "" && res.Stderr != c.stderr) {
				t.Fatalf("exec = %+v, %v", res, err)
			}
		})
		if c.name == "stdin" {
			// The exec stream has no stdin: refused, not dropped.
			if _, err := sb.ExecStream(ctx, c.cmd, c.opts); err == nil || !strings.Contains(err.Error(), "stdin") {
				t.Fatalf("stream with stdin: %v", err)
			}
			continue
		}
		t.Run(c.name+"/stream", func(t *testing.T) {
			var out, errOut bytes.Buffer
			c.opts.Stdout, c.opts.Stderr = &out, &errOut
			st, err := sb.ExecStream(ctx, c.cmd, c.opts)
			if err != nil || st.ExitCode != c.code || !st.Exited || st.PID == 0 || out.String() != c.stdout || (c.stderr != "" && errOut.String() != c.stderr) {
				t.Fatalf("stream = %+v, %v; stdout %q stderr %q", st, err, out.String(), errOut.String())
			}
		})
	}
	// Bad input is the API's error, from the stream too.
	_, err = sb.ExecStream(ctx, "", wrenn.ExecOptions{})
	var ae *wrenn.APIError
	if !errors.As(err, &ae) || ae.Code != "invalid_request" || ae.Field != "cmd" {
		t.Fatalf("stream without cmd: %v", err)
	}
	// A stream cut by the server before the exit is ErrConnectionLost.
	cut := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		close(cut)
	}()
	handler := p.cp.Handler
	p.cp.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/exec/stream") {
			ctx, cancel := context.WithCancel(r.Context())
			go func() { <-cut; cancel() }()
			r = r.WithContext(ctx)
		}
		handler.ServeHTTP(w, r)
	})
	defer func() { p.cp.Handler = handler }()
	if _, err := sb.ExecStream(ctx, "sleep", wrenn.ExecOptions{Args: []string{"30"}}); !errors.Is(err, wrenn.ErrConnectionLost) {
		t.Fatalf("cut stream: %v", err)
	}
}

func TestTerminal(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	term, err := sb.Shell(ctx, wrenn.PtyOptions{Cols: 100, Rows: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer term.Close()
	if term.PID == 0 || term.Tag == "" {
		t.Fatalf("terminal %+v", term)
	}
	if err := term.Resize(ctx, 120, 40); err != nil {
		t.Fatal(err)
	}
	// Binary-safe input; the in-memory terminal echoes it.
	in := []byte("echo hi\r\x00\xff")
	if _, err := term.Write(in); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(in))
	if _, err := io.ReadFull(term, got); err != nil || !bytes.Equal(got, in) {
		t.Fatalf("read %q, %v", got, err)
	}
	// A bad resize is reported by the server and the terminal goes on.
	if err := term.Resize(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := term.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	more := make([]byte, 4)
	if _, err := io.ReadFull(term, more); err != nil || string(more) != "more" {
		t.Fatalf("after a bad resize: %q, %v", more, err)
	}
	// Closing ends it: Wait returns at once, reading ends.
	term.Close()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := term.Wait(wctx); errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("Wait did not return after Close")
	}
	if _, err := term.Read(make([]byte, 1)); err == nil {
		t.Fatal("read after Close succeeded")
	}
}

func TestFiles(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	files := sb.Files()
	data := make([]byte, 3<<20+17)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := files.MakeDir(ctx, "/home/user/d"); err != nil {
		t.Fatal(err)
	}
	res, err := files.Write(ctx, "/home/user/d/blob", bytes.NewReader(data))
	if err != nil || res.Size != len(data) {
		t.Fatalf("write = %+v, %v", res, err)
	}
	rc, err := files.Read(ctx, "/home/user/d/blob")
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back %d bytes (want %d), %v", len(back), len(data), err)
	}
	entries, err := files.List(ctx, "/home/user/d", 1)
	if err != nil || len(entries) != 1 || entries[0].Name != "blob" || entries[0].Type != "file" {
		t.Fatalf("list = %+v, %v", entries, err)
	}
	if err := files.Remove(ctx, "/home/user/d"); err != nil {
		t.Fatal(err)
	}
	if _, err := files.Read(ctx, "/home/user/d/blob"); !wrenn.IsNotFound(err) {
		t.Fatalf("read after remove: %v", err)
	}
	// A reader that fails mid-upload fails the write, leaving no file.
	failing := io.MultiReader(bytes.NewReader(data[:1<<20]), iotestErr{})
	if _, err := files.Write(ctx, "/home/user/partial", failing); err == nil {
		t.Fatal("a failing upload succeeded")
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// TestRetries: 502/503 answers are retried for idempotent calls (creates
// carry an Idempotency-Key, so only one sandbox is made) and not for
// others.
func TestRetries(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	var (
		mu       sync.Mutex
		failures = map[string]int{}
		keys     = map[string][]string{}
	)
	var execCalls atomic.Int32
	handler := p.cp.Handler
	p.cp.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route := r.Method + " " + r.URL.Path
		if strings.HasSuffix(r.URL.Path, "/exec") {
			execCalls.Add(1)
		}
		mu.Lock()
		keys[route] = append(keys[route], r.Header.Get("Idempotency-Key"))
		n := failures[route]
		failures[route]++
		mu.Unlock()
		// The first answer of every route is a 503 or (after the work
		// was done) a 502.
		switch {
		case n == 0 && r.Method == http.MethodPost && r.URL.Path == "/v1/sandboxes":
			rec := &discard{header: http.Header{}}
			handler.ServeHTTP(rec, r)
			http.Error(w, `{"error":{"code":"bad_gateway","message":"lost the answer"}}`, http.StatusBadGateway)
		case n == 0:
			w.Header().Set("Retry-After", "0")
			http.Error(w, `{"error":{"code":"service_unavailable","message":"busy"}}`, http.StatusServiceUnavailable)
		default:
			handler.ServeHTTP(w, r)
		}
	})
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := p.session.ListSandboxes(ctx, wrenn.ListOptions{Statuses: []string{"running", "pending"}})
	if err != nil || len(all) != 1 || all[0].Id != sb.Id {
		t.Fatalf("sandboxes after a retried create: %v, %v", all, err)
	}
	ck := keys["POST /v1/sandboxes"]
	if len(ck) != 2 || ck[0] == "" || ck[0] != ck[1] {
		t.Fatalf("create attempts' idempotency keys: %q", ck)
	}
	if err := sb.Pause(ctx); err != nil {
		t.Fatalf("pause after a 503: %v", err)
	}
	// Exec is not idempotent: its 503 is the caller's.
	_, err = sb.Exec(ctx, "echo", wrenn.ExecOptions{})
	var ae *wrenn.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || execCalls.Load() != 1 {
		t.Fatalf("exec: %v after %d calls", err, execCalls.Load())
	}
}

// discard is a ResponseWriter that drops the answer.
type discard struct{ header http.Header }

func (d *discard) Header() http.Header         { return d.header }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

func TestPlatformResources(t *testing.T) {
	p := newPlatform(t)
	ctx := t.Context()
	sb, err := p.key.CreateSandbox(ctx, wrenn.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := p.key.CreateSnapshot(ctx, sb.Id, "sdk-snap")
	if err != nil || snap.Name != "sdk-snap" {
		t.Fatalf("snapshot = %+v, %v", snap, err)
	}
	snaps, err := p.key.ListSnapshots(ctx)
	if err != nil || len(snaps) != 1 || snaps[0].Name != "sdk-snap" {
		t.Fatalf("snapshots = %+v, %v", snaps, err)
	}
	tpls, err := p.key.ListTemplates(ctx)
	if err != nil || len(tpls) == 0 {
		t.Fatalf("templates = %+v, %v", tpls, err)
	}
	names := map[string]bool{}
	for _, tp := range tpls {
		names[tp.Name] = true
	}
	if !names["minimal"] || !names["sdk-snap"] {
		t.Fatalf("templates %v lack minimal or the snapshot", names)
	}
	if m, err := sb.Metrics(ctx); err != nil || m == nil {
		t.Fatalf("metrics = %+v, %v", m, err)
	}
	if ps, err := sb.Processes(ctx); err != nil || len(ps) != 0 {
		t.Fatalf("processes = %+v, %v", ps, err)
	}
	if err := sb.Kill(ctx, "no-such-tag", ""); !wrenn.IsNotFound(err) {
		t.Fatalf("kill an unknown process: %v", err)
	}
	if err := p.session.DeleteTemplate(ctx, "no-such-template"); !wrenn.IsNotFound(err) {
		t.Fatalf("delete an unknown template: %v", err)
	}
	if err := p.key.DeleteSnapshot(ctx, "sdk-snap"); err != nil {
		t.Fatal(err)
	}
	keys, err := p.session.ListAPIKeys(ctx)
	if err != nil || len(keys) != 1 || keys[0].Name != "sdk-test" {
		t.Fatalf("keys = %+v, %v", keys, err)
	}
	if err := p.session.RevokeAPIKey(ctx, keys[0].Id); err != nil {
		t.Fatal(err)
	}
	if _, err := p.key.ListTemplates(ctx); !wrenn.IsUnauthorized(err) {
		t.Fatalf("a revoked key: %v", err)
	}
	page, err := p.session.ListAuditLogs(ctx, nil)
	if err != nil || len(page.AuditLogs) == 0 {
		t.Fatalf("audit = %+v, %v", page, err)
	}
	me, err := p.session.Me(ctx)
	if err != nil || me.User.Email != "sdk@example.com" {
		t.Fatalf("me = %+v, %v", me, err)
	}
	anon, err := wrenn.New(wrenn.Config{URL: p.cp.URL})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := anon.Login(ctx, "sdk@example.com", "a long sdk passphrase"); err != nil || s.Token == "" {
		t.Fatalf("login = %+v, %v", s, err)
	}
	if _, err := anon.Login(ctx, "sdk@example.com", "wrong"); !wrenn.IsUnauthorized(err) {
		t.Fatalf("login with a wrong password: %v", err)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		cfg     wrenn.Config
		wantErr string
	}{
		{"no url", map[string]string{"WRENN_URL": ""}, wrenn.Config{}, "no control plane URL"},
		{"bad scheme", nil, wrenn.Config{URL: "ftp://x"}, "must be http(s)"},
		{"from env", map[string]string{"WRENN_URL": "http://127.0.0.1:1", "WRENN_API_KEY": "wrn_x"}, wrenn.Config{}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			cl, err := wrenn.New(c.cfg)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || cl.URL() != c.env["WRENN_URL"] {
				t.Fatalf("client %v, %v", cl, err)
			}
		})
	}
}

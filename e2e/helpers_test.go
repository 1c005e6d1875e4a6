package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/wrenn-dev/wrenn/internal/agent/images"
	"github.com/wrenn-dev/wrenn/internal/agent/network"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// testID keeps names and address ranges apart from other test processes
// (other packages' tests may run at the same time with their own prefixes:
// wnt, wse, 10.231-10.233...). The e2e tests use 10.234-10.238.
var testID = os.Getpid() % 200

// requirePlatform checks what real VMs need and returns the WRENN_DIR
// holding the images.
func requirePlatform(t testing.TB) string {
	t.Helper()
	testenv.Require(t, os.Geteuid() == 0, "needs root (network namespaces, nftables)")
	_, err := os.Stat("/dev/net/tun")
	testenv.Require(t, err == nil, "needs /dev/net/tun: %v", err)
	_, err = exec.LookPath("qemu-system-x86_64")
	testenv.Require(t, err == nil, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
	dir := images.DirFromEnv()
	st, err := images.Status(dir)
	if err == nil {
		err = st.Err()
	}
	testenv.Require(t, err == nil, "images not ready (run `make images`): %v", err)
	return dir
}

// agentDir makes a private WRENN_DIR for one agent whose kernel and minimal
// (and base, when built) templates are symlinks to the built files in src: sandboxes, snapshots,
// credentials and state stay private, the big images are shared.
func agentDir(t testing.TB, src string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wrenn-e2e-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := images.NewPaths(src)
	if err := os.MkdirAll(filepath.Join(dir, "templates"), 0o755); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		p.KernelsDir():                        filepath.Join(dir, "kernels"),
		p.TemplateDir(images.MinimalTemplate): filepath.Join(dir, "templates", images.MinimalTemplate),
	}
	// base is shared when it is built (the tests that need it require it).
	if _, err := os.Stat(p.TemplateDir(images.BaseTemplate)); err == nil {
		links[p.TemplateDir(images.BaseTemplate)] = filepath.Join(dir, "templates", images.BaseTemplate)
	}
	for from, to := range links {
		if err := os.Symlink(from, to); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// traversableTempDir makes a temporary directory every user may pass
// through (PostgreSQL runs as "postgres" under root and must reach its data
// dir inside it).
func traversableTempDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// childEnv is this process's environment without any Wrenn setting (which
// could point a child at the wrong database or directory), plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "WRENN_") || k == "DATABASE_URL" || k == "REDIS_URL" || k == "CP_PUBLIC_URL" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func freePort(t testing.TB) int {
	t.Helper()
	p, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// proc is a child process of the test with its output in files.
type proc struct {
	name    string
	cmd     *exec.Cmd
	outPath string
	errPath string
	done    chan struct{}
	waitErr error
	// killed says the test sent SIGKILL itself (it died on purpose).
	killed bool
}

// startProc runs bin args with env; stdout and stderr go to files under a
// temporary directory, shown by logs() when something fails.
func startProc(t testing.TB, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	dir := t.TempDir()
	p := &proc{name: name, outPath: filepath.Join(dir, name+".stdout"), errPath: filepath.Join(dir, name+".stderr"), done: make(chan struct{})}
	out, err := os.Create(p.outPath)
	if err != nil {
		t.Fatal(err)
	}
	errf, err := os.Create(p.errPath)
	if err != nil {
		out.Close()
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = out, errf
	if err := p.cmd.Start(); err != nil {
		out.Close()
		errf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		out.Close()
		errf.Close()
		close(p.done)
	}()
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) {
	if sig == syscall.SIGKILL {
		p.killed = true
	}
	if p.running() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// wait waits up to timeout for the process to exit and returns its exit
// code; ok is false when it is still running.
func (p *proc) wait(timeout time.Duration) (code int, ok bool) {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), true
	case <-time.After(timeout):
		return 0, false
	}
}

// stop sends sig, waits up to grace, then kills. It returns the exit code
// and whether the process exited by itself within grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) (int, bool) {
	p.signal(sig)
	if code, ok := p.wait(grace); ok {
		return code, true
	}
	p.signal(syscall.SIGKILL)
	<-p.done
	return p.cmd.ProcessState.ExitCode(), false
}

func (p *proc) stdout() string {
	b, _ := os.ReadFile(p.outPath)
	return string(b)
}

// logs returns the tail of both outputs, for failure messages.
func (p *proc) logs() string {
	tail := func(path string) string {
		b, _ := os.ReadFile(path)
		const max = 6000
		if len(b) > max {
			b = b[len(b)-max:]
		}
		return string(b)
	}
	return fmt.Sprintf("--- %s stdout (tail) ---\n%s\n--- %s stderr (tail) ---\n%s", p.name, tail(p.outPath), p.name, tail(p.errPath))
}

// eventually polls cond every 100 ms until it holds or timeout passes; cond
// returns a description of the current state for the failure message.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s; last state: %s", what, timeout, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// client talks to the control plane's REST API with one set of credentials.
type client struct {
	base string
	hc   *http.Client
	hdr  http.Header
	// host, when set, is the Host header sent (a sandbox proxy hostname).
	host string
}

func newClient(base string) client {
	return client{base: base, hc: &http.Client{Timeout: 3 * time.Minute}, hdr: http.Header{}}
}

func (c client) withSession(tok string) client {
	c.hdr = http.Header{"Authorization": {"Bearer " + tok}}
	return c
}

// withHeader is c sending one more header; at sends to another replica.
func (c client) withHeader(k, v string) client {
	c.hdr = c.hdr.Clone()
	c.hdr.Set(k, v)
	return c
}

func (c client) at(base string) client {
	c.base = base
	return c
}

// onHost is c sending Host: host (to base's address).
func (c client) onHost(host string) client {
	c.host = host
	return c
}

func (c client) withKey(key string) client {
	c.hdr = http.Header{"X-API-Key": {key}}
	return c
}

// raw sends a request and returns the status and body.
func (c client) raw(t testing.TB, method, path, contentType string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range c.hdr {
		req.Header[k] = v
	}
	if c.host != "" {
		req.Host = c.host
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// do sends body as JSON (nil: no body) and returns status and answer.
func (c client) do(t testing.TB, method, path string, body any) (int, []byte) {
	t.Helper()
	if body == nil {
		return c.raw(t, method, path, "", nil)
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return c.raw(t, method, path, "application/json", bytes.NewReader(b))
}

// must sends a JSON request, fails unless the status is one of want, and
// decodes the answer into out (when not nil).
func (c client) must(t testing.TB, method, path string, body, out any, want ...int) {
	t.Helper()
	status, b := c.do(t, method, path, body)
	if !slices.Contains(want, status) {
		t.Fatalf("%s %s: status %d, want %v; body: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// sandbox is the part of the sandbox resource the tests read.
type sandbox struct {
	ID     string  `json:"id"`
	Status string  `json:"status"`
	HostID *string `json:"host_id"`
}

type execResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int32  `json:"exit_code"`
	Encoding string `json:"encoding"`
}

func (c client) getSandbox(t testing.TB, id string) sandbox {
	t.Helper()
	var sb sandbox
	c.must(t, http.MethodGet, "/v1/sandboxes/"+id, nil, &sb, http.StatusOK)
	return sb
}

func (c client) createSandbox(t testing.TB) sandbox {
	t.Helper()
	var sb sandbox
	c.must(t, http.MethodPost, "/v1/sandboxes", map[string]any{"template": "minimal", "memory_mb": 256, "vcpus": 1}, &sb, http.StatusCreated)
	if sb.Status != "running" {
		t.Fatalf("created sandbox %s is %q, want running", sb.ID, sb.Status)
	}
	return sb
}

func (c client) sh(t testing.TB, id, script string) execResult {
	t.Helper()
	var r execResult
	c.must(t, http.MethodPost, "/v1/sandboxes/"+id+"/exec", map[string]any{"cmd": "/bin/sh", "args": []string{"-c", script}, "timeout_sec": 60}, &r, http.StatusOK)
	return r
}

// e2ePassword is the password signup gives the user email.
func e2ePassword(email string) string { return "e2e passphrase " + email }

// signup creates a user with its own team and returns its session token.
func (c client) signup(t testing.TB, email string) string {
	t.Helper()
	var s struct {
		Token string `json:"token"`
	}
	c.must(t, http.MethodPost, "/v1/auth/signup", map[string]string{"email": email, "password": e2ePassword(email), "name": "E2E"}, &s, http.StatusCreated)
	if s.Token == "" {
		t.Fatal("signup answered no token")
	}
	return s.Token
}

// procInfo describes one process for the leftover checks.
type procInfo struct {
	pid     int
	comm    string
	cmdline string
	cwd     string
}

func (p procInfo) String() string {
	return fmt.Sprintf("pid %d (%s) cwd=%s cmd=%q", p.pid, p.comm, p.cwd, p.cmdline)
}

// processesUnder lists processes whose working directory or command line
// is inside dir: QEMU runs in its sandbox's run dir, PostgreSQL backends in
// their data dir, redis-server in its dir.
func processesUnder(dir string) []procInfo {
	entries, _ := os.ReadDir("/proc")
	var out []procInfo
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		base := "/proc/" + e.Name()
		comm, _ := os.ReadFile(base + "/comm")
		cmdline, _ := os.ReadFile(base + "/cmdline")
		cwd, _ := os.Readlink(base + "/cwd")
		pi := procInfo{pid: pid, comm: strings.TrimSpace(string(comm)), cmdline: strings.ReplaceAll(string(cmdline), "\x00", " "), cwd: cwd}
		if strings.HasPrefix(pi.cwd, dir+"/") || pi.cwd == dir || strings.Contains(pi.cmdline, dir+"/") {
			out = append(out, pi)
		}
	}
	return out
}

// netLeftovers lists network namespaces, root-namespace links and nft
// tables whose names start with prefix.
func netLeftovers(prefix string) []string {
	var out []string
	entries, err := os.ReadDir(network.NetNSDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		out = append(out, "list netns: "+err.Error())
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, "netns/"+e.Name())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		out = append(out, "list links: "+err.Error())
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, "link/"+l.Attrs().Name)
		}
	}
	conn, err := nftables.New()
	if err != nil {
		return append(out, "nftables: "+err.Error())
	}
	tables, err := conn.ListTables()
	if err != nil {
		out = append(out, "list nft tables: "+err.Error())
	}
	for _, tb := range tables {
		if strings.HasPrefix(tb.Name, prefix) {
			out = append(out, "nft/"+tb.Name)
		}
	}
	return out
}

// scrub removes whatever an agent under dir with this prefix and range may
// have left (used in t.Cleanup, after the agent is gone): VMM and other
// processes working there, then namespaces, links and nft tables.
func scrub(t testing.TB, dir, prefix, netRange string) {
	for _, p := range processesUnder(dir) {
		t.Logf("cleanup: killing leftover %s", p)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(processesUnder(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	nm, err := network.New(network.Config{Prefix: prefix, HostRange: netRange})
	if err != nil {
		t.Errorf("cleanup: network config: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := nm.CleanupStale(ctx, nil); err != nil {
		t.Logf("cleanup: network: %v", err)
	}
	if err := nm.Shutdown(ctx); err != nil {
		t.Logf("cleanup: network shutdown: %v", err)
	}
}

// requireBrowser checks what the headless-Chromium tests need and returns
// Chromium's and node's paths and the web directory (its node_modules holds
// playwright-core).
func requireBrowser(t testing.TB) (chromium, node, webDir string) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	testenv.Require(t, err == nil, "Chromium not installed (Debian package chromium; scripts/setup.sh installs it)")
	node, err = exec.LookPath("node")
	testenv.Require(t, err == nil, "node not installed (scripts/setup.sh installs it)")
	webDir, err = filepath.Abs("../web")
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(webDir, "node_modules", "playwright-core"))
	testenv.Require(t, err == nil, "web/node_modules has no playwright-core (run `make web`)")
	return chromium, node, webDir
}

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// BenchmarkRealAgent measures the control plane's REST API with the real
// host agent and a real (TCG) microVM behind it: one `wrenn dev` started once
// for the whole benchmark, one running sandbox, and its admin API key.
// `GET /health` of the same control plane (HTTP + database/Redis pings, no
// agent) is the baseline measured in the same run; the summary logged at the
// end gives every route's ratio to it at the same client count.
//
// Benchmarks never run under plain `go test`. Run it with a fixed count:
//
//	go test ./e2e/ -run '^$' -bench BenchmarkRealAgent -benchtime 200x
func BenchmarkRealAgent(b *testing.B) {
	loadStart := benchLoadAvg()
	d := startBenchDev(b)
	routes := []struct {
		name   string
		method string
		path   string
		body   []byte
		check  func([]byte) error
	}{
		{"health", http.MethodGet, "/health", nil, nil},
		{"list", http.MethodGet, "/v1/sandboxes", nil, nil},
		{"exec", http.MethodPost, "/v1/sandboxes/" + d.sandboxID + "/exec", []byte(`{"cmd":"true"}`), checkExecTrue},
	}
	hc := &http.Client{
		Timeout:   3 * time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64},
	}
	defer hc.CloseIdleConnections()

	// Each sub-benchmark runs with N=1 and then with the -benchtime count;
	// the last run of each overwrites its entry, so the summary shows the
	// measured runs.
	results := map[string]benchResult{}
	for _, rt := range routes {
		for _, clients := range []int{1, 32} {
			name := fmt.Sprintf("%s/clients=%d", rt.name, clients)
			b.Run(name, func(b *testing.B) {
				req := benchRequest{hc: hc, method: rt.method, url: d.base + rt.path, key: d.apiKey, body: rt.body, check: rt.check}
				results[name] = runClients(b, req, clients)
			})
		}
	}
	printSummary(results, loadStart)
}

// benchRequest is one request a benchmark client sends over and over.
type benchRequest struct {
	hc     *http.Client
	method string
	url    string
	key    string
	body   []byte
	check  func([]byte) error // validates a 200 answer's body; nil: none
}

// send sends the request once and returns its latency (sending to the last
// byte of the answer read); validation happens outside the measured span.
func (r benchRequest) send(ctx context.Context) (time.Duration, error) {
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("X-API-Key", r.key)
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	t0 := time.Now()
	resp, err := r.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", r.method, r.url, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("%s %s: read answer: %w", r.method, r.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s %s: status %d: %.300s", r.method, r.url, resp.StatusCode, b)
	}
	if r.check != nil {
		if err := r.check(b); err != nil {
			return 0, fmt.Errorf("%s %s: %w", r.method, r.url, err)
		}
	}
	return took, nil
}

// checkExecTrue checks that an exec answer is `true`'s: exit code 0, no
// output.
func checkExecTrue(body []byte) error {
	var r execResult
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("decode exec answer %.200s: %w", body, err)
	}
	if r.ExitCode != 0 || r.Stdout != "" || r.Stderr != "" {
		return fmt.Errorf("exec of true: exit %d stdout %q stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
	return nil
}

type benchResult struct {
	p50, p99 time.Duration
	rps      float64
}

// runClients sends exactly b.N requests from a pool of `clients` goroutines
// (each takes the next request number until b.N are taken) and reports
// p50/p99 latency and requests per second.
func runClients(b *testing.B, req benchRequest, clients int) benchResult {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var failures atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range min(clients, b.N) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				d, err := req.send(ctx)
				if err != nil {
					// Stop everyone after the first few errors: a broken
					// route must fail fast, not time out b.N times.
					if failures.Add(1) <= 3 {
						b.Error(err)
					}
					cancel()
					return
				}
				lat[i] = d
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failures.Load() > 0 {
		b.FailNow()
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	r := benchResult{p50: pct(0.50), p99: pct(0.99), rps: float64(b.N) / elapsed.Seconds()}
	b.ReportMetric(benchMS(r.p50), "p50-ms")
	b.ReportMetric(benchMS(r.p99), "p99-ms")
	b.ReportMetric(r.rps, "req/s")
	return r
}

func benchMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// printSummary prints every route's numbers with their ratio to the /health
// baseline at the same client count, plus the load average (the machine may
// be shared, and absolute numbers move with its load). It goes to stdout
// because a parent benchmark's b.Log shows only with -v.
func printSummary(results map[string]benchResult, loadStart string) {
	var sb strings.Builder
	fmt.Fprintf(&sb, "BenchmarkRealAgent summary (baseline: GET /health of the same control plane)\n")
	fmt.Fprintf(&sb, "load average before: %s, after: %s\n", loadStart, benchLoadAvg())
	fmt.Fprintf(&sb, "%-8s %7s %9s %9s %9s %11s %13s\n", "route", "clients", "p50-ms", "p99-ms", "req/s", "p50/health", "req/s/health")
	for _, route := range []string{"health", "list", "exec"} {
		for _, clients := range []int{1, 32} {
			r, ok := results[fmt.Sprintf("%s/clients=%d", route, clients)]
			base, okBase := results[fmt.Sprintf("health/clients=%d", clients)]
			if !ok || !okBase || base.p50 == 0 || base.rps == 0 {
				continue
			}
			fmt.Fprintf(&sb, "%-8s %7d %9.2f %9.2f %9.1f %11.2f %13.4f\n", route, clients, benchMS(r.p50), benchMS(r.p99), r.rps,
				float64(r.p50)/float64(base.p50), r.rps/base.rps)
		}
	}
	fmt.Print(sb.String())
}

// benchLoadAvg returns the 1, 5 and 15 minute load averages ("?" when unknown).
func benchLoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// benchDev is the `wrenn dev` the benchmark talks to.
type benchDev struct {
	base      string
	apiKey    string
	sandboxID string
	// wrennDir is the agent's WRENN_DIR, prefix its network names' prefix.
	wrennDir, prefix string
}

// startBenchDev starts `wrenn dev` on a temporary data dir and a private
// WRENN_DIR (images symlinked), with its own network prefix and range, and
// creates one sandbox. Everything is torn down when b ends. The e2e tests'
// helpers take *testing.T, so the few steps needed here are redone for
// testing.TB.
func startBenchDev(b *testing.B) benchDev {
	b.Helper()
	if binaries.err != nil {
		b.Fatal(binaries.err)
	}
	src := requirePlatform(b)
	wrennDir := agentDir(b, src)
	dataDir := traversableTempDir(b, "wrenn-e2e-bench-")
	// 10.237 is free of the other tests' ranges (10.231-10.236).
	prefix := fmt.Sprintf("wbn%d-", testID)
	netRange := fmt.Sprintf("10.237.%d.0/24", testID)
	b.Cleanup(func() { scrub(b, dataDir, prefix, netRange); scrub(b, wrennDir, prefix, netRange) })
	port, err := testenv.FreePort()
	if err != nil {
		b.Fatal(err)
	}
	env := childEnv("WRENN_DIR="+wrennDir, fmt.Sprintf("WRENN_CP_LISTEN_ADDR=127.0.0.1:%d", port),
		"WRENN_NET_PREFIX="+prefix, "WRENN_NET_RANGE="+netRange, "WRENN_VMM=qemu", "WRENN_ACCEL=tcg")

	p := startProc(b, "wrenn-dev", env, binaries.wrenn, "dev", "--data-dir", dataDir)
	b.Cleanup(func() {
		code, clean := p.stop(syscall.SIGINT, 90*time.Second)
		if !clean || code != 0 {
			b.Errorf("wrenn dev: exit %d after SIGINT (exited in time: %v)\n%s", code, clean, p.logs())
		}
	})
	t0 := time.Now()
	deadline := t0.Add(3 * time.Minute)
	for !strings.Contains(p.stdout(), "Press Ctrl-C to stop") {
		if !p.running() {
			b.Fatalf("wrenn dev exited before its banner (code %d)\n%s", p.cmd.ProcessState.ExitCode(), p.logs())
		}
		if time.Now().After(deadline) {
			b.Fatalf("wrenn dev printed no banner within 3m\n%s", p.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	key := bannerKey.FindStringSubmatch(p.stdout())
	if key == nil {
		b.Fatalf("banner without an API key:\n%s", p.stdout())
	}
	d := benchDev{base: fmt.Sprintf("http://127.0.0.1:%d", port), apiKey: key[1], wrennDir: wrennDir, prefix: prefix}
	b.Logf("wrenn dev ready in %s", time.Since(t0).Round(time.Millisecond))

	t1 := time.Now()
	status, body := benchDo(b, d, http.MethodPost, "/v1/sandboxes", `{"template":"minimal","memory_mb":256,"vcpus":1}`)
	var sb sandbox
	if status != http.StatusCreated || json.Unmarshal(body, &sb) != nil || sb.Status != "running" {
		b.Fatalf("create sandbox: status %d: %.500s\n%s", status, body, p.logs())
	}
	d.sandboxID = sb.ID
	b.Logf("sandbox %s running after %s", sb.ID, time.Since(t1).Round(time.Millisecond))
	// Destroyed before dev stops (cleanups run last-in first-out), so the
	// stop does not have to pause it to disk.
	b.Cleanup(func() {
		if status, body := benchDo(b, d, http.MethodDelete, "/v1/sandboxes/"+sb.ID, ""); status != http.StatusOK && status != http.StatusNoContent {
			b.Errorf("destroy sandbox %s: status %d: %.300s", sb.ID, status, body)
		}
	})
	return d
}

// benchDo sends one setup request with dev's API key (an empty body sends
// none) and returns the status and answer; a transport error fails b.
func benchDo(b *testing.B, d benchDev, method, path, body string) (int, []byte) {
	b.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, d.base+path, rd)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("X-API-Key", d.apiKey)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 3 * time.Minute}).Do(req)
	if err != nil {
		b.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	return resp.StatusCode, out
}

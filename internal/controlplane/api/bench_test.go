package api

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"
)

// benchRoute measures one route at 1 and 32 concurrent clients against the
// real API on PostgreSQL and the in-process agent over Connect, reporting
// p50/p99 latency and requests per second.
func benchRoute(b *testing.B, method string, path func(e *env, sbID string) string, body []byte) {
	e := newEnv(b, func(o *envOpts) { o.limits.MaxRunningPerTeam = 100 })
	owner := e.signup("bench@example.com")
	key, _ := e.apiKey(owner, "bench")
	sbID := ""
	for i := 0; i < 20; i++ {
		sbID = e.createSandbox(cred{key: key}, nil).ID
	}
	url := e.srv.URL + path(e, sbID)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	for _, clients := range []int{1, 32} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			p := (clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
			b.SetParallelism(p)
			if clients == 1 {
				// RunParallel runs at least GOMAXPROCS goroutines; one client is a plain loop.
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					lat = append(lat, benchOnce(b, client, method, url, key, body))
				}
				report(b, lat, time.Since(start))
				return
			}
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				local := make([]time.Duration, 0, 64)
				for pb.Next() {
					local = append(local, benchOnce(b, client, method, url, key, body))
				}
				mu.Lock()
				lat = append(lat, local...)
				mu.Unlock()
			})
			report(b, lat, time.Since(start))
		})
	}
}

func benchOnce(b *testing.B, c *http.Client, method, url, key string, body []byte) time.Duration {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("X-API-Key", key)
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		b.Error(err)
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if resp.StatusCode != http.StatusOK {
		b.Errorf("%s %s = %d", method, url, resp.StatusCode)
	}
	return d
}

func report(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	b.StopTimer()
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.50), "p50_ms")
	b.ReportMetric(pct(0.99), "p99_ms")
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
}

func BenchmarkListSandboxes(b *testing.B) {
	benchRoute(b, "GET", func(*env, string) string { return "/v1/sandboxes?limit=20" }, nil)
}

func BenchmarkExec(b *testing.B) {
	benchRoute(b, "POST", func(_ *env, id string) string { return sbPath(id, "/exec") }, []byte(`{"cmd":"echo","args":["hello"]}`))
}

// BenchmarkAuditCost measures what the audit trail adds to a sandbox's
// create, pause and destroy through the REST API (in-memory agent, real
// PostgreSQL): the same cycle on a control plane without the trail and on
// one with it, interleaved so both see the same machine load. Reports the
// time of one cycle of each and their ratio.
func BenchmarkAuditCost(b *testing.B) {
	type side struct {
		e     *env
		key   string
		spent time.Duration
	}
	sides := []*side{}
	for _, off := range []bool{true, false} {
		e := newEnv(b, func(o *envOpts) { o.noAudit = off; o.limits.MaxRunningPerTeam = 100 })
		key, _ := e.apiKey(e.signup("bench@example.com"), "bench")
		sides = append(sides, &side{e: e, key: key})
	}
	cycle := func(s *side) {
		t0 := time.Now()
		sb := s.e.createSandbox(cred{key: s.key}, nil)
		s.e.want("POST", sbPath(sb.ID, "/pause"), nil, cred{key: s.key}, 200, nil)
		s.e.want("DELETE", sbPath(sb.ID), nil, cred{key: s.key}, 204, nil)
		s.spent += time.Since(t0)
	}
	for _, s := range sides { // warm both (connections, plans)
		cycle(s)
		s.spent = 0
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			cycle(sides[0])
			cycle(sides[1])
		} else {
			cycle(sides[1])
			cycle(sides[0])
		}
	}
	off, on := sides[0].spent, sides[1].spent
	b.ReportMetric(float64(off.Microseconds())/float64(b.N), "us/cycle-without-audit")
	b.ReportMetric(float64(on.Microseconds())/float64(b.N), "us/cycle-with-audit")
	b.ReportMetric(float64(on)/float64(off), "ratio")
}

package channels

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/valyala/fasthttp"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels/webhookverify"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// benchWorld is a world with n webhook channels on one team, all to one
// loopback receiver that records when each event's last delivery arrived.
type benchWorld struct {
	*world
	n       int
	mu      sync.Mutex
	arrived map[string]time.Time // event id: last of its n deliveries
	count   map[string]int
	total   atomic.Int64 // deliveries with a valid signature
	forged  atomic.Int64 // deliveries without one
	conns   atomic.Int64 // connections the receiver accepted
}

const benchSecret = "whsec_0123456789abcdef"

// wait waits until every one of want deliveries arrived signed.
func (bw *benchWorld) wait(b *testing.B, want int64, within time.Duration) {
	deadline := time.Now().Add(within)
	for bw.total.Load() < want {
		if n := bw.forged.Load(); n > 0 {
			b.Fatalf("%d deliveries with an invalid signature", n)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d deliveries", bw.total.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchSandboxes is how many sandboxes the events are about: a channel
// has one attempt in flight per sandbox, so with one the benchmark would
// measure a single sandbox's serial stream, not the dispatcher.
const benchSandboxes = 100

// benchChannelCounts: 1 channel is the baseline the 10-channel goal is
// compared with in the same run.
var benchChannelCounts = []int{1, 10}

func newBenchWorld(b *testing.B, benchChannels int, receiver string) *benchWorld {
	// A pool as large as the dispatcher's concurrency (pgxpool's default
	// is 4 connections on this 2-core machine); set pool_max_conns in
	// DATABASE_URL likewise in production.
	u, err := url.Parse(testenv.MigratedURL(b))
	if err != nil {
		b.Fatal(err)
	}
	q := u.Query()
	q.Set("pool_max_conns", "32")
	u.RawQuery = q.Encode()
	w := newWorldOn(b, u.String())
	bw := &benchWorld{world: w, n: benchChannels, arrived: map[string]time.Time{}, count: map[string]int{}}
	recvURL := bw.serve(b, receiver)
	for i := range benchChannels {
		if _, err := w.svc.Create(context.Background(), w.who, CreateInput{Name: fmt.Sprintf("bench-%d", i), Provider: Webhook,
			Config: Config{"url": recvURL, "secret": benchSecret}, Events: []string{"sandbox.*"}}); err != nil {
			b.Fatal(err)
		}
	}
	return bw
}

// benchReceivers are the webhook receivers a run can deliver to, both real
// HTTP/1.1 servers on loopback that verify every signature. On 2 cores the
// receiver's CPU is taken from the dispatcher's: net/http's server costs
// about 40% of the benchmark process, fasthttp's about half of that, so
// the fasthttp receiver measures more of the dispatcher and less of the
// fixture (docs/benchmarks.md, "Notification channels").
var benchReceivers = []string{"fasthttp", "net-http"}

// receive counts a delivery: its signature checked, and the time of the
// event's last delivery kept.
func (bw *benchWorld) receive(id, signature string, body []byte) bool {
	if !webhookverify.Valid(signature, body, benchSecret, time.Now()) {
		bw.forged.Add(1)
		return false
	}
	now := time.Now()
	bw.mu.Lock()
	bw.count[id]++
	if bw.count[id] == bw.n {
		bw.arrived[id] = now
	}
	bw.mu.Unlock()
	bw.total.Add(1)
	return true
}

// serve starts the receiver and returns its URL. It counts the
// connections it accepted: the dispatcher should keep a few alive, not
// dial per delivery.
func (bw *benchWorld) serve(b *testing.B, receiver string) string {
	switch receiver {
	case "net-http":
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(r.Body)
			if err != nil || !bw.receive(r.Header.Get("X-Wrenn-Event-Id"), r.Header.Get("X-Wrenn-Signature"), body) {
				rw.WriteHeader(http.StatusUnauthorized)
				return
			}
			rw.WriteHeader(http.StatusNoContent)
		}))
		srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				bw.conns.Add(1)
			}
		}
		srv.Start()
		b.Cleanup(srv.Close)
		return srv.URL
	case "fasthttp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &fasthttp.Server{
			Handler: func(c *fasthttp.RequestCtx) {
				h := &c.Request.Header
				if !bw.receive(string(h.Peek("X-Wrenn-Event-Id")), string(h.Peek("X-Wrenn-Signature")), c.PostBody()) {
					c.SetStatusCode(http.StatusUnauthorized)
					return
				}
				c.SetStatusCode(http.StatusNoContent)
			},
			ConnState: func(_ net.Conn, s fasthttp.ConnState) {
				if s == fasthttp.StateNew {
					bw.conns.Add(1)
				}
			},
		}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { _ = srv.Shutdown() })
		return "http://" + ln.Addr().String()
	}
	b.Fatalf("no receiver %q", receiver)
	return ""
}

func (bw *benchWorld) publishAt(ctx context.Context, pipe redis.Pipeliner, n int) []string {
	out := make([]string, n)
	for i := range n {
		ev := events.Event{ID: ids.New("evt-"), Type: "sandbox.created", OccurredAt: time.Now().UTC(), TeamID: bw.team,
			Actor: events.Actor{Type: "system"}, Resource: events.Resource{Type: "sandbox", ID: fmt.Sprintf("sb-bench-%d", i%benchSandboxes)}, Status: "success"}
		raw, _ := json.Marshal(ev)
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: events.StreamKey, Values: map[string]any{events.Field: string(raw)}})
		out[i] = ev.ID
	}
	return out
}

// BenchmarkDeliveryThroughput: events per second delivered to every
// channel (with 10, each event is 10 signed webhook POSTs).
func BenchmarkDeliveryThroughput(b *testing.B) {
	for _, rcv := range benchReceivers {
		for _, n := range benchChannelCounts {
			b.Run(fmt.Sprintf("receiver=%s/channels=%d", rcv, n), func(b *testing.B) { benchThroughput(b, n, rcv) })
		}
	}
}

func benchThroughput(b *testing.B, benchChannels int, receiver string) {
	bw := newBenchWorld(b, benchChannels, receiver)
	bw.start("cp-bench", DispatcherConfig{PollInterval: 200 * time.Millisecond})
	ctx := context.Background()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU(b)
	for i := 0; i < b.N; i += 500 {
		pipe := bw.rdb.Pipeline()
		bw.publishAt(ctx, pipe, min(500, b.N-i))
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	want := int64(b.N * benchChannels)
	bw.wait(b, want, 10*time.Minute)
	took, cpu := time.Since(start), processCPU(b)-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/took.Seconds(), "events/s")
	b.ReportMetric(float64(want)/took.Seconds(), "deliveries/s")
	// What one delivery costs this process (dispatcher and receiver):
	// unlike the rates, it does not depend on the CPU share the machine's
	// other work leaves; PostgreSQL's and Redis's share is not in it.
	b.ReportMetric(float64(cpu.Microseconds())/float64(want), "cpu-us/delivery")
	b.ReportMetric(float64(bw.conns.Load()), "receiver-conns")
}

// BenchmarkDeliveryLatency: events published at 100 a second, the time
// from XADD to the last of the event's deliveries arriving.
func BenchmarkDeliveryLatency(b *testing.B) {
	for _, rcv := range benchReceivers {
		for _, n := range benchChannelCounts {
			b.Run(fmt.Sprintf("receiver=%s/channels=%d", rcv, n), func(b *testing.B) { benchLatency(b, n, rcv) })
		}
	}
}

func benchLatency(b *testing.B, benchChannels int, receiver string) {
	bw := newBenchWorld(b, benchChannels, receiver)
	bw.start("cp-bench", DispatcherConfig{PollInterval: 200 * time.Millisecond})
	ctx := context.Background()
	sent := make(map[string]time.Time, b.N)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	b.ResetTimer()
	for range b.N {
		<-tick.C
		pipe := bw.rdb.Pipeline()
		id := bw.publishAt(ctx, pipe, 1)[0]
		sent[id] = time.Now()
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	bw.wait(b, int64(b.N*benchChannels), time.Minute)
	b.StopTimer()
	bw.mu.Lock()
	lat := make([]time.Duration, 0, b.N)
	for id, at := range sent {
		lat = append(lat, bw.arrived[id].Sub(at))
	}
	bw.mu.Unlock()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// processCPU is the user and system CPU time this process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

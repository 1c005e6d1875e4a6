package channels

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels/webhookverify"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/localsvc"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// hit is one request a receiver got.
type hit struct {
	at        time.Time
	eventID   string
	attempt   int
	signature string
	body      []byte
}

// receiver is a webhook endpoint on loopback; answer chooses each status
// from the number of requests so far (1-based).
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	hits   []hit
	answer func(n int) int
	delay  time.Duration
}

func newReceiver(t *testing.T, answer func(n int) int) *receiver {
	r := &receiver{answer: answer}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		att, _ := strconv.Atoi(req.Header.Get("X-Wrenn-Delivery-Attempt"))
		r.mu.Lock()
		r.hits = append(r.hits, hit{at: time.Now(), eventID: req.Header.Get("X-Wrenn-Event-Id"), attempt: att, signature: req.Header.Get("X-WRENN-SIGNATURE"), body: body})
		n, delay := len(r.hits), r.delay
		r.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-req.Context().Done():
				return
			}
		}
		w.WriteHeader(r.answer(n))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) got() []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]hit(nil), r.hits...)
}

func always(code int) func(int) int { return func(int) int { return code } }

// world is a channels service and its dispatchers on real PostgreSQL and Redis.
type world struct {
	t    testing.TB
	pool *pgxpool.Pool
	rdb  *redis.Client
	svc  *Service
	team string
	who  auth.AuthContext
}

func newWorld(t testing.TB) *world {
	return newWorldOn(t, testenv.MigratedURL(t))
}

func newWorldOn(t testing.TB, dbURL string) *world {
	return newWorldWith(t, dbURL, testenv.RedisURL(t))
}

func newWorldWith(t testing.TB, dbURL, redisURL string) *world {
	pool := openPool(t, dbURL)
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kr, _ := NewKeyring(key, nil)
	n := &Network{AllowPrivate: true}
	svc, err := New(Deps{Pool: pool, Keyring: kr, Network: n, Sender: NewSender(n, ""), SendTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, pool: pool, rdb: rdb, svc: svc}
	w.team = w.newTeam()
	w.who = auth.AuthContext{TeamID: w.team, Role: "owner", UserID: "usr-test"}
	return w
}

func openPool(t testing.TB, url string) *pgxpool.Pool {
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func (w *world) newTeam() string {
	id := ids.New(ids.Team)
	if _, err := db.New(w.pool).CreateTeam(context.Background(), db.CreateTeamParams{ID: id, Name: id}); err != nil {
		w.t.Fatal(err)
	}
	return id
}

func (w *world) webhook(a auth.AuthContext, name, url string, filters ...string) Channel {
	w.t.Helper()
	ch, err := w.svc.Create(context.Background(), a, CreateInput{Name: name, Provider: Webhook, Config: Config{"url": url}, Events: filters})
	if err != nil {
		w.t.Fatalf("create channel: %v", err)
	}
	return ch
}

// start runs a dispatcher (one control plane process) until the returned
// stop is called.
func (w *world) start(consumer string, cfg DispatcherConfig) (stop func()) {
	cfg.Consumer = consumer
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	if cfg.SendTimeout == 0 {
		cfg.SendTimeout = time.Second
	}
	d, err := NewDispatcher(cfg, w.svc, w.rdb, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	w.t.Cleanup(stop)
	return stop
}

func (w *world) publish(team, typ string) events.Event {
	w.t.Helper()
	return w.publishFor(team, typ, "sb-1")
}

func (w *world) publishFor(team, typ, sandboxID string) events.Event {
	w.t.Helper()
	ev := events.Event{ID: ids.New("evt-"), Type: typ, OccurredAt: time.Now().UTC(), TeamID: team,
		Actor: events.Actor{Type: "system", Name: "test"}, Resource: events.Resource{Type: "sandbox", ID: sandboxID}, Status: "success"}
	raw, _ := json.Marshal(ev)
	if err := w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: events.StreamKey, Values: map[string]any{events.Field: string(raw)}}).Err(); err != nil {
		w.t.Fatal(err)
	}
	return ev
}

func (w *world) pendingEntries() int64 {
	p, err := w.rdb.XPending(context.Background(), events.StreamKey, ConsumerGroup).Result()
	if err != nil {
		w.t.Fatalf("xpending: %v", err)
	}
	return p.Count
}

func (w *world) deliveries(channelID string) []Delivery {
	w.t.Helper()
	page, err := w.svc.Deliveries(context.Background(), w.who, channelID, 200, "")
	if err != nil {
		w.t.Fatal(err)
	}
	return page.Deliveries
}

func eventually(t *testing.T, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A receiver that fails twice then succeeds gets three attempts, the
// configured delays apart, all with the same event id and a valid
// signature; the entry is acked only after the third.
func TestRetrySchedule(t *testing.T) {
	w := newWorld(t)
	rcv := newReceiver(t, func(n int) int {
		if n <= 2 {
			return 500
		}
		return 200
	})
	ch, _ := w.svc.Create(context.Background(), w.who, CreateInput{Name: "ops", Provider: Webhook,
		Config: Config{"url": rcv.srv.URL, "secret": "whsec_0123456789abcdef"}, Events: []string{"sandbox.*"}})
	delays := []time.Duration{300 * time.Millisecond, 900 * time.Millisecond}
	w.start("cp-a", DispatcherConfig{RetryDelays: delays})
	ev := w.publish(w.team, "sandbox.paused")
	eventually(t, 10*time.Second, "two failed attempts", func() bool { return len(rcv.got()) >= 2 })
	if n := w.pendingEntries(); n != 1 {
		t.Fatalf("entry pending = %d while a retry waits, want 1 (not acked)", n)
	}
	eventually(t, 10*time.Second, "a delivered delivery", func() bool {
		d := w.deliveries(ch.ID)
		return len(d) == 1 && d[0].Status == StatusDelivered
	})
	hits := rcv.got()
	if len(hits) != 3 {
		t.Fatalf("%d attempts, want 3", len(hits))
	}
	for i, h := range hits {
		if h.eventID != ev.ID || h.attempt != i+1 || !webhookverify.Valid(h.signature, h.body, "whsec_0123456789abcdef", time.Now()) {
			t.Fatalf("attempt %d: event %s attempt %d signature %q", i+1, h.eventID, h.attempt, h.signature)
		}
	}
	for i, want := range delays {
		if gap := hits[i+1].at.Sub(hits[i].at); gap < want || gap > want+2*time.Second {
			t.Fatalf("gap before attempt %d = %s, want about %s", i+2, gap, want)
		}
	}
	d := w.deliveries(ch.ID)[0]
	if d.Attempts != 3 || d.EventID != ev.ID || d.LastStatusCode == nil || *d.LastStatusCode != 200 {
		t.Fatalf("delivery %+v", d)
	}
	eventually(t, 5*time.Second, "the entry acked", func() bool { return w.pendingEntries() == 0 })
}

// The control plane dies during a retry wait; a new process (another
// consumer name) makes the retry from PostgreSQL and claims the dead
// consumer's entry, which is then acked.
func TestRetrySurvivesRestart(t *testing.T) {
	w := newWorld(t)
	rcv := newReceiver(t, func(n int) int {
		if n == 1 {
			return 503
		}
		return 204
	})
	ch := w.webhook(w.who, "ops", rcv.srv.URL, "*")
	cfg := DispatcherConfig{RetryDelays: []time.Duration{time.Second}, ClaimIdle: 500 * time.Millisecond}
	stop := w.start("cp-old", cfg)
	ev := w.publish(w.team, "sandbox.created")
	eventually(t, 10*time.Second, "the first attempt", func() bool { return len(rcv.got()) == 1 })
	eventually(t, 5*time.Second, "the failed attempt recorded", func() bool {
		d := w.deliveries(ch.ID)
		return len(d) == 1 && d[0].Attempts == 1 && d[0].Status == StatusPending
	})
	stop()
	time.Sleep(200 * time.Millisecond)
	if n := len(rcv.got()); n != 1 {
		t.Fatalf("%d attempts while no control plane ran", n)
	}
	w.start("cp-new", cfg)
	eventually(t, 10*time.Second, "the retry after restart", func() bool {
		d := w.deliveries(ch.ID)
		return len(d) == 1 && d[0].Status == StatusDelivered
	})
	hits := rcv.got()
	if len(hits) != 2 || hits[1].eventID != ev.ID || hits[1].attempt != 2 {
		t.Fatalf("hits %+v", hits)
	}
	eventually(t, 10*time.Second, "the dead consumer's entry claimed and acked", func() bool { return w.pendingEntries() == 0 })
}

// An endpoint that is down, slow past the timeout, or resets, ends failed
// after every attempt, with its error visible; a 410 disables the channel
// at once.
func TestFailuresAndGone(t *testing.T) {
	w := newWorld(t)
	slow := newReceiver(t, always(200))
	slow.delay = 3 * time.Second
	errs := newReceiver(t, always(500))
	gone := newReceiver(t, always(410))
	reset := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		c, _, err := rw.(http.Hijacker).Hijack()
		if err == nil {
			_ = c.Close()
		}
	}))
	t.Cleanup(reset.Close)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	chans := map[string]Channel{
		"slow": w.webhook(w.who, "slow", slow.srv.URL, "*"), "errors": w.webhook(w.who, "errors", errs.srv.URL, "*"),
		"gone": w.webhook(w.who, "gone", gone.srv.URL, "*"), "reset": w.webhook(w.who, "reset", reset.URL, "*"),
		"down": w.webhook(w.who, "down", downURL, "*"),
	}
	w.start("cp-a", DispatcherConfig{RetryDelays: []time.Duration{100 * time.Millisecond, 100 * time.Millisecond}, SendTimeout: 300 * time.Millisecond})
	w.publish(w.team, "host.marked_down")
	for _, tc := range []struct {
		name     string
		attempts int32
		code     int32
		errLike  string
	}{
		{"slow", 3, 0, "timed out"},
		{"errors", 3, 500, "500"},
		{"gone", 1, 410, "410"},
		{"reset", 3, 0, "EOF"},
		{"down", 3, 0, "refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := chans[tc.name].ID
			eventually(t, 15*time.Second, tc.name+" failed", func() bool {
				d := w.deliveries(id)
				return len(d) == 1 && d[0].Status == StatusFailed
			})
			d := w.deliveries(id)[0]
			if d.Attempts != tc.attempts || d.LastError == nil || !strings.Contains(*d.LastError, tc.errLike) {
				t.Fatalf("delivery %+v (error %v), want %d attempts and an error like %q", d, deref(d.LastError), tc.attempts, tc.errLike)
			}
			if tc.code != 0 && (d.LastStatusCode == nil || *d.LastStatusCode != tc.code) {
				t.Fatalf("status %v, want %d", d.LastStatusCode, tc.code)
			}
		})
	}
	g, _ := w.svc.Get(context.Background(), w.who, chans["gone"].ID)
	if g.Enabled || g.DisabledReason == nil {
		t.Fatalf("gone channel %+v not disabled", g)
	}
	// Disabled once, by the dispatcher, in the channel's team.
	var actorType, actorID, status, reason string
	var n int
	err := w.pool.QueryRow(context.Background(), `SELECT count(*) OVER (), actor_type, actor_id, status, metadata->>'reason' FROM audit_logs
		WHERE resource_id = $1 AND action = 'disabled' AND resource_type = 'channel' AND team_id = $2`, g.ID, w.team).Scan(&n, &actorType, &actorID, &status, &reason)
	if err != nil || n != 1 || actorType != "system" || actorID != "channel-dispatcher" || status != "warning" || reason != *g.DisabledReason {
		t.Fatalf("channel.disabled rows %d by %s %s, status %s, reason %q: %v", n, actorType, actorID, status, reason, err)
	}
	// A disabled channel gets nothing more.
	w.publish(w.team, "host.marked_up")
	time.Sleep(500 * time.Millisecond)
	if n := len(gone.got()); n != 1 {
		t.Fatalf("disabled channel got %d requests", n)
	}
	eventually(t, 10*time.Second, "entries acked", func() bool { return w.pendingEntries() == 0 })
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// Filters, teams and creation time choose the channels; a slow channel
// delays no other.
func TestRoutingAndIsolation(t *testing.T) {
	w := newWorld(t)
	sandboxes := newReceiver(t, always(204))
	hosts := newReceiver(t, always(204))
	stuck := newReceiver(t, always(204))
	stuck.delay = 5 * time.Second
	otherTeam := w.newTeam()
	other := newReceiver(t, always(204))
	w.webhook(w.who, "sandboxes", sandboxes.srv.URL, "sandbox.*")
	w.webhook(w.who, "hosts", hosts.srv.URL, "host.marked_down", "host.marked_up")
	w.webhook(w.who, "stuck", stuck.srv.URL, "*")
	w.webhook(auth.AuthContext{TeamID: otherTeam, Role: "admin"}, "other", other.srv.URL, "*")
	w.start("cp-a", DispatcherConfig{RetryDelays: []time.Duration{}, SendTimeout: 10 * time.Second, PerChannel: 2})
	start := time.Now()
	for i := 0; i < 10; i++ {
		w.publish(w.team, "sandbox.created")
	}
	w.publish(w.team, "host.marked_down")
	w.publish(w.team, "team.renamed")
	eventually(t, 3*time.Second, "sandbox and host events while another channel is stuck", func() bool {
		return len(sandboxes.got()) == 10 && len(hosts.got()) == 1
	})
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("took %s", took)
	}
	if n := len(stuck.got()); n > 2 {
		t.Fatalf("stuck channel has %d requests in flight, limit 2", n)
	}
	if n := len(other.got()); n != 0 {
		t.Fatalf("another team's channel got %d events", n)
	}
	// A channel made after an event occurred does not get it, even when
	// its entry is read later.
	late := newReceiver(t, always(204))
	ev := events.Event{ID: ids.New("evt-"), Type: "sandbox.paused", OccurredAt: time.Now().UTC(), TeamID: w.team}
	raw, _ := json.Marshal(ev)
	time.Sleep(10 * time.Millisecond)
	w.webhook(w.who, "late", late.srv.URL, "*")
	_ = w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: events.StreamKey, Values: map[string]any{events.Field: string(raw)}}).Err()
	eventually(t, 3*time.Second, "the event at the sandbox channel", func() bool { return len(sandboxes.got()) == 11 })
	if n := len(late.got()); n != 0 {
		t.Fatalf("a channel made after the event got %d", n)
	}
	// A malformed entry is dropped (acked), not replayed forever.
	id, err := w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: events.StreamKey, Values: map[string]any{events.Field: "{not json"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "the malformed entry acked", func() bool {
		p, err := w.rdb.XPendingExt(context.Background(), &redis.XPendingExtArgs{Stream: events.StreamKey, Group: ConsumerGroup, Start: id, End: id, Count: 1}).Result()
		read, _ := w.rdb.XInfoGroups(context.Background(), events.StreamKey).Result()
		return err == nil && len(p) == 0 && len(read) == 1 && read[0].LastDeliveredID >= id
	})
}

// Redis restarts (its data kept, as in production): a retry that waits in
// PostgreSQL still happens while Redis is down, reading resumes after, and
// every entry ends acked.
func TestRedisRestart(t *testing.T) {
	_, lookErr := exec.LookPath("redis-server")
	testenv.Require(t, lookErr == nil, "redis-server not installed")
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ropts := localsvc.RedisOptions{Port: port, Dir: t.TempDir(), Persist: true}
	rs, err := localsvc.StartRedis(ropts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Stop() })
	w := newWorldWith(t, testenv.MigratedURL(t), rs.URL(0))
	rcv := newReceiver(t, func(n int) int {
		if n == 1 {
			return 500
		}
		return 204
	})
	ch := w.webhook(w.who, "ops", rcv.srv.URL, "*")
	w.start("cp-a", DispatcherConfig{RetryDelays: []time.Duration{1500 * time.Millisecond}, ClaimIdle: time.Second})
	first := w.publish(w.team, "sandbox.created")
	eventually(t, 10*time.Second, "the first attempt", func() bool { return len(rcv.got()) == 1 })
	rs.Stop()
	eventually(t, 10*time.Second, "the retry while Redis is down", func() bool {
		d := w.deliveries(ch.ID)
		return len(d) == 1 && d[0].Status == StatusDelivered
	})
	if rs, err = localsvc.StartRedis(ropts); err != nil {
		t.Fatalf("restart Redis: %v", err)
	}
	second := w.publish(w.team, "sandbox.paused")
	eventually(t, 15*time.Second, "the event published after the restart", func() bool {
		for _, h := range rcv.got() {
			if h.eventID == second.ID {
				return true
			}
		}
		return false
	})
	eventually(t, 15*time.Second, "every entry acked", func() bool { return w.pendingEntries() == 0 })
	if h := rcv.got(); h[1].eventID != first.ID {
		t.Fatalf("second request was %s, want the retry of %s", h[1].eventID, first.ID)
	}
}

// A channel gets one resource's events in the order they were taken, one
// attempt at a time, while another resource's go to it at the same time.
func TestOrderPerResource(t *testing.T) {
	w := newWorld(t)
	const delay = 150 * time.Millisecond
	rcv := newReceiver(t, always(204))
	rcv.delay = delay
	w.webhook(w.who, "ordered", rcv.srv.URL, "sandbox.*")
	want := map[string][]string{}
	for _, typ := range []string{"sandbox.created", "sandbox.running", "sandbox.paused", "sandbox.resumed", "sandbox.destroyed"} {
		for _, sb := range []string{"sb-a", "sb-b"} {
			want[sb] = append(want[sb], w.publishFor(w.team, typ, sb).ID)
		}
	}
	w.start("cp-a", DispatcherConfig{PerChannel: 4})
	eventually(t, 20*time.Second, "all ten events", func() bool { return len(rcv.got()) == 10 })
	got := map[string][]hit{}
	for _, h := range rcv.got() {
		var ev events.Event
		if err := json.Unmarshal(h.body, &ev); err != nil {
			t.Fatal(err)
		}
		got[ev.Resource.ID] = append(got[ev.Resource.ID], h)
	}
	for sb, ids := range want {
		hs := got[sb]
		if len(hs) != len(ids) {
			t.Fatalf("%s: %d deliveries, want %d", sb, len(hs), len(ids))
		}
		for i, h := range hs {
			if h.eventID != ids[i] {
				t.Fatalf("%s: delivery %d is event %s, want %s (the order taken)", sb, i, h.eventID, ids[i])
			}
			// The next began only after the previous one was answered.
			if i > 0 && h.at.Sub(hs[i-1].at) < delay {
				t.Fatalf("%s: deliveries %d and %d overlapped (%s apart)", sb, i-1, i, h.at.Sub(hs[i-1].at))
			}
		}
	}
	overlap := false
	for _, a := range got["sb-a"] {
		for _, b := range got["sb-b"] {
			overlap = overlap || a.at.Sub(b.at).Abs() < delay
		}
	}
	if !overlap {
		t.Fatal("no delivery of sb-a overlapped one of sb-b: resources were serialized")
	}
}

// A control plane dies after reading an entry and before recording any
// attempt (no row exists: rows are written with their first outcome).
// Another claims the entry once it is idle and makes the delivery once.
func TestFirstAttemptAfterCrash(t *testing.T) {
	w := newWorld(t)
	rcv := newReceiver(t, always(204))
	ch := w.webhook(w.who, "ops", rcv.srv.URL, "*")
	if err := w.rdb.XGroupCreateMkStream(context.Background(), events.StreamKey, ConsumerGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	ev := w.publish(w.team, "sandbox.created")
	// The dead process's read: the entry is in its pending list, nothing else happened.
	read, err := w.rdb.XReadGroup(context.Background(), &redis.XReadGroupArgs{Group: ConsumerGroup, Consumer: "cp-dead",
		Streams: []string{events.StreamKey, ">"}, Count: 10}).Result()
	if err != nil || len(read) != 1 || len(read[0].Messages) != 1 {
		t.Fatalf("read as the dead consumer: %v %v", read, err)
	}
	w.start("cp-new", DispatcherConfig{ClaimIdle: 500 * time.Millisecond})
	eventually(t, 10*time.Second, "the delivery after the claim", func() bool {
		d := w.deliveries(ch.ID)
		return len(d) == 1 && d[0].Status == StatusDelivered
	})
	eventually(t, 10*time.Second, "the entry acked", func() bool { return w.pendingEntries() == 0 })
	time.Sleep(700 * time.Millisecond) // another claim round: nothing is sent twice
	if hits := rcv.got(); len(hits) != 1 || hits[0].eventID != ev.ID || hits[0].attempt != 1 {
		t.Fatalf("hits %+v, want one first attempt of %s", hits, ev.ID)
	}
}

// Attempts that queue behind a slow endpoint for longer than ClaimIdle
// are not claimed and made again by another control plane while theirs
// lives; one stopped meanwhile hands its queued deliveries back, and the
// other makes them at once (not after ClaimIdle).
func TestQueuedAttemptsStayClaimed(t *testing.T) {
	w := newWorld(t)
	rcv := newReceiver(t, always(204))
	rcv.delay = 300 * time.Millisecond
	ch := w.webhook(w.who, "slow", rcv.srv.URL, "*")
	// cp-a re-claims its entries every ClaimIdle/2: 2 s leaves a second of
	// margin for a loaded machine (1 s, half a second, was too little).
	cfg := DispatcherConfig{ClaimIdle: 2 * time.Second, PerChannel: 1}
	stopA := w.start("cp-a", cfg)
	var want []string
	for range 20 {
		want = append(want, w.publish(w.team, "sandbox.paused").ID) // one sandbox: one at a time
	}
	eventually(t, 5*time.Second, "cp-a's first attempt", func() bool { return len(rcv.got()) >= 1 })
	w.start("cp-b", cfg)
	time.Sleep(3 * time.Second) // past ClaimIdle, with cp-a's attempts still queued
	sent := func() map[string]int {
		seen := map[string]int{}
		for _, h := range rcv.got() {
			seen[h.eventID]++
		}
		return seen
	}
	for id, n := range sent() {
		if n != 1 {
			t.Fatalf("event %s sent %d times while its control plane lived", id, n)
		}
	}
	if hits := rcv.got(); len(hits) >= len(want) {
		var gaps []time.Duration
		for i := 1; i < len(hits); i++ {
			gaps = append(gaps, hits[i].at.Sub(hits[i-1].at).Round(time.Millisecond))
		}
		t.Fatalf("all %d sent before the stop (%s after the first, gaps %v): nothing was left queued", len(hits), time.Since(hits[0].at).Round(time.Millisecond), gaps)
	}
	stopA()
	stopped := time.Now()
	eventually(t, 10*time.Second, "every event delivered", func() bool {
		n := 0
		for _, d := range w.deliveries(ch.ID) {
			if d.Status == StatusDelivered {
				n++
			}
		}
		return n == len(want)
	})
	// Handed back due at once: no wait for ClaimIdle (nor the poll's tick) per delivery.
	if took := time.Since(stopped); took > time.Duration(len(want))*rcv.delay+2*time.Second {
		t.Fatalf("the handed-back deliveries took %s", took)
	}
	twice := 0
	for _, id := range want {
		switch n := sent()[id]; {
		case n == 2:
			twice++ // the attempt cut by the stop, made again
		case n != 1:
			t.Fatalf("event %s sent %d times", id, n)
		}
	}
	if twice > 1 {
		t.Fatalf("%d events sent twice; only the one in flight at the stop may be", twice)
	}
	eventually(t, 5*time.Second, "the entries acked", func() bool { return w.pendingEntries() == 0 })
}

// An event on the stream twice (the relay publishes at least once), in
// one batch or after its delivery: delivered once, both entries acked.
func TestEventPublishedTwice(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration
	}{{"same batch", 0}, {"after delivery", 500 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			rcv := newReceiver(t, always(204))
			ch := w.webhook(w.who, "ops", rcv.srv.URL, "*")
			ev := events.Event{ID: ids.New("evt-"), Type: "sandbox.created", OccurredAt: time.Now().UTC(), TeamID: w.team,
				Resource: events.Resource{Type: "sandbox", ID: "sb-1"}}
			raw, _ := json.Marshal(ev)
			add := func() {
				if err := w.rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: events.StreamKey, Values: map[string]any{events.Field: string(raw)}}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if tc.gap == 0 {
				add()
				add()
			}
			w.start("cp-a", DispatcherConfig{})
			if tc.gap > 0 {
				add()
			}
			eventually(t, 5*time.Second, "the delivery", func() bool { return len(rcv.got()) == 1 })
			if tc.gap > 0 {
				add()
			}
			eventually(t, 5*time.Second, "both entries acked", func() bool {
				n, err := w.rdb.XLen(context.Background(), events.StreamKey).Result()
				return err == nil && n == 2 && w.pendingEntries() == 0
			})
			time.Sleep(tc.gap)
			if hits := rcv.got(); len(hits) != 1 || hits[0].eventID != ev.ID {
				t.Fatalf("hits %+v, want the event once", hits)
			}
			if d := w.deliveries(ch.ID); len(d) != 1 || d[0].Status != StatusDelivered {
				t.Fatalf("deliveries %+v", d)
			}
		})
	}
}

// A channel's deliveries go with it, deleted directly or with its team;
// a retry recorded while its channel was being deleted (the row outlives
// the delete) is deleted when next due, untried, and its entry acked.
func TestDeletedChannelDeliveries(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	count := func(channelID string) (n int) {
		t.Helper()
		if err := w.pool.QueryRow(ctx, "SELECT count(*) FROM channel_deliveries WHERE channel_id = $1", channelID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// ch's first attempt fails, so its row is a pending retry; theirs is
	// delivered (one receiver each: which request came first is a race).
	rcv := newReceiver(t, func(n int) int {
		if n == 1 {
			return 503
		}
		return 204
	})
	rcvTheirs := newReceiver(t, always(204))
	ch := w.webhook(w.who, "ops", rcv.srv.URL, "*")
	other := w.newTeam()
	otherWho := auth.AuthContext{TeamID: other, Role: "owner", UserID: "usr-test"}
	theirs := w.webhook(otherWho, "theirs", rcvTheirs.srv.URL, "*")
	cfg := DispatcherConfig{RetryDelays: []time.Duration{time.Second}, ClaimIdle: 500 * time.Millisecond}
	stop := w.start("cp-1", cfg)
	w.publish(w.team, "sandbox.created")
	w.publish(other, "sandbox.created")
	eventually(t, 10*time.Second, "both teams' first attempts recorded", func() bool {
		return count(ch.ID) == 1 && count(theirs.ID) == 1
	})
	stop()

	// The team goes, and its channel's deliveries with it.
	if err := db.New(w.pool).DeleteTeam(ctx, other); err != nil {
		t.Fatal(err)
	}
	if n := count(theirs.ID); n != 0 {
		t.Fatalf("%d deliveries of a deleted team's channel", n)
	}

	// The retry row as it would be if recorded just after the delete.
	if _, err := w.pool.Exec(ctx, "CREATE TABLE kept AS SELECT * FROM channel_deliveries WHERE channel_id = $1", ch.ID); err != nil {
		t.Fatal(err)
	}
	var status string
	if err := w.pool.QueryRow(ctx, "SELECT status FROM kept").Scan(&status); err != nil || status != StatusPending {
		t.Fatalf("the kept row is %q (%v), want a pending retry", status, err)
	}
	if err := w.svc.Delete(ctx, w.who, ch.ID); err != nil {
		t.Fatal(err)
	}
	if n := count(ch.ID); n != 0 {
		t.Fatalf("%d deliveries of a deleted channel", n)
	}
	if _, err := w.pool.Exec(ctx, "INSERT INTO channel_deliveries SELECT * FROM kept"); err != nil {
		t.Fatal(err)
	}
	if n := count(ch.ID); n != 1 {
		t.Fatalf("%d orphan rows, want 1", n)
	}
	hits := len(rcv.got()) + len(rcvTheirs.got())
	w.start("cp-2", cfg)
	eventually(t, 30*time.Second, "the orphan retry deleted", func() bool { return count(ch.ID) == 0 })
	eventually(t, 30*time.Second, "the entries acked", func() bool { return w.pendingEntries() == 0 })
	if n := len(rcv.got()) + len(rcvTheirs.got()); n != hits {
		t.Fatalf("%d more attempts to deleted channels", n-hits)
	}
}

// First attempts whose rows another entry (or replica) wrote first: the
// statement fails on the unique key, the rows that exist are left as they
// are, and the others are written. One to a channel deleted since it was
// looked up gets no row.
func TestFirstAttemptsAlreadyRecorded(t *testing.T) {
	w := newWorld(t)
	a := w.webhook(w.who, "a", "http://127.0.0.1:1/a", "*")
	b := w.webhook(w.who, "b", "http://127.0.0.1:1/b", "*")
	gone := w.webhook(w.who, "gone", "http://127.0.0.1:1/gone", "*")
	if err := w.svc.Delete(context.Background(), w.who, gone.ID); err != nil {
		t.Fatal(err)
	}
	d, err := NewDispatcher(DispatcherConfig{Consumer: "cp-a"}, w.svc, w.rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev := events.Event{ID: ids.New("evt-"), Type: "sandbox.created", OccurredAt: time.Now().UTC(), TeamID: w.team}
	raw, _ := json.Marshal(ev)
	f := &flight{ev: &ev, payload: string(raw), streamIDs: []string{"1-0"}, remaining: 2}
	item := func(ch Channel) queued {
		return queued{flight: f, eventID: ev.ID, eventType: ev.Type, channelID: ch.ID, streamID: "1-0", ev: &ev}
	}
	ctx := context.Background()
	// a's row exists already, pending: another replica's attempt failed.
	if _, err := d.recordFirsts(ctx, []outcome{{item: item(a), status: StatusPending, attempts: 1, retryIn: time.Hour,
		r: Result{StatusCode: 500, Err: errors.New("answered 500")}}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		outs       []outcome
		allWritten bool
	}{
		{"one exists", []outcome{{item: item(a), status: StatusDelivered, attempts: 1}, {item: item(b), status: StatusDelivered, attempts: 1},
			{item: item(gone), status: StatusDelivered, attempts: 1}}, false},
		{"all exist", []outcome{{item: item(a), status: StatusDelivered, attempts: 1}, {item: item(b), status: StatusDelivered, attempts: 1}}, false},
		{"channel deleted", []outcome{{item: item(gone), status: StatusDelivered, attempts: 1}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			allWritten, err := d.recordFirsts(ctx, tc.outs)
			if err != nil || allWritten != tc.allWritten {
				t.Fatalf("recordFirsts: allWritten %v, err %v; want %v and no error", allWritten, err, tc.allWritten)
			}
			gotA, gotB := w.deliveries(a.ID), w.deliveries(b.ID)
			if len(gotA) != 1 || gotA[0].Status != StatusPending || len(gotB) != 1 || gotB[0].Status != StatusDelivered {
				t.Fatalf("deliveries a %+v, b %+v: want a's pending row kept and b's written once", gotA, gotB)
			}
			var orphans int
			if err := w.pool.QueryRow(ctx, "SELECT count(*) FROM channel_deliveries WHERE channel_id = $1", gone.ID).Scan(&orphans); err != nil || orphans != 0 {
				t.Fatalf("%d rows for the deleted channel (%v)", orphans, err)
			}
		})
	}
}

// Final deliveries older than the retention go, in batches, from every
// channel; a pending one (its retry still due) and a recent one stay.
func TestPruneDeliveries(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	a := w.webhook(w.who, "a", "http://127.0.0.1:1/a", "*")
	b := w.webhook(w.who, "b", "http://127.0.0.1:1/b", "*")
	d, err := NewDispatcher(DispatcherConfig{Consumer: "cp-a", Retention: 30 * 24 * time.Hour, PruneBatch: 2}, w.svc, w.rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	var old []string // event ids whose rows are made 40 days old
	record := func(ch Channel, status string, aged bool) string {
		t.Helper()
		ev := events.Event{ID: ids.New("evt-"), Type: "sandbox.created", OccurredAt: time.Now().UTC(), TeamID: w.team}
		raw, _ := json.Marshal(ev)
		f := &flight{ev: &ev, payload: string(raw), streamIDs: []string{"1-0"}, remaining: 1}
		it := queued{flight: f, eventID: ev.ID, eventType: ev.Type, channelID: ch.ID, streamID: "1-0", ev: &ev}
		if _, err := d.recordFirsts(ctx, []outcome{{item: it, status: status, attempts: 1, retryIn: time.Hour}}); err != nil {
			t.Fatal(err)
		}
		if aged {
			old = append(old, ev.ID)
		}
		return ev.ID
	}
	for range 3 {
		record(a, StatusDelivered, true)
	}
	record(a, StatusFailed, true)
	keptPending := record(a, StatusPending, true)
	keptRecent := record(a, StatusDelivered, false)
	record(b, StatusDelivered, true)
	record(b, StatusFailed, true)
	if _, err := w.pool.Exec(ctx, "UPDATE channel_deliveries SET created_at = now() - interval '40 days' WHERE event_id = ANY($1)", old); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		want int64
	}{{"first", 6}, {"again", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := d.Prune(ctx, time.Now())
			if err != nil || n != tc.want {
				t.Fatalf("pruned %d (%v), want %d", n, err, tc.want)
			}
			var left []string
			for _, ch := range []Channel{a, b} {
				for _, dl := range w.deliveries(ch.ID) {
					left = append(left, dl.EventID)
				}
			}
			slices.Sort(left)
			want := []string{keptPending, keptRecent}
			slices.Sort(want)
			if !slices.Equal(left, want) {
				t.Fatalf("deliveries left %v, want the pending and the recent one %v", left, want)
			}
		})
	}
}

package registration_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/api"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hostauth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/hostreport"
	"github.com/wrenn-dev/wrenn/internal/pki"
	"github.com/wrenn-dev/wrenn/internal/testenv"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const secret = "registration-test-secret-0123456789abcdef"

// cp is a real control plane HTTP server (hosts routes) on loopback.
type cp struct {
	pool  *pgxpool.Pool
	rdb   *redis.Client
	url   string
	q     *db.Queries
	hosts *hostauth.Service
	srv   *httptest.Server
	// agents is the client pool the host service evicts from.
	agents *hosts.Pool
}

var admin = auth.AuthContext{Method: auth.MethodJWT, TeamID: "team-aaaaaaaaaaaaaaaaaaaa", Role: "owner", IsAdmin: true}

func newCP(t *testing.T) *cp { t.Helper(); return newCPWith(t, hostauth.Config{}, nil) }

// newCPWith is a control plane with host settings (a CA for mTLS) and the
// client certificate its pool dials agents with.
func newCPWith(t *testing.T, cfg hostauth.Config, certs *pki.CPCertStore) *cp {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	return serveCP(t, pool, rdb, cfg, certs)
}

// replica is another control plane HTTP server on c's database and Redis.
func (c *cp) replica(t *testing.T) *cp {
	t.Helper()
	return serveCP(t, c.pool, c.rdb, hostauth.Config{}, nil)
}

func serveCP(t *testing.T, pool *pgxpool.Pool, rdb *redis.Client, cfg hostauth.Config, certs *pki.CPCertStore) *cp {
	t.Helper()
	q := db.New(pool)
	ht, err := hostauth.NewHostTokens(hostauth.DeriveHostKey(secret), 7*24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	agents := hosts.NewPool(q, certs)
	svc := hostauth.New(pool, rdb, ht, agents, cfg, logger)
	h, err := api.New(api.Deps{Logger: logger, Hosts: svc})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &cp{pool: pool, rdb: rdb, url: srv.URL, q: q, hosts: svc, srv: srv, agents: agents}
}

func (c *cp) newHost(t *testing.T) hostauth.HostWithToken {
	t.Helper()
	h, err := c.hosts.CreateHost(context.Background(), admin, hostauth.CreateHostInput{Name: "h", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// runningSandbox adds a running sandbox on the host, in the database and
// on agent; status reads its row's state.
func (c *cp) runningSandbox(t *testing.T, agent *agenttest.Agent, hostID string) (id string, status func() string) {
	t.Helper()
	ctx := context.Background()
	team, err := c.q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	sb, err := c.q.InsertSandbox(ctx, db.InsertSandboxParams{ID: ids.New(ids.Sandbox), TeamID: team.ID, HostID: &hostID,
		Template: "minimal", Vcpus: 1, MemoryMb: 256, DiskMb: 1024, Metadata: json.RawMessage(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := service.NewStates(c.pool, nil).Change(ctx, service.Change{SandboxID: sb.ID, From: []service.Status{service.StatusPending},
		To: service.StatusRunning, Actor: service.ActorReconciler, Reason: "test set-up"}); err != nil || !ok {
		t.Fatal(ok, err)
	}
	agent.Put(sb.ID, pb.SandboxState_SANDBOX_STATE_RUNNING)
	return sb.ID, func() string {
		row, err := c.q.GetSandbox(ctx, db.GetSandboxParams{ID: sb.ID, TeamID: team.ID})
		if err != nil {
			t.Fatal(err)
		}
		return row.Status
	}
}

func (c *cp) lastBeat(t *testing.T, id string) time.Time {
	t.Helper()
	h, err := c.q.GetHost(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if h.LastHeartbeatAt == nil {
		return time.Time{}
	}
	return *h.LastHeartbeatAt
}

var specs = registration.Specs{VMM: "qemu", Accel: "tcg", Arch: "amd64", Version: "test", CPUCount: 2, MemoryMB: 1024, DiskGB: 10}

type run struct {
	done chan struct{} // closed when Run returned
	err  error
}

func start(t *testing.T, o registration.Options) *run {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{done: make(chan struct{})}
	go func() { defer close(r.done); r.err = registration.Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("registration.Run did not stop after cancel")
		}
	})
	return r
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRegisterSavesCredentialsAndHeartbeats(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	dir := t.TempDir()
	var got atomic.Value
	start(t, registration.Options{Dir: dir, CPURLs: []string{c.url}, RegisterToken: h.Token, Address: "127.0.0.1:9091", Specs: specs,
		Interval: 100 * time.Millisecond, OnRegistered: func(cr registration.Credentials) { got.Store(cr) }})
	waitFor(t, 3*time.Second, "registered", func() bool { return got.Load() != nil })
	first := c.lastBeat(t, h.Host.ID)
	waitFor(t, 3*time.Second, "a heartbeat after registering", func() bool { return c.lastBeat(t, h.Host.ID).After(first) })

	st, err := os.Stat(filepath.Join(dir, registration.CredentialsFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials mode = %v, want 0600", st.Mode().Perm())
	}
	saved, err := registration.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if saved.HostID != h.Host.ID || saved.CPURL != c.url || saved.RefreshToken == "" {
		t.Fatalf("saved = %+v", saved)
	}
	row, _ := c.q.GetHost(context.Background(), h.Host.ID)
	if row.Status != "online" || row.Address != "127.0.0.1:9091" || row.Vmm != "qemu" || row.CpuCount != 2 {
		t.Fatalf("host row = %+v", row)
	}
}

// TestHeartbeatUpdatesResources: registration stores the limits and
// capacity the agent reports, and every heartbeat replaces them.
func TestHeartbeatUpdatesResources(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	sp := specs
	sp.Resources = registration.Resources{
		Limits:   hostreport.Limits{MaxVCPUs: 4, MaxMemoryMB: 4096, MaxDiskMB: 20480},
		Capacity: hostreport.Capacity{VCPUs: 8, MemoryMB: 24576},
	}
	var report atomic.Value
	report.Store(sp.Resources)
	var registered atomic.Bool
	start(t, registration.Options{Dir: t.TempDir(), CPURLs: []string{c.url}, RegisterToken: h.Token, Address: "127.0.0.1:9091", Specs: sp,
		Interval: 50 * time.Millisecond, OnRegistered: func(registration.Credentials) { registered.Store(true) },
		Report: func(context.Context) registration.Resources { return report.Load().(registration.Resources) }})
	waitFor(t, 3*time.Second, "registered", registered.Load)
	row, err := c.q.GetHost(context.Background(), h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	if row.MaxVcpus != 4 || row.MaxMemoryMb != 4096 || row.MaxDiskMb != 20480 || row.CapacityVcpus != 8 || row.CapacityMemoryMb != 24576 {
		t.Fatalf("host row after registering = %+v", row)
	}
	next := registration.Resources{
		Limits:   hostreport.Limits{MaxVCPUs: 2, MaxMemoryMB: 2048, MaxDiskMB: 10240},
		Capacity: hostreport.Capacity{VCPUs: 8, MemoryMB: 24576, CommittedVCPUs: 3, CommittedMemoryMB: 6144},
	}
	report.Store(next)
	waitFor(t, 3*time.Second, "a heartbeat carrying new resources", func() bool {
		r, err := c.q.GetHost(context.Background(), h.Host.ID)
		return err == nil && r.MaxVcpus == 2 && r.MaxMemoryMb == 2048 && r.MaxDiskMb == 10240 &&
			r.CommittedVcpus == 3 && r.CommittedMemoryMb == 6144
	})
	// The API shows them too.
	got, err := c.hosts.GetHost(context.Background(), admin, h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Limits != next.Limits || got.Capacity != next.Capacity {
		t.Fatalf("GetHost resources = %+v %+v; want %+v", got.Limits, got.Capacity, next)
	}
}

// TestHeartbeatRefusesNegativeResources: a malformed report is a 400
// naming the field, and the stored report stays.
func TestHeartbeatRefusesNegativeResources(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	creds, err := registration.Register(context.Background(), nil, c.url, h.Token, "127.0.0.1:9091", specs)
	if err != nil {
		t.Fatal(err)
	}
	st, body := call(t, "POST", c.url+"/v1/hosts/"+creds.HostID+"/heartbeat", creds.Token,
		map[string]any{"limits": map[string]any{"max_vcpus": -1}})
	e, _ := body["error"].(map[string]any)
	if st != 400 || e == nil || !strings.Contains(e["message"].(string), "limits.max_vcpus") {
		t.Fatalf("negative report = %d %v; want 400 naming limits.max_vcpus", st, body)
	}
	if st, body := call(t, "POST", c.url+"/v1/hosts/"+creds.HostID+"/heartbeat", creds.Token, nil); st != 200 {
		t.Fatalf("heartbeat without a report = %d %v; want 200", st, body)
	}
}

func TestRegisterFailures(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	ctx := context.Background()
	if _, err := registration.Register(ctx, nil, c.url, h.Token, "127.0.0.1:1", specs); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, url, token, addr string
		status                 int // 0: fails before any request
	}{
		{"reused token", c.url, h.Token, "127.0.0.1:1", 401},
		{"bad address", c.url, h.Token, "nope", 400},
		{"bad url", "ftp://x", h.Token, "127.0.0.1:1", 0},
		{"empty token", c.url, "", "127.0.0.1:1", 0},
		{"empty address", c.url, h.Token, "", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := registration.Register(ctx, nil, tc.url, tc.token, tc.addr, specs)
			if err == nil {
				t.Fatal("registered")
			}
			var ae *registration.APIError
			if tc.status == 0 && errors.As(err, &ae) {
				t.Fatalf("reached the control plane: %v", err)
			}
			if tc.status != 0 && (!errors.As(err, &ae) || ae.Status != tc.status) {
				t.Fatalf("err = %v, want status %d", err, tc.status)
			}
		})
	}
	// A used token without saved credentials stops Run with the 401.
	err := registration.Run(ctx, registration.Options{Dir: t.TempDir(), CPURLs: []string{c.url}, RegisterToken: h.Token, Address: "127.0.0.1:1"})
	var ae *registration.APIError
	if !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("Run with a used token = %v, want the 401", err)
	}
	if err := registration.Run(ctx, registration.Options{Dir: t.TempDir()}); !errors.Is(err, registration.ErrNotRegistered) {
		t.Fatalf("Run without token or credentials = %v", err)
	}
	if _, err := registration.Load(t.TempDir()); !errors.Is(err, registration.ErrNotRegistered) {
		t.Fatalf("load empty dir: %v", err)
	}
}

// A refused JWT, or one about to expire, is refreshed transparently, and
// the rotated credentials are saved.
func TestHeartbeatRefreshes(t *testing.T) {
	c := newCP(t)
	cases := []struct {
		name   string
		mangle func(*registration.Credentials)
	}{
		{"refused token", func(cr *registration.Credentials) { cr.Token = "expired.or.garbage" }},
		{"token about to expire", func(cr *registration.Credentials) { cr.TokenExpiresAt = time.Now().Add(50 * time.Millisecond) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := c.newHost(t)
			dir := t.TempDir()
			creds, err := registration.Register(context.Background(), nil, c.url, h.Token, "127.0.0.1:1", specs)
			if err != nil {
				t.Fatal(err)
			}
			tc.mangle(&creds)
			if err := registration.Save(dir, creds); err != nil {
				t.Fatal(err)
			}
			var paused atomic.Int32
			r := start(t, registration.Options{Dir: dir, Interval: 100 * time.Millisecond,
				PauseAll: func(context.Context) error { paused.Add(1); return nil }})
			first := c.lastBeat(t, h.Host.ID)
			waitFor(t, 3*time.Second, "a heartbeat with a refreshed token", func() bool { return c.lastBeat(t, h.Host.ID).After(first) })
			waitFor(t, 3*time.Second, "refreshed credentials saved", func() bool {
				saved, err := registration.Load(dir)
				return err == nil && saved.RefreshToken != creds.RefreshToken && saved.TokenExpiresAt.After(time.Now().Add(time.Hour))
			})
			select {
			case <-r.done:
				t.Fatalf("Run stopped: %v", r.err)
			default:
			}
			if paused.Load() != 0 {
				t.Fatal("paused sandboxes although refreshing worked")
			}
		})
	}
}

// When refreshing fails the agent pauses everything and stops.
func TestHeartbeatPausesWhenRefreshFails(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	dir := t.TempDir()
	creds, err := registration.Register(context.Background(), nil, c.url, h.Token, "127.0.0.1:1", specs)
	if err != nil {
		t.Fatal(err)
	}
	// Someone else used the refresh token: the one the agent holds is revoked.
	if _, err := registration.Refresh(context.Background(), nil, creds); err != nil {
		t.Fatal(err)
	}
	creds.Token = "garbage"
	if err := registration.Save(dir, creds); err != nil {
		t.Fatal(err)
	}
	var paused atomic.Int32
	done := start(t, registration.Options{Dir: dir, Interval: 100 * time.Millisecond,
		PauseAll: func(context.Context) error { paused.Add(1); return nil }})
	select {
	case <-done.done:
		if !errors.Is(done.err, registration.ErrCredentialsRejected) {
			t.Fatalf("Run = %v, want ErrCredentialsRejected", done.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
	if paused.Load() != 1 {
		t.Fatalf("PauseAll called %d times, want 1", paused.Load())
	}
}

func TestHeartbeatStopsWhenHostDeleted(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	dir := t.TempDir()
	var reg atomic.Bool
	var paused atomic.Int32
	done := start(t, registration.Options{Dir: dir, CPURLs: []string{c.url}, RegisterToken: h.Token, Address: "127.0.0.1:1",
		Interval: 100 * time.Millisecond, OnRegistered: func(registration.Credentials) { reg.Store(true) },
		PauseAll: func(context.Context) error { paused.Add(1); return nil }})
	waitFor(t, 3*time.Second, "registered", reg.Load)
	if _, err := c.hosts.DeleteHost(context.Background(), admin, h.Host.ID, true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done.done:
		if !errors.Is(done.err, registration.ErrHostDeleted) {
			t.Fatalf("Run = %v, want ErrHostDeleted", done.err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the agent loop did not stop after its host was deleted")
	}
	if _, err := os.Stat(filepath.Join(dir, registration.CredentialsFile)); !os.IsNotExist(err) {
		t.Fatalf("credentials of a deleted host kept: %v", err)
	}
	if paused.Load() != 0 {
		t.Fatal("deleted host paused sandboxes")
	}
}

// An unreachable control plane pauses sandboxes once, after the grace time.
func TestUnreachableControlPlanePausesOnce(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := registration.Save(dir, registration.Credentials{CPURL: "http://127.0.0.1:" + strconv.Itoa(port), HostID: "host-aaaaaaaaaaaaaaaaaaaa",
		Token: "t", RefreshToken: "r", TokenExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var pausedAt atomic.Int64
	var paused atomic.Int32
	began := time.Now()
	start(t, registration.Options{Dir: dir, Interval: 50 * time.Millisecond, UnreachableAfter: 400 * time.Millisecond,
		PauseAll: func(context.Context) error { paused.Add(1); pausedAt.Store(int64(time.Since(began))); return nil }})
	waitFor(t, 3*time.Second, "pause", func() bool { return paused.Load() > 0 })
	time.Sleep(300 * time.Millisecond)
	if n := paused.Load(); n != 1 {
		t.Fatalf("PauseAll called %d times, want once", n)
	}
	if d := time.Duration(pausedAt.Load()); d < 400*time.Millisecond {
		t.Fatalf("paused after %s, before the 400ms grace", d)
	}
}

func FuzzLoadCredentials(f *testing.F) {
	f.Add([]byte(`{"cp_url":"http://127.0.0.1:8000","host_id":"host-a","token":"t","refresh_token":"r"}`))
	f.Add([]byte(`{"cp_url":"ftp://x","host_id":"h","token":"t","refresh_token":"r"}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, registration.CredentialsFile), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := registration.Load(dir)
		if err == nil && (c.HostID == "" || c.Token == "" || c.RefreshToken == "" || c.CPURL == "") {
			t.Fatalf("accepted incomplete credentials %+v", c)
		}
	})
}

// The whole loop with real parts on loopback: an agent (Connect stub with
// an in-memory sandbox list) registers and heartbeats; when its heartbeats
// stop the monitor marks it unreachable and its sandbox missing; when it
// comes back (saved credentials, no token) both are restored.
func TestAgentGoesSilentAndComesBack(t *testing.T) {
	c := newCP(t)
	ctx := context.Background()
	agent := agenttest.Serve(t)
	const threshold = time.Second
	mon := reconciler.New(c.pool, nil, hosts.NewPool(c.q, nil), reconciler.Config{Interval: 100 * time.Millisecond, UnreachableAfter: threshold}, nil)
	mctx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { defer close(monDone); mon.Run(mctx) }()
	t.Cleanup(func() { stopMon(); <-monDone })

	h := c.newHost(t)
	dir := t.TempDir()
	opts := registration.Options{Dir: dir, CPURLs: []string{c.url}, RegisterToken: h.Token, Address: agent.Address(), Specs: specs, Interval: 200 * time.Millisecond}
	rctx, stopAgent := context.WithCancel(ctx)
	first := &run{done: make(chan struct{})}
	go func() { defer close(first.done); first.err = registration.Run(rctx, opts) }()
	t.Cleanup(stopAgent)
	hostStatus := func() string {
		row, err := c.q.GetHost(ctx, h.Host.ID)
		if err != nil {
			t.Fatal(err)
		}
		return row.Status
	}
	waitFor(t, 3*time.Second, "host online", func() bool { return hostStatus() == "online" })

	sbID, sbStatus := c.runningSandbox(t, agent, h.Host.ID)

	// The agent goes silent (as if killed): no heartbeats, no answers.
	stopAgent()
	<-first.done
	agent.SetReachable(false)
	silentSince := time.Now()
	waitFor(t, threshold+2*time.Second, "host unreachable", func() bool { return hostStatus() == "unreachable" })
	t.Logf("unreachable %s after the last heartbeat loop stopped (threshold %s)", time.Since(silentSince).Round(time.Millisecond), threshold)
	if s := sbStatus(); s != "missing" {
		t.Fatalf("sandbox = %s, want missing", s)
	}
	if !agent.Has(sbID) {
		t.Fatal("the monitor destroyed a sandbox of an unreachable host")
	}

	// It comes back with its saved credentials; the used token still on its
	// command line is refused and ignored.
	agent.SetReachable(true)
	r2ctx, stop2 := context.WithCancel(ctx)
	second := &run{done: make(chan struct{})}
	go func() { defer close(second.done); second.err = registration.Run(r2ctx, opts) }()
	t.Cleanup(func() { stop2(); <-second.done })
	waitFor(t, 3*time.Second, "host online and sandbox running again", func() bool {
		return hostStatus() == "online" && sbStatus() == "running"
	})
}

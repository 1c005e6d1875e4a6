package registration_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/controlplane/agenttest"
	"github.com/wrenn-dev/wrenn/internal/controlplane/hosts"
	"github.com/wrenn-dev/wrenn/internal/controlplane/reconciler"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

// runReconciler runs a control plane's sync loop on c's database until the
// test ends.
func runReconciler(t *testing.T, c *cp, unreachableAfter time.Duration) {
	t.Helper()
	rec := reconciler.New(c.pool, nil, hosts.NewPool(c.q, nil),
		reconciler.Config{Interval: 100 * time.Millisecond, UnreachableAfter: unreachableAfter, RPCTimeout: 500 * time.Millisecond}, nil)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); rec.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
}

func (c *cp) hostStatus(t *testing.T, id string) string {
	t.Helper()
	h, err := c.q.GetHost(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return h.Status
}

// Two control plane replicas on one database: the agent registers with the
// first of its URLs; when that replica dies its heartbeats (and token
// refreshes) go to the other, the host stays online past the unreachable
// threshold, and nothing is paused. The agent's address answers no one, so
// only heartbeats keep the host alive here.
func TestHeartbeatsFailOverBetweenControlPlanes(t *testing.T) {
	a := newCP(t)
	b := a.replica(t)
	h := a.newHost(t)
	dir := t.TempDir()
	const threshold = time.Second
	var paused atomic.Int32
	start(t, registration.Options{Dir: dir, CPURLs: []string{a.url, b.url}, RegisterToken: h.Token, Address: "127.0.0.1:1",
		Specs: specs, Interval: 100 * time.Millisecond, UnreachableAfter: threshold, Backoff: fastBackoff,
		PauseAll: func(context.Context) error { paused.Add(1); return nil }})
	var saved registration.Credentials
	waitFor(t, 5*time.Second, "registered", func() bool {
		var err error
		saved, err = registration.Load(dir)
		return err == nil
	})
	if !slices.Equal(saved.URLs(), []string{a.url, b.url}) || saved.CPURL != a.url {
		t.Fatalf("saved URLs %v (cp_url %s), want both in order", saved.URLs(), saved.CPURL)
	}
	runReconciler(t, b, threshold)

	a.srv.CloseClientConnections()
	a.srv.Close()
	killed := time.Now()
	waitFor(t, 2*time.Second, "a heartbeat through the surviving replica", func() bool { return b.lastBeat(t, h.Host.ID).After(killed) })

	time.Sleep(threshold + 500*time.Millisecond)
	if s := b.hostStatus(t, h.Host.ID); s != "online" {
		t.Fatalf("host is %s %s after its first control plane died", s, time.Since(killed).Round(time.Millisecond))
	}
	if since := time.Since(b.lastBeat(t, h.Host.ID)); since > threshold/2 {
		t.Fatalf("last heartbeat %s ago: heartbeats stopped", since)
	}
	if n := paused.Load(); n != 0 {
		t.Fatalf("paused %d times while a control plane answered", n)
	}
	// A token refresh fails over the same way (done last: it rotates the
	// refresh token the running loop holds).
	fresh, err := registration.Refresh(t.Context(), nil, saved)
	if err != nil {
		t.Fatalf("refresh with the first control plane dead: %v", err)
	}
	if fresh.Token == "" || !slices.Equal(fresh.URLs(), saved.URLs()) {
		t.Fatalf("refreshed credentials %+v lost the URL list", fresh.URLs())
	}
}

// The agent heartbeats only the replica that died, but the surviving
// replica's sync loop reaches it: the host stays online, its sandbox
// running, and the agent, counting those calls as its control plane
// answering, pauses nothing. Cut off from every control plane, it pauses
// and the host becomes unreachable.
func TestControlPlaneCallsCountAsContact(t *testing.T) {
	a := newCP(t)
	b := a.replica(t)
	h := a.newHost(t)
	contact := &registration.Contact{}
	agent := agenttest.New()
	agent.OnCall = contact.Touch
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(agent.Close)
	const threshold = time.Second
	var paused atomic.Int32
	start(t, registration.Options{Dir: t.TempDir(), CPURLs: []string{a.url}, RegisterToken: h.Token, Address: agent.Address(),
		Specs: specs, Interval: 100 * time.Millisecond, UnreachableAfter: threshold, Backoff: fastBackoff, Contact: contact,
		PauseAll: func(context.Context) error { paused.Add(1); return nil }})
	waitFor(t, 5*time.Second, "registered and online", func() bool { return !a.lastBeat(t, h.Host.ID).IsZero() })

	sbID, sbStatus := a.runningSandbox(t, agent, h.Host.ID)

	a.srv.CloseClientConnections()
	a.srv.Close() // the only heartbeat URL
	runReconciler(t, b, threshold)
	time.Sleep(2*threshold + 500*time.Millisecond)
	if s := b.hostStatus(t, h.Host.ID); s != "online" {
		t.Fatalf("host is %s although the surviving replica reaches its agent", s)
	}
	if s := sbStatus(); s != "running" {
		t.Fatalf("sandbox is %s", s)
	}
	if n := paused.Load(); n != 0 || agent.State(sbID) != pb.SandboxState_SANDBOX_STATE_RUNNING {
		t.Fatalf("paused %d times (sandbox %v on the agent) while a control plane called the agent", n, agent.State(sbID))
	}

	agent.SetReachable(false)
	waitFor(t, 4*threshold, "pause and unreachable once no control plane is heard", func() bool {
		return paused.Load() == 1 && b.hostStatus(t, h.Host.ID) == "unreachable" && sbStatus() == "missing"
	})
}

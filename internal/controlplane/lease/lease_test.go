package lease

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const interval = 800 * time.Millisecond

// slack absorbs scheduling delays on a loaded test machine; it is well
// under the lease TTL, so a holder that kept its lease would still fail.
const slack = 300 * time.Millisecond

// faultConn is a real pool whose calls can be made to hang (a frozen
// holder: its renewals stall) or fail (a killed holder: its connection is
// gone).
type faultConn struct {
	pool   *pgxpool.Pool
	frozen atomic.Bool
	dead   atomic.Bool
}

var errDead = errors.New("test: connection dropped")

func (c *faultConn) fault(ctx context.Context) error {
	if c.dead.Load() {
		return errDead
	}
	for c.frozen.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

func (c *faultConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := c.fault(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return c.pool.Exec(ctx, sql, args...)
}

func (c *faultConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := c.fault(ctx); err != nil {
		return nil, err
	}
	return c.pool.Query(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (c *faultConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := c.fault(ctx); err != nil {
		return errRow{err}
	}
	return c.pool.QueryRow(ctx, sql, args...)
}

// contender is one replica running the loop; its work records when it runs
// and fails the test if two ever run at once.
type contender struct {
	conn     *faultConn
	lease    *Lease
	stop     context.CancelFunc
	returned chan struct{}
	started  chan time.Time // each start of work
	stopped  chan time.Time // each end of work (its context cancelled)
}

type field struct {
	t       *testing.T
	pool    *pgxpool.Pool
	running atomic.Int32
	overlap atomic.Int32
	all     []*contender
}

func newField(t *testing.T) *field {
	pool, _ := testenv.MigratedPool(t)
	return &field{t: t, pool: pool}
}

func (f *field) add(name string) *contender {
	f.t.Helper()
	c := &contender{conn: &faultConn{pool: f.pool}, returned: make(chan struct{}),
		started: make(chan time.Time, 16), stopped: make(chan time.Time, 16)}
	l, err := New(c.conn, Config{Name: name, Replica: NewReplicaID(), Interval: interval}, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	c.lease = l
	ctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	go func() {
		defer close(c.returned)
		l.Run(ctx, func(ctx context.Context) {
			if f.running.Add(1) > 1 {
				f.overlap.Add(1)
			}
			c.started <- time.Now()
			<-ctx.Done()
			f.running.Add(-1)
			c.stopped <- time.Now()
		})
	}()
	f.all = append(f.all, c)
	f.t.Cleanup(func() { stop(); <-c.returned })
	return c
}

// leader waits for one contender other than except to start its work.
func (f *field) leader(within time.Duration, except *contender) (*contender, time.Time) {
	f.t.Helper()
	deadline := time.After(within)
	for {
		for _, c := range f.all {
			if c == except {
				continue
			}
			select {
			case at := <-c.started:
				return c, at
			default:
			}
		}
		select {
		case <-deadline:
			f.t.Fatalf("no contender took the lease within %s", within)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (f *field) checkNoOverlap() {
	f.t.Helper()
	if n := f.overlap.Load(); n > 0 {
		f.t.Fatalf("two replicas ran the loop at once (%d times)", n)
	}
}

func (f *field) leaders() int {
	n := 0
	for _, c := range f.all {
		if c.lease.Leading() {
			n++
		}
	}
	return n
}

// With 2 and 3 replicas contending, exactly one runs the loop; when the
// holder stops (cleanly, killed, or frozen) another takes over within one
// interval, and a frozen holder's work is cancelled once its lease could
// have expired.
func TestOneReplicaRunsTheLoop(t *testing.T) {
	cases := []struct {
		replicas int
		fault    string // how the holder goes away
	}{
		{2, "stop"}, {3, "stop"},
		{2, "killed"}, {3, "killed"},
		{2, "frozen"}, {3, "frozen"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%d replicas, holder %s", tc.replicas, tc.fault), func(t *testing.T) {
			f := newField(t)
			for range tc.replicas {
				f.add("loop")
			}
			holder, _ := f.leader(3*interval, nil)
			// Several renewals later the same one still runs, alone.
			time.Sleep(3 * interval)
			f.checkNoOverlap()
			if n := f.leaders(); n != 1 || !holder.lease.Leading() {
				t.Fatalf("%d leaders after renewals (holder leading: %v), want exactly the holder", n, holder.lease.Leading())
			}
			for _, c := range f.all {
				if c != holder && len(c.started) > 0 {
					t.Fatal("a second replica started the loop while the holder renewed")
				}
			}

			gone := time.Now()
			switch tc.fault {
			case "stop":
				holder.stop()
			case "killed":
				holder.conn.dead.Store(true)
			case "frozen":
				holder.conn.frozen.Store(true)
			}
			next, at := f.leader(interval+slack, holder)
			if took := at.Sub(gone); took > interval+slack {
				t.Fatalf("take-over after %s, want within one interval (%s)", took, interval)
			}
			select {
			case end := <-holder.stopped:
				if !end.Before(at) {
					t.Fatalf("the old holder stopped at %s, after the new one started at %s", end, at)
				}
			default:
				t.Fatal("the old holder's loop context was not cancelled")
			}
			if holder.lease.Leading() {
				t.Fatal("the old holder still believes it leads")
			}
			if tc.fault == "frozen" {
				// It wakes: it does not take the lease back from the new holder.
				holder.conn.frozen.Store(false)
				time.Sleep(2 * interval)
				if len(holder.started) > 0 || !next.lease.Leading() {
					t.Fatal("the woken holder took the loop back")
				}
			}
			f.checkNoOverlap()
			if n := f.leaders(); n != 1 {
				t.Fatalf("%d leaders after the take-over, want 1", n)
			}
			row, err := db.New(f.pool).GetLease(context.Background(), "loop")
			if err != nil {
				t.Fatal(err)
			}
			if row.Holder != next.lease.cfg.Replica || row.Token < 2 {
				t.Fatalf("lease row %+v: want holder %s with a bumped token", row, next.lease.cfg.Replica)
			}
		})
	}
}

// Leases of different names are independent: one replica may hold both.
func TestLeasesAreIndependent(t *testing.T) {
	f := newField(t)
	a := f.add("a")
	f.leader(3*interval, nil)
	b := f.add("b")
	if _, at := f.leader(3*interval, a); at.IsZero() || !a.lease.Leading() || !b.lease.Leading() {
		t.Fatal("the second loop did not start beside the first")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Replica: "r", Interval: time.Second},
		{Name: "n", Interval: time.Second},
		{Name: "n", Replica: "r", Interval: time.Millisecond},
	} {
		if _, err := New(nil, cfg, nil); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() { ids[i] = NewReplicaID() })
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] || len(id) < 10 {
			t.Fatalf("replica ids not distinct: %v", ids)
		}
		seen[id] = true
	}
}

package registration_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/agent/registration"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

// logBuffer collects an agent's log lines for assertions.
type logBuffer struct{ testenv.SyncBuffer }

func (l *logBuffer) count(s string) int { return strings.Count(l.String(), s) }

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

var fastBackoff = registration.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}

// A registration whose database transaction fails is retried by the agent
// with the same token, and succeeds once the database is healthy; the agent
// keeps running throughout.
func TestRegistrationRetriedAcrossDatabaseFault(t *testing.T) {
	c := newCP(t)
	h := c.newHost(t)
	heal := testenv.FailUpdates(t, c.pool, "hosts")
	var logs logBuffer
	var got atomic.Value
	r := start(t, registration.Options{Dir: t.TempDir(), CPURLs: []string{c.url}, RegisterToken: h.Token, Address: "127.0.0.1:9091",
		Specs: specs, Interval: 100 * time.Millisecond, Backoff: fastBackoff, Logger: logs.logger(),
		OnRegistered: func(cr registration.Credentials) { got.Store(cr) }})
	waitFor(t, 5*time.Second, "two failed registration attempts", func() bool { return logs.count("registration failed; retrying") >= 2 })
	select {
	case <-r.done:
		t.Fatalf("Run stopped on a control plane fault: %v", r.err)
	default:
	}
	heal()
	waitFor(t, 5*time.Second, "registered with the same token", func() bool { return got.Load() != nil })
	first := c.lastBeat(t, h.Host.ID)
	waitFor(t, 3*time.Second, "a heartbeat", func() bool { return c.lastBeat(t, h.Host.ID).After(first) })
	if n := logs.count("refused this agent's registration"); n != 0 {
		t.Fatalf("logged a refusal %d times", n)
	}
}

// faultProxy forwards to the control plane but answers 503 to the first
// `failures` requests for path, or drops their connection.
func faultProxy(t *testing.T, target, path string, failures int32, drop bool) (string, *atomic.Int32) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	var seen atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path && seen.Add(1) <= failures {
			if drop {
				panic(http.ErrAbortHandler) // the client sees a broken connection
			}
			http.Error(w, `{"error":{"code":"unavailable","message":"injected"}}`, http.StatusServiceUnavailable)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &seen
}

// Registration and token refresh ride out 503s and broken connections with
// backoff, well within one heartbeat interval, and never pause sandboxes.
func TestRegistrationAndRefreshRetryTransientFailures(t *testing.T) {
	const interval = 2 * time.Second
	for _, tc := range []struct {
		name, path string
		drop       bool
	}{
		{"register 503", "/v1/hosts/register", false},
		{"register connection drop", "/v1/hosts/register", true},
		{"refresh 503", "/v1/hosts/auth/refresh", false},
		{"refresh connection drop", "/v1/hosts/auth/refresh", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCP(t)
			h := c.newHost(t)
			proxy, seen := faultProxy(t, c.url, tc.path, 3, tc.drop)
			dir := t.TempDir()
			o := registration.Options{Dir: dir, CPURLs: []string{proxy}, Interval: interval, Backoff: fastBackoff,
				PauseAll: func(context.Context) error { t.Error("paused sandboxes on a transient failure"); return nil }}
			if strings.HasSuffix(tc.path, "/register") {
				o.RegisterToken, o.Address, o.Specs = h.Token, "127.0.0.1:9091", specs
			} else {
				creds, err := registration.Register(context.Background(), nil, c.url, h.Token, "127.0.0.1:1", specs)
				if err != nil {
					t.Fatal(err)
				}
				creds.CPURL, creds.CPURLs, creds.Token = proxy, []string{proxy}, "refused.by.the.control.plane"
				if err := registration.Save(dir, creds); err != nil {
					t.Fatal(err)
				}
			}
			began := time.Now()
			first := c.lastBeat(t, h.Host.ID)
			r := start(t, o)
			waitFor(t, 5*time.Second, "a heartbeat after the faults", func() bool { return c.lastBeat(t, h.Host.ID).After(first) })
			if d := time.Since(began); d >= interval {
				t.Fatalf("took %s, not retried within the %s interval", d, interval)
			}
			if n := seen.Load(); n != 4 {
				t.Fatalf("%s called %d times, want 3 failures and a success", tc.path, n)
			}
			select {
			case <-r.done:
				t.Fatalf("Run stopped: %v", r.err)
			default:
			}
		})
	}
}

// Which failures are worth retrying.
func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&registration.APIError{Status: 500}, true},
		{&registration.APIError{Status: 503}, true},
		{&registration.APIError{Status: 429}, true},
		{&registration.APIError{Status: 408}, true},
		{&registration.APIError{Status: 400}, false},
		{&registration.APIError{Status: 401}, false},
		{&registration.APIError{Status: 404}, false},
		{fmt.Errorf("register host: %w", &url.Error{Op: "Post", URL: "http://x", Err: errors.New("connection refused")}), true},
		{errors.New("registration token is empty"), false},
	} {
		if got := registration.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

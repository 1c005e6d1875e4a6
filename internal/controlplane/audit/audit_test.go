package audit

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

func TestEventTypesAreResourceDotAction(t *testing.T) {
	seen := map[string]bool{}
	for _, typ := range EventTypes {
		res, action, ok := strings.Cut(typ, ".")
		if !ok || res == "" || action == "" || strings.Contains(action, ".") || seen[typ] {
			t.Errorf("event type %q", typ)
		}
		seen[typ] = true
		if !KnownEventType(typ) {
			t.Errorf("%q not known", typ)
		}
	}
	if KnownEventType("sandbox.exploded") || KnownEventType("") {
		t.Error("unknown types reported known")
	}
	if !slices.Contains(ResourceTypes(), "api_key") || !slices.Contains(Actions(), "marked_down") || slices.Contains(Actions(), "sandbox") {
		t.Errorf("resource types %v, actions %v", ResourceTypes(), Actions())
	}
}

func TestLoggerRows(t *testing.T) {
	ctx := context.Background()
	pool, _ := testenv.MigratedPool(t)
	q := db.New(pool)
	count := func() (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM audit_logs").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	user := Actor{Type: ActorUser, ID: "usr-1", Name: "a@example.com"}
	tests := []struct {
		name                           string
		write                          func(l *Logger, q Querier) error
		team                           string
		resType, action, scope, status string
	}{
		{"sandbox by a user", func(l *Logger, q Querier) error {
			return l.SandboxPaused(ctx, q, user, SandboxChange{Sandbox: db.Sandbox{ID: "sb-1", TeamID: "team-1", Status: "paused"}, From: "running"})
		}, "team-1", "sandbox", "paused", "team", "success"},
		{"sandbox by the system", func(l *Logger, q Querier) error {
			return l.SandboxDestroyed(ctx, q, Actor{Type: ActorSystem, ID: "reconciler"}, SandboxChange{Sandbox: db.Sandbox{ID: "sb-1", TeamID: "team-1"}})
		}, "team-1", "sandbox", "destroyed", "team", "info"},
		{"key", func(l *Logger, q Querier) error { return l.APIKeyCreated(ctx, q, user, "team-1", "key-1", "ci") }, "team-1", "api_key", "created", "admin", "success"},
		{"shared host", func(l *Logger, q Querier) error {
			return l.HostMarkedDown(ctx, q, Actor{Type: ActorSystem, ID: "host-monitor"}, db.Host{ID: "host-1"}, "silent")
		}, "", "host", "marked_down", "admin", "warning"},
		{"channel disabled by the dispatcher", func(l *Logger, q Querier) error {
			return l.ChannelDisabled(ctx, q, Actor{Type: ActorSystem, ID: "channel-dispatcher"}, db.Channel{ID: "ch-1", TeamID: "team-1"}, "410 Gone")
		}, "team-1", "channel", "disabled", "admin", "warning"},
		{"build failed", func(l *Logger, q Querier) error {
			return l.TemplateBuildFailed(ctx, q, Actor{Type: ActorSystem, ID: "build-worker"}, db.TemplateBuild{ID: "bld-1", TeamID: "team-1", ErrorMessage: "step 1 failed"})
		}, "", "template", "build_failed", "admin", "error"},
		{"build cancelled by a user", func(l *Logger, q Querier) error {
			return l.TemplateBuildCancelled(ctx, q, user, db.TemplateBuild{ID: "bld-1"})
		}, "", "template", "build_cancelled", "admin", "success"},
		{"sign-up", func(l *Logger, q Querier) error { return l.UserSignedUp(ctx, q, user, "team-1", "usr-1", "github") }, "team-1", "user", "signed_up", "admin", "success"},
		{"failed login", func(l *Logger, q Querier) error {
			return l.LoginFailed(ctx, q, strings.Repeat("x", 5000)+"@example.com", "", "unknown email")
		}, "", "auth", "login_failed", "admin", "warning"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := count()
			if err := tt.write(New(), q); err != nil || count() != before+1 {
				t.Fatalf("wrote %d rows: %v", count()-before, err)
			}
			rows, err := pool.Query(ctx, "SELECT * FROM audit_logs ORDER BY created_at DESC LIMIT 1")
			if err != nil {
				t.Fatal(err)
			}
			p, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[db.AuditLog])
			if err != nil {
				t.Fatal(err)
			}
			team := ""
			if p.TeamID != nil {
				team = *p.TeamID
			}
			if team != tt.team || p.ResourceType != tt.resType || p.Action != tt.action || p.Scope != tt.scope || p.Status != tt.status ||
				!strings.HasPrefix(p.ID, "log-") || !strings.HasPrefix(p.EventID, "evt-") || !json.Valid(p.Metadata) || len(p.Metadata) > 1000 {
				t.Fatalf("row %+v", p)
			}
			if err := tt.write(Disabled(), q); err != nil || count() != before+1 {
				t.Fatalf("disabled logger wrote %d rows: %v", count()-before-1, err)
			}
		})
	}
	if err := New().TeamCreated(ctx, q, Actor{}, "team-1", "t"); err == nil {
		t.Fatal("a row without an actor was written")
	}
}

package api

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

type auditRow struct {
	ID      string `json:"id"`
	EventID string `json:"event_id"`
	TeamID  string `json:"team_id"`
	Actor   struct {
		Type, ID, Name string
	} `json:"actor"`
	ResourceType string         `json:"resource_type"`
	ResourceID   string         `json:"resource_id"`
	Action       string         `json:"action"`
	Scope        string         `json:"scope"`
	Status       string         `json:"status"`
	Metadata     map[string]any `json:"metadata"`
	CreatedAt    time.Time      `json:"created_at"`
}

func (r auditRow) typ() string { return r.ResourceType + "." + r.Action }

// auditLogs reads every page of GET /v1/audit-logs?query, newest first.
func (e *env) auditLogs(c cred, query string, limit int) []auditRow {
	e.t.Helper()
	var all []auditRow
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 10000 {
			e.t.Fatal("audit log paging does not end")
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			e.t.Fatal(err)
		}
		q.Set("limit", fmt.Sprint(limit))
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		var page struct {
			AuditLogs  []auditRow `json:"audit_logs"`
			NextCursor string     `json:"next_cursor"`
		}
		e.want("GET", "/v1/audit-logs?"+q.Encode(), nil, c, 200, &page)
		if len(page.AuditLogs) > limit {
			e.t.Fatalf("page of %d rows at limit %d", len(page.AuditLogs), limit)
		}
		all = append(all, page.AuditLogs...)
		if page.NextCursor == "" {
			return all
		}
		cursor = page.NextCursor
	}
}

// types lists the rows' event types, oldest first.
func types(rows []auditRow) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[len(rows)-1-i] = r.typ()
	}
	return out
}

// Every action writes its row, with who did it: a user by email, an API
// key by name, or the named system actor.
func TestAuditRecordsEveryActionWithItsActor(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	owner := e.signup("owner@example.com")
	oc := owner.cred()
	key, keyID := e.apiKey(owner, "ci")
	kc := cred{key: key}

	// The lifecycle through an API key.
	sb := e.createSandbox(kc, nil)
	e.want("POST", sbPath(sb.ID, "/pause"), nil, kc, 200, nil)
	e.want("POST", sbPath(sb.ID, "/resume"), nil, kc, 200, nil)
	e.want("DELETE", sbPath(sb.ID), nil, kc, 204, nil)

	// What the reconciler records from the host.
	auto := e.createSandbox(oc, nil)
	gone := e.createSandbox(oc, nil)
	dead := e.createSandbox(oc, nil)
	e.agent.AutoPause(auto.ID)
	e.agent.Forget(gone.ID)
	e.agent.Put(dead.ID, pb.SandboxState_SANDBOX_STATE_DEAD)
	e.rec.Pass(ctx)
	// A host that goes silent, then answers again.
	silent := e.createSandbox(oc, nil)
	e.agent.SetReachable(false)
	if _, err := e.pool.Exec(ctx, "UPDATE hosts SET last_heartbeat_at = now() - interval '1 hour' WHERE id = 'host-test'"); err != nil {
		t.Fatal(err)
	}
	e.rec.Pass(ctx)
	e.agent.SetReachable(true)
	e.rec.Pass(ctx)

	// Snapshots, teams, members, keys, passwords.
	snapSrc := e.createSandbox(oc, nil)
	var snap struct{ ID string }
	e.want("POST", "/v1/snapshots", map[string]string{"sandbox_id": snapSrc.ID, "name": "snap"}, oc, 201, &snap)
	e.want("DELETE", "/v1/snapshots/snap", nil, oc, 204, nil)
	var team struct{ ID string }
	e.want("POST", "/v1/teams", map[string]string{"name": "Second"}, oc, 201, &team)
	e.want("PATCH", "/v1/teams/"+team.ID, map[string]string{"name": "Renamed"}, oc, 200, nil)
	member := e.signup("member@example.com")
	e.join(owner, owner.Team.ID, member, "member")
	e.want("PATCH", "/v1/teams/"+owner.Team.ID+"/members/"+member.User.ID, map[string]string{"role": "admin"}, oc, 204, nil)
	memberS := e.switchTo(member, owner.Team.ID)
	_, memberKeyID := e.apiKey(memberS, "member-laptop")
	e.want("DELETE", "/v1/teams/"+owner.Team.ID+"/members/"+member.User.ID, nil, oc, 200, nil)
	leaver := e.signup("leaver@example.com")
	e.join(owner, owner.Team.ID, leaver, "member")
	e.want("DELETE", "/v1/teams/"+owner.Team.ID+"/members/"+leaver.User.ID, nil, e.switchTo(leaver, owner.Team.ID).cred(), 200, nil)
	e.want("DELETE", "/v1/api-keys/"+keyID, nil, oc, 204, nil)
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": "wrong password!"}, cred{}, 401, "invalid_credentials", "")
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "nobody@example.com", "password": "wrong password!"}, cred{}, 401, "invalid_credentials", "")
	e.want("DELETE", "/v1/teams/"+team.ID, nil, oc, 204, nil)
	e.want("POST", "/v1/me/password", map[string]string{"current_password": testPassword, "new_password": "another good password"}, oc, 204, nil)
	login := struct{ Token string }{}
	e.want("POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": "another good password"}, cred{}, 200, &login)
	oc = cred{jwt: login.Token}

	keyActor := func(r auditRow) bool { return r.Actor.Type == "api_key" && r.Actor.ID == keyID && r.Actor.Name == "ci" }
	ownerActor := func(r auditRow) bool {
		return r.Actor.Type == "user" && r.Actor.ID == owner.User.ID && r.Actor.Name == "owner@example.com"
	}
	system := func(id string) func(auditRow) bool {
		return func(r auditRow) bool { return r.Actor.Type == "system" && r.Actor.ID == id }
	}
	tests := []struct {
		name       string
		resourceID string
		want       []string // oldest first
		actor      func(auditRow) bool
	}{
		{"sandbox lifecycle by API key", sb.ID, []string{"sandbox.created", "sandbox.running", "sandbox.paused", "sandbox.resumed", "sandbox.destroyed"}, keyActor},
		{"auto-pause", auto.ID, []string{"sandbox.created", "sandbox.running", "sandbox.auto_paused"}, nil},
		{"gone from its host", gone.ID, []string{"sandbox.created", "sandbox.running", "sandbox.destroyed"}, nil},
		{"VM died", dead.ID, []string{"sandbox.created", "sandbox.running", "sandbox.error"}, nil},
		{"host silent, then back", silent.ID, []string{"sandbox.created", "sandbox.running", "sandbox.missing", "sandbox.running"}, nil},
		{"host", "host-test", []string{"host.marked_down", "host.marked_up"}, nil},
		{"snapshot", snap.ID, []string{"snapshot.created", "snapshot.deleted"}, ownerActor},
		{"second team", team.ID, []string{"team.created", "team.renamed", "team.deleted"}, ownerActor},
		{"member", member.User.ID, []string{"member.added", "member.role_changed", "member.removed"}, ownerActor},
		{"leaver", leaver.User.ID, []string{"member.added", "member.left"}, nil},
		{"member's key revoked with them", memberKeyID, []string{"api_key.created", "api_key.revoked"}, nil},
		{"key", keyID, []string{"api_key.created", "api_key.revoked"}, ownerActor},
		{"sign-up and password", owner.User.ID, []string{"user.signed_up", "user.password_changed"}, ownerActor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rows []auditRow
			if tt.resourceID == team.ID {
				var err error
				rows, err = e.rowsOfTeam(ctx, team.ID)
				if err != nil {
					t.Fatal(err)
				}
			} else {
				rows = e.auditLogs(oc, auditQuery(tt.resourceID), 3)
			}
			if got := types(rows); !slices.Equal(got, tt.want) {
				t.Fatalf("events of %s = %v, want %v", tt.resourceID, got, tt.want)
			}
			for _, r := range rows {
				if tt.actor != nil && !tt.actor(r) {
					t.Errorf("%s by %+v", r.typ(), r.Actor)
				}
				if !ids.Valid(ids.AuditLog, r.ID) || !ids.Valid(ids.Event, r.EventID) {
					t.Errorf("%s ids %q %q", r.typ(), r.ID, r.EventID)
				}
			}
		})
	}
	// The system actors and statuses of what the control plane did itself.
	for _, tt := range []struct {
		resourceID, typ string
		actor           func(auditRow) bool
		status          string
	}{
		{auto.ID, "sandbox.auto_paused", system("auto-pause"), "info"},
		{gone.ID, "sandbox.destroyed", system("reconciler"), "info"},
		{dead.ID, "sandbox.error", system("reconciler"), "error"},
		{silent.ID, "sandbox.missing", system("host-monitor"), "warning"},
		{"host-test", "host.marked_down", system("host-monitor"), "warning"},
		{"host-test", "host.marked_up", system("reconciler"), "info"},
		{sb.ID, "sandbox.paused", keyActor, "success"},
	} {
		rows := e.auditLogs(oc, auditQuery(tt.resourceID), 50)
		i := slices.IndexFunc(rows, func(r auditRow) bool { return r.typ() == tt.typ })
		if i < 0 || !tt.actor(rows[i]) || rows[i].Status != tt.status {
			t.Errorf("%s of %s: %+v, want status %s", tt.typ, tt.resourceID, rows, tt.status)
		}
	}
	// Failed logins are platform rows, for platform admins only.
	if !owner.User.IsAdmin {
		t.Fatal("the first user should be a platform admin")
	}
	fails := e.auditLogs(oc, "scope=platform&action=login_failed", 50)
	if got := types(fails); !slices.Equal(got, []string{"auth.login_failed", "auth.login_failed"}) ||
		fails[1].ResourceID != owner.User.ID || fails[0].ResourceID != "unknown" || fails[0].Metadata["email"] != "nobody@example.com" {
		t.Fatalf("login failures %+v", fails)
	}
}

// auditQuery asks for a resource's rows; the test's host is shared, so its
// rows are the platform's.
func auditQuery(resourceID string) string {
	q := "resource_id=" + url.QueryEscape(resourceID)
	if resourceID == "host-test" {
		q += "&scope=platform"
	}
	return q
}

// rowsOfTeam reads a deleted team's rows from the database (no session can
// name the team any more), newest first like the API.
func (e *env) rowsOfTeam(ctx context.Context, teamID string) ([]auditRow, error) {
	rows, err := e.pool.Query(ctx, "SELECT resource_type, action, actor_type, actor_id, actor_name, id, event_id FROM audit_logs WHERE team_id = $1 AND resource_id = $1 ORDER BY created_at DESC, id DESC", teamID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.ResourceType, &r.Action, &r.Actor.Type, &r.Actor.ID, &r.Actor.Name, &r.ID, &r.EventID); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// 1,000 rows inside one second, many sharing a microsecond, paged at
// limit 7: each row exactly once, in (created_at, id) order.
func TestAuditLogPagingNeverSkipsOrRepeats(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	owner := e.signup("owner@example.com")
	// 20 rows per microsecond, all within 50 µs; ids in the ids alphabet.
	if _, err := e.pool.Exec(ctx, `INSERT INTO audit_logs (id, event_id, team_id, actor_type, actor_id, resource_type, resource_id, action, scope, status, created_at)
		SELECT 'log-' || translate(substr(md5(i::text), 1, 20), '0189', 'wxyz'), 'evt-' || translate(substr(md5(i::text), 1, 20), '0189', 'wxyz'), $1, 'system', 'test', 'sandbox', 'sb-' || i, 'running', 'team', 'info',
		       '2026-12-01T12:00:00Z'::timestamptz + make_interval(secs => (i % 50) / 1e6)
		FROM generate_series(1, 1000) AS i`, owner.Team.ID); err != nil {
		t.Fatal(err)
	}
	var want int
	if err := e.pool.QueryRow(ctx, "SELECT count(*) FROM audit_logs WHERE team_id = $1", owner.Team.ID).Scan(&want); err != nil {
		t.Fatal(err)
	}
	rows := e.auditLogs(owner.cred(), "", 7)
	seen := map[string]bool{}
	for i, r := range rows {
		if seen[r.ID] {
			t.Fatalf("row %s repeated", r.ID)
		}
		seen[r.ID] = true
		if i > 0 {
			p := rows[i-1]
			if r.CreatedAt.After(p.CreatedAt) || r.CreatedAt.Equal(p.CreatedAt) && r.ID >= p.ID {
				t.Fatalf("row %d (%s %s) out of order after %s %s", i, r.CreatedAt, r.ID, p.CreatedAt, p.ID)
			}
		}
	}
	if len(rows) != want || want < 1000 {
		t.Fatalf("paged %d rows, the team has %d", len(rows), want)
	}
	// Filters combine with paging the same way.
	since := url.QueryEscape("2026-12-01T12:00:00.000010Z")
	until := url.QueryEscape("2026-12-01T12:00:00.000020Z")
	if got := e.auditLogs(owner.cred(), "action=running&since="+since+"&until="+until, 7); len(got) != 200 {
		t.Fatalf("rows in [10 µs, 20 µs) = %d, want 200", len(got))
	}
}

// Members read their team's team-scoped rows; owners and admins also the
// admin-scoped ones; nobody another team's; platform rows only platform
// admins, on asking.
func TestAuditLogScoping(t *testing.T) {
	e := newEnv(t)
	admin := e.signup("admin@example.com") // the first user: platform admin
	owner := e.signup("owner@example.com")
	member := e.signup("member@example.com")
	outsider := e.signup("outsider@example.com")
	team := owner.Team.ID
	e.join(owner, team, member, "member")
	memberS := e.switchTo(member, team)
	_, keyID := e.apiKey(owner, "deploy") // admin scope
	sb := e.createSandbox(owner.cred(), nil)
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": "not the password"}, cred{}, 401, "", "")

	has := func(rows []auditRow, resourceID string) bool {
		return slices.ContainsFunc(rows, func(r auditRow) bool { return r.ResourceID == resourceID })
	}
	// The owner's failed login; their sign-up row is about them too.
	failed := func(rows []auditRow) bool {
		return slices.ContainsFunc(rows, func(r auditRow) bool { return r.ResourceID == owner.User.ID && r.typ() == "auth.login_failed" })
	}
	tests := []struct {
		name                 string
		c                    cred
		query                string
		sandbox, key, failed bool
	}{
		{"owner", owner.cred(), "", true, true, false},
		{"member", memberS.cred(), "", true, false, false},
		{"member asks for the key", memberS.cred(), "resource_id=" + keyID, false, false, false},
		{"outsider", outsider.cred(), "", false, false, false},
		{"outsider asks for the sandbox", outsider.cred(), "resource_id=" + sb.ID, false, false, false},
		{"platform admin in its own team", admin.cred(), "", false, false, false},
		{"platform admin, platform scope", admin.cred(), "scope=platform", false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows := e.auditLogs(tt.c, tt.query, 50)
			if has(rows, sb.ID) != tt.sandbox || has(rows, keyID) != tt.key || failed(rows) != tt.failed {
				t.Fatalf("sees sandbox %v key %v failed login %v, want %v %v %v: %+v", has(rows, sb.ID), has(rows, keyID),
					failed(rows), tt.sandbox, tt.key, tt.failed, rows)
			}
			for _, r := range rows {
				if tt.query != "scope=platform" && r.TeamID != teamOf(tt.c, owner, memberS, outsider, admin) {
					t.Errorf("row of team %q: %+v", r.TeamID, r)
				}
			}
		})
	}
	e.wantErr("GET", "/v1/audit-logs?scope=platform", nil, owner.cred(), 403, "forbidden", "")
}

// teamOf is the team of the session whose token c carries.
func teamOf(c cred, sessions ...session) string {
	for _, s := range sessions {
		if s.Token == c.jwt {
			return s.Team.ID
		}
	}
	return ""
}

func TestAuditLogBadInput(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	key, _ := e.apiKey(owner, "k")
	c := owner.cred()
	tests := []struct {
		query  string
		status int
		code   string
		field  string
	}{
		{"cursor=nope", 400, "invalid_request", "cursor"},
		{"cursor=" + url.QueryEscape("MTIzfHNiLWFiY2RlZmdoaWprbG1ub3BxcnN0"), 400, "invalid_request", "cursor"}, // a sandbox cursor
		{"limit=0", 400, "invalid_request", "limit"},
		{"limit=201", 400, "invalid_request", "limit"},
		{"limit=x", 400, "invalid_request", "limit"},
		{"resource_type=sandbox,planet", 400, "invalid_request", "resource_type"},
		{"action=exploded", 400, "invalid_request", "action"},
		{"status=fine", 400, "invalid_request", "status"},
		{"scope=galaxy", 400, "invalid_request", "scope"},
		{"since=yesterday", 400, "invalid_request", "since"},
		{"until=2026-13-01T00:00:00Z", 400, "invalid_request", "until"},
		{"since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z", 400, "invalid_request", "since"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			e.wantErr("GET", "/v1/audit-logs?"+tt.query, nil, c, tt.status, tt.code, tt.field)
		})
	}
	e.wantErr("GET", "/v1/audit-logs", nil, cred{key: key}, 403, "session_required", "")
	e.wantErr("GET", "/v1/audit-logs", nil, cred{}, 401, "", "")
	// Good values of every filter, comma-separated and repeated.
	e.want("GET", "/v1/audit-logs?resource_type=sandbox,team&resource_type=api_key&action=created&status=success,info&limit=200", nil, c, 200, nil)
}

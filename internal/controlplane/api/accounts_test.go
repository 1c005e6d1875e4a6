package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
)

func TestSignupLoginAndMe(t *testing.T) {
	e := newEnv(t)
	first := e.signup("first@example.com")
	if !first.User.IsAdmin || first.Team.Role != "owner" || first.Token == "" {
		t.Fatalf("first user: %+v", first)
	}
	second := e.signup("second@example.com")
	if second.User.IsAdmin {
		t.Fatal("second user must not be platform admin")
	}
	if second.Team.ID == first.Team.ID {
		t.Fatal("each signup gets its own team")
	}

	tests := []struct {
		name   string
		body   any
		status int
		code   string
		field  string
	}{
		{"duplicate email, other case", map[string]string{"email": "FIRST@example.com", "password": testPassword}, 409, "email_taken", "email"},
		{"missing email", map[string]string{"password": testPassword}, 400, "invalid_request", "email"},
		{"bad email", map[string]string{"email": "not-an-email", "password": testPassword}, 400, "invalid_request", "email"},
		{"short password", map[string]string{"email": "x@example.com", "password": "short"}, 400, "invalid_request", "password"},
		{"password too long", map[string]string{"email": "x@example.com", "password": strings.Repeat("p", 73)}, 400, "invalid_request", "password"},
		{"unknown field", `{"email":"x@example.com","password":"abcdefghij","admin":true}`, 400, "invalid_request", "admin"},
		{"wrong type", `{"email":42,"password":"abcdefghij"}`, 400, "invalid_request", "email"},
		{"malformed", `{"email":`, 400, "invalid_request", ""},
		{"empty", "", 400, "invalid_request", ""},
		{"array", `[]`, 400, "invalid_request", ""},
		{"two objects", `{"email":"x@example.com","password":"abcdefghij"}{}`, 400, "invalid_request", ""},
	}
	for _, tt := range tests {
		t.Run("signup "+tt.name, func(t *testing.T) {
			e.wantErr("POST", "/v1/auth/signup", tt.body, cred{}, tt.status, tt.code, tt.field)
		})
	}

	var s session
	e.want("POST", "/v1/auth/login", map[string]string{"email": "First@Example.com", "password": testPassword}, cred{}, http.StatusOK, &s)
	if s.User.ID != first.User.ID || s.Team.ID != first.Team.ID {
		t.Fatalf("login session %+v", s)
	}
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "first@example.com", "password": "wrong password"}, cred{}, 401, "invalid_credentials", "")
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "nobody@example.com", "password": "wrong password"}, cred{}, 401, "invalid_credentials", "")
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "first@example.com"}, cred{}, 400, "invalid_request", "password")

	var me struct {
		User  struct{ ID, Name string }
		Team  struct{ ID, Role string }
		Teams []struct{ ID string }
	}
	e.want("GET", "/v1/me", nil, s.cred(), http.StatusOK, &me)
	if me.User.ID != first.User.ID || me.Team.ID != first.Team.ID || me.Team.Role != "owner" || len(me.Teams) != 1 {
		t.Fatalf("me = %+v", me)
	}
	e.want("PATCH", "/v1/me", map[string]string{"name": "Renamed"}, s.cred(), http.StatusOK, nil)
	e.want("GET", "/v1/me", nil, s.cred(), http.StatusOK, &me)
	if me.User.Name != "Renamed" {
		t.Fatalf("name = %q", me.User.Name)
	}
	e.wantErr("PATCH", "/v1/me", map[string]string{"name": "  "}, s.cred(), 400, "", "name")
	e.wantErr("PATCH", "/v1/me", map[string]any{"name": 5}, s.cred(), 400, "", "name")

	// Password change: wrong current password, then a real change.
	e.wantErr("POST", "/v1/me/password", map[string]string{"current_password": "nope nope", "new_password": "brand new password"}, s.cred(), 403, "wrong_password", "current_password")
	e.wantErr("POST", "/v1/me/password", map[string]string{"current_password": testPassword, "new_password": "short"}, s.cred(), 400, "", "new_password")
	e.want("POST", "/v1/me/password", map[string]string{"current_password": testPassword, "new_password": "brand new password"}, s.cred(), http.StatusNoContent, nil)
	e.wantErr("POST", "/v1/auth/login", map[string]string{"email": "first@example.com", "password": testPassword}, cred{}, 401, "invalid_credentials", "")
	// The new password ends every session issued before it, this one included.
	e.wantErr("GET", "/v1/me", nil, s.cred(), 401, "session_revoked", "")
	var fresh struct {
		Token string `json:"token"`
	}
	e.want("POST", "/v1/auth/login", map[string]string{"email": "first@example.com", "password": "brand new password"}, cred{}, http.StatusOK, &fresh)
	e.want("GET", "/v1/me", nil, cred{jwt: fresh.Token}, http.StatusOK, nil)

	// Garbage and forged tokens.
	e.wantErr("GET", "/v1/me", nil, cred{jwt: "garbage"}, 401, "invalid_token", "")
	forged, _, _ := mustTokens(t, strings.Repeat("x", 40)).Issue(first.User.ID, first.Team.ID, 0)
	e.wantErr("GET", "/v1/me", nil, cred{jwt: forged}, 401, "invalid_token", "")
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/me", nil)
	req.Header.Set("Authorization", "Basic Zm9vOmJhcg==")
	if st, _ := e.send(req); st != 401 {
		t.Fatalf("basic auth = %d", st)
	}
}

func mustTokens(t *testing.T, secret string) *auth.Tokens {
	t.Helper()
	tk, err := auth.NewTokens(secret, 3600e9, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTeamsMembersAndRoles(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	admin := e.signup("admin@example.com")
	member := e.signup("member@example.com")
	outsider := e.signup("outsider@example.com")
	team := owner.Team.ID
	e.join(owner, team, admin, "admin")
	e.join(owner, team, member, "member")
	tp := "/v1/teams/" + team

	e.wantErr("POST", tp+"/members", map[string]string{"email": member.User.Email}, owner.cred(), 409, "already_member", "")
	e.wantErr("POST", tp+"/members", map[string]string{"email": "ghost@example.com"}, owner.cred(), 404, "user_not_found", "email")
	e.wantErr("POST", tp+"/members", map[string]string{"email": outsider.User.Email, "role": "king"}, owner.cred(), 400, "", "role")

	adminS := e.switchTo(admin, team)
	memberS := e.switchTo(member, team)
	if adminS.Team.Role != "admin" || memberS.Team.Role != "member" {
		t.Fatalf("roles after switch: %s %s", adminS.Team.Role, memberS.Team.Role)
	}
	e.wantErr("POST", "/v1/auth/switch-team", map[string]string{"team_id": team}, outsider.cred(), 404, "team_not_found", "")

	var members struct {
		Members []struct{ UserID, Role string }
	}
	e.want("GET", tp+"/members", nil, memberS.cred(), 200, &members)
	if len(members.Members) != 3 {
		t.Fatalf("members = %+v", members)
	}
	e.wantErr("GET", tp+"/members", nil, outsider.cred(), 404, "team_not_found", "")
	e.wantErr("GET", tp, nil, outsider.cred(), 404, "team_not_found", "")
	var got struct{ ID, Role string }
	e.want("GET", tp, nil, memberS.cred(), 200, &got)
	if got.ID != team || got.Role != "member" {
		t.Fatalf("get team %+v", got)
	}

	// Rename: owner and admin yes, member no.
	e.wantErr("PATCH", tp, map[string]string{"name": "Nope"}, memberS.cred(), 403, "forbidden", "")
	e.want("PATCH", tp, map[string]string{"name": "Renamed by admin"}, adminS.cred(), 200, nil)
	e.wantErr("PATCH", tp, map[string]string{"name": ""}, owner.cred(), 400, "", "name")

	// Admins cannot make owners or touch owners.
	e.wantErr("POST", tp+"/members", map[string]string{"email": outsider.User.Email, "role": "owner"}, adminS.cred(), 403, "forbidden", "")
	e.wantErr("PATCH", tp+"/members/"+owner.User.ID, map[string]string{"role": "member"}, adminS.cred(), 403, "forbidden", "")
	e.wantErr("DELETE", tp+"/members/"+owner.User.ID, nil, adminS.cred(), 403, "forbidden", "")
	e.wantErr("PATCH", tp+"/members/"+admin.User.ID, map[string]string{"role": "owner"}, memberS.cred(), 403, "forbidden", "")
	e.wantErr("DELETE", tp+"/members/"+admin.User.ID, nil, memberS.cred(), 403, "forbidden", "")

	// The last owner can neither leave nor be demoted.
	e.wantErr("DELETE", tp+"/members/"+owner.User.ID, nil, owner.cred(), 409, "last_owner", "")
	e.wantErr("PATCH", tp+"/members/"+owner.User.ID, map[string]string{"role": "admin"}, owner.cred(), 409, "last_owner", "")
	// With a second owner, the first may leave.
	e.want("PATCH", tp+"/members/"+admin.User.ID, map[string]string{"role": "owner"}, owner.cred(), 204, nil)
	e.want("PATCH", tp+"/members/"+owner.User.ID, map[string]string{"role": "admin"}, adminS.cred(), 204, nil)
	e.wantErr("PATCH", tp+"/members/"+outsider.User.ID, map[string]string{"role": "admin"}, adminS.cred(), 404, "member_not_found", "")

	// A member leaves by themselves; their session stops working at once.
	e.want("DELETE", tp+"/members/"+member.User.ID, nil, memberS.cred(), 200, nil)
	e.wantErr("GET", "/v1/me", nil, memberS.cred(), 401, "invalid_token", "")

	// Teams: create, list, delete rules.
	var nt struct{ ID, Role string }
	e.want("POST", "/v1/teams", map[string]string{"name": "Side project"}, outsider.cred(), 201, &nt)
	if nt.Role != "owner" {
		t.Fatalf("creator role %q", nt.Role)
	}
	var list struct{ Teams []struct{ ID string } }
	e.want("GET", "/v1/teams", nil, outsider.cred(), 200, &list)
	if len(list.Teams) != 2 {
		t.Fatalf("teams = %+v", list)
	}
	e.wantErr("DELETE", "/v1/teams/"+nt.ID, nil, owner.cred(), 404, "team_not_found", "")
	e.want("DELETE", "/v1/teams/"+nt.ID, nil, outsider.cred(), 204, nil)
	e.wantErr("DELETE", "/v1/teams/"+outsider.Team.ID, nil, outsider.cred(), 409, "last_team", "")
	e.wantErr("POST", "/v1/teams", map[string]string{}, outsider.cred(), 400, "", "name")
}

func TestAPIKeys(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	member := e.signup("member@example.com")
	e.join(owner, owner.Team.ID, member, "member")
	memberS := e.switchTo(member, owner.Team.ID)

	ownerKey, ownerKeyID := e.apiKey(owner, "ci")
	memberKey, memberKeyID := e.apiKey(memberS, "laptop")
	if !strings.HasPrefix(ownerKey, "wrn_") || len(ownerKey) < 36 || !auth.LooksLikeAPIKey(ownerKey) {
		t.Fatalf("key %q", ownerKey)
	}
	var list struct {
		APIKeys []map[string]any `json:"api_keys"`
	}
	raw := e.want("GET", "/v1/api-keys", nil, memberS.cred(), 200, &list)
	if len(list.APIKeys) != 2 || strings.Contains(string(raw), ownerKey) || strings.Contains(string(raw), memberKey) {
		t.Fatalf("list = %s", raw)
	}
	for _, k := range list.APIKeys {
		if _, ok := k["key"]; ok {
			t.Fatalf("listing shows the key: %v", k)
		}
		if !strings.HasPrefix(k["prefix"].(string), "wrn_") || k["creator_email"] == "" {
			t.Fatalf("listing lacks prefix or creator: %v", k)
		}
	}
	e.wantErr("POST", "/v1/api-keys", map[string]string{"name": ""}, owner.cred(), 400, "", "name")

	// Keys work for sandboxes but not for user management.
	e.want("GET", "/v1/sandboxes", nil, cred{key: memberKey}, 200, nil)
	e.wantErr("GET", "/v1/me", nil, cred{key: memberKey}, 403, "session_required", "")
	e.wantErr("POST", "/v1/api-keys", map[string]string{"name": "x"}, cred{key: memberKey}, 403, "session_required", "")
	e.wantErr("GET", "/v1/sandboxes", nil, cred{key: "wrn_" + strings.Repeat("A", 40)}, 401, "invalid_api_key", "")
	e.wantErr("GET", "/v1/sandboxes", nil, cred{key: "nonsense"}, 401, "invalid_api_key", "")

	// The key's use is recorded.
	k, err := e.q.GetAPIKey(context.Background(), dbKey(memberKeyID, owner.Team.ID))
	if err != nil || k.LastUsedAt == nil {
		t.Fatalf("last_used_at not recorded: %v %+v", err, k)
	}

	// Members delete only their own keys; owners any.
	e.wantErr("DELETE", "/v1/api-keys/"+ownerKeyID, nil, memberS.cred(), 403, "forbidden", "")
	e.want("DELETE", "/v1/api-keys/"+memberKeyID, nil, memberS.cred(), 204, nil)
	_, otherID := e.apiKey(memberS, "second")
	e.want("DELETE", "/v1/api-keys/"+otherID, nil, owner.cred(), 204, nil)
	e.wantErr("DELETE", "/v1/api-keys/"+otherID, nil, owner.cred(), 404, "api_key_not_found", "")
	e.wantErr("GET", "/v1/sandboxes", nil, cred{key: memberKey}, 401, "invalid_api_key", "")

	// Another team cannot see or delete the key.
	stranger := e.signup("stranger@example.com")
	e.wantErr("DELETE", "/v1/api-keys/"+ownerKeyID, nil, stranger.cred(), 404, "api_key_not_found", "")
}

// Concurrent first signups on a fresh install make exactly one platform admin.
func TestConcurrentFirstSignupsMakeOneAdmin(t *testing.T) {
	e := newEnv(t)
	const n = 6
	admins := make(chan bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var s session
			e.want("POST", "/v1/auth/signup", map[string]string{"email": fmt.Sprintf("u%d@example.com", i), "password": testPassword}, cred{}, http.StatusCreated, &s)
			admins <- s.User.IsAdmin
		}()
	}
	wg.Wait()
	close(admins)
	count := 0
	for a := range admins {
		if a {
			count++
		}
	}
	if count != 1 {
		t.Fatalf("%d platform admins after %d concurrent signups, want 1", count, n)
	}
}

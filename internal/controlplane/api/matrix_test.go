package api

import (
	"context"
	"fmt"
	"strings"
	"testing"
)

// principal is one kind of caller in the authorization matrix.
type principal struct {
	name string
	c    cred
}

func TestAuthorizationMatrix(t *testing.T) {
	e := newEnv(t, func(o *envOpts) { o.limits.MaxRunningPerTeam = 50 })
	owner := e.signup("owner@example.com")
	admin := e.signup("admin@example.com")
	member := e.signup("member@example.com")
	outsider := e.signup("outsider@example.com")
	team := owner.Team.ID
	e.join(owner, team, admin, "admin")
	e.join(owner, team, member, "member")
	adminS, memberS := e.switchTo(admin, team), e.switchTo(member, team)
	memberKey, _ := e.apiKey(memberS, "member key")
	outsiderKey, _ := e.apiKey(outsider, "outsider key")
	sb := e.createSandbox(owner.cred(), nil)

	ps := []principal{
		{"none", cred{}},
		{"garbage jwt", cred{jwt: "eyJhbGciOiJub25lIn0.e30."}},
		{"owner jwt", owner.cred()},
		{"admin jwt", adminS.cred()},
		{"member jwt", memberS.cred()},
		{"api key", cred{key: memberKey}},
		{"other team jwt", outsider.cred()},
		{"other team key", cred{key: outsiderKey}},
	}
	n := 0
	fresh := func() string { n++; return fmt.Sprintf("fresh%d@example.com", n) }
	type row struct {
		name   string
		method string
		setup  func() (path string, body any)
		want   []int // per principal, in ps order
	}
	fixed := func(path string, body any) func() (string, any) {
		return func() (string, any) { return path, body }
	}
	rows := []row{
		{"get sandbox", "GET", fixed(sbPath(sb.ID), nil), []int{401, 401, 200, 200, 200, 200, 404, 404}},
		{"list sandboxes", "GET", fixed("/v1/sandboxes", nil), []int{401, 401, 200, 200, 200, 200, 200, 200}},
		{"exec", "POST", fixed(sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo"}), []int{401, 401, 200, 200, 200, 200, 404, 404}},
		{"usage stats", "GET", fixed("/v1/sandboxes/stats?range=1h", nil), []int{401, 401, 200, 200, 200, 200, 200, 200}},
		{"metrics via alias", "GET", fixed("/v1/capsules/"+sb.ID+"/metrics", nil), []int{401, 401, 200, 200, 200, 200, 404, 404}},
		{"destroy sandbox", "DELETE", func() (string, any) {
			return sbPath(e.createSandbox(owner.cred(), nil).ID), nil
		}, []int{401, 401, 204, 204, 204, 204, 404, 404}},
		{"snapshots", "GET", fixed("/v1/snapshots", nil), []int{401, 401, 200, 200, 200, 200, 200, 200}},
		{"me", "GET", fixed("/v1/me", nil), []int{401, 401, 200, 200, 200, 403, 200, 403}},
		{"list keys", "GET", fixed("/v1/api-keys", nil), []int{401, 401, 200, 200, 200, 403, 200, 403}},
		{"delete owner's key", "DELETE", func() (string, any) {
			_, id := e.apiKey(owner, "victim")
			return "/v1/api-keys/" + id, nil
		}, []int{401, 401, 204, 204, 403, 403, 404, 403}},
		{"rename team", "PATCH", fixed("/v1/teams/"+team, map[string]string{"name": "x"}), []int{401, 401, 200, 200, 403, 403, 404, 403}},
		{"delete team", "DELETE", fixed("/v1/teams/"+team, nil), []int{401, 401, 409, 403, 403, 403, 404, 403}},
		{"list members", "GET", fixed("/v1/teams/"+team+"/members", nil), []int{401, 401, 200, 200, 200, 403, 404, 403}},
		{"add member", "POST", func() (string, any) {
			email := fresh()
			e.want("POST", "/v1/auth/signup", map[string]string{"email": email, "password": testPassword}, cred{}, 201, nil)
			return "/v1/teams/" + team + "/members", map[string]string{"email": email}
		}, []int{401, 401, 201, 201, 403, 403, 404, 403}},
	}
	for _, r := range rows {
		for i, p := range ps {
			t.Run(r.name+"/"+p.name, func(t *testing.T) {
				path, body := r.setup()
				st, b := e.do(r.method, path, body, p.c)
				if st != r.want[i] {
					t.Fatalf("%s %s as %s = %d, want %d: %s", r.method, path, p.name, st, r.want[i], b)
				}
			})
		}
	}
}

// TestSecretsNeverLeak drives signup, login, keys, sandboxes, streams and
// failures, then checks that no response and no log line holds a password,
// a password hash or an API key hash, and that tokens and keys appear only
// in the one response that hands them out.
func TestSecretsNeverLeak(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	member := e.signup("member@example.com")
	e.join(owner, owner.Team.ID, member, "member")
	memberS := e.switchTo(member, owner.Team.ID)
	key, keyID := e.apiKey(memberS, "leak check")
	sb := e.createSandbox(cred{key: key}, nil)
	var relogin session
	e.want("POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": testPassword}, cred{}, 200, &relogin)
	e.do("POST", "/v1/auth/login", map[string]string{"email": "owner@example.com", "password": "not the password"}, cred{})
	e.do("POST", "/v1/me/password", map[string]string{"current_password": "not the password", "new_password": "another password"}, owner.cred())
	e.do("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo", "args": []string{"hi"}}, cred{key: key})
	e.do("GET", "/v1/api-keys", nil, owner.cred())
	e.do("GET", "/v1/me", nil, cred{key: key})
	e.do("GET", "/v1/sandboxes", nil, cred{key: key + "x"})
	e.do("GET", "/v1/sandboxes", nil, cred{jwt: owner.Token + "x"})
	conn, _, err := e.dialWS(t, sbPath(sb.ID, "/exec/stream?api_key="+key), cred{})
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.Write(context.Background(), 1, []byte(`{"type":"start","cmd":"echo","args":["x"]}`))
	readAll(t, conn)
	e.agent.Close()
	e.do("POST", sbPath(sb.ID, "/exec"), map[string]any{"cmd": "echo"}, cred{key: key})
	e.do("POST", "/v1/sandboxes", nil, owner.cred())

	var secrets []string
	rows, err := e.pool.Query(context.Background(), "SELECT password_hash FROM users UNION ALL SELECT key_hash FROM team_api_keys")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		secrets = append(secrets, s)
	}
	rows.Close()
	if len(secrets) != 3 {
		t.Fatalf("expected 2 password hashes and 1 key hash, got %d", len(secrets))
	}
	secrets = append(secrets, testPassword, "not the password", "another password")
	logs := e.logs.String()
	if !strings.Contains(logs, "http request") {
		t.Fatal("no access log captured; the check would be vacuous")
	}
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a secret (%.8s...) appears in the logs", s)
		}
		for _, x := range e.exchanges {
			if strings.Contains(x.body, s) {
				t.Errorf("a secret (%.8s...) appears in the response to %s %s", s, x.method, x.path)
			}
		}
	}
	issued := map[string]string{owner.Token: "/v1/auth/signup", memberS.Token: "/v1/auth/switch-team", relogin.Token: "/v1/auth/login", key: "/v1/api-keys"}
	for tok, where := range issued {
		if strings.Contains(logs, tok) {
			t.Errorf("a token or key issued by %s appears in the logs", where)
		}
		seen := 0
		for _, x := range e.exchanges {
			if strings.Contains(x.body, tok) {
				seen++
				if x.path != where {
					t.Errorf("a token or key issued by %s appears in the response to %s %s", where, x.method, x.path)
				}
			}
		}
		if seen != 1 {
			t.Errorf("the token or key issued by %s appears in %d responses, want exactly 1", where, seen)
		}
	}
	if !strings.Contains(logs, keyID) {
		t.Error("the API key's ID should be logged as the actor of the sandbox it created")
	}
}

package hostauth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

const userSecret = "0123456789abcdef0123456789abcdef-user"

type env struct {
	pool *pgxpool.Pool
	q    *db.Queries
	rdb  *redis.Client
	svc  *Service
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	pool, _ := testenv.MigratedPool(t)
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatalf("redis url: %v", err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { rdb.Close() })
	tokens, err := NewHostTokens(DeriveHostKey(userSecret), 7*24*time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &env{pool: pool, q: db.New(pool), rdb: rdb, svc: New(pool, rdb, tokens, nil, cfg, nil)}
}

func (e *env) team(t *testing.T, byoc bool) string {
	t.Helper()
	ctx := context.Background()
	tm, err := e.q.CreateTeam(ctx, db.CreateTeamParams{ID: ids.New(ids.Team), Name: "t"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.q.SetTeamBYOC(ctx, db.SetTeamBYOCParams{ID: tm.ID, ByocEnabled: byoc}); err != nil {
		t.Fatal(err)
	}
	return tm.ID
}

var admin = auth.AuthContext{Method: auth.MethodJWT, TeamID: "team-aaaaaaaaaaaaaaaaaaaa", Role: "member", IsAdmin: true}

func wantKind(t *testing.T, err error, kind service.Kind, code service.Code) {
	t.Helper()
	e, ok := service.AsError(err)
	if !ok {
		t.Fatalf("error = %v, want a service error %s", err, code)
	}
	if e.Kind != kind || (code != "" && e.Code != code) {
		t.Fatalf("error = kind %d code %q (%v), want kind %d code %q", e.Kind, e.Code, e, kind, code)
	}
}

var specs = Specs{VMM: "qemu", Accel: "tcg", Arch: "amd64", Version: "test", CPUCount: 2, MemoryMB: 4096, DiskGB: 20}

func (e *env) refreshCount(t *testing.T, hostID string) int {
	t.Helper()
	rows, err := e.q.ListHostRefreshTokens(context.Background(), hostID)
	if err != nil {
		t.Fatal(err)
	}
	return len(rows)
}

func TestRegistrationTokenIsSingleUse(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	if h.Host.Status != "pending" || !h.Host.Shared || !strings.HasPrefix(h.Token, RegistrationTokenPrefix) {
		t.Fatalf("created host = %+v", h)
	}
	creds, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	if err != nil {
		t.Fatalf("register: %v", err)
	}
	if creds.HostID != h.Host.ID || creds.Token == "" || !strings.HasPrefix(creds.RefreshToken, RefreshTokenPrefix) {
		t.Fatalf("credentials = %+v", creds)
	}
	got, err := e.q.GetHost(ctx, h.Host.ID)
	if err != nil || got.Status != "online" || got.Address != "127.0.0.1:9999" || got.CpuCount != 2 || got.LastHeartbeatAt == nil {
		t.Fatalf("host after register = %+v, %v", got, err)
	}
	// Concurrent or later reuse: 401 and nothing created.
	_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:1", Specs: specs})
	wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
	if n := e.refreshCount(t, h.Host.ID); n != 1 {
		t.Fatalf("refresh tokens after reuse = %d, want 1", n)
	}
	if got, _ := e.q.GetHost(ctx, h.Host.ID); got.Address != "127.0.0.1:9999" {
		t.Fatalf("reused token changed the address to %q", got.Address)
	}
}

func TestRegistrationTokenExpires(t *testing.T) {
	e := newEnv(t, Config{RegistrationTTL: 300 * time.Millisecond})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
	got, _ := e.q.GetHost(ctx, h.Host.ID)
	if got.Status != "pending" || got.Address != "" || e.refreshCount(t, h.Host.ID) != 0 {
		t.Fatalf("expired token changed the host: %+v", got)
	}
}

func TestRegenerateTokenRevokesThePreviousOne(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	h2, err := e.svc.RegenerateToken(ctx, admin, h.Host.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
	if _, err := e.svc.Register(ctx, RegisterInput{Token: h2.Token, Address: "127.0.0.1:9999", Specs: specs}); err != nil {
		t.Fatalf("register with the new token: %v", err)
	}
}

func TestRegisterBadInputKeepsTheToken(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		in   RegisterInput
		kind service.Kind
	}{
		{"no port", RegisterInput{Token: h.Token, Address: "127.0.0.1"}, service.KindInvalid},
		{"port zero", RegisterInput{Token: h.Token, Address: "127.0.0.1:0"}, service.KindInvalid},
		{"url", RegisterInput{Token: h.Token, Address: "http://x/:80"}, service.KindInvalid},
		{"negative specs", RegisterInput{Token: h.Token, Address: "a:1", Specs: Specs{CPUCount: -1}}, service.KindInvalid},
		{"garbage token", RegisterInput{Token: "nope", Address: "a:1"}, service.KindUnauthorized},
		{"unknown token", RegisterInput{Token: RegistrationTokenPrefix + strings.Repeat("A", 43), Address: "a:1"}, service.KindUnauthorized},
		{"empty token", RegisterInput{Address: "a:1"}, service.KindUnauthorized},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.svc.Register(ctx, c.in)
			wantKind(t, err, c.kind, "")
		})
	}
	if _, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs}); err != nil {
		t.Fatalf("token was burnt by bad input: %v", err)
	}
}

func TestRefreshRotationAndReuseDetection(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	c1, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: c1.RefreshToken})
	if err != nil {
		t.Fatalf("first refresh: %v", err)
	}
	if c2.RefreshToken == c1.RefreshToken || c2.HostID != h.Host.ID {
		t.Fatalf("refresh did not rotate: %+v", c2)
	}
	if id, err := e.svc.AuthenticateHost(c2.Token); err != nil || id != h.Host.ID {
		t.Fatalf("new host jwt: id %q err %v", id, err)
	}
	c3, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: c2.RefreshToken})
	if err != nil {
		t.Fatalf("second refresh: %v", err)
	}
	// The first token was rotated away; presenting it again is reuse.
	_, err = e.svc.Refresh(ctx, RefreshInput{RefreshToken: c1.RefreshToken})
	wantKind(t, err, service.KindUnauthorized, "refresh_token_reused")
	// The whole family is revoked, including the newest token.
	_, err = e.svc.Refresh(ctx, RefreshInput{RefreshToken: c3.RefreshToken})
	wantKind(t, err, service.KindUnauthorized, "refresh_token_reused")
	rows, _ := e.q.ListHostRefreshTokens(ctx, h.Host.ID)
	for _, r := range rows {
		if r.RevokedAt == nil {
			t.Fatalf("token %s of the family is still valid", r.ID)
		}
	}
	// Rotation links each token to its successor.
	if rows[0].ReplacedBy != rows[1].ID || rows[1].ReplacedBy != rows[2].ID {
		t.Fatalf("replaced_by chain = %q, %q; ids %q %q", rows[0].ReplacedBy, rows[1].ReplacedBy, rows[1].ID, rows[2].ID)
	}
}

func TestRefreshRejections(t *testing.T) {
	e := newEnv(t, Config{RefreshTTL: 300 * time.Millisecond})
	ctx := context.Background()
	h, _ := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	c1, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", "garbage", RefreshTokenPrefix + strings.Repeat("B", 43), c1.Token} {
		_, err := e.svc.Refresh(ctx, RefreshInput{RefreshToken: tok})
		wantKind(t, err, service.KindUnauthorized, "invalid_refresh_token")
	}
	time.Sleep(600 * time.Millisecond)
	_, err = e.svc.Refresh(ctx, RefreshInput{RefreshToken: c1.RefreshToken})
	wantKind(t, err, service.KindUnauthorized, "invalid_refresh_token")
}

func TestReRegistrationRevokesOldCredentials(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, _ := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	c1, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := e.svc.RegenerateToken(ctx, admin, h.Host.ID)
	if _, err := e.svc.Register(ctx, RegisterInput{Token: h2.Token, Address: "127.0.0.1:9998", Specs: specs}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Refresh(ctx, RefreshInput{RefreshToken: c1.RefreshToken})
	wantKind(t, err, service.KindUnauthorized, "")
}

func TestHostAndUserTokensDoNotCross(t *testing.T) {
	e := newEnv(t, Config{})
	users, err := auth.NewTokens(userSecret, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	userTok, _, err := users.Issue("usr-aaaaaaaaaaaaaaaaaaaa", "team-aaaaaaaaaaaaaaaaaaaa", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.AuthenticateHost(userTok); err == nil {
		t.Fatal("a user JWT authenticated as a host")
	}
	hostTok, _, err := e.svc.Tokens().Issue("host-aaaaaaaaaaaaaaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := users.Parse(hostTok); err == nil {
		t.Fatal("a host JWT authenticated as a user")
	}
	// Even signed with the user key, a token without the host audience fails.
	same, _ := NewHostTokens([]byte(userSecret), time.Hour, nil)
	if _, err := same.Parse(userTok); !errors.Is(err, ErrInvalidHostToken) {
		t.Fatalf("user token without host audience: %v", err)
	}
	// Expired host tokens fail.
	past, _ := NewHostTokens(DeriveHostKey(userSecret), time.Minute, func() time.Time { return time.Now().Add(-time.Hour) })
	old, _, _ := past.Issue("host-aaaaaaaaaaaaaaaaaaaa")
	if _, err := e.svc.AuthenticateHost(old); err == nil {
		t.Fatal("an expired host JWT verified")
	}
}

func TestHeartbeat(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, _ := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	// Not registered yet.
	_, err := e.svc.Heartbeat(ctx, h.Host.ID, h.Host.ID, nil)
	wantKind(t, err, service.KindConflict, "host_not_registered")
	c, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.q.SetHostStatus(ctx, db.SetHostStatusParams{ID: c.HostID, Status: "unreachable"}); err != nil {
		t.Fatal(err)
	}
	got, err := e.svc.Heartbeat(ctx, c.HostID, c.HostID, nil)
	if err != nil || got.Status != "online" {
		t.Fatalf("heartbeat = %+v, %v", got, err)
	}
	_, err = e.svc.Heartbeat(ctx, "host-bbbbbbbbbbbbbbbbbbbb", c.HostID, nil)
	wantKind(t, err, service.KindForbidden, "")
	if _, err := e.svc.DeleteHost(ctx, admin, c.HostID, false); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Heartbeat(ctx, c.HostID, c.HostID, nil)
	wantKind(t, err, service.KindNotFound, "host_not_found")
	// Deleting the host removed its refresh tokens with it.
	_, err = e.svc.Refresh(ctx, RefreshInput{RefreshToken: c.RefreshToken})
	wantKind(t, err, service.KindUnauthorized, "")
}

func TestCreateHostRules(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	byoc, plain := e.team(t, true), e.team(t, false)
	cases := []struct {
		name string
		a    auth.AuthContext
		in   CreateHostInput
		kind service.Kind // -1: success
		code service.Code
	}{
		{"admin shared", auth.AuthContext{Method: auth.MethodJWT, TeamID: plain, Role: "member", IsAdmin: true}, CreateHostInput{Name: "x", Shared: true}, -1, ""},
		{"owner shared", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "owner"}, CreateHostInput{Name: "x", Shared: true}, service.KindForbidden, "admin_required"},
		{"owner byoc", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "owner"}, CreateHostInput{Name: "x"}, -1, ""},
		{"admin role byoc", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "admin"}, CreateHostInput{Name: "x"}, -1, ""},
		{"member byoc", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "member"}, CreateHostInput{Name: "x"}, service.KindForbidden, "forbidden"},
		{"owner not byoc", auth.AuthContext{Method: auth.MethodJWT, TeamID: plain, Role: "owner"}, CreateHostInput{Name: "x"}, service.KindForbidden, "byoc_not_enabled"},
		{"api key", auth.AuthContext{Method: auth.MethodAPIKey, TeamID: byoc, Role: "member"}, CreateHostInput{Name: "x"}, service.KindForbidden, "jwt_required"},
		{"no name", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "owner"}, CreateHostInput{Name: "  "}, service.KindInvalid, "invalid_request"},
		{"long name", auth.AuthContext{Method: auth.MethodJWT, TeamID: byoc, Role: "owner"}, CreateHostInput{Name: strings.Repeat("n", 101)}, service.KindInvalid, "invalid_request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := e.svc.CreateHost(ctx, c.a, c.in)
			if c.kind == -1 {
				if err != nil {
					t.Fatalf("create: %v", err)
				}
				if c.in.Shared != (out.Host.TeamID == nil) {
					t.Fatalf("team = %v, shared %v", out.Host.TeamID, c.in.Shared)
				}
				return
			}
			wantKind(t, err, c.kind, c.code)
		})
	}
}

// Concurrent registrations with one token: exactly one wins.
func TestRegistrationTokenConcurrentUse(t *testing.T) {
	e := newEnv(t, Config{})
	ctx := context.Background()
	h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: fmt.Sprintf("127.0.0.1:%d", 9000+i), Specs: specs})
			errs <- err
		}()
	}
	ok := 0
	for range n {
		if err := <-errs; err == nil {
			ok++
		} else {
			wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
		}
	}
	if ok != 1 || e.refreshCount(t, h.Host.ID) != 1 {
		t.Fatalf("%d registrations succeeded, %d refresh tokens; want 1 and 1", ok, e.refreshCount(t, h.Host.ID))
	}
}

func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"127.0.0.1:9090", "host:1", "[::1]:80", ":80", "a", "a:0", "a:99999", "http://x:1", "a b:1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if err := CheckAddress(addr); err == nil {
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host == "" || port == "" {
				t.Fatalf("accepted %q", addr)
			}
		}
	})
}

func FuzzHostTokenParse(f *testing.F) {
	tokens, _ := NewHostTokens(DeriveHostKey(userSecret), time.Hour, nil)
	good, _, _ := tokens.Issue("host-aaaaaaaaaaaaaaaaaaaa")
	f.Add(good)
	f.Add("")
	f.Add("a.b.c")
	f.Add(good[:len(good)-2])
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := tokens.Parse(tok)
		if err == nil && (tok != good || id != "host-aaaaaaaaaaaaaaaaaaaa") {
			t.Fatalf("forged token %q accepted as %q", tok, id)
		}
	})
}

// A registration whose transaction fails leaves the token usable: the
// agent's retry with the same token succeeds, once.
func TestRegisterTransactionFailureKeepsTheToken(t *testing.T) {
	for _, tc := range []struct {
		name       string
		regenerate bool // a new token is issued between the failure and the retry
	}{
		{"retry with the same token", false},
		{"regenerated meanwhile", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			ctx := context.Background()
			h, err := e.svc.CreateHost(ctx, admin, CreateHostInput{Name: "h1", Shared: true})
			if err != nil {
				t.Fatal(err)
			}
			heal := testenv.FailUpdates(t, e.pool, "hosts")
			_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
			wantKind(t, err, service.KindInternal, "")
			if got, _ := e.q.GetHost(ctx, h.Host.ID); got.Status != "pending" || e.refreshCount(t, h.Host.ID) != 0 {
				t.Fatalf("failed registration left %+v", got)
			}
			heal()
			if tc.regenerate {
				h2, err := e.svc.RegenerateToken(ctx, admin, h.Host.ID)
				if err != nil {
					t.Fatal(err)
				}
				_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
				wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
				h = h2
			}
			ttl, err := e.rdb.PTTL(ctx, regKey(hashToken(h.Token))).Result()
			if err != nil || ttl <= 0 || ttl > time.Hour {
				t.Fatalf("token ttl after restore = %v, %v", ttl, err)
			}
			if _, err := e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs}); err != nil {
				t.Fatalf("retry with the same token: %v", err)
			}
			_, err = e.svc.Register(ctx, RegisterInput{Token: h.Token, Address: "127.0.0.1:9999", Specs: specs})
			wantKind(t, err, service.KindUnauthorized, "invalid_registration_token")
		})
	}
}

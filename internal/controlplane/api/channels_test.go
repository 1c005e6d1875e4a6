package api

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels"
)

func newChannels(t testing.TB, pool *pgxpool.Pool, o channelOpts, logger *slog.Logger) *channels.Service {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	kr, err := channels.NewKeyring(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := &channels.Network{AllowPrivate: o.allowPrivate}
	svc, err := channels.New(channels.Deps{Pool: pool, Keyring: kr, Network: n, Sender: channels.NewSender(n, ""),
		TestLimiter: o.testLimiter, SendTimeout: 2 * time.Second, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func withChannels(o channelOpts) func(*envOpts) { return func(e *envOpts) { e.channels = &o } }

type channelResp struct {
	ID             string   `json:"id"`
	Name           string   `json:"name"`
	Provider       string   `json:"provider"`
	Events         []string `json:"events"`
	Enabled        bool     `json:"enabled"`
	DisabledReason *string  `json:"disabled_reason"`
	ConfigSet      []string `json:"config_set"`
	Secret         string   `json:"secret"`
}

// receiver is a webhook endpoint on loopback that records what it got.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []string
	sigs   []string
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.bodies = append(r.bodies, string(b))
		r.sigs = append(r.sigs, req.Header.Get("X-WRENN-SIGNATURE"))
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func TestChannelsDisabledWithoutKey(t *testing.T) {
	e := newEnv(t)
	owner := e.signup("owner@example.com")
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/channels"},
		{"POST", "/v1/channels/test"},
		{"GET", "/v1/channels/ch-x/deliveries"},
	} {
		var body any
		if tc.method == "POST" {
			body = map[string]any{"provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}}
		}
		e.wantErr(tc.method, tc.path, body, owner.cred(), 503, "channels_disabled", "")
	}
	// Authentication comes first: no hint to strangers.
	e.wantErr("GET", "/v1/channels", nil, cred{}, 401, "unauthenticated", "")
}

func TestChannelsCRUD(t *testing.T) {
	e := newEnv(t, withChannels(channelOpts{allowPrivate: true}))
	owner := e.signup("owner@example.com")
	member := e.signup("member@example.com")
	other := e.signup("other@example.com")
	team := owner.Team.ID
	e.join(owner, team, member, "member")
	memberS := e.switchTo(member, team)
	rcv := newReceiver(t)

	var ch channelResp
	raw := e.want("POST", "/v1/channels", map[string]any{"name": "ops", "provider": "webhook",
		"config": map[string]string{"url": rcv.srv.URL + "/hook"}, "events": []string{"sandbox.*"}}, owner.cred(), 201, &ch)
	if !strings.HasPrefix(ch.Secret, "whsec_") || strings.Join(ch.ConfigSet, ",") != "secret,url" || !ch.Enabled {
		t.Fatalf("created %s", raw)
	}
	if strings.Contains(string(raw), rcv.srv.URL) {
		t.Fatalf("the create answer shows the URL: %s", raw)
	}
	// Nothing after the create answer shows a secret or the URL.
	for _, path := range []string{"/v1/channels", "/v1/channels/" + ch.ID} {
		b := e.want("GET", path, nil, memberS.cred(), 200, nil)
		if strings.Contains(string(b), ch.Secret) || strings.Contains(string(b), rcv.srv.URL) || strings.Contains(string(b), `"secret":`) {
			t.Fatalf("GET %s shows a secret: %s", path, b)
		}
	}
	// A user-provided secret is never echoed.
	var ch2 channelResp
	b := e.want("POST", "/v1/channels", map[string]any{"name": "chat", "provider": "discord",
		"config": map[string]string{"webhook_url": "https://discord.com/api/webhooks/1/tok-very-secret"}, "events": []string{"*"}}, owner.cred(), 201, &ch2)
	if strings.Contains(string(b), "tok-very-secret") || ch2.Secret != "" {
		t.Fatalf("discord create shows its secret: %s", b)
	}

	for _, tc := range []struct {
		name         string
		method, path string
		body         any
		c            cred
		status       int
		code, field  string
	}{
		{"name taken", "POST", "/v1/channels", map[string]any{"name": "ops", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{"*"}}, owner.cred(), 409, "name_taken", ""},
		{"unknown provider", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "pager", "config": map[string]string{}, "events": []string{"*"}}, owner.cred(), 400, "invalid_request", "provider"},
		{"missing field", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "telegram", "config": map[string]string{"bot_token": "123456:ABCdefGHIjklMNOpqrSTUvwx"}, "events": []string{"*"}}, owner.cred(), 400, "invalid_request", "config.chat_id"},
		{"unknown event", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{"sandbox.*", "sandbox.exploded"}}, owner.cred(), 400, "invalid_request", "events[1]"},
		{"unknown wildcard", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{"rocket.*"}}, owner.cred(), 400, "invalid_request", "events[0]"},
		{"no events", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{}}, owner.cred(), 400, "invalid_request", "events"},
		{"empty name", "POST", "/v1/channels", map[string]any{"name": " ", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{"*"}}, owner.cred(), 400, "invalid_request", "name"},
		{"unknown body field", "POST", "/v1/channels", map[string]any{"name": "x", "provider": "webhook", "config": map[string]string{}, "events": []string{"*"}, "color": "red"}, owner.cred(), 400, "invalid_request", "color"},
		{"member creates", "POST", "/v1/channels", map[string]any{"name": "m", "provider": "webhook", "config": map[string]string{"url": "https://hooks.example.com/"}, "events": []string{"*"}}, memberS.cred(), 403, "forbidden", ""},
		{"member patches", "PATCH", "/v1/channels/" + ch.ID, map[string]any{"enabled": false}, memberS.cred(), 403, "forbidden", ""},
		{"member deletes", "DELETE", "/v1/channels/" + ch.ID, nil, memberS.cred(), 403, "forbidden", ""},
		{"member tests", "POST", "/v1/channels/" + ch.ID + "/test", nil, memberS.cred(), 403, "forbidden", ""},
		{"other team reads", "GET", "/v1/channels/" + ch.ID, nil, other.cred(), 404, "channel_not_found", ""},
		{"other team patches", "PATCH", "/v1/channels/" + ch.ID, map[string]any{"enabled": false}, other.cred(), 404, "channel_not_found", ""},
		{"other team deletes", "DELETE", "/v1/channels/" + ch.ID, nil, other.cred(), 404, "channel_not_found", ""},
		{"other team rotates", "PUT", "/v1/channels/" + ch.ID + "/config", map[string]any{"config": map[string]string{"url": "https://hooks.example.com/"}}, other.cred(), 404, "channel_not_found", ""},
		{"other team deliveries", "GET", "/v1/channels/" + ch.ID + "/deliveries", nil, other.cred(), 404, "channel_not_found", ""},
		{"patch rename taken", "PATCH", "/v1/channels/" + ch2.ID, map[string]any{"name": "ops"}, owner.cred(), 409, "name_taken", ""},
		{"patch bad events", "PATCH", "/v1/channels/" + ch.ID, map[string]any{"events": []string{"nope"}}, owner.cred(), 400, "invalid_request", "events[0]"},
		{"rotate wrong field", "PUT", "/v1/channels/" + ch.ID + "/config", map[string]any{"config": map[string]string{"webhook_url": "https://x.example.com/"}}, owner.cred(), 400, "invalid_request", "config.webhook_url"},
		{"deliveries bad limit", "GET", "/v1/channels/" + ch.ID + "/deliveries?limit=0", nil, owner.cred(), 400, "invalid_request", "limit"},
		{"deliveries bad cursor", "GET", "/v1/channels/" + ch.ID + "/deliveries?cursor=%21", nil, owner.cred(), 400, "invalid_request", "cursor"},
		{"api key", "GET", "/v1/channels", nil, cred{key: "wrn_nope"}, 403, "session_required", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.wantErr(tc.method, tc.path, tc.body, tc.c, tc.status, tc.code, tc.field)
		})
	}

	var upd channelResp
	e.want("PATCH", "/v1/channels/"+ch.ID, map[string]any{"name": "ops2", "events": []string{"sandbox.paused", "host.*"}, "enabled": false}, owner.cred(), 200, &upd)
	if upd.Name != "ops2" || upd.Enabled || strings.Join(upd.Events, ",") != "sandbox.paused,host.*" {
		t.Fatalf("patched %+v", upd)
	}
	var rot channelResp
	e.want("PUT", "/v1/channels/"+ch.ID+"/config", map[string]any{"config": map[string]string{"url": rcv.srv.URL + "/v2"}}, owner.cred(), 200, &rot)
	if rot.Secret == "" || rot.Secret == ch.Secret {
		t.Fatalf("rotation did not generate a new secret: %+v", rot)
	}
	var list struct {
		Channels []channelResp `json:"channels"`
	}
	e.want("GET", "/v1/channels", nil, memberS.cred(), 200, &list)
	if len(list.Channels) != 2 {
		t.Fatalf("list %+v", list)
	}
	var page struct {
		Deliveries []json.RawMessage `json:"deliveries"`
	}
	e.want("GET", "/v1/channels/"+ch.ID+"/deliveries", nil, memberS.cred(), 200, &page)
	e.want("DELETE", "/v1/channels/"+ch2.ID, nil, owner.cred(), 204, nil)
	e.wantErr("GET", "/v1/channels/"+ch2.ID, nil, owner.cred(), 404, "channel_not_found", "")

	// Each change has its audit row by the owner, admin-scoped, with no
	// secret or URL in it; refused changes have none.
	for _, tt := range []struct {
		id   string
		want []string // oldest first
	}{
		{ch.ID, []string{"channel.created", "channel.updated", "channel.config_rotated"}},
		{ch2.ID, []string{"channel.created", "channel.deleted"}},
	} {
		rows := e.auditLogs(owner.cred(), "resource_id="+tt.id, 50)
		if got := types(rows); !slices.Equal(got, tt.want) {
			t.Fatalf("events of %s = %v, want %v", tt.id, got, tt.want)
		}
		for _, r := range rows {
			md, _ := json.Marshal(r.Metadata)
			if r.Actor.Type != "user" || r.Actor.ID != owner.User.ID || r.Scope != "admin" || r.Status != "success" || r.TeamID != team ||
				strings.Contains(string(md), rcv.srv.URL) || strings.Contains(string(md), "whsec_") || strings.Contains(string(md), "tok-very-secret") {
				t.Errorf("%s row %+v", r.typ(), r)
			}
		}
		if got := e.auditLogs(memberS.cred(), "resource_id="+tt.id, 50); len(got) != 0 {
			t.Errorf("a member reads the admin rows of %s: %v", tt.id, types(got))
		}
	}
	if rows := e.auditLogs(owner.cred(), "resource_id="+ch.ID+"&action=config_rotated", 50); len(rows) != 1 || fmt.Sprint(rows[0].Metadata["config_set"]) != "[secret url]" {
		t.Fatalf("rotation row %+v", rows)
	}
}

func TestChannelTestEndpoints(t *testing.T) {
	e := newEnv(t, withChannels(channelOpts{allowPrivate: true, testLimiter: NewMemoryRateLimiter(3, time.Minute)}))
	owner := e.signup("owner@example.com")
	rcv := newReceiver(t)
	var res struct {
		OK         bool   `json:"ok"`
		StatusCode int    `json:"status_code"`
		Error      string `json:"error"`
	}
	e.want("POST", "/v1/channels/test", map[string]any{"provider": "webhook", "config": map[string]string{"url": rcv.srv.URL, "secret": "0123456789abcdef"}}, owner.cred(), 200, &res)
	if !res.OK || res.StatusCode != 204 {
		t.Fatalf("test send: %+v", res)
	}
	rcv.mu.Lock()
	got := rcv.bodies[0]
	sig := rcv.sigs[0]
	rcv.mu.Unlock()
	if !strings.Contains(got, `"type":"channel.test"`) || !strings.Contains(sig, "v1=") {
		t.Fatalf("receiver got %s with signature %q", got, sig)
	}
	// A dead endpoint is a 200 with ok false, not an error of the API.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	e.want("POST", "/v1/channels/test", map[string]any{"provider": "webhook", "config": map[string]string{"url": deadURL}}, owner.cred(), 200, &res)
	if res.OK || res.Error == "" || strings.Contains(res.Error, deadURL) {
		t.Fatalf("dead endpoint: %+v", res)
	}
	var ch channelResp
	e.want("POST", "/v1/channels", map[string]any{"name": "ops", "provider": "webhook", "config": map[string]string{"url": rcv.srv.URL}, "events": []string{"*"}}, owner.cred(), 201, &ch)
	e.want("POST", "/v1/channels/"+ch.ID+"/test", nil, owner.cred(), 200, &res)
	if !res.OK {
		t.Fatalf("saved channel test: %+v", res)
	}
	// The fourth test of the team in a minute is refused.
	e.wantErr("POST", "/v1/channels/"+ch.ID+"/test", nil, owner.cred(), 429, "rate_limited", "")
	e.wantErr("POST", "/v1/channels/test", map[string]any{"provider": "webhook", "config": map[string]string{"url": rcv.srv.URL}}, owner.cred(), 429, "rate_limited", "")
	// Bad input is judged before the limit.
	e.wantErr("POST", "/v1/channels/test", map[string]any{"provider": "nope", "config": map[string]string{}}, owner.cred(), 400, "invalid_request", "provider")
}

func TestChannelsRefusePrivateURLs(t *testing.T) {
	e := newEnv(t, withChannels(channelOpts{}))
	owner := e.signup("owner@example.com")
	for _, u := range []string{"http://127.0.0.1:8080/hook", "http://localhost/hook", "http://169.254.169.254/latest", "http://10.1.2.3/", "http://[::1]/"} {
		e.wantErr("POST", "/v1/channels", map[string]any{"name": "x", "provider": "webhook", "config": map[string]string{"url": u}, "events": []string{"*"}}, owner.cred(), 400, "url_not_allowed", "config.url")
		e.wantErr("POST", "/v1/channels/test", map[string]any{"provider": "webhook", "config": map[string]string{"url": u}}, owner.cred(), 400, "url_not_allowed", "config.url")
	}
	e.wantErr("POST", "/v1/channels", map[string]any{"name": "x", "provider": "matrix", "config": map[string]string{"homeserver_url": "http://192.168.1.5:8008", "access_token": "t", "room_id": "!r:x"}, "events": []string{"*"}}, owner.cred(), 400, "url_not_allowed", "config.homeserver_url")
}

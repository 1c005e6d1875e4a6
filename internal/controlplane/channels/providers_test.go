package channels

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/controlplane/channels/webhookverify"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
)

// request is what a fake provider received.
type request struct {
	Method, Host, Path string
	Header             http.Header
	Body               []byte
}

// fakeProviders answers like each provider's real endpoint does, checking
// the request's shape; it records what it accepted.
type fakeProviders struct {
	mu  sync.Mutex
	got []request
	// status, when set, is answered instead (by host).
	status map[string]int
}

func (f *fakeProviders) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.got = append(f.got, request{Method: r.Method, Host: r.Host, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
	st := f.status[r.Host]
	f.mu.Unlock()
	if st != 0 {
		w.WriteHeader(st)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	switch {
	case r.Host == "discord.com" && r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/api/webhooks/"):
		if s, _ := m["content"].(string); s == "" {
			http.Error(w, `{"message":"Cannot send an empty message","code":50006}`, 400)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Host == "hooks.slack.com" && r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/services/"):
		if s, _ := m["text"].(string); s == "" {
			http.Error(w, "no_text", 400)
			return
		}
		_, _ = io.WriteString(w, "ok")
	case strings.HasSuffix(r.Host, ".logic.azure.com") && r.Method == http.MethodPost:
		atts, _ := m["attachments"].([]any)
		if m["type"] != "message" || len(atts) != 1 || atts[0].(map[string]any)["contentType"] != "application/vnd.microsoft.card.adaptive" {
			http.Error(w, "not an adaptive card message", 400)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	case r.Host == "chat.googleapis.com" && r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/v1/spaces/"):
		if r.URL.Query().Get("key") == "" || r.URL.Query().Get("token") == "" {
			http.Error(w, "missing key", http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"name": "spaces/AAA/messages/1", "text": m["text"]})
	case r.Host == "api.telegram.org" && r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/sendMessage") && strings.HasPrefix(r.URL.Path, "/bot"):
		if m["chat_id"] == nil || m["text"] == "" {
			w.WriteHeader(400)
			_, _ = io.WriteString(w, `{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}`)
			return
		}
		_, _ = io.WriteString(w, `{"ok":true,"result":{"message_id":1}}`)
	case r.Host == "matrix.example.org" && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/_matrix/client/v3/rooms/") && strings.Contains(r.URL.Path, "/send/m.room.message/"):
		if r.Header.Get("Authorization") != "Bearer syt_matrix_token" {
			w.WriteHeader(401)
			_, _ = io.WriteString(w, `{"errcode":"M_UNKNOWN_TOKEN"}`)
			return
		}
		if m["msgtype"] != "m.text" || m["body"] == "" {
			w.WriteHeader(400)
			return
		}
		_, _ = io.WriteString(w, `{"event_id":"$abc"}`)
	case r.Host == "hooks.example.com" && r.Method == http.MethodPost:
		if !webhookverify.Valid(r.Header.Get("X-WRENN-SIGNATURE"), body, "whsec_0123456789abcdef", time.Now()) {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "no such endpoint", 404)
	}
}

func (f *fakeProviders) last() request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.got[len(f.got)-1]
}

var sampleEvent = events.Event{ID: "evt-sample1", Type: "sandbox.paused", OccurredAt: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC),
	TeamID: "team-x", Actor: events.Actor{Type: "user", ID: "usr-1", Name: "ada@example.com"},
	Resource: events.Resource{Type: "sandbox", ID: "sb-abc"}, Status: "success"}

func TestProvidersWireFormat(t *testing.T) {
	fp := &fakeProviders{}
	_, n := newFakeNet(t, fp)
	s := NewSender(n, "https://wrenn.example.com")
	payload, _ := json.Marshal(sampleEvent)
	for _, tc := range []struct {
		provider string
		cfg      Config
		method   string
		path     string
		text     func(m map[string]any) string
	}{
		{Discord, Config{"webhook_url": "https://discord.com/api/webhooks/123/tok"}, "POST", "/api/webhooks/123/tok",
			func(m map[string]any) string { return m["content"].(string) }},
		{Slack, Config{"webhook_url": "https://hooks.slack.com/services/T0/B0/xyz"}, "POST", "/services/T0/B0/xyz",
			func(m map[string]any) string { return m["text"].(string) }},
		{Teams, Config{"webhook_url": "https://prod-42.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=s"}, "POST", "/workflows/abc/triggers/manual/paths/invoke",
			func(m map[string]any) string {
				card := m["attachments"].([]any)[0].(map[string]any)["content"].(map[string]any)
				return card["body"].([]any)[0].(map[string]any)["text"].(string)
			}},
		{GoogleChat, Config{"webhook_url": "https://chat.googleapis.com/v1/spaces/AAA/messages?key=k&token=t"}, "POST", "/v1/spaces/AAA/messages",
			func(m map[string]any) string { return m["text"].(string) }},
		{Telegram, Config{"bot_token": "123456:ABCdefGHIjklMNOpqrSTUvwx", "chat_id": "-1001234"}, "POST", "/bot123456:ABCdefGHIjklMNOpqrSTUvwx/sendMessage",
			func(m map[string]any) string { return m["text"].(string) }},
		{Matrix, Config{"homeserver_url": "https://matrix.example.org", "access_token": "syt_matrix_token", "room_id": "!room:example.org"}, "PUT",
			"/_matrix/client/v3/rooms/!room:example.org/send/m.room.message/ch-1.evt-sample1",
			func(m map[string]any) string { return m["body"].(string) }},
		{Webhook, Config{"url": "https://hooks.example.com/wrenn", "secret": "whsec_0123456789abcdef"}, "POST", "/wrenn", nil},
	} {
		t.Run(tc.provider, func(t *testing.T) {
			if err := validateConfig(n, tc.provider, tc.cfg); err != nil {
				t.Fatalf("validate: %v", err)
			}
			r := s.Send(context.Background(), tc.provider, tc.cfg, Message{Event: sampleEvent, Payload: payload, Attempt: 2, ChannelID: "ch-1"})
			if !r.OK() {
				t.Fatalf("send: status %d: %v", r.StatusCode, r.Err)
			}
			got := fp.last()
			if got.Method != tc.method || got.Path != tc.path {
				t.Fatalf("request %s %s, want %s %s", got.Method, got.Path, tc.method, tc.path)
			}
			if tc.text == nil {
				if string(got.Body) != string(payload) {
					t.Fatalf("webhook body %s, want the event JSON", got.Body)
				}
				for h, want := range map[string]string{"X-Wrenn-Event-Id": "evt-sample1", "X-Wrenn-Event-Type": "sandbox.paused", "X-Wrenn-Delivery-Attempt": "2"} {
					if got.Header.Get(h) != want {
						t.Fatalf("%s = %q, want %q", h, got.Header.Get(h), want)
					}
				}
				return
			}
			var m map[string]any
			_ = json.Unmarshal(got.Body, &m)
			text := tc.text(m)
			for _, want := range []string{"sandbox.paused", "sb-abc", "ada@example.com", "2026-12-01T12:00:00Z", "https://wrenn.example.com"} {
				if !strings.Contains(text, want) {
					t.Fatalf("message %q lacks %q", text, want)
				}
			}
		})
	}
}

func TestWebhookSignatureRotationAndStatus(t *testing.T) {
	fp := &fakeProviders{status: map[string]int{}}
	_, n := newFakeNet(t, fp)
	s := NewSender(n, "")
	body := []byte(`{"id":"evt-1"}`)
	cfg := Config{"url": "https://hooks.example.com/w", "secret": "whsec_0123456789abcdef"}
	// After a rotation both secrets sign: a receiver still on the old one verifies.
	old := "whsec_old-old-old-old-1"
	r := s.Send(context.Background(), Webhook, cfg, Message{Event: sampleEvent, Payload: body, Attempt: 1, Previous: old})
	if !r.OK() {
		t.Fatalf("send: %v", r.Err)
	}
	h := fp.last().Header.Get("X-WRENN-SIGNATURE")
	if strings.Count(h, "v1=") != 2 || !webhookverify.Valid(h, body, old, time.Now()) || !webhookverify.Valid(h, body, cfg["secret"], time.Now()) {
		t.Fatalf("signature %q does not carry both secrets", h)
	}
	if webhookverify.Valid(h, body, "whsec_wrong-wrong-wrong", time.Now()) || webhookverify.Valid(h, body, cfg["secret"], time.Now().Add(6*time.Minute)) {
		t.Fatal("a wrong secret or a stale timestamp verified")
	}
	for _, tc := range []struct {
		status  int
		ok      bool
		disable bool
	}{{200, true, false}, {204, true, false}, {302, false, false}, {410, false, true}, {500, false, false}} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			fp.mu.Lock()
			fp.status["hooks.example.com"] = tc.status
			fp.mu.Unlock()
			r := s.Send(context.Background(), Webhook, cfg, Message{Event: sampleEvent, Payload: body, Attempt: 1})
			if r.OK() != tc.ok || (r.Disable != "") != tc.disable || r.StatusCode != tc.status {
				t.Fatalf("status %d: ok=%v disable=%q code=%d", tc.status, r.OK(), r.Disable, r.StatusCode)
			}
		})
	}
}

func TestValidateConfig(t *testing.T) {
	n := &Network{}
	for _, tc := range []struct {
		name, provider string
		cfg            Config
		field, code    string
	}{
		{"unknown provider", "pager", Config{}, "provider", "invalid_request"},
		{"missing field", Discord, Config{}, "config.webhook_url", "invalid_request"},
		{"unknown field", Slack, Config{"webhook_url": "https://hooks.slack.com/services/x", "channel": "#a"}, "config.channel", "invalid_request"},
		{"discord other host", Discord, Config{"webhook_url": "https://evil.example.com/api/webhooks/1/x"}, "config.webhook_url", "invalid_request"},
		{"slack http", Slack, Config{"webhook_url": "http://hooks.slack.com/services/x"}, "config.webhook_url", "invalid_request"},
		{"teams O365 connector", Teams, Config{"webhook_url": "https://outlook.office.com/webhook/abc"}, "config.webhook_url", "invalid_request"},
		{"teams powerplatform", Teams, Config{"webhook_url": "https://default1.environment.api.powerplatform.com/powerautomate/automations/direct/workflows/x"}, "", ""},
		{"googlechat path", GoogleChat, Config{"webhook_url": "https://chat.googleapis.com/v2/x"}, "config.webhook_url", "invalid_request"},
		{"telegram token", Telegram, Config{"bot_token": "nope", "chat_id": "1"}, "config.bot_token", "invalid_request"},
		{"telegram chat", Telegram, Config{"bot_token": "123456:ABCdefGHIjklMNOpqrSTUvwx", "chat_id": "x y"}, "config.chat_id", "invalid_request"},
		{"matrix alias", Matrix, Config{"homeserver_url": "https://matrix.example.org", "access_token": "t", "room_id": "#room:example.org"}, "config.room_id", "invalid_request"},
		{"matrix private homeserver", Matrix, Config{"homeserver_url": "http://10.0.0.2:8008", "access_token": "t", "room_id": "!r:x"}, "config.homeserver_url", "url_not_allowed"},
		{"webhook private", Webhook, Config{"url": "http://127.0.0.1:9/"}, "config.url", "url_not_allowed"},
		{"webhook short secret", Webhook, Config{"url": "https://hooks.example.com/", "secret": "short"}, "config.secret", "invalid_request"},
		{"webhook no secret", Webhook, Config{"url": "https://hooks.example.com/"}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateConfig(n, tc.provider, tc.cfg)
			if codeOf(err) != tc.code {
				t.Fatalf("code %q (%v), want %q", codeOf(err), err, tc.code)
			}
			if err != nil {
				if e, _ := serviceErr(err); e.Field != tc.field {
					t.Fatalf("field %q, want %q", e.Field, tc.field)
				}
				for _, v := range tc.cfg {
					if len(v) > 8 && strings.Contains(err.Error(), v) {
						t.Fatalf("error quotes a config value: %v", err)
					}
				}
			}
		})
	}
}

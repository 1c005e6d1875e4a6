package channels

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
)

// The chat providers speak their wire formats directly over Network's one
// HTTP client instead of going through shoutrrr
// (github.com/nicholas-fedor/shoutrrr v0.13.2): its services build their
// own clients (Google Chat posts with http.DefaultClient, Discord keeps a
// client of its own with transport-level retries, Matrix another), so the
// dial-time address check could not be applied to every send, the tests
// could not reach fakes under the production host names, and Discord's
// hidden retries would run beside the durable schedule. Each request here
// is one attempt, bounded by the caller's context (resent once only when
// its pooled connection was closed before any answer: Network.Client).

// Provider names.
const (
	Discord    = "discord"
	Slack      = "slack"
	Teams      = "teams"
	GoogleChat = "googlechat"
	Telegram   = "telegram"
	Matrix     = "matrix"
	Webhook    = "webhook"
)

// Config is a provider's configuration: field name to value. Every value
// is treated as a secret (webhook URLs carry tokens).
type Config map[string]string

// Result is the outcome of one attempt.
type Result struct {
	StatusCode int
	Err        error
	// Disable, when set, disables the channel with this reason (a webhook
	// answering 410 Gone).
	Disable string
}

// OK reports a successful attempt.
func (r Result) OK() bool { return r.Err == nil }

// Message is what one attempt sends.
type Message struct {
	Event   events.Event
	Payload []byte // the event as JSON, the webhook body
	Attempt int
	// Channel keys idempotent sends (Matrix transaction ids).
	ChannelID string
	// Previous is a webhook secret that also signs during its grace period.
	Previous string
}

type provider struct {
	fields   []string // accepted fields; required unless in optional
	optional map[string]bool
	validate func(n *Network, c Config) error
	send     func(ctx context.Context, s *Sender, c Config, m Message) Result
}

// providers is the one table of providers.
var providers = map[string]provider{
	Discord: {fields: []string{"webhook_url"}, validate: hostedWebhook("webhook_url", "/api/webhooks/", "discord.com", "discordapp.com"),
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			return s.postJSON(ctx, http.MethodPost, c["webhook_url"], nil, map[string]string{"content": s.text(m.Event)})
		}},
	Slack: {fields: []string{"webhook_url"}, validate: hostedWebhook("webhook_url", "/services/", "hooks.slack.com"),
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			return s.postJSON(ctx, http.MethodPost, c["webhook_url"], nil, map[string]string{"text": s.text(m.Event)})
		}},
	Teams: {fields: []string{"webhook_url"}, validate: teamsWorkflow,
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			return s.postJSON(ctx, http.MethodPost, c["webhook_url"], nil, adaptiveCard(s.text(m.Event)))
		}},
	GoogleChat: {fields: []string{"webhook_url"}, validate: hostedWebhook("webhook_url", "/v1/spaces/", "chat.googleapis.com"),
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			return s.postJSON(ctx, http.MethodPost, c["webhook_url"], nil, map[string]string{"text": s.text(m.Event)})
		}},
	Telegram: {fields: []string{"bot_token", "chat_id"}, validate: validateTelegram,
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			u := telegramAPI + "/bot" + c["bot_token"] + "/sendMessage"
			return s.postJSON(ctx, http.MethodPost, u, nil, map[string]string{"chat_id": c["chat_id"], "text": s.text(m.Event)})
		}},
	Matrix: {fields: []string{"homeserver_url", "access_token", "room_id"}, validate: validateMatrix,
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result {
			// The transaction id is the same on every attempt, so the
			// homeserver drops a repeat of a send that did arrive.
			txn := url.PathEscape(m.ChannelID + "." + m.Event.ID)
			u := strings.TrimRight(c["homeserver_url"], "/") + "/_matrix/client/v3/rooms/" + url.PathEscape(c["room_id"]) + "/send/m.room.message/" + txn
			hdr := []header{{"Authorization", "Bearer " + c["access_token"]}}
			return s.postJSON(ctx, http.MethodPut, u, hdr, map[string]string{"msgtype": "m.text", "body": s.text(m.Event)})
		}},
	Webhook: {fields: []string{"url", "secret"}, optional: map[string]bool{"secret": true}, validate: validateWebhook,
		send: func(ctx context.Context, s *Sender, c Config, m Message) Result { return s.sendWebhook(ctx, c, m) }},
}

// Providers lists the provider names.
func Providers() []string {
	return []string{Discord, Slack, Teams, GoogleChat, Telegram, Matrix, Webhook}
}

// validateConfig checks a config for a provider: known provider, no
// unknown field, every required field present, the provider's own rules.
func validateConfig(n *Network, providerName string, c Config) error {
	p, ok := providers[providerName]
	if !ok {
		return invalidField("provider", "unknown provider %q; one of %s", providerName, strings.Join(Providers(), ", "))
	}
	for k := range c {
		if !containsStr(p.fields, k) {
			return invalidField("config."+k, "%s takes no field %q (fields: %s)", providerName, k, strings.Join(p.fields, ", "))
		}
	}
	for _, f := range p.fields {
		if strings.TrimSpace(c[f]) == "" && !p.optional[f] {
			return invalidField("config."+f, "%s needs config.%s", providerName, f)
		}
	}
	return p.validate(n, c)
}

func containsStr(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// hostedWebhook accepts an https URL on one of hosts under pathPrefix.
func hostedWebhook(field, pathPrefix string, hosts ...string) func(*Network, Config) error {
	return func(_ *Network, c Config) error {
		u, err := url.Parse(c[field])
		if err != nil || u.Scheme != "https" || !containsStr(hosts, strings.ToLower(u.Host)) || !strings.HasPrefix(u.Path, pathPrefix) {
			return invalidField("config."+field, "config.%s must be an https://%s%s... URL", field, hosts[0], pathPrefix)
		}
		return nil
	}
}

// teamsWorkflow accepts a Power Automate workflow URL (the Office 365
// connectors are retired): hosted on a Logic Apps region host or a Power
// Platform environment host.
func teamsWorkflow(_ *Network, c Config) error {
	u, err := url.Parse(c["webhook_url"])
	host := ""
	if err == nil {
		host = strings.ToLower(u.Hostname())
	}
	if err != nil || u.Scheme != "https" || u.Port() != "" ||
		!(strings.HasSuffix(host, ".logic.azure.com") || strings.HasSuffix(host, ".api.powerplatform.com")) {
		return invalidField("config.webhook_url", "config.webhook_url must be a Power Automate workflow URL (https://….logic.azure.com/… or https://….api.powerplatform.com/…)")
	}
	return nil
}

const telegramAPI = "https://api.telegram.org"

var telegramToken = regexp.MustCompile(`^[0-9]+:[A-Za-z0-9_-]{20,}$`)
var telegramChat = regexp.MustCompile(`^(-?[0-9]+|@[A-Za-z][A-Za-z0-9_]{4,})$`)

func validateTelegram(_ *Network, c Config) error {
	if !telegramToken.MatchString(c["bot_token"]) {
		return invalidField("config.bot_token", "config.bot_token must be a bot token from BotFather (<digits>:<token>)")
	}
	if !telegramChat.MatchString(c["chat_id"]) {
		return invalidField("config.chat_id", "config.chat_id must be a numeric chat id or an @channelname")
	}
	return nil
}

var matrixRoom = regexp.MustCompile(`^![^:\s]+:[^\s]+$`)

func validateMatrix(n *Network, c Config) error {
	if err := n.CheckURL("config.homeserver_url", c["homeserver_url"]); err != nil {
		return err
	}
	if !matrixRoom.MatchString(c["room_id"]) {
		return invalidField("config.room_id", "config.room_id must be a room id such as !abc123:example.org (not an alias)")
	}
	return nil
}

func validateWebhook(n *Network, c Config) error {
	if err := n.CheckURL("config.url", c["url"]); err != nil {
		return err
	}
	if s := c["secret"]; s != "" && len(s) < 16 {
		return invalidField("config.secret", "config.secret must be at least 16 characters (or absent, to have one generated)")
	}
	return nil
}

func adaptiveCard(text string) any {
	return map[string]any{
		"type": "message",
		"attachments": []any{map[string]any{
			"contentType": "application/vnd.microsoft.card.adaptive",
			"content": map[string]any{
				"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
				"type":    "AdaptiveCard",
				"version": "1.4",
				"body":    []any{map[string]any{"type": "TextBlock", "text": text, "wrap": true}},
			},
		}},
	}
}

// Sender performs attempts over Network's client.
type Sender struct {
	client *fasthttp.Client
	// PublicURL, when set, links messages to the dashboard.
	PublicURL string
	now       func() time.Time
	signer    signer
}

// NewSender builds a sender on n.
func NewSender(n *Network, publicURL string) *Sender {
	return &Sender{client: n.Client(), PublicURL: strings.TrimRight(publicURL, "/"), now: time.Now}
}

// Send makes one attempt.
func (s *Sender) Send(ctx context.Context, providerName string, c Config, m Message) Result {
	p, ok := providers[providerName]
	if !ok {
		return Result{Err: fmt.Errorf("unknown provider %q", providerName)}
	}
	return p.send(ctx, s, c, m)
}

// text is the short message chat providers show: what happened, to what,
// by whom, when, and a link.
func (s *Sender) text(e events.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Wrenn: %s", e.Type)
	if e.Resource.ID != "" {
		fmt.Fprintf(&b, " %s %s", e.Resource.Type, e.Resource.ID)
	}
	who := e.Actor.Name
	if who == "" {
		who = e.Actor.ID
	}
	if who != "" {
		fmt.Fprintf(&b, " by %s", who)
	} else if e.Actor.Type != "" {
		fmt.Fprintf(&b, " by %s", e.Actor.Type)
	}
	fmt.Fprintf(&b, " at %s", e.OccurredAt.UTC().Format(time.RFC3339))
	if s.PublicURL != "" {
		fmt.Fprintf(&b, " %s", s.PublicURL)
	}
	return b.String()
}

func (s *Sender) postJSON(ctx context.Context, method, u string, hdr []header, body any) Result {
	raw, err := json.Marshal(body)
	if err != nil {
		return Result{Err: fmt.Errorf("encode message: %w", err)}
	}
	return s.do(ctx, method, u, hdr, raw)
}

// header is one request header besides Content-Type and User-Agent.
type header struct{ name, value string }

// answer is what a request's goroutine hands back.
type answer struct {
	status int
	err    error
}

// do sends one request, bounded by ctx: a request still running when ctx
// is cancelled goes on in the background until its deadline, and its
// answer is dropped. Errors never quote the URL: it holds tokens.
func (s *Sender) do(ctx context.Context, method, u string, hdr []header, body []byte) Result {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(defaultSendTimeout)
	}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI(u)
	req.Header.SetMethod(method)
	req.Header.SetContentType("application/json")
	req.Header.SetUserAgent("Wrenn-Channels/1")
	for _, h := range hdr {
		req.Header.Set(h.name, h.value)
	}
	req.SetBodyRaw(body) // not copied: a payload is never changed once built
	done := make(chan answer, 1)
	go func() {
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		err := s.client.DoDeadline(req, resp, deadline)
		done <- answer{status: resp.StatusCode(), err: err}
	}()
	var a answer
	select {
	case a = <-done:
	case <-ctx.Done():
		return Result{Err: ctx.Err()}
	}
	switch {
	case errors.Is(a.err, fasthttp.ErrBodyTooLarge):
		// The status line and headers were read: they are the answer.
	case errors.Is(a.err, fasthttp.ErrTimeout), errors.Is(a.err, fasthttp.ErrDialTimeout), errors.Is(a.err, fasthttp.ErrTLSHandshakeTimeout):
		return Result{Err: fmt.Errorf("%w (%v)", context.DeadlineExceeded, a.err)}
	case errors.Is(a.err, fasthttp.ErrConnectionClosed), errors.Is(a.err, io.EOF):
		return Result{Err: errClosedUnanswered}
	case a.err != nil:
		return Result{Err: a.err}
	}
	r := Result{StatusCode: a.status}
	if a.status < 200 || a.status > 299 {
		r.Err = fmt.Errorf("answered %d %s", a.status, http.StatusText(a.status))
	}
	return r
}

// errClosedUnanswered is a connection closed with no answer (twice: the
// client retries such a request once).
var errClosedUnanswered = errors.New("the endpoint closed the connection without answering (EOF)")

// defaultSendTimeout bounds a request whose context has no deadline
// (callers give one: DispatcherConfig.SendTimeout, Deps.SendTimeout).
const defaultSendTimeout = 10 * time.Second

// Signature is the X-WRENN-SIGNATURE value for body at t: one v1= per
// secret (the current one first; a rotated-out one during its grace).
func Signature(t time.Time, body []byte, secrets ...string) string {
	return new(signer).sign(t, body, secrets...)
}

// signer makes signatures, reusing each secret's keyed HMAC state: keying
// one costs two SHA-256 blocks and half a dozen allocations, per attempt
// otherwise.
type signer struct {
	mu   sync.Mutex
	macs map[string]*sync.Pool // by secret
}

func (g *signer) sign(t time.Time, body []byte, secrets ...string) string {
	out := make([]byte, 0, 24+len(secrets)*(4+2*sha256.Size))
	out = strconv.AppendInt(append(out, "t="...), t.Unix(), 10)
	ts := out[len("t="):]
	var sum [sha256.Size]byte
	for _, sec := range secrets {
		if sec == "" {
			continue
		}
		pool := g.pool(sec)
		mac := pool.Get().(hash.Hash)
		mac.Reset()
		mac.Write(ts)
		mac.Write([]byte{'.'})
		mac.Write(body)
		out = hex.AppendEncode(append(out, ",v1="...), mac.Sum(sum[:0]))
		pool.Put(mac)
	}
	return string(out)
}

func (g *signer) pool(secret string) *sync.Pool {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.macs[secret]
	if p == nil {
		if g.macs == nil || len(g.macs) > 10000 {
			g.macs = map[string]*sync.Pool{} // rotated-out secrets go
		}
		p = &sync.Pool{New: func() any { return hmac.New(sha256.New, []byte(secret)) }}
		g.macs[secret] = p
	}
	return p
}

func (s *Sender) sendWebhook(ctx context.Context, c Config, m Message) Result {
	hdr := []header{
		{"X-Wrenn-Signature", s.signer.sign(s.now(), m.Payload, c["secret"], m.Previous)},
		{"X-Wrenn-Event-Id", m.Event.ID},
		{"X-Wrenn-Event-Type", m.Event.Type},
		{"X-Wrenn-Delivery-Attempt", strconv.Itoa(m.Attempt)},
	}
	r := s.do(ctx, http.MethodPost, c["url"], hdr, m.Payload)
	if r.StatusCode == http.StatusGone {
		r.Disable = "the webhook answered 410 Gone"
	}
	return r
}

// Package channels delivers a team's events to its notification channels
// (chat providers and signed webhooks): the channels' rules and storage
// (Service), sealing of their configs (Keyring), the guarded network every
// send goes through (Network), the providers' wire formats (Sender) and the
// dispatcher that reads the event stream (Dispatcher).
package channels

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/wrenn-dev/wrenn/internal/controlplane/audit"
	"github.com/wrenn-dev/wrenn/internal/controlplane/auth"
	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/ids"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// SecretGrace is how long a rotated-out webhook secret still signs.
const SecretGrace = 24 * time.Hour

// maxNameLen bounds channel names.
const maxNameLen = 100

// Limiter decides whether one more test send of a team is allowed.
type Limiter interface {
	Allow(ctx context.Context, key string) (bool, error)
}

// Deps are the service's collaborators.
type Deps struct {
	Pool    *pgxpool.Pool
	Keyring *Keyring
	Network *Network
	Sender  *Sender
	// TestLimiter bounds test sends per team; nil: no limit.
	TestLimiter Limiter
	// SendTimeout bounds one send (default 10 s).
	SendTimeout time.Duration
	// Audit records channel changes; nil records with audit.New().
	Audit  *audit.Logger
	Logger *slog.Logger
}

// Service holds the channels' rules.
type Service struct {
	d   Deps
	q   *db.Queries
	now func() time.Time
}

// New builds the service.
func New(d Deps) (*Service, error) {
	if d.Pool == nil || d.Keyring == nil || d.Network == nil || d.Sender == nil {
		return nil, errors.New("channels: Pool, Keyring, Network and Sender are required")
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.SendTimeout <= 0 {
		d.SendTimeout = 10 * time.Second
	}
	if d.Audit == nil {
		d.Audit = audit.New()
	}
	return &Service{d: d, q: db.New(d.Pool), now: time.Now}, nil
}

// sealed is what a channel's sealed blob holds.
type sealed struct {
	Config Config `json:"config"`
	// PreviousSecret signs webhooks beside the current one until
	// PreviousUntil, after a rotation.
	PreviousSecret string    `json:"previous_secret,omitempty"`
	PreviousUntil  time.Time `json:"previous_until,omitzero"`
}

// Channel is a channel as the API shows it: which config fields are set,
// never their values.
type Channel struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	Provider       string    `json:"provider"`
	Events         []string  `json:"events"`
	Enabled        bool      `json:"enabled"`
	DisabledReason *string   `json:"disabled_reason"`
	ConfigSet      []string  `json:"config_set"`
	CreatedAt      time.Time `json:"created_at"`
	UpdatedAt      time.Time `json:"updated_at"`
	// Secret is a generated webhook secret, shown once (create, rotate).
	Secret string `json:"secret,omitempty"`
}

// CreateInput is POST /v1/channels.
type CreateInput struct {
	Name     string   `json:"name"`
	Provider string   `json:"provider"`
	Config   Config   `json:"config"`
	Events   []string `json:"events"`
}

// UpdateInput is PATCH /v1/channels/{id}; absent fields stay.
type UpdateInput struct {
	Name    *string   `json:"name"`
	Events  *[]string `json:"events"`
	Enabled *bool     `json:"enabled"`
}

// ConfigInput is PUT /v1/channels/{id}/config.
type ConfigInput struct {
	Config Config `json:"config"`
}

// TestInput is POST /v1/channels/test.
type TestInput struct {
	Provider string `json:"provider"`
	Config   Config `json:"config"`
}

// TestResult is the outcome of a test send.
type TestResult struct {
	OK         bool   `json:"ok"`
	StatusCode int    `json:"status_code,omitempty"`
	Error      string `json:"error,omitempty"`
}

func invalidField(field, format string, args ...any) error {
	return service.Invalid(field, format, args...)
}

func urlNotAllowed(field string) error {
	e := service.Errorf(service.CodeURLNotAllowed, "%s points at a loopback, private, link-local or metadata address, which channels may not reach", field)
	e.Field = field
	return e
}

var errChannelNotFound = service.NotFound(service.CodeChannelNotFound, "channel not found")

func requireManager(a auth.AuthContext) error {
	if !service.CanManage(a.Role) {
		return service.Forbidden(service.CodeForbidden, "only a team owner or admin can manage channels")
	}
	return nil
}

func validName(name string) error {
	if strings.TrimSpace(name) == "" || len(name) > maxNameLen {
		return invalidField("name", "name must be 1 to %d characters", maxNameLen)
	}
	return nil
}

func validEvents(evs []string) error {
	if len(evs) == 0 {
		return invalidField("events", "events must name at least one event type (or \"*\")")
	}
	for i, f := range evs {
		if !events.ValidFilter(f) {
			return invalidField(fmt.Sprintf("events[%d]", i), "unknown event type %q", f)
		}
	}
	return nil
}

// newSecret is a generated webhook secret.
func newSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + hex.EncodeToString(b)
}

// prepareConfig validates a config and fills a generated webhook secret,
// which it returns to be shown once.
func (s *Service) prepareConfig(providerName string, c Config) (Config, string, error) {
	if c == nil {
		c = Config{}
	}
	if err := validateConfig(s.d.Network, providerName, c); err != nil {
		return nil, "", err
	}
	out := make(Config, len(c))
	for k, v := range c {
		out[k] = strings.TrimSpace(v)
	}
	generated := ""
	if providerName == Webhook && out["secret"] == "" {
		generated = newSecret()
		out["secret"] = generated
	}
	return out, generated, nil
}

func (s *Service) seal(id string, sc sealed) ([]byte, error) {
	raw, err := json.Marshal(sc)
	if err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return s.d.Keyring.Seal(id, raw)
}

func (s *Service) open(ch db.Channel) (sealed, bool, error) {
	raw, stale, err := s.d.Keyring.Open(ch.ID, ch.ConfigSealed)
	if err != nil {
		return sealed{}, false, fmt.Errorf("channel %s: %w", ch.ID, err)
	}
	var sc sealed
	if err := json.Unmarshal(raw, &sc); err != nil {
		return sealed{}, false, fmt.Errorf("channel %s: decode config: %w", ch.ID, err)
	}
	return sc, stale, nil
}

// inTx runs fn on the queries of one transaction: a change and its audit
// row commit together.
func (s *Service) inTx(ctx context.Context, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(ctx, s.d.Pool, func(tx pgx.Tx) error { return fn(s.q.WithTx(tx)) })
}

func view(ch db.Channel, sc sealed) Channel {
	set := make([]string, 0, len(sc.Config))
	for k, v := range sc.Config {
		if v != "" {
			set = append(set, k)
		}
	}
	sort.Strings(set)
	return Channel{ID: ch.ID, Name: ch.Name, Provider: ch.Provider, Events: ch.Events, Enabled: ch.Enabled,
		DisabledReason: ch.DisabledReason, ConfigSet: set, CreatedAt: ch.CreatedAt, UpdatedAt: ch.UpdatedAt}
}

var errNameTaken = service.Conflict(service.CodeNameTaken, "a channel of this team already has that name")

// Create adds a channel to the caller's team.
func (s *Service) Create(ctx context.Context, a auth.AuthContext, in CreateInput) (Channel, error) {
	if err := requireManager(a); err != nil {
		return Channel{}, err
	}
	if err := validName(in.Name); err != nil {
		return Channel{}, err
	}
	if err := validEvents(in.Events); err != nil {
		return Channel{}, err
	}
	cfg, generated, err := s.prepareConfig(in.Provider, in.Config)
	if err != nil {
		return Channel{}, err
	}
	id := ids.New(ids.Channel)
	blob, err := s.seal(id, sealed{Config: cfg})
	if err != nil {
		return Channel{}, service.Internal("seal channel config", err)
	}
	var ch db.Channel
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if ch, err = q.CreateChannel(ctx, db.CreateChannelParams{ID: id, TeamID: a.TeamID, Name: strings.TrimSpace(in.Name), Provider: in.Provider, ConfigSealed: blob, Events: in.Events}); err != nil {
			return err
		}
		return s.d.Audit.ChannelCreated(ctx, q, service.ActorOf(a), ch)
	})
	if service.IsUniqueViolation(err) {
		return Channel{}, errNameTaken
	}
	if err != nil {
		return Channel{}, service.Internal("create channel", err)
	}
	v := view(ch, sealed{Config: cfg})
	v.Secret = generated
	return v, nil
}

func (s *Service) get(ctx context.Context, a auth.AuthContext, id string) (db.Channel, sealed, bool, error) {
	ch, err := s.q.GetChannel(ctx, db.GetChannelParams{ID: id, TeamID: a.TeamID})
	if errors.Is(err, pgx.ErrNoRows) {
		return db.Channel{}, sealed{}, false, errChannelNotFound
	}
	if err != nil {
		return db.Channel{}, sealed{}, false, service.Internal("get channel", err)
	}
	sc, stale, err := s.open(ch)
	if err != nil {
		return db.Channel{}, sealed{}, false, service.Internal("open channel config", err)
	}
	return ch, sc, stale, nil
}

// Get shows one channel of the caller's team.
func (s *Service) Get(ctx context.Context, a auth.AuthContext, id string) (Channel, error) {
	ch, sc, _, err := s.get(ctx, a, id)
	if err != nil {
		return Channel{}, err
	}
	return view(ch, sc), nil
}

// List shows the caller's team's channels.
func (s *Service) List(ctx context.Context, a auth.AuthContext) ([]Channel, error) {
	rows, err := s.q.ListChannels(ctx, a.TeamID)
	if err != nil {
		return nil, service.Internal("list channels", err)
	}
	out := make([]Channel, 0, len(rows))
	for _, ch := range rows {
		sc, _, err := s.open(ch)
		if err != nil {
			return nil, service.Internal("open channel config", err)
		}
		out = append(out, view(ch, sc))
	}
	return out, nil
}

// Update renames, refilters, enables or disables a channel. Every write
// re-seals the config with the current key.
func (s *Service) Update(ctx context.Context, a auth.AuthContext, id string, in UpdateInput) (Channel, error) {
	if err := requireManager(a); err != nil {
		return Channel{}, err
	}
	ch, sc, _, err := s.get(ctx, a, id)
	if err != nil {
		return Channel{}, err
	}
	p := db.UpdateChannelParams{ID: ch.ID, TeamID: a.TeamID, Name: ch.Name, Events: ch.Events, Enabled: ch.Enabled}
	if in.Name != nil {
		if err := validName(*in.Name); err != nil {
			return Channel{}, err
		}
		p.Name = strings.TrimSpace(*in.Name)
	}
	if in.Events != nil {
		if err := validEvents(*in.Events); err != nil {
			return Channel{}, err
		}
		p.Events = *in.Events
	}
	if in.Enabled != nil {
		p.Enabled = *in.Enabled
	}
	if p.ConfigSealed, err = s.seal(ch.ID, sc); err != nil {
		return Channel{}, service.Internal("seal channel config", err)
	}
	var out db.Channel
	err = s.inTx(ctx, func(q *db.Queries) error {
		var err error
		if out, err = q.UpdateChannel(ctx, p); err != nil {
			return err
		}
		return s.d.Audit.ChannelUpdated(ctx, q, service.ActorOf(a), out)
	})
	if service.IsUniqueViolation(err) {
		return Channel{}, errNameTaken
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, errChannelNotFound
	}
	if err != nil {
		return Channel{}, service.Internal("update channel", err)
	}
	return view(out, sc), nil
}

// ReplaceConfig replaces a channel's config (secret rotation). A webhook's
// old secret keeps signing beside the new one for SecretGrace.
func (s *Service) ReplaceConfig(ctx context.Context, a auth.AuthContext, id string, in ConfigInput) (Channel, error) {
	if err := requireManager(a); err != nil {
		return Channel{}, err
	}
	ch, old, _, err := s.get(ctx, a, id)
	if err != nil {
		return Channel{}, err
	}
	cfg, generated, err := s.prepareConfig(ch.Provider, in.Config)
	if err != nil {
		return Channel{}, err
	}
	next := sealed{Config: cfg}
	if ch.Provider == Webhook && old.Config["secret"] != cfg["secret"] {
		next.PreviousSecret, next.PreviousUntil = old.Config["secret"], s.now().Add(SecretGrace)
	}
	blob, err := s.seal(ch.ID, next)
	if err != nil {
		return Channel{}, service.Internal("seal channel config", err)
	}
	var v Channel
	err = s.inTx(ctx, func(q *db.Queries) error {
		out, err := q.SetChannelConfig(ctx, db.SetChannelConfigParams{ID: ch.ID, TeamID: a.TeamID, ConfigSealed: blob})
		if err != nil {
			return err
		}
		v = view(out, next)
		return s.d.Audit.ChannelConfigRotated(ctx, q, service.ActorOf(a), out, v.ConfigSet)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Channel{}, errChannelNotFound
	}
	if err != nil {
		return Channel{}, service.Internal("replace channel config", err)
	}
	v.Secret = generated
	return v, nil
}

// Delete removes a channel and its deliveries.
func (s *Service) Delete(ctx context.Context, a auth.AuthContext, id string) error {
	if err := requireManager(a); err != nil {
		return err
	}
	err := s.inTx(ctx, func(q *db.Queries) error {
		ch, err := q.DeleteChannel(ctx, db.DeleteChannelParams{ID: id, TeamID: a.TeamID})
		if err != nil {
			return err
		}
		return s.d.Audit.ChannelDeleted(ctx, q, service.ActorOf(a), ch)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return errChannelNotFound
	}
	if err != nil {
		return service.Internal("delete channel", err)
	}
	return nil
}

// testEvent is the channel.test event a test send delivers.
func testEvent(a auth.AuthContext, channelID string, now time.Time) events.Event {
	actor := events.Actor{Type: "user", ID: a.UserID, Name: a.UserEmail}
	return events.Event{ID: ids.New("evt-test-"), Type: events.TestType, OccurredAt: now.UTC(),
		TeamID: a.TeamID, Actor: actor, Resource: events.Resource{Type: "channel", ID: channelID}, Status: "info",
		Data: json.RawMessage(`{"message":"This is a test message from Wrenn."}`)}
}

func (s *Service) allowTest(ctx context.Context, a auth.AuthContext) error {
	if s.d.TestLimiter == nil {
		return nil
	}
	ok, err := s.d.TestLimiter.Allow(ctx, "channel_test:"+a.TeamID)
	if err != nil {
		s.d.Logger.WarnContext(ctx, "channel test limiter unavailable", "err", err)
		return nil
	}
	if !ok {
		return service.Errorf(service.CodeRateLimited, "too many channel tests for this team; try again in a minute")
	}
	return nil
}

// TestConfig sends a channel.test message with a config that is not saved.
func (s *Service) TestConfig(ctx context.Context, a auth.AuthContext, in TestInput) (TestResult, error) {
	if err := requireManager(a); err != nil {
		return TestResult{}, err
	}
	cfg, _, err := s.prepareConfig(in.Provider, in.Config)
	if err != nil {
		return TestResult{}, err
	}
	if err := s.allowTest(ctx, a); err != nil {
		return TestResult{}, err
	}
	return s.sendTest(ctx, a, "", in.Provider, sealed{Config: cfg}), nil
}

// TestChannel sends a channel.test message through a saved channel.
func (s *Service) TestChannel(ctx context.Context, a auth.AuthContext, id string) (TestResult, error) {
	if err := requireManager(a); err != nil {
		return TestResult{}, err
	}
	ch, sc, _, err := s.get(ctx, a, id)
	if err != nil {
		return TestResult{}, err
	}
	if err := s.allowTest(ctx, a); err != nil {
		return TestResult{}, err
	}
	return s.sendTest(ctx, a, ch.ID, ch.Provider, sc), nil
}

func (s *Service) sendTest(ctx context.Context, a auth.AuthContext, channelID, providerName string, sc sealed) TestResult {
	ev := testEvent(a, channelID, s.now())
	payload, err := json.Marshal(ev)
	if err != nil {
		return TestResult{Error: "encode test event"}
	}
	ctx, cancel := context.WithTimeout(ctx, s.d.SendTimeout)
	defer cancel()
	r := s.d.Sender.Send(ctx, providerName, sc.Config, Message{Event: ev, Payload: payload, Attempt: 1, ChannelID: channelID, Previous: sc.previous(s.now())})
	out := TestResult{OK: r.OK(), StatusCode: r.StatusCode}
	if r.Err != nil {
		out.Error = describe(r.Err)
	}
	return out
}

// previous is the rotated-out webhook secret while it still signs.
func (sc sealed) previous(now time.Time) string {
	if sc.PreviousSecret != "" && now.Before(sc.PreviousUntil) {
		return sc.PreviousSecret
	}
	return ""
}

// describe is an attempt's error as stored and shown: the address check
// and timeouts in plain words; never a URL (Sender strips them).
func describe(err error) string {
	switch {
	case errors.Is(err, ErrAddressNotAllowed):
		return "the destination resolves to an address channels may not reach"
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	}
	msg := err.Error()
	if len(msg) > 500 {
		msg = msg[:500]
	}
	return msg
}

// Delivery is one delivery as GET /v1/channels/{id}/deliveries shows it.
type Delivery struct {
	ID             string     `json:"id"`
	EventID        string     `json:"event_id"`
	EventType      string     `json:"event_type"`
	Status         string     `json:"status"`
	Attempts       int32      `json:"attempts"`
	NextAttemptAt  *time.Time `json:"next_attempt_at"`
	LastStatusCode *int32     `json:"last_status_code"`
	LastError      *string    `json:"last_error"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
}

// DeliveryPage is one page of deliveries, newest first.
type DeliveryPage struct {
	Deliveries []Delivery `json:"deliveries"`
	// NextCursor fetches the next (older) page; empty on the last.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Deliveries pages a channel's deliveries, newest first.
func (s *Service) Deliveries(ctx context.Context, a auth.AuthContext, id string, limit int, cursor string) (DeliveryPage, error) {
	if _, _, _, err := s.get(ctx, a, id); err != nil {
		return DeliveryPage{}, err
	}
	if limit == 0 {
		limit = 50
	}
	if limit < 1 || limit > 200 {
		return DeliveryPage{}, invalidField("limit", "limit must be 1 to 200")
	}
	p := db.ListDeliveriesParams{ChannelID: id, MaxRows: int32(limit) + 1}
	if cursor != "" {
		t, did, err := decodeCursor(cursor)
		if err != nil {
			return DeliveryPage{}, invalidField("cursor", "cursor is not one this API returned")
		}
		p.BeforeCreated, p.BeforeID = &t, did
	}
	rows, err := s.q.ListDeliveries(ctx, p)
	if err != nil {
		return DeliveryPage{}, service.Internal("list deliveries", err)
	}
	page := DeliveryPage{Deliveries: make([]Delivery, 0, len(rows))}
	if len(rows) > limit {
		last := rows[limit-1]
		page.NextCursor = encodeCursor(last.CreatedAt, last.ID)
		rows = rows[:limit]
	}
	for _, r := range rows {
		d := Delivery{ID: r.ID, EventID: r.EventID, EventType: r.EventType, Status: r.Status, Attempts: r.Attempts,
			LastStatusCode: r.LastStatusCode, LastError: r.LastError, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
		if r.Status == StatusPending {
			next := r.NextAttemptAt
			d.NextAttemptAt = &next
		}
		page.Deliveries = append(page.Deliveries, d)
	}
	return page, nil
}

func encodeCursor(t time.Time, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(t.UTC().Format(time.RFC3339Nano) + "|" + id))
}

func decodeCursor(c string) (time.Time, string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", err
	}
	ts, id, ok := strings.Cut(string(raw), "|")
	if !ok {
		return time.Time{}, "", errors.New("no separator")
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	return t, id, err
}

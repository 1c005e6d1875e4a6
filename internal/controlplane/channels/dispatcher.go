package channels

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/db"
)

// ConsumerGroup is the channels' consumer group on events.StreamKey.
const ConsumerGroup = "wrenn-channels"

// Delivery statuses.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusFailed    = "failed"
)

// DispatcherConfig tunes the dispatcher; zero fields take the defaults.
type DispatcherConfig struct {
	// Consumer is this process's consumer name in the group (its replica id).
	Consumer string
	// RetryDelays are the waits before the second, third... attempt
	// (default 10 s, 30 s); after the last the delivery is failed.
	RetryDelays []time.Duration
	// SendTimeout bounds one attempt (default 10 s).
	SendTimeout time.Duration
	// PerChannel bounds concurrent attempts to one channel (default 4), so
	// a slow endpoint holds only its own slots; Workers bounds them all
	// (default 64).
	PerChannel int
	Workers    int
	// ClaimIdle is how long an entry may sit unacked in a consumer before
	// another one claims it (XAUTOCLAIM) and reads it again (default 60 s).
	ClaimIdle time.Duration
	// PollInterval paces the scan for due retries (default 1 s).
	PollInterval time.Duration
	// Batch is the most entries read or deliveries claimed at once (default 100).
	Batch int
}

func (c *DispatcherConfig) defaults() {
	if c.RetryDelays == nil {
		c.RetryDelays = []time.Duration{10 * time.Second, 30 * time.Second}
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = 10 * time.Second
	}
	if c.PerChannel <= 0 {
		c.PerChannel = 4
	}
	if c.Workers <= 0 {
		c.Workers = 64
	}
	if c.ClaimIdle <= 0 {
		c.ClaimIdle = time.Minute
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.Batch <= 0 {
		c.Batch = 100
	}
}

// Dispatcher reads events.StreamKey in the consumer group and delivers
// each event to its team's matching channels. Every (event, channel) pair
// is a row of channel_deliveries, which holds the retry schedule, so a
// retry survives the restart of every control plane; an entry is acked
// only once every delivery of its event is final. Every replica runs one:
// the group shares entries between them and rows are taken with SKIP
// LOCKED and a lock that expires.
type Dispatcher struct {
	cfg    DispatcherConfig
	q      *db.Queries
	rdb    *redis.Client
	svc    *Service
	log    *slog.Logger
	wake   chan struct{}
	global chan struct{}

	mu    sync.Mutex
	perCh map[string]*channelSlots
	wg    sync.WaitGroup
}

type channelSlots struct {
	sem   chan struct{}
	users int
}

// NewDispatcher builds a dispatcher over the service's channels.
func NewDispatcher(cfg DispatcherConfig, svc *Service, rdb *redis.Client, logger *slog.Logger) (*Dispatcher, error) {
	if cfg.Consumer == "" {
		return nil, errors.New("channels dispatcher: Consumer is required")
	}
	cfg.defaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Dispatcher{cfg: cfg, q: svc.q, rdb: rdb, svc: svc, log: logger.With("component", "channels"),
		wake: make(chan struct{}, 1), global: make(chan struct{}, cfg.Workers), perCh: map[string]*channelSlots{}}, nil
}

// lockSeconds is how long a taken delivery stays ours: its queueing behind
// its channel's slots and the attempt itself.
func (d *Dispatcher) lockSeconds() float64 { return (6 * d.cfg.SendTimeout).Seconds() }

// Run dispatches until ctx ends, then waits for attempts in flight.
func (d *Dispatcher) Run(ctx context.Context) {
	var loops sync.WaitGroup
	for _, loop := range []func(context.Context){d.readLoop, d.pollLoop, d.claimLoop} {
		loops.Add(1)
		go func() { defer loops.Done(); loop(ctx) }()
	}
	loops.Wait()
	d.wg.Wait()
}

func (d *Dispatcher) ensureGroup(ctx context.Context) error {
	// From the stream's start: a channel only takes events that occurred
	// after it was made, so old entries find nothing to deliver.
	err := d.rdb.XGroupCreateMkStream(ctx, events.StreamKey, ConsumerGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group %s: %w", ConsumerGroup, err)
	}
	return nil
}

// readLoop reads new entries. While Redis fails it retries each second,
// saying so once; the group is made again when Redis lost it.
func (d *Dispatcher) readLoop(ctx context.Context) {
	failing := false
	needGroup := true
	for ctx.Err() == nil {
		if needGroup {
			if err := d.ensureGroup(ctx); err != nil {
				failing = d.redisDown(ctx, failing, err)
				continue
			}
			needGroup = false
		}
		res, err := d.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: ConsumerGroup, Consumer: d.cfg.Consumer,
			Streams: []string{events.StreamKey, ">"}, Count: int64(d.cfg.Batch), Block: 2 * time.Second}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			needGroup = strings.HasPrefix(err.Error(), "NOGROUP")
			failing = d.redisDown(ctx, failing, err)
			continue
		}
		if failing {
			d.log.InfoContext(ctx, "event stream readable again")
			failing = false
		}
		for _, s := range res {
			for _, m := range s.Messages {
				d.handle(ctx, m)
			}
		}
	}
}

func (d *Dispatcher) redisDown(ctx context.Context, failing bool, err error) bool {
	if !failing {
		d.log.WarnContext(ctx, "event stream unavailable; retrying", "err", err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	return true
}

// handle turns one entry into deliveries and starts their first attempts.
// Reading an entry again (a claim after a crash) adds nothing that exists
// and acks it when every delivery is final.
func (d *Dispatcher) handle(ctx context.Context, m redis.XMessage) {
	raw, _ := m.Values[events.Field].(string)
	ev, err := events.Decode(raw)
	if err != nil {
		// Nothing can ever deliver it; keeping it would replay it forever.
		d.log.ErrorContext(ctx, "dropping malformed event", "stream_id", m.ID, "err", err)
		d.ack(ctx, m.ID)
		return
	}
	rows, err := d.q.MatchingChannels(ctx, db.MatchingChannelsParams{TeamID: ev.TeamID, OccurredAt: ev.OccurredAt})
	if err != nil {
		// Left pending: the claim loop reads it again.
		d.log.WarnContext(ctx, "find channels for event", "event_id", ev.ID, "err", err)
		return
	}
	var matched []string
	for _, r := range rows {
		if events.Matches(r.Events, ev.Type) {
			matched = append(matched, r.ID)
		}
	}
	if len(matched) == 0 {
		d.ack(ctx, m.ID)
		return
	}
	taken, err := d.q.InsertDeliveries(ctx, db.InsertDeliveriesParams{EventID: ev.ID, EventType: ev.Type, ChannelIds: matched,
		Payload: raw, StreamID: m.ID, LockSeconds: d.lockSeconds()})
	if err != nil {
		d.log.WarnContext(ctx, "record deliveries", "event_id", ev.ID, "err", err)
		return
	}
	for _, row := range taken {
		d.dispatch(ctx, row)
	}
	if len(taken) == 0 {
		d.ackIfFinal(ctx, ev.ID, m.ID)
	}
}

func (d *Dispatcher) ack(ctx context.Context, streamID string) {
	if err := d.rdb.XAck(ctx, events.StreamKey, ConsumerGroup, streamID).Err(); err != nil {
		// The claim loop reads it again and acks it then.
		d.log.WarnContext(ctx, "ack event", "stream_id", streamID, "err", err)
	}
}

func (d *Dispatcher) ackIfFinal(ctx context.Context, eventID, streamID string) {
	pending, err := d.q.EventPending(ctx, eventID)
	if err != nil {
		d.log.WarnContext(ctx, "check event deliveries", "event_id", eventID, "err", err)
		return
	}
	if !pending {
		d.ack(ctx, streamID)
	}
}

// pollLoop takes due retries (and deliveries a dead replica held).
func (d *Dispatcher) pollLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
		rows, err := d.q.ClaimDueDeliveries(ctx, db.ClaimDueDeliveriesParams{LockSeconds: d.lockSeconds(), MaxRows: int32(d.cfg.Batch)})
		if err != nil {
			if ctx.Err() == nil {
				d.log.WarnContext(ctx, "claim due deliveries", "err", err)
			}
			continue
		}
		for _, row := range rows {
			d.dispatch(ctx, row)
		}
		if len(rows) == d.cfg.Batch {
			d.poke()
		}
	}
}

func (d *Dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// claimLoop takes entries left unacked past ClaimIdle by any consumer
// (a dead replica's, or ours waiting on retries or on a failed ack) and
// reads them again.
func (d *Dispatcher) claimLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ClaimIdle / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := "0-0"
		for ctx.Err() == nil {
			msgs, next, err := d.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: events.StreamKey, Group: ConsumerGroup,
				Consumer: d.cfg.Consumer, MinIdle: d.cfg.ClaimIdle, Start: start, Count: int64(d.cfg.Batch)}).Result()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, redis.Nil) {
					d.log.WarnContext(ctx, "claim idle events", "err", err)
				}
				break
			}
			for _, m := range msgs {
				d.handle(ctx, m)
			}
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
	}
}

func (d *Dispatcher) slots(channelID string) *channelSlots {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.perCh[channelID]
	if s == nil {
		s = &channelSlots{sem: make(chan struct{}, d.cfg.PerChannel)}
		d.perCh[channelID] = s
	}
	s.users++
	return s
}

func (d *Dispatcher) release(channelID string, s *channelSlots) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.users--; s.users == 0 {
		delete(d.perCh, channelID)
	}
}

// dispatch runs one attempt in the background: first a slot of its
// channel, then one of the global pool, so a slow channel waits on its
// own slots and never holds the others'.
func (d *Dispatcher) dispatch(ctx context.Context, row db.ChannelDelivery) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		s := d.slots(row.ChannelID)
		defer d.release(row.ChannelID, s)
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			d.unlock(row)
			return
		}
		defer func() { <-s.sem }()
		select {
		case d.global <- struct{}{}:
		case <-ctx.Done():
			d.unlock(row)
			return
		}
		defer func() { <-d.global }()
		d.attempt(ctx, row)
	}()
}

// unlock hands a delivery we will not attempt back at once.
func (d *Dispatcher) unlock(row db.ChannelDelivery) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.q.FinishAttempt(ctx, db.FinishAttemptParams{ID: row.ID, Status: StatusPending, Attempts: row.Attempts,
		LastStatusCode: row.LastStatusCode, LastError: row.LastError}); err != nil {
		d.log.Warn("release delivery", "delivery_id", row.ID, "err", err)
	}
}

func (d *Dispatcher) attempt(ctx context.Context, row db.ChannelDelivery) {
	ch, err := d.q.ChannelForDelivery(ctx, row.ChannelID)
	if errors.Is(err, pgx.ErrNoRows) {
		return // deleted with its deliveries
	}
	if err != nil {
		d.log.WarnContext(ctx, "load channel for delivery", "delivery_id", row.ID, "err", err)
		return // the lock expires and the poll loop takes it again
	}
	n := row.Attempts + 1
	if !ch.Enabled {
		d.finish(ctx, row, StatusFailed, row.Attempts, 0, Result{Err: errors.New("the channel is disabled")})
		return
	}
	sc, _, err := d.svc.open(ch)
	if err != nil {
		d.log.ErrorContext(ctx, "open channel config", "channel_id", ch.ID, "err", err)
		d.finish(ctx, row, StatusFailed, n, 0, Result{Err: errors.New("the channel's config cannot be opened with the configured keys")})
		return
	}
	ev, err := events.Decode(row.Payload)
	if err != nil {
		d.finish(ctx, row, StatusFailed, n, 0, Result{Err: err})
		return
	}
	sctx, cancel := context.WithTimeout(ctx, d.cfg.SendTimeout)
	r := d.svc.d.Sender.Send(sctx, ch.Provider, sc.Config, Message{Event: ev, Payload: []byte(row.Payload), Attempt: int(n),
		ChannelID: ch.ID, Previous: sc.previous(time.Now())})
	cancel()
	if ctx.Err() != nil {
		// Shutting down: this attempt does not count.
		d.unlock(row)
		return
	}
	switch {
	case r.OK():
		d.finish(ctx, row, StatusDelivered, n, 0, r)
	case r.Disable != "":
		if err := d.q.DisableChannel(ctx, db.DisableChannelParams{ID: ch.ID, DisabledReason: &r.Disable}); err != nil {
			d.log.WarnContext(ctx, "disable channel", "channel_id", ch.ID, "err", err)
		}
		d.log.InfoContext(ctx, "channel disabled", "channel_id", ch.ID, "reason", r.Disable)
		d.finish(ctx, row, StatusFailed, n, 0, r)
	case int(n) <= len(d.cfg.RetryDelays):
		d.finish(ctx, row, StatusPending, n, d.cfg.RetryDelays[n-1], r)
	default:
		d.finish(ctx, row, StatusFailed, n, 0, r)
	}
}

func (d *Dispatcher) finish(ctx context.Context, row db.ChannelDelivery, status string, attempts int32, retryIn time.Duration, r Result) {
	p := db.FinishAttemptParams{ID: row.ID, Status: status, Attempts: attempts, RetryInSeconds: retryIn.Seconds()}
	if r.StatusCode != 0 {
		code := int32(r.StatusCode)
		p.LastStatusCode = &code
	}
	if r.Err != nil {
		msg := describe(r.Err)
		p.LastError = &msg
	}
	if err := d.q.FinishAttempt(ctx, p); err != nil {
		d.log.WarnContext(ctx, "record delivery attempt", "delivery_id", row.ID, "err", err)
		return
	}
	if status != StatusPending {
		d.ackIfFinal(ctx, row.EventID, row.StreamID)
	}
}

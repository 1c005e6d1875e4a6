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
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
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
	perCh map[string]*channelQueue
	wg    sync.WaitGroup
	// outcomes feeds the one writer of attempt outcomes, which records
	// them in batches (a statement per batch, not per attempt).
	outcomes chan outcome

	cacheMu sync.Mutex
	cache   map[string]cachedChannel
}

// outcome is one attempt's result to record.
type outcome struct {
	id       string
	status   string
	attempts int32
	retryIn  time.Duration
	r        Result
}

// cachedChannel is a channel and its opened config, reused for channelTTL
// so a burst of events costs one lookup per channel, not one per delivery.
type cachedChannel struct {
	ch  db.Channel
	sc  sealed
	err error
	at  time.Time
}

// channelTTL bounds how stale a channel (its config, enabled, existence)
// may be when an attempt is made.
const channelTTL = time.Second

// channelQueue is one channel's taken deliveries waiting for an attempt,
// kept per resource (a sandbox, a template...) oldest first: a resource
// has at most one attempt in flight per channel, so its events reach the
// channel in the order they were taken. ready holds the resources with
// deliveries waiting and none in flight, in the order they became ready;
// at most PerChannel workers drain them.
type channelQueue struct {
	byResource map[string][]queued
	inFlight   map[string]bool
	ready      []string
	workers    int
}

// queued is a taken delivery and its event (decoded once per entry), or
// why its payload cannot be decoded.
type queued struct {
	row       db.ChannelDelivery
	ev        *events.Event
	decodeErr error
}

func (it queued) resource() string {
	if it.ev == nil {
		return ""
	}
	return it.ev.Resource.Type + "/" + it.ev.Resource.ID
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
		wake: make(chan struct{}, 1), global: make(chan struct{}, cfg.Workers), perCh: map[string]*channelQueue{},
		outcomes: make(chan outcome, 4*cfg.Workers), cache: map[string]cachedChannel{}}, nil
}

// lockSeconds is how long a taken delivery stays ours: its queueing behind
// its channel's slots and the attempt itself.
func (d *Dispatcher) lockSeconds() float64 { return (6 * d.cfg.SendTimeout).Seconds() }

// Run dispatches until ctx ends, then waits for attempts in flight and
// records their outcomes.
func (d *Dispatcher) Run(ctx context.Context) {
	recorded := make(chan struct{})
	go func() { defer close(recorded); d.recordLoop() }()
	var loops sync.WaitGroup
	for _, loop := range []func(context.Context){d.readLoop, d.pollLoop, d.claimLoop} {
		loops.Add(1)
		go func() { defer loops.Done(); loop(ctx) }()
	}
	loops.Wait()
	d.wg.Wait()
	close(d.outcomes)
	<-recorded
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
			d.handle(ctx, s.Messages)
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

// handle turns a batch of entries into deliveries and starts their first
// attempts: one channel lookup per team and one insert for the batch.
// Reading an entry again (a claim after a crash) adds no row that exists
// and acks the entry when every delivery of its event is final.
func (d *Dispatcher) handle(ctx context.Context, msgs []redis.XMessage) {
	type entry struct {
		streamID string
		ev       events.Event
		raw      string
	}
	var (
		done    []string // entries with nothing to deliver
		matched []entry
		p       = db.InsertDeliveriesParams{LockSeconds: d.lockSeconds()}
		byTeam  = map[string][]db.MatchingChannelsRow{}
	)
	for _, m := range msgs {
		raw, _ := m.Values[events.Field].(string)
		ev, err := events.Decode(raw)
		if err != nil {
			// Nothing can ever deliver it; keeping it would replay it forever.
			d.log.ErrorContext(ctx, "dropping malformed event", "stream_id", m.ID, "err", err)
			done = append(done, m.ID)
			continue
		}
		rows, ok := byTeam[ev.TeamID]
		if !ok {
			rows, err = d.q.MatchingChannels(ctx, ev.TeamID)
			if err != nil {
				// Left pending: the claim loop reads it again.
				d.log.WarnContext(ctx, "find channels for event", "event_id", ev.ID, "err", err)
				continue
			}
			byTeam[ev.TeamID] = rows
		}
		n := 0
		for _, r := range rows {
			if !r.CreatedAt.After(ev.OccurredAt) && events.Matches(r.Events, ev.Type) {
				p.EventIds = append(p.EventIds, ev.ID)
				p.EventTypes = append(p.EventTypes, ev.Type)
				p.ChannelIds = append(p.ChannelIds, r.ID)
				p.Payloads = append(p.Payloads, raw)
				p.StreamIds = append(p.StreamIds, m.ID)
				n++
			}
		}
		if n == 0 {
			done = append(done, m.ID)
			continue
		}
		matched = append(matched, entry{streamID: m.ID, ev: ev, raw: raw})
	}
	d.ack(ctx, done...)
	if len(matched) == 0 {
		return
	}
	taken, err := d.q.InsertDeliveries(ctx, p)
	if err != nil {
		d.log.WarnContext(ctx, "record deliveries", "events", len(matched), "err", err)
		return
	}
	decoded := make(map[string]*events.Event, len(matched))
	for i := range matched {
		decoded[matched[i].ev.ID] = &matched[i].ev
	}
	fresh := map[string]bool{}
	for _, row := range taken {
		fresh[row.EventID] = true
		d.dispatch(ctx, queued{row: row, ev: decoded[row.EventID]})
	}
	for _, e := range matched {
		if !fresh[e.ev.ID] {
			d.ackIfFinal(ctx, e.ev.ID, e.streamID)
		}
	}
}

func (d *Dispatcher) ack(ctx context.Context, streamIDs ...string) {
	if len(streamIDs) == 0 {
		return
	}
	if err := d.rdb.XAck(ctx, events.StreamKey, ConsumerGroup, streamIDs...).Err(); err != nil {
		// The claim loop reads them again and acks them then.
		d.log.WarnContext(ctx, "ack events", "stream_ids", streamIDs, "err", err)
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
			d.dispatch(ctx, queued{row: row})
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
			d.handle(ctx, msgs)
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
	}
}

// dispatch queues a taken delivery behind its channel's and starts a
// worker for the channel unless PerChannel already drain it. A worker
// takes a slot of the global pool per attempt, so a slow channel holds at
// most PerChannel slots and never delays another channel's queue. Few
// long-lived workers, not a goroutine per delivery: a burst of thousands
// of deliveries costs no goroutine churn.
func (d *Dispatcher) dispatch(ctx context.Context, item queued) {
	if item.ev == nil {
		ev, err := events.Decode(item.row.Payload)
		item.ev, item.decodeErr = &ev, err
		if err != nil {
			item.ev = nil
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	id, res := item.row.ChannelID, item.resource()
	q := d.perCh[id]
	if q == nil {
		q = &channelQueue{byResource: map[string][]queued{}, inFlight: map[string]bool{}}
		d.perCh[id] = q
	}
	q.byResource[res] = append(q.byResource[res], item)
	if !q.inFlight[res] && len(q.byResource[res]) == 1 {
		q.ready = append(q.ready, res)
	}
	if q.workers < d.cfg.PerChannel && len(q.ready) > 0 {
		q.workers++
		d.wg.Add(1)
		go func() { defer d.wg.Done(); d.drain(ctx, id, q) }()
	}
}

// next ends the worker's attempt of done (nil at its start) and takes the
// oldest delivery of the resource that became ready first; ok is false
// when none is ready, and then this worker has ended (the workers with
// attempts in flight take their resources' next deliveries).
func (d *Dispatcher) next(id string, q *channelQueue, done *queued) (item queued, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if done != nil {
		res := done.resource()
		delete(q.inFlight, res)
		if len(q.byResource[res]) > 0 {
			q.ready = append(q.ready, res)
		}
	}
	if len(q.ready) == 0 {
		if q.workers--; q.workers == 0 {
			delete(d.perCh, id)
		}
		return queued{}, false
	}
	res := q.ready[0]
	q.ready = q.ready[1:]
	items := q.byResource[res]
	item = items[0]
	if len(items) == 1 {
		delete(q.byResource, res)
	} else {
		items[0] = queued{}
		q.byResource[res] = items[1:]
	}
	q.inFlight[res] = true
	return item, true
}

func (d *Dispatcher) drain(ctx context.Context, id string, q *channelQueue) {
	var done *queued
	for {
		item, ok := d.next(id, q, done)
		if !ok {
			return
		}
		if ctx.Err() != nil {
			d.abandon(id, q, item)
			return
		}
		select {
		case d.global <- struct{}{}:
		case <-ctx.Done():
			d.abandon(id, q, item)
			return
		}
		d.attempt(ctx, item)
		<-d.global
		done = &item
	}
}

// abandon hands back, untried, the delivery a stopping worker holds and
// everything still queued behind its channel (one statement), and ends
// the worker.
func (d *Dispatcher) abandon(id string, q *channelQueue, held queued) {
	ids := []string{held.row.ID}
	d.mu.Lock()
	for _, items := range q.byResource {
		for _, it := range items {
			ids = append(ids, it.row.ID)
		}
	}
	clear(q.byResource)
	q.ready = nil
	delete(q.inFlight, held.resource())
	if q.workers--; q.workers == 0 {
		delete(d.perCh, id)
	}
	d.mu.Unlock()
	d.unlock(ids...)
}

// disable turns a gone channel off, with its audit row, unless another
// send already did.
func (d *Dispatcher) disable(ctx context.Context, channelID, reason string) {
	err := d.svc.inTx(ctx, func(q *db.Queries) error {
		ch, err := q.DisableChannel(ctx, db.DisableChannelParams{ID: channelID, DisabledReason: &reason})
		if err != nil {
			return err
		}
		return d.svc.d.Audit.ChannelDisabled(ctx, q, service.ActorChannelDispatcher, ch, reason)
	})
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		d.log.WarnContext(ctx, "disable channel", "channel_id", channelID, "err", err)
	}
}

// unlock hands deliveries we will not attempt back at once.
func (d *Dispatcher) unlock(ids ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.q.ReleaseDeliveries(ctx, ids); err != nil {
		d.log.Warn("release deliveries", "deliveries", len(ids), "err", err)
	}
}

func (d *Dispatcher) attempt(ctx context.Context, item queued) {
	row := item.row
	c, err := d.channel(ctx, row.ChannelID)
	if errors.Is(err, pgx.ErrNoRows) {
		return // deleted with its deliveries
	}
	if err != nil {
		d.log.WarnContext(ctx, "load channel for delivery", "delivery_id", row.ID, "err", err)
		return // the lock expires and the poll loop takes it again
	}
	ch, sc := c.ch, c.sc
	n := row.Attempts + 1
	if !ch.Enabled {
		d.finish(ctx, row, StatusFailed, row.Attempts, 0, Result{Err: errors.New("the channel is disabled")})
		return
	}
	if c.err != nil {
		d.finish(ctx, row, StatusFailed, n, 0, Result{Err: errors.New("the channel's config cannot be opened with the configured keys")})
		return
	}
	if item.decodeErr != nil {
		d.finish(ctx, row, StatusFailed, n, 0, Result{Err: item.decodeErr})
		return
	}
	ev := item.ev
	sctx, cancel := context.WithTimeout(ctx, d.cfg.SendTimeout)
	r := d.svc.d.Sender.Send(sctx, ch.Provider, sc.Config, Message{Event: *ev, Payload: []byte(row.Payload), Attempt: int(n),
		ChannelID: ch.ID, Previous: sc.previous(time.Now())})
	cancel()
	if ctx.Err() != nil {
		// Shutting down: this attempt does not count.
		d.unlock(row.ID)
		return
	}
	switch {
	case r.OK():
		d.finish(ctx, row, StatusDelivered, n, 0, r)
	case r.Disable != "":
		d.forget(ch.ID)
		d.disable(ctx, ch.ID, r.Disable)
		d.finish(ctx, row, StatusFailed, n, 0, r)
	case int(n) <= len(d.cfg.RetryDelays):
		d.finish(ctx, row, StatusPending, n, d.cfg.RetryDelays[n-1], r)
	default:
		d.finish(ctx, row, StatusFailed, n, 0, r)
	}
}

// channel is the delivery's channel, from the cache while it is fresh.
func (d *Dispatcher) channel(ctx context.Context, id string) (cachedChannel, error) {
	d.cacheMu.Lock()
	c, ok := d.cache[id]
	d.cacheMu.Unlock()
	if ok && time.Since(c.at) < channelTTL {
		return c, nil
	}
	ch, err := d.q.ChannelForDelivery(ctx, id)
	if err != nil {
		return cachedChannel{}, err
	}
	sc, _, openErr := d.svc.open(ch)
	if openErr != nil {
		d.log.ErrorContext(ctx, "open channel config", "channel_id", ch.ID, "err", openErr)
	}
	c = cachedChannel{ch: ch, sc: sc, err: openErr, at: time.Now()}
	d.cacheMu.Lock()
	if len(d.cache) > 10000 {
		clear(d.cache)
	}
	d.cache[id] = c
	d.cacheMu.Unlock()
	return c, nil
}

func (d *Dispatcher) forget(id string) {
	d.cacheMu.Lock()
	delete(d.cache, id)
	d.cacheMu.Unlock()
}

func (d *Dispatcher) finish(_ context.Context, row db.ChannelDelivery, status string, attempts int32, retryIn time.Duration, r Result) {
	d.outcomes <- outcome{id: row.ID, status: status, attempts: attempts, retryIn: retryIn, r: r}
}

// recordLoop writes outcomes in batches of what has arrived (up to
// Batch), then acks the entries whose events are settled. It runs until
// outcomes is closed, after every attempt ended, so none is lost on
// shutdown.
func (d *Dispatcher) recordLoop() {
	for first := range d.outcomes {
		batch := []outcome{first}
	more:
		for len(batch) < d.cfg.Batch {
			select {
			case o, ok := <-d.outcomes:
				if !ok {
					break more
				}
				batch = append(batch, o)
			default:
				break more
			}
		}
		d.record(batch)
	}
}

func (d *Dispatcher) record(batch []outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var p db.FinishAttemptsParams
	for _, o := range batch {
		p.Ids = append(p.Ids, o.id)
		p.Statuses = append(p.Statuses, o.status)
		p.Attempts = append(p.Attempts, o.attempts)
		p.RetryInSeconds = append(p.RetryInSeconds, o.retryIn.Seconds())
		p.Codes = append(p.Codes, int32(o.r.StatusCode))
		msg := ""
		if o.r.Err != nil {
			msg = describe(o.r.Err)
		}
		p.Errors = append(p.Errors, msg)
	}
	rows, err := d.q.FinishAttempts(ctx, p)
	if err != nil {
		// The rows stay locked until the lock expires; then they are tried again.
		d.log.Warn("record delivery attempts", "deliveries", len(batch), "err", err)
		return
	}
	streams := map[string]string{}
	var final []string
	for _, r := range rows {
		if r.Status != StatusPending && streams[r.EventID] == "" {
			streams[r.EventID] = r.StreamID
			final = append(final, r.EventID)
		}
	}
	if len(final) == 0 {
		return
	}
	settled, err := d.q.SettledEvents(ctx, final)
	if err != nil {
		d.log.Warn("check settled events", "err", err)
		return
	}
	ids := make([]string, 0, len(settled))
	for _, e := range settled {
		ids = append(ids, streams[e])
	}
	d.ack(ctx, ids...)
}

package channels

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wrenn-dev/wrenn/internal/controlplane/events"
	"github.com/wrenn-dev/wrenn/internal/controlplane/service"
	"github.com/wrenn-dev/wrenn/internal/db"
	"github.com/wrenn-dev/wrenn/internal/retention"
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
	// Retention is how long final deliveries are kept (default 30 days);
	// every PruneEvery (default 5 minutes) older ones are deleted, at most
	// PruneBatch (default 5000) per statement.
	Retention  time.Duration
	PruneEvery time.Duration
	PruneBatch int32
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
	if c.Retention <= 0 {
		c.Retention = 30 * 24 * time.Hour
	}
	if c.PruneEvery <= 0 {
		c.PruneEvery = 5 * time.Minute
	}
	if c.PruneBatch <= 0 {
		c.PruneBatch = 5000
	}
}

// Dispatcher reads events.StreamKey in the consumer group and delivers
// each event to its team's matching channels. Every (event, channel) pair
// becomes a row of channel_deliveries, written once with its first
// attempt's outcome; until then the unacked stream entry is the durable
// record, so a crash mid-attempt leads to the entry being claimed and the
// missing deliveries made. A pending row holds the retry schedule, so a
// retry survives the restart of every control plane. An entry is acked
// only once every matching channel has a final row. Every replica runs
// one: the group shares entries between them and retry rows are taken
// with SKIP LOCKED and a lock that expires.
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

	flightMu sync.Mutex
	flights  map[string]*flight // by event id
}

// flight is an event whose first attempts this process is making. Its
// entries stay unacked, and kept claimed by this consumer, until every
// one is recorded.
type flight struct {
	ev        *events.Event
	payload   string   // the entry's event JSON, as read
	streamIDs []string // one, or more when the event was published twice
	remaining int      // first attempts not recorded yet
	pending   bool     // a delivery of the event waits (or may wait) for a retry
	lost      bool     // a record failed: the entry is read again once idle
}

// outcome is one attempt's result to record.
type outcome struct {
	item     queued
	status   string
	attempts int32
	retryIn  time.Duration
	r        Result
	// gone: the channel was deleted (with its deliveries, but for a retry
	// recorded while it was: record deletes that one).
	gone bool
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

// queued is a delivery waiting for an attempt: a first attempt, made
// from a stream entry before any row exists (flight set), or a retry
// taken from its row (rowID set); with its event, decoded once per entry,
// or why its payload cannot be decoded.
type queued struct {
	rowID     string
	flight    *flight
	eventID   string
	eventType string
	channelID string
	streamID  string
	payload   []byte // shared by the event's deliveries; never written
	attempts  int32  // made before this one
	ev        *events.Event
	res       string // resourceOf(ev)
	decodeErr error
}

// retryItem is a delivery taken from its row.
func retryItem(row db.ChannelDelivery) queued {
	it := queued{rowID: row.ID, eventID: row.EventID, eventType: row.EventType, channelID: row.ChannelID,
		streamID: row.StreamID, payload: []byte(row.Payload), attempts: row.Attempts}
	if ev, err := events.Decode(row.Payload); err != nil {
		it.decodeErr = err
	} else {
		it.ev = &ev
	}
	it.res = resourceOf(it.ev)
	return it
}

// resourceOf keys a channel's queue by what the event is about ("" for
// an event that cannot be decoded).
func resourceOf(ev *events.Event) string {
	if ev == nil {
		return ""
	}
	return ev.Resource.Type + "/" + ev.Resource.ID
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
		outcomes: make(chan outcome, 4*cfg.Workers), cache: map[string]cachedChannel{}, flights: map[string]*flight{}}, nil
}

// lockSeconds is how long a taken retry stays ours: its queueing behind
// its channel's slots and the attempt itself.
func (d *Dispatcher) lockSeconds() float64 { return (6 * d.cfg.SendTimeout).Seconds() }

// Run dispatches until ctx ends, then waits for attempts in flight and
// records their outcomes.
func (d *Dispatcher) Run(ctx context.Context) {
	recorded := make(chan struct{})
	go func() { defer close(recorded); d.recordLoop() }()
	var loops sync.WaitGroup
	for _, loop := range []func(context.Context){d.readLoop, d.pollLoop, d.claimLoop, d.pruneLoop} {
		loops.Add(1)
		go func() { defer loops.Done(); loop(ctx) }()
	}
	loops.Wait()
	d.wg.Wait()
	close(d.outcomes)
	<-recorded
}

// Prune deletes the final deliveries created before now minus the
// retention, a batch per statement so no statement holds many row locks;
// it returns how many went. Every replica prunes: two deleting the same
// rows at once only wait for each other.
func (d *Dispatcher) Prune(ctx context.Context, now time.Time) (int64, error) {
	before := now.Add(-d.cfg.Retention)
	n, err := retention.Batches(ctx, d.cfg.PruneBatch, func(ctx context.Context, batch int32) (int64, error) {
		return d.q.DeleteDeliveriesBefore(ctx, db.DeleteDeliveriesBeforeParams{Before: before, BatchSize: batch})
	})
	if err != nil {
		return n, fmt.Errorf("delete deliveries made before %s: %w", before.Format(time.RFC3339), err)
	}
	return n, nil
}

func (d *Dispatcher) pruneLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.PruneEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n, err := d.Prune(ctx, time.Now()); err != nil && ctx.Err() == nil {
			d.log.Warn("prune channel deliveries", "deleted", n, "err", err)
		} else if n > 0 {
			d.log.Info("pruned channel deliveries", "deleted", n, "retention", d.cfg.Retention)
		}
	}
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

// handle starts the first attempts of a batch of entries' deliveries:
// one channel lookup per team and one lookup of the rows recorded for the
// batch's events. Reading an entry again (a claim after a crash, an event
// published twice) attempts only the channels without a row, and acks the
// entry when every delivery is final.
func (d *Dispatcher) handle(ctx context.Context, msgs []redis.XMessage) {
	type entry struct {
		streamID string
		ev       *events.Event
		raw      string
		channels []string
	}
	var (
		done    []string // entries with nothing (more) to deliver
		entries []entry
		ids     []string
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
		chans, err := d.matching(ctx, byTeam, &ev)
		if err != nil {
			// Left pending: the claim loop reads it again.
			d.log.WarnContext(ctx, "find channels for event", "event_id", ev.ID, "err", err)
			continue
		}
		if len(chans) == 0 {
			done = append(done, m.ID)
			continue
		}
		entries = append(entries, entry{streamID: m.ID, ev: &ev, raw: raw, channels: chans})
		ids = append(ids, ev.ID)
	}
	defer func() { d.ack(ctx, done...) }()
	if len(entries) == 0 {
		return
	}
	recorded, err := d.recorded(ctx, ids)
	if err != nil {
		d.log.WarnContext(ctx, "find recorded deliveries", "events", len(entries), "err", err)
		return
	}
	for _, e := range entries {
		have := recorded[e.ev.ID]
		var todo []string
		for _, c := range e.channels {
			if _, ok := have[c]; !ok {
				todo = append(todo, c)
			}
		}
		pending := anyPending(have)
		f, join := d.fly(e.ev, e.raw, e.streamID, len(todo), pending)
		switch {
		case join:
			// In flight here already: acked with the flight.
		case f == nil && !pending:
			done = append(done, e.streamID)
		case f == nil:
			// Waits for its retries, which ack it.
		default:
			payload, res := []byte(e.raw), resourceOf(e.ev)
			for _, c := range todo {
				d.dispatch(ctx, queued{flight: f, eventID: e.ev.ID, eventType: e.ev.Type, channelID: c,
					streamID: e.streamID, payload: payload, ev: e.ev, res: res})
			}
		}
	}
}

// matching is the event's channels: enabled, made before the event
// occurred, with a filter that matches; byTeam caches the lookups of one
// batch.
func (d *Dispatcher) matching(ctx context.Context, byTeam map[string][]db.MatchingChannelsRow, ev *events.Event) ([]string, error) {
	rows, ok := byTeam[ev.TeamID]
	if !ok {
		var err error
		if rows, err = d.q.MatchingChannels(ctx, ev.TeamID); err != nil {
			return nil, err
		}
		byTeam[ev.TeamID] = rows
	}
	var out []string
	for _, r := range rows {
		if !r.CreatedAt.After(ev.OccurredAt) && events.Matches(r.Events, ev.Type) {
			out = append(out, r.ID)
		}
	}
	return out, nil
}

// recorded is the deliveries of these events that have a row: event id
// to channel id to status.
func (d *Dispatcher) recorded(ctx context.Context, eventIDs []string) (map[string]map[string]string, error) {
	rows, err := d.q.DeliveriesOfEvents(ctx, eventIDs)
	if err != nil {
		return nil, err
	}
	out := map[string]map[string]string{}
	for _, r := range rows {
		if out[r.EventID] == nil {
			out[r.EventID] = map[string]string{}
		}
		out[r.EventID][r.ChannelID] = r.Status
	}
	return out, nil
}

// anyPending reports whether one of an event's recorded deliveries
// (channel id to status) waits for a retry.
func anyPending(statuses map[string]string) bool {
	for _, st := range statuses {
		if st == StatusPending {
			return true
		}
	}
	return false
}

// fly starts the flight of an event with todo first attempts, or joins
// the entry to the event's flight here (join). No flight (nil) when there
// is nothing to attempt.
func (d *Dispatcher) fly(ev *events.Event, payload, streamID string, todo int, pending bool) (f *flight, join bool) {
	d.flightMu.Lock()
	defer d.flightMu.Unlock()
	if f := d.flights[ev.ID]; f != nil {
		if !slices.Contains(f.streamIDs, streamID) {
			f.streamIDs = append(f.streamIDs, streamID)
		}
		return nil, true
	}
	if todo == 0 {
		return nil, false
	}
	f = &flight{ev: ev, payload: payload, streamIDs: []string{streamID}, remaining: todo, pending: pending}
	d.flights[ev.ID] = f
	return f, false
}

// flightEntries is the stream ids of the events in flight here.
func (d *Dispatcher) flightEntries() []string {
	d.flightMu.Lock()
	defer d.flightMu.Unlock()
	var out []string
	for _, f := range d.flights {
		out = append(out, f.streamIDs...)
	}
	return out
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
			d.dispatch(ctx, retryItem(row))
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
// reads them again. First it claims again the entries of the events in
// flight here, which resets their idle time: however long their attempts
// queue, no consumer takes them while this one lives.
func (d *Dispatcher) claimLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ClaimIdle / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for ids := d.flightEntries(); len(ids) > 0 && ctx.Err() == nil; ids = ids[min(len(ids), 1000):] {
			err := d.rdb.XClaimJustID(ctx, &redis.XClaimArgs{Stream: events.StreamKey, Group: ConsumerGroup,
				Consumer: d.cfg.Consumer, Messages: ids[:min(len(ids), 1000)]}).Err()
			if err != nil && ctx.Err() == nil && !errors.Is(err, redis.Nil) {
				d.log.WarnContext(ctx, "keep events in flight claimed", "err", err)
			}
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
	d.mu.Lock()
	defer d.mu.Unlock()
	id, res := item.channelID, item.res
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
		res := done.res
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
// everything still queued behind its channel, and ends the worker.
func (d *Dispatcher) abandon(id string, q *channelQueue, held queued) {
	items := []queued{held}
	d.mu.Lock()
	for _, waiting := range q.byResource {
		items = append(items, waiting...)
	}
	clear(q.byResource)
	q.ready = nil
	delete(q.inFlight, held.res)
	if q.workers--; q.workers == 0 {
		delete(d.perCh, id)
	}
	d.mu.Unlock()
	d.handBack(items...)
}

// handBack returns deliveries untried, due at once for any replica: a
// retry's row is unlocked (one statement), a first attempt is recorded
// pending with no attempt made.
func (d *Dispatcher) handBack(items ...queued) {
	var rows []string
	for _, it := range items {
		if it.flight == nil {
			rows = append(rows, it.rowID)
			continue
		}
		d.finish(it, StatusPending, it.attempts, 0, Result{})
	}
	if len(rows) > 0 {
		d.unlock(rows...)
	}
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

// unlock hands retries we will not attempt back at once.
func (d *Dispatcher) unlock(ids ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.q.ReleaseDeliveries(ctx, ids); err != nil {
		d.log.Warn("release deliveries", "deliveries", len(ids), "err", err)
	}
}

func (d *Dispatcher) attempt(ctx context.Context, item queued) {
	c, err := d.channel(ctx, item.channelID)
	if errors.Is(err, pgx.ErrNoRows) {
		d.outcomes <- outcome{item: item, gone: true}
		return
	}
	if err != nil {
		d.log.WarnContext(ctx, "load channel for delivery", "channel_id", item.channelID, "err", err)
		if item.flight != nil {
			d.handBack(item)
		}
		return // a retry's lock expires and the poll loop takes it again
	}
	ch, sc := c.ch, c.sc
	n := item.attempts + 1
	if !ch.Enabled {
		d.finish(item, StatusFailed, item.attempts, 0, Result{Err: errors.New("the channel is disabled")})
		return
	}
	if c.err != nil {
		d.finish(item, StatusFailed, n, 0, Result{Err: errors.New("the channel's config cannot be opened with the configured keys")})
		return
	}
	if item.decodeErr != nil {
		d.finish(item, StatusFailed, n, 0, Result{Err: item.decodeErr})
		return
	}
	sctx, cancel := context.WithTimeout(ctx, d.cfg.SendTimeout)
	r := d.svc.d.Sender.Send(sctx, ch.Provider, sc.Config, Message{Event: *item.ev, Payload: item.payload, Attempt: int(n),
		ChannelID: ch.ID, Previous: sc.previous(time.Now())})
	cancel()
	if ctx.Err() != nil {
		// Shutting down: this attempt does not count.
		d.handBack(item)
		return
	}
	switch {
	case r.OK():
		d.finish(item, StatusDelivered, n, 0, r)
	case r.Disable != "":
		d.forget(ch.ID)
		d.disable(ctx, ch.ID, r.Disable)
		d.finish(item, StatusFailed, n, 0, r)
	case int(n) <= len(d.cfg.RetryDelays):
		d.finish(item, StatusPending, n, d.cfg.RetryDelays[n-1], r)
	default:
		d.finish(item, StatusFailed, n, 0, r)
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

func (d *Dispatcher) finish(item queued, status string, attempts int32, retryIn time.Duration, r Result) {
	d.outcomes <- outcome{item: item, status: status, attempts: attempts, retryIn: retryIn, r: r}
}

// recordLoop writes outcomes in batches of what has arrived (up to
// Batch), then acks the entries whose events are settled. It runs until
// outcomes is closed, after every attempt ended, so none is lost on
// shutdown.
func (d *Dispatcher) recordLoop() {
	batch := make([]outcome, 0, d.cfg.Batch)
	for first := range d.outcomes {
		batch = append(batch[:0], first)
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
		clear(batch) // drops the payloads it held
	}
}

// record writes a batch of outcomes, a statement for the first attempts
// (rows written once, with their outcome) and one for the retries, and
// acks the entries whose events are settled.
func (d *Dispatcher) record(batch []outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var firsts []outcome
	var retry db.FinishAttemptsParams
	var retryOut outcomeColumns
	retried := map[string]*events.Event{}
	var orphans []string
	var check []settling
	for _, o := range batch {
		switch it := o.item; {
		case o.gone && it.flight == nil:
			// A retry recorded while its channel was deleted: the trigger
			// that deletes a channel's deliveries ran before it existed.
			orphans = append(orphans, it.rowID)
			check = append(check, settling{eventID: it.eventID, ev: it.ev, streamIDs: []string{it.streamID}})
		case o.gone:
		case it.flight != nil:
			firsts = append(firsts, o)
		default:
			retry.Ids = append(retry.Ids, it.rowID)
			retryOut.add(o)
			retried[it.eventID] = it.ev
		}
	}
	retry.Statuses, retry.Attempts, retry.RetryInSeconds, retry.Codes, retry.Errors = retryOut.columns()
	allWritten, firstErr := d.recordFirsts(ctx, firsts)
	if len(orphans) > 0 {
		if err := d.q.DeleteOrphanDeliveries(ctx, orphans); err != nil {
			// Their locks expire and the next attempt finds them gone again.
			d.log.Warn("delete deliveries of deleted channels", "deliveries", len(orphans), "err", err)
		}
	}
	if len(retry.Ids) > 0 {
		rows, err := d.q.FinishAttempts(ctx, retry)
		if err != nil {
			// The rows stay locked until the lock expires; then they are tried again.
			d.log.Warn("record delivery attempts", "deliveries", len(retry.Ids), "err", err)
		}
		seen := map[string]bool{}
		for _, r := range rows {
			if r.Status != StatusPending && !seen[r.EventID] {
				seen[r.EventID] = true
				check = append(check, settling{eventID: r.EventID, ev: retried[r.EventID], streamIDs: []string{r.StreamID}})
			}
		}
	}
	acks, more := d.land(batch, allWritten, firstErr)
	acks = append(acks, d.settled(ctx, append(check, more...))...)
	d.ack(ctx, acks...)
}

// recordFirsts writes first attempts' rows. A row that exists already (the
// event was also attempted from another entry, maybe by another replica)
// fails the statement: those are left out and the rest written again.
// allWritten is false when some row existed.
func (d *Dispatcher) recordFirsts(ctx context.Context, firsts []outcome) (allWritten bool, err error) {
	allWritten = true
	for try := 0; len(firsts) > 0; try++ {
		err = d.q.RecordFirstAttempts(ctx, firstAttempts(firsts))
		if !service.IsUniqueViolation(err) || try == 2 {
			break
		}
		allWritten = false
		var recorded map[string]map[string]string
		if recorded, err = d.recorded(ctx, eventIDsOf(firsts)); err != nil {
			break
		}
		firsts = slices.DeleteFunc(firsts, func(o outcome) bool {
			_, ok := recorded[o.item.eventID][o.item.channelID]
			return ok
		})
	}
	if err != nil {
		// Their entries stay unacked and are read again once idle.
		d.log.Warn("record first delivery attempts", "deliveries", len(firsts), "err", err)
	}
	return allWritten, err
}

// firstAttempts is the statement's arrays for first attempts: each event
// (its payload) once, and one element per delivery.
func firstAttempts(firsts []outcome) db.RecordFirstAttemptsParams {
	var p db.RecordFirstAttemptsParams
	var out outcomeColumns
	eventOf := map[*flight]int32{}
	for _, o := range firsts {
		it := o.item
		e, ok := eventOf[it.flight]
		if !ok {
			p.EventIds = append(p.EventIds, it.eventID)
			p.EventTypes = append(p.EventTypes, it.eventType)
			p.Payloads = append(p.Payloads, it.flight.payload)
			p.StreamIds = append(p.StreamIds, it.streamID)
			e = int32(len(p.EventIds)) // 1-based, as SQL arrays
			eventOf[it.flight] = e
		}
		p.EventOf = append(p.EventOf, e)
		p.ChannelIds = append(p.ChannelIds, it.channelID)
		out.add(o)
	}
	p.Statuses, p.Attempts, p.RetryInSeconds, p.Codes, p.Errors = out.columns()
	return p
}

func eventIDsOf(outs []outcome) []string {
	var ids []string
	for _, o := range outs {
		if !slices.Contains(ids, o.item.eventID) {
			ids = append(ids, o.item.eventID)
		}
	}
	return ids
}

// outcomeColumns is the outcome half of a batch statement's arrays.
type outcomeColumns struct {
	statuses []string
	attempts []int32
	retryIn  []float64
	codes    []int32
	errors   []string // empty: none
}

func (c *outcomeColumns) add(o outcome) {
	msg := ""
	if o.r.Err != nil {
		msg = describe(o.r.Err)
	}
	c.statuses = append(c.statuses, o.status)
	c.attempts = append(c.attempts, o.attempts)
	c.retryIn = append(c.retryIn, o.retryIn.Seconds())
	c.codes = append(c.codes, int32(o.r.StatusCode))
	c.errors = append(c.errors, msg)
}

func (c *outcomeColumns) columns() ([]string, []int32, []float64, []int32, []string) {
	return c.statuses, c.attempts, c.retryIn, c.codes, c.errors
}

// settling is an event that may be settled, and its entries.
type settling struct {
	eventID   string
	ev        *events.Event // nil: its payload cannot be decoded
	streamIDs []string
}

// land counts the batch's recorded first attempts against their flights.
// A flight whose attempts are all recorded ends: its entries are acked at
// once when every delivery is final, checked when some may wait for a
// retry, and left to be read again when a record failed. allWritten is
// false when some row existed already (written elsewhere first, maybe
// pending): then every flight of the batch is checked.
func (d *Dispatcher) land(batch []outcome, allWritten bool, recordErr error) (acks []string, check []settling) {
	d.flightMu.Lock()
	defer d.flightMu.Unlock()
	for _, o := range batch {
		f := o.item.flight
		if f == nil {
			continue
		}
		switch {
		case o.gone:
		case recordErr != nil:
			f.lost = true
		case o.status == StatusPending || !allWritten:
			f.pending = true
		}
		if f.remaining--; f.remaining > 0 {
			continue
		}
		if d.flights[f.ev.ID] == f {
			delete(d.flights, f.ev.ID)
		}
		switch {
		case f.lost:
		case f.pending:
			check = append(check, settling{eventID: f.ev.ID, ev: f.ev, streamIDs: f.streamIDs})
		default:
			acks = append(acks, f.streamIDs...)
		}
	}
	return acks, check
}

// settled is the entries of the events whose every matching channel has a
// final delivery. A channel without a row has its first attempt still
// coming (in flight in some replica, or lost with one and made after a
// claim), so it keeps the entry unacked.
func (d *Dispatcher) settled(ctx context.Context, events []settling) []string {
	if len(events) == 0 {
		return nil
	}
	ids := make([]string, 0, len(events))
	for _, e := range events {
		ids = append(ids, e.eventID)
	}
	recorded, err := d.recorded(ctx, ids)
	if err != nil {
		// Their entries are read again once idle, and acked then.
		d.log.Warn("check settled events", "err", err)
		return nil
	}
	byTeam := map[string][]db.MatchingChannelsRow{}
	var acks []string
	for _, e := range events {
		have := recorded[e.eventID]
		if anyPending(have) {
			continue
		}
		var chans []string
		if e.ev != nil {
			if chans, err = d.matching(ctx, byTeam, e.ev); err != nil {
				d.log.Warn("find channels for event", "event_id", e.eventID, "err", err)
				continue
			}
		}
		if !slices.ContainsFunc(chans, func(c string) bool { _, ok := have[c]; return !ok }) {
			acks = append(acks, e.streamIDs...)
		}
	}
	return acks
}

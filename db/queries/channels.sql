-- name: CreateChannel :one
INSERT INTO channels (id, team_id, name, provider, config_sealed, events)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: GetChannel :one
SELECT * FROM channels WHERE id = $1 AND team_id = $2;

-- name: ListChannels :many
SELECT * FROM channels WHERE team_id = $1 ORDER BY created_at, id;

-- name: UpdateChannel :one
-- Name, filter and enabled state; re-enabling clears the reason it was disabled.
UPDATE channels SET
    name = sqlc.arg(name),
    events = sqlc.arg(events),
    enabled = sqlc.arg(enabled),
    disabled_reason = CASE WHEN sqlc.arg(enabled)::boolean THEN NULL ELSE disabled_reason END,
    config_sealed = sqlc.arg(config_sealed),
    updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id)
RETURNING *;

-- name: SetChannelConfig :one
UPDATE channels SET config_sealed = $3, updated_at = now()
WHERE id = $1 AND team_id = $2
RETURNING *;

-- name: DisableChannel :one
-- Only an enabled channel: two sends that both see a 410 disable it once.
UPDATE channels SET enabled = false, disabled_reason = $2, updated_at = now() WHERE id = $1 AND enabled
RETURNING *;

-- name: DeleteChannel :one
DELETE FROM channels WHERE id = $1 AND team_id = $2
RETURNING *;

-- name: MatchingChannels :many
-- The enabled channels of a team; the caller keeps those made before the
-- event occurred whose filter matches (wildcards).
SELECT id, events, created_at FROM channels
WHERE team_id = $1 AND enabled;

-- name: ChannelForDelivery :one
SELECT * FROM channels WHERE id = $1;

-- name: RecordFirstAttempts :exec
-- Writes deliveries with their first attempt's outcome: the event arrays
-- have one element per event, the others one per delivery, event_of
-- indexing the events. Pending with next_attempt_at for a retry
-- (attempts 0 and due at once for one handed back untried), or final. A
-- row that exists (the event was also attempted from another entry) fails
-- the statement with a unique violation: the caller leaves those out and
-- writes the rest again. That is rare; ON CONFLICT DO NOTHING would instead
-- probe the unique index before every insert, which costs a tenth of the
-- dispatcher's throughput (docs/benchmarks.md, "Notification channels").
-- A channel deleted since the dispatcher looked it up gets no row (there
-- is no foreign key to refuse one): the batch's channels are looked up
-- once per statement, not probed per row.
INSERT INTO channel_deliveries (event_id, event_type, channel_id, payload, stream_id, status, attempts, next_attempt_at,
                                last_status_code, last_error)
SELECT (sqlc.arg(event_ids)::text[])[u.e], (sqlc.arg(event_types)::text[])[u.e], u.channel_id,
       (sqlc.arg(payloads)::text[])[u.e], (sqlc.arg(stream_ids)::text[])[u.e], u.status, u.attempts,
       now() + make_interval(secs => u.retry_in), NULLIF(u.code, 0), NULLIF(u.err, '')
FROM (SELECT unnest(sqlc.arg(event_of)::int[]) AS e, unnest(sqlc.arg(channel_ids)::text[]) AS channel_id,
             unnest(sqlc.arg(statuses)::text[]) AS status, unnest(sqlc.arg(attempts)::int[]) AS attempts,
             unnest(sqlc.arg(retry_in_seconds)::float8[]) AS retry_in, unnest(sqlc.arg(codes)::int[]) AS code,
             unnest(sqlc.arg(errors)::text[]) AS err) AS u
WHERE u.channel_id = ANY(ARRAY(SELECT id FROM channels WHERE id = ANY(sqlc.arg(channel_ids)::text[])));

-- name: DeliveriesOfEvents :many
-- The deliveries recorded for these events, and whether each is final:
-- an index lookup per event (OFFSET 0 keeps the planner from turning it
-- into a scan of the whole table when its statistics predate its growth).
SELECT d.event_id, d.channel_id, d.status
FROM unnest(sqlc.arg(event_ids)::text[]) AS e(id)
CROSS JOIN LATERAL (SELECT event_id, channel_id, status FROM channel_deliveries WHERE event_id = e.id OFFSET 0) AS d;

-- name: ClaimDueDeliveries :many
-- Takes pending deliveries that are due and that no live replica holds.
UPDATE channel_deliveries SET locked_until = now() + make_interval(secs => sqlc.arg(lock_seconds)::float8), updated_at = now()
WHERE id IN (
    SELECT id FROM channel_deliveries
    WHERE status = 'pending' AND next_attempt_at <= now() AND (locked_until IS NULL OR locked_until < now())
    ORDER BY next_attempt_at
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: DeleteOrphanDeliveries :exec
-- Deletes retries whose channel is gone (recorded while it was deleted).
DELETE FROM channel_deliveries d
WHERE d.id = ANY(sqlc.arg(ids)::text[]) AND NOT EXISTS (SELECT 1 FROM channels c WHERE c.id = d.channel_id);

-- name: DeleteDeliveriesBefore :execrows
-- Deletes up to batch_size final deliveries created before the cutoff,
-- found channel by channel at the old end of the channel index (no index
-- on created_at alone: it would cost every delivery's insert).
-- The ids are collected first (ARRAY), so the delete is by primary key
-- rather than a join that could scan the whole table per batch.
DELETE FROM channel_deliveries WHERE id = ANY(ARRAY(
    SELECT old.id FROM channels c
    CROSS JOIN LATERAL (
        SELECT d.id FROM channel_deliveries d
        WHERE d.channel_id = c.id AND d.created_at < sqlc.arg(before) AND d.status <> 'pending'
        ORDER BY d.created_at
        LIMIT sqlc.arg(batch_size)::int
    ) AS old
    LIMIT sqlc.arg(batch_size)::int
));

-- name: ReleaseDeliveries :exec
-- Hands taken deliveries back untried (shutting down): due at once.
UPDATE channel_deliveries SET locked_until = NULL, next_attempt_at = now(), updated_at = now()
WHERE id = ANY(sqlc.arg(ids)::text[]) AND status = 'pending';

-- name: FinishAttempts :many
-- Records attempts' outcomes (one element per delivery): status stays
-- pending with next_attempt_at for a retry, or becomes final. A code of 0
-- and an empty error are none.
UPDATE channel_deliveries AS d SET
    status = u.status,
    attempts = u.attempts,
    next_attempt_at = now() + make_interval(secs => u.retry_in),
    locked_until = NULL,
    last_status_code = NULLIF(u.code, 0),
    last_error = NULLIF(u.err, ''),
    updated_at = now()
FROM (SELECT unnest(sqlc.arg(ids)::text[]) AS id, unnest(sqlc.arg(statuses)::text[]) AS status,
             unnest(sqlc.arg(attempts)::int[]) AS attempts, unnest(sqlc.arg(retry_in_seconds)::float8[]) AS retry_in,
             unnest(sqlc.arg(codes)::int[]) AS code, unnest(sqlc.arg(errors)::text[]) AS err) AS u
WHERE d.id = u.id
RETURNING d.event_id, d.stream_id, d.status;

-- name: ListDeliveries :many
-- A channel's deliveries, newest first, after the (created_at, id) cursor.
SELECT id, event_id, event_type, channel_id, status, attempts, next_attempt_at, last_status_code, last_error, created_at, updated_at
FROM channel_deliveries
WHERE channel_id = sqlc.arg(channel_id)
  AND (sqlc.narg(before_created)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_created)::timestamptz, sqlc.arg(before_id)::text))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(max_rows);

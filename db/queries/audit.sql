-- name: InsertAuditLog :exec
-- Appends an audit row and its outbox entry in one statement, so no caller
-- can write one without the other.
WITH l AS (
    INSERT INTO audit_logs (id, event_id, team_id, actor_type, actor_id, actor_name, resource_type, resource_id, action, scope, status, metadata)
    VALUES (sqlc.arg(id), sqlc.arg(event_id), sqlc.narg(team_id), sqlc.arg(actor_type), sqlc.arg(actor_id), sqlc.arg(actor_name),
            sqlc.arg(resource_type), sqlc.arg(resource_id), sqlc.arg(action), sqlc.arg(scope), sqlc.arg(status), sqlc.arg(metadata))
    RETURNING id
)
INSERT INTO event_outbox (log_id) SELECT l.id FROM l;

-- name: ListAuditLogs :many
-- One page, newest first, keyset on (created_at, id). team_key is a team
-- id, or '' for the platform's rows. Empty arrays mean no filter.
SELECT * FROM audit_logs
WHERE coalesce(team_id, '') = sqlc.arg(team_key)::text
  AND scope = ANY(sqlc.arg(scopes)::text[])
  AND (cardinality(sqlc.arg(resource_types)::text[]) = 0 OR resource_type = ANY(sqlc.arg(resource_types)::text[]))
  AND (cardinality(sqlc.arg(actions)::text[]) = 0 OR action = ANY(sqlc.arg(actions)::text[]))
  AND (cardinality(sqlc.arg(statuses)::text[]) = 0 OR status = ANY(sqlc.arg(statuses)::text[]))
  AND (sqlc.narg(actor_id)::text IS NULL OR actor_id = sqlc.narg(actor_id)::text)
  AND (sqlc.narg(resource_id)::text IS NULL OR resource_id = sqlc.narg(resource_id)::text)
  AND (sqlc.narg(since)::timestamptz IS NULL OR created_at >= sqlc.narg(since)::timestamptz)
  AND (sqlc.narg(until)::timestamptz IS NULL OR created_at < sqlc.narg(until)::timestamptz)
  AND (sqlc.narg(before_at)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_at)::timestamptz, sqlc.narg(before_id)::text))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(max_rows);

-- name: ListUnpublishedEvents :many
-- The oldest unpublished events, only of transactions older than every
-- running one: a transaction still open may yet commit rows with lower seq.
SELECT o.seq, sqlc.embed(audit_logs) FROM event_outbox o
JOIN audit_logs ON audit_logs.id = o.log_id
WHERE o.xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY o.seq
LIMIT sqlc.arg(max_rows);

-- name: MarkEventsPublished :execrows
-- Published events leave the outbox (their audit rows stay).
DELETE FROM event_outbox WHERE seq = ANY(sqlc.arg(seqs)::bigint[]);

-- name: CountUnpublishedEvents :one
SELECT count(*) FROM event_outbox;

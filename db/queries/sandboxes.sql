-- name: LockTeamSandboxes :exec
-- Serializes sandbox creation per team so the running-sandbox limit holds.
SELECT pg_advisory_xact_lock(4242002, hashtext(sqlc.arg(team_id)::text));

-- name: CountActiveSandboxes :one
SELECT count(*) FROM sandboxes WHERE team_id = $1 AND status IN ('pending', 'running');

-- name: InsertSandbox :one
INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, disk_mb, timeout_sec, metadata, created_by)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(host_id), sqlc.arg(template), 'pending', sqlc.arg(vcpus),
        sqlc.arg(memory_mb), sqlc.arg(disk_mb), sqlc.arg(timeout_sec), sqlc.arg(metadata), sqlc.arg(created_by))
RETURNING *;

-- name: GetSandbox :one
SELECT * FROM sandboxes WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id);

-- name: ListSandboxes :many
-- Newest first; the cursor is the (created_at, id) of the last row seen.
SELECT * FROM sandboxes
WHERE team_id = sqlc.arg(team_id)
  AND (cardinality(sqlc.arg(statuses)::text[]) = 0 OR status = ANY(sqlc.arg(statuses)::text[]))
  AND metadata @> sqlc.arg(metadata)::jsonb
  AND (sqlc.narg(cursor_created_at)::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg(cursor_created_at)::timestamptz, sqlc.arg(cursor_id)::text))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: TransitionSandbox :one
-- Conditional state change: only applies when the row is still in one of the
-- expected states, so concurrent transitions never overwrite each other.
UPDATE sandboxes SET
    status         = sqlc.arg(to_status),
    error_message  = sqlc.arg(error_message),
    updated_at     = now(),
    started_at     = CASE WHEN sqlc.arg(to_status) = 'running' AND started_at IS NULL THEN now() ELSE started_at END,
    last_active_at = CASE WHEN sqlc.arg(to_status) = 'running' THEN now() ELSE last_active_at END,
    paused_at      = CASE WHEN sqlc.arg(to_status) = 'paused' THEN now() ELSE paused_at END,
    stopped_at     = CASE WHEN sqlc.arg(to_status) = 'stopped' THEN now() ELSE stopped_at END,
    timeout_sec    = COALESCE(sqlc.narg(timeout_sec)::integer, timeout_sec)
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = ANY(sqlc.arg(from_statuses)::text[])
RETURNING *;

-- name: ReconcileSandbox :execrows
-- The reconciler's change: applies only if the row was not touched since it
-- was read (updated_at), so it never undoes a transition made meanwhile.
UPDATE sandboxes SET
    status     = sqlc.arg(to_status),
    updated_at = now(),
    paused_at  = CASE WHEN sqlc.arg(to_status) = 'paused' THEN now() ELSE paused_at END,
    stopped_at = CASE WHEN sqlc.arg(to_status) = 'stopped' THEN now() ELSE stopped_at END,
    error_message = CASE WHEN sqlc.arg(to_status) = 'error' THEN 'the sandbox VM exited unexpectedly' ELSE error_message END
WHERE id = sqlc.arg(id) AND status = sqlc.arg(from_status) AND updated_at = sqlc.arg(seen_updated_at);

-- name: TouchSandbox :one
UPDATE sandboxes SET last_active_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = 'running'
RETURNING last_active_at;

-- name: ListHostSandboxes :many
SELECT * FROM sandboxes WHERE host_id = $1 AND status IN ('running', 'paused', 'missing');

-- name: CountTemplateUsers :one
SELECT count(*) FROM sandboxes
WHERE team_id = sqlc.arg(team_id) AND template = sqlc.arg(template) AND status <> 'stopped';

-- name: SyncSandboxActivity :execrows
-- Records activity the agent saw (exec, files, PTY...) so the database's
-- last_active_at follows without a write per request; it only moves forward.
UPDATE sandboxes SET last_active_at = sqlc.arg(last_active_at)
WHERE id = sqlc.arg(id) AND status = 'running'
  AND (last_active_at IS NULL OR last_active_at < sqlc.arg(last_active_at));

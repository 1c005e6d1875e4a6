-- name: LockTeamSandboxes :exec
-- Serializes sandbox creation per team so the running-sandbox limit holds.
SELECT pg_advisory_xact_lock(4242002, hashtext(sqlc.arg(team_id)::text));

-- name: CountActiveSandboxes :one
-- The team's live sandboxes under its running-sandbox limit: a template
-- build's own sandbox is the platform's, bounded per host instead.
SELECT count(*) FROM sandboxes WHERE team_id = $1 AND status IN ('pending', 'running') AND build_id IS NULL;

-- name: InsertSandbox :one
-- A new sandbox is pending under the create operation's lease; build_id
-- marks a template build's own sandbox.
-- end_after_sec, when set, starts the end-of-life timer (end_at).
INSERT INTO sandboxes (id, team_id, host_id, template, status, vcpus, memory_mb, disk_mb, timeout_sec, metadata, created_by,
                       op, op_id, op_owner, op_expires_at, build_id, end_at, on_end, envd_access_token, public_ports, auto_resume)
VALUES (sqlc.arg(id), sqlc.arg(team_id), sqlc.arg(host_id), sqlc.arg(template), 'pending', sqlc.arg(vcpus),
        sqlc.arg(memory_mb), sqlc.arg(disk_mb), sqlc.arg(timeout_sec), sqlc.arg(metadata), sqlc.arg(created_by),
        'create', sqlc.arg(op_id)::text, sqlc.arg(op_owner)::text, now() + make_interval(secs => sqlc.arg(op_ttl_seconds)::float8),
        sqlc.narg(build_id), now() + make_interval(secs => sqlc.narg(end_after_sec)::integer),
        COALESCE(sqlc.narg(on_end)::text, 'destroy'), sqlc.narg(envd_access_token)::text,
        COALESCE(sqlc.narg(public_ports)::integer[], '{}'), sqlc.arg(auto_resume))
RETURNING *;

-- name: GetSandbox :one
SELECT * FROM sandboxes WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id);

-- name: GetSandboxByID :one
-- The sandbox HTTP proxy's lookup: the request names a sandbox before its
-- caller's team is known (the proxy checks the team itself).
SELECT * FROM sandboxes WHERE id = sqlc.arg(id);

-- name: SetSandboxProxyOptions :one
-- The proxy options of a sandbox create or PATCH sets.
UPDATE sandboxes SET public_ports = COALESCE(sqlc.narg(public_ports)::integer[], public_ports), auto_resume = COALESCE(sqlc.narg(auto_resume)::boolean, auto_resume), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id)
RETURNING *;

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

-- name: SetSandboxStatus :one
-- The one status write (service.StateTx.Change). Conditional: it applies only
-- while the row is in one of from_statuses (and, when given, unchanged since
-- it was read at seen_updated_at), so concurrent writers never overwrite each
-- other. The locked CTE returns the status the row really had. A status
-- change ends the operation recorded on the row: that operation's own later
-- change is conditional on the status it left and so fails.
WITH cur AS (
    SELECT c.id, c.status FROM sandboxes c
    WHERE c.id = sqlc.arg(id)::text
      AND (sqlc.narg(team_id)::text IS NULL OR c.team_id = sqlc.narg(team_id)::text)
      AND c.status = ANY(sqlc.arg(from_statuses)::text[])
      AND (sqlc.narg(seen_updated_at)::timestamptz IS NULL OR c.updated_at = sqlc.narg(seen_updated_at)::timestamptz)
    FOR UPDATE
)
UPDATE sandboxes s SET
    status         = sqlc.arg(to_status)::text,
    error_message  = COALESCE(sqlc.narg(error_message)::text, s.error_message),
    updated_at     = now(),
    started_at     = CASE WHEN sqlc.arg(to_status)::text = 'running' AND s.started_at IS NULL THEN now() ELSE s.started_at END,
    last_active_at = CASE WHEN sqlc.arg(to_status)::text = 'running' THEN now() ELSE s.last_active_at END,
    paused_at      = CASE WHEN sqlc.arg(to_status)::text = 'paused' THEN now() ELSE s.paused_at END,
    stopped_at     = CASE WHEN sqlc.arg(to_status)::text = 'stopped' THEN now() ELSE s.stopped_at END,
    timeout_sec    = COALESCE(sqlc.narg(timeout_sec)::integer, s.timeout_sec),
    -- The end-of-life timer runs only while the sandbox does: a pause
    -- stops it, and a resume that names a lifetime starts it again.
    end_at         = CASE WHEN sqlc.narg(end_after_sec)::integer IS NOT NULL THEN now() + make_interval(secs => sqlc.narg(end_after_sec)::integer)
                          WHEN sqlc.arg(to_status)::text = 'paused' THEN NULL ELSE s.end_at END,
    op = NULL, op_id = NULL, op_owner = NULL, op_expires_at = NULL
FROM cur
WHERE s.id = cur.id
RETURNING cur.status AS from_status, sqlc.embed(s);

-- name: SetSandboxTimeout :one
-- A new idle timeout for a sandbox still in the given state (not a status change).
UPDATE sandboxes SET timeout_sec = sqlc.arg(timeout_sec), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = sqlc.arg(status)
RETURNING *;

-- name: SetSandboxEndAt :one
-- Moves a running sandbox's end-of-life timer to end_after_sec from now;
-- only_later keeps a later end already set (E2B's connect never shortens).
UPDATE sandboxes SET end_at = CASE WHEN sqlc.arg(only_later)::boolean AND end_at IS NOT NULL
                                   THEN GREATEST(end_at, now() + make_interval(secs => sqlc.arg(end_after_sec)::integer))
                                   ELSE now() + make_interval(secs => sqlc.arg(end_after_sec)::integer) END,
                     updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = 'running'
RETURNING *;

-- name: ListEndedSandboxes :many
-- Running sandboxes whose end-of-life timer has passed, the oldest first.
SELECT * FROM sandboxes
WHERE status = 'running' AND end_at IS NOT NULL AND end_at <= now()
ORDER BY end_at, id
LIMIT sqlc.arg(lim);

-- name: TouchSandbox :one
UPDATE sandboxes SET last_active_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = 'running'
RETURNING last_active_at;

-- name: ListHostSandboxes :many
-- The host's sandboxes in the given states, oldest first.
SELECT * FROM sandboxes
WHERE host_id = sqlc.arg(host_id) AND status = ANY(sqlc.arg(statuses)::text[])
ORDER BY created_at, id;

-- name: CountTemplateUsers :one
SELECT count(*) FROM sandboxes
WHERE team_id = sqlc.arg(team_id) AND template = sqlc.arg(template) AND status <> 'stopped';

-- name: SyncSandboxActivity :execrows
-- Records activity the agent saw (exec, files, PTY...) so the database's
-- last_active_at follows without a write per request; it only moves forward.
UPDATE sandboxes SET last_active_at = sqlc.arg(last_active_at)
WHERE id = sqlc.arg(id) AND status = 'running'
  AND (last_active_at IS NULL OR last_active_at < sqlc.arg(last_active_at));

-- name: ListSyncedSandboxes :many
-- The host's sandboxes in the given states for the reconciler, oldest
-- first, each with whether an operation lease still owns it (judged by the
-- database clock).
SELECT sqlc.embed(sandboxes), (op IS NOT NULL AND op_expires_at > now())::boolean AS op_live
FROM sandboxes
WHERE host_id = sqlc.arg(host_id) AND status = ANY(sqlc.arg(statuses)::text[])
ORDER BY created_at, id;

-- name: ClaimSandboxOp :one
-- Records an operation on the team's sandbox in one of from_statuses. It
-- fails (no row) while another operation's lease is live, unless
-- take_over is set (destroy wins over any operation in flight). It counts
-- as a change of the row (updated_at), so a decision made on an older read
-- does not apply.
UPDATE sandboxes SET op = sqlc.arg(op)::text, op_id = sqlc.arg(op_id)::text, op_owner = sqlc.arg(op_owner)::text,
    op_expires_at = now() + make_interval(secs => sqlc.arg(op_ttl_seconds)::float8), updated_at = now()
WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id) AND status = ANY(sqlc.arg(from_statuses)::text[])
  AND (op IS NULL OR op_expires_at <= now() OR sqlc.arg(take_over)::boolean)
RETURNING *;

-- name: RenewSandboxOp :execrows
-- Extends the lease of an operation still recorded; 0 rows: it ended or
-- was taken over.
UPDATE sandboxes SET op_expires_at = now() + make_interval(secs => sqlc.arg(op_ttl_seconds)::float8)
WHERE id = sqlc.arg(id) AND op_id = sqlc.arg(op_id);

-- name: EndSandboxOp :exec
-- Ends an operation that changed no status (it failed, or left the state
-- as it was), unless another took the row over.
UPDATE sandboxes SET op = NULL, op_id = NULL, op_owner = NULL, op_expires_at = NULL
WHERE id = sqlc.arg(id) AND op_id = sqlc.arg(op_id);

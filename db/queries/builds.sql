-- name: InsertBuild :one
INSERT INTO template_builds (id, name, base_template, recipe, healthcheck, steps, vcpus, memory_mb, disk_mb, team_id, created_by, has_archive)
VALUES (sqlc.arg(id), sqlc.arg(name), sqlc.arg(base_template), sqlc.arg(recipe), sqlc.narg(healthcheck), sqlc.arg(steps), sqlc.arg(vcpus),
        sqlc.arg(memory_mb), sqlc.arg(disk_mb), sqlc.arg(team_id), sqlc.arg(created_by), sqlc.arg(has_archive))
RETURNING *;

-- name: InsertBuildArchive :exec
INSERT INTO template_build_archives (build_id, format, data) VALUES ($1, $2, $3);

-- name: GetBuildArchive :one
SELECT * FROM template_build_archives WHERE build_id = $1;

-- name: DeleteBuildArchive :exec
DELETE FROM template_build_archives WHERE build_id = $1;

-- name: GetBuild :one
SELECT * FROM template_builds WHERE id = $1;

-- name: ListBuilds :many
-- Newest first; the cursor is the (created_at, id) of the last row seen.
SELECT * FROM template_builds
WHERE (cardinality(sqlc.arg(statuses)::text[]) = 0 OR status = ANY(sqlc.arg(statuses)::text[]))
  AND (sqlc.arg(name)::text = '' OR name = sqlc.arg(name)::text)
  AND (sqlc.narg(cursor_created_at)::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg(cursor_created_at)::timestamptz, sqlc.arg(cursor_id)::text))
ORDER BY created_at DESC, id DESC
LIMIT sqlc.arg(lim);

-- name: ClaimBuild :one
-- A worker takes a queued build and holds it under its lease.
UPDATE template_builds
SET status = 'running', worker = sqlc.arg(worker), attempts = attempts + 1,
    lease_expires_at = now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8),
    started_at = coalesce(started_at, now()), updated_at = now()
WHERE id = sqlc.arg(id) AND status = 'queued'
RETURNING *;

-- name: RenewBuildLease :one
-- Extends the worker's lease; no row when the build is no longer its own
-- and running. cancel_requested tells the worker to stop.
UPDATE template_builds
SET lease_expires_at = now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8)
WHERE id = sqlc.arg(id) AND worker = sqlc.arg(worker) AND status = 'running' AND lease_expires_at > now()
RETURNING cancel_requested;

-- name: RecordBuildProgress :execrows
UPDATE template_builds
SET steps = sqlc.arg(steps), current_step = sqlc.arg(current_step), sandbox_id = sqlc.narg(sandbox_id), updated_at = now()
WHERE id = sqlc.arg(id) AND worker = sqlc.arg(worker) AND status = 'running';

-- name: FinishBuild :one
-- The worker's last word: only while it still holds the build.
UPDATE template_builds
SET status = sqlc.arg(status), error_message = sqlc.arg(error_message), template_id = sqlc.narg(template_id),
    steps = sqlc.arg(steps), current_step = sqlc.arg(current_step), lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE id = sqlc.arg(id) AND worker = sqlc.arg(worker) AND status = 'running'
RETURNING *;

-- name: CancelQueuedBuild :one
UPDATE template_builds
SET status = 'cancelled', cancel_requested = true, error_message = 'cancelled before it started', finished_at = now(), updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *;

-- name: RequestBuildCancel :one
UPDATE template_builds SET cancel_requested = true, updated_at = now()
WHERE id = $1 AND status = 'running'
RETURNING *;

-- name: ExpiredBuilds :many
-- Running builds whose worker stopped renewing (it died, or lost the database).
SELECT * FROM template_builds
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY created_at
FOR UPDATE SKIP LOCKED;

-- name: RequeueBuild :one
-- Retry from the start: the earlier attempt's results are dropped.
UPDATE template_builds
SET status = 'queued', worker = '', lease_expires_at = NULL, steps = '[]'::jsonb, current_step = 0,
    sandbox_id = NULL, error_message = sqlc.arg(reason), updated_at = now()
WHERE id = sqlc.arg(id) AND status = 'running' AND lease_expires_at < now()
RETURNING *;

-- name: FailExpiredBuild :one
UPDATE template_builds
SET status = 'failed', error_message = sqlc.arg(reason), lease_expires_at = NULL, finished_at = now(), updated_at = now()
WHERE id = sqlc.arg(id) AND status = 'running' AND lease_expires_at < now()
RETURNING *;

-- name: StaleQueuedBuilds :many
-- Queued builds no worker has taken for a while (their queue entry may be
-- lost); the reaper pushes them again and touches them.
UPDATE template_builds SET updated_at = now()
WHERE status = 'queued' AND updated_at < now() - make_interval(secs => sqlc.arg(older_than_seconds)::float8)
RETURNING id;

-- name: LiveBuildNamed :one
SELECT count(*) FROM template_builds WHERE name = $1 AND status IN ('queued', 'running');

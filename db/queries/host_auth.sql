-- Host registration, credentials, heartbeats and liveness (issue 6).

-- name: InsertPendingHost :one
INSERT INTO hosts (id, team_id, name, status, created_by)
VALUES (sqlc.arg(id), sqlc.narg(team_id), sqlc.arg(name), 'pending', sqlc.narg(created_by))
RETURNING *;

-- name: ListTeamHosts :many
SELECT * FROM hosts WHERE team_id = $1 ORDER BY created_at, id;

-- name: DeleteHostByID :execrows
DELETE FROM hosts WHERE id = $1;

-- name: GetTeamBYOC :one
SELECT byoc_enabled FROM teams WHERE id = $1;

-- name: SetTeamBYOC :exec
UPDATE teams SET byoc_enabled = sqlc.arg(byoc_enabled), updated_at = now() WHERE id = sqlc.arg(id);

-- name: RegisterHostSpecs :one
-- The agent registered: record where it listens and what it runs on.
UPDATE hosts SET
    address = sqlc.arg(address), status = 'online',
    vmm = sqlc.arg(vmm), accel = sqlc.arg(accel), arch = sqlc.arg(arch), version = sqlc.arg(version),
    cpu_count = sqlc.arg(cpu_count), memory_mb = sqlc.arg(memory_mb), disk_gb = sqlc.arg(disk_gb),
    max_vcpus = sqlc.arg(max_vcpus), max_memory_mb = sqlc.arg(max_memory_mb), max_disk_mb = sqlc.arg(max_disk_mb),
    capacity_vcpus = sqlc.arg(capacity_vcpus), capacity_memory_mb = sqlc.arg(capacity_memory_mb),
    committed_vcpus = sqlc.arg(committed_vcpus), committed_memory_mb = sqlc.arg(committed_memory_mb),
    last_heartbeat_at = now(), updated_at = now()
WHERE id = sqlc.arg(id)
RETURNING *;

-- name: HeartbeatHost :one
-- A live host is online whatever it was; the reconciler syncs its sandboxes next.
-- The resources it reports replace the stored ones; a heartbeat without
-- them (NULLs) keeps what was reported before.
UPDATE hosts SET status = 'online', last_heartbeat_at = now(),
    updated_at = CASE WHEN status <> 'online' THEN now() ELSE updated_at END,
    max_vcpus           = COALESCE(sqlc.narg(max_vcpus)::integer, max_vcpus),
    max_memory_mb       = COALESCE(sqlc.narg(max_memory_mb)::integer, max_memory_mb),
    max_disk_mb         = COALESCE(sqlc.narg(max_disk_mb)::integer, max_disk_mb),
    capacity_vcpus      = COALESCE(sqlc.narg(capacity_vcpus)::integer, capacity_vcpus),
    capacity_memory_mb  = COALESCE(sqlc.narg(capacity_memory_mb)::bigint, capacity_memory_mb),
    committed_vcpus     = COALESCE(sqlc.narg(committed_vcpus)::integer, committed_vcpus),
    committed_memory_mb = COALESCE(sqlc.narg(committed_memory_mb)::bigint, committed_memory_mb)
WHERE id = sqlc.arg(id) AND status <> 'pending'
RETURNING *;

-- name: MarkHostUnreachable :execrows
-- The host, if it is online and silent since before the cutoff. Checked at
-- update time, so a heartbeat that arrived meanwhile keeps it online.
UPDATE hosts SET status = 'unreachable', updated_at = now()
WHERE id = sqlc.arg(id) AND status = 'online'
  AND (last_heartbeat_at IS NULL OR last_heartbeat_at < sqlc.arg(cutoff)::timestamptz);

-- name: InsertHostRefreshToken :one
INSERT INTO host_refresh_tokens (id, host_id, family_id, token_hash, expires_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING *;

-- name: GetHostRefreshTokenForUpdate :one
SELECT * FROM host_refresh_tokens WHERE token_hash = $1 FOR UPDATE;

-- name: RevokeHostRefreshToken :execrows
UPDATE host_refresh_tokens SET revoked_at = now(), replaced_by = sqlc.arg(replaced_by)
WHERE id = sqlc.arg(id) AND revoked_at IS NULL;

-- name: RevokeHostRefreshFamily :execrows
UPDATE host_refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL;

-- name: RevokeHostRefreshTokens :execrows
UPDATE host_refresh_tokens SET revoked_at = now() WHERE host_id = $1 AND revoked_at IS NULL;

-- name: ListHostRefreshTokens :many
SELECT * FROM host_refresh_tokens WHERE host_id = $1 ORDER BY created_at, id;

-- name: SetHostCert :one
-- A leaf was issued to the host: at a refresh the one it replaces stays
-- accepted (keep_previous), at a registration it does not.
UPDATE hosts SET
    cert_fingerprint_prev = CASE WHEN sqlc.arg(keep_previous)::bool THEN cert_fingerprint END,
    cert_fingerprint = sqlc.arg(fingerprint), cert_expires_at = sqlc.arg(expires_at), updated_at = now()
WHERE id = sqlc.arg(id)
RETURNING *;

-- name: LockHostStatus :one
-- The status a heartbeat is about to replace, held until it commits so the
-- change from unreachable to online is recorded once.
SELECT status FROM hosts WHERE id = $1 FOR UPDATE;

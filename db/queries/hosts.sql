-- name: GetHost :one
SELECT * FROM hosts WHERE id = $1;

-- name: ListHosts :many
SELECT * FROM hosts ORDER BY created_at, id;

-- name: ListAllOnlineHosts :many
SELECT * FROM hosts WHERE status = 'online' ORDER BY id;

-- name: ListReconciledHosts :many
-- The hosts the reconciler asks each pass: online ones, and unreachable
-- ones, which come back when their agent answers.
SELECT * FROM hosts WHERE status IN ('online', 'unreachable') ORDER BY id;

-- name: UpsertHost :one
-- Registers (or re-registers) a host by ID; used by `wrenn dev` and tests.
INSERT INTO hosts (id, team_id, name, address, status, vmm, accel, arch, version, cpu_count, memory_mb)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (id) DO UPDATE SET
    team_id = EXCLUDED.team_id, name = EXCLUDED.name, address = EXCLUDED.address, status = EXCLUDED.status,
    vmm = EXCLUDED.vmm, accel = EXCLUDED.accel, arch = EXCLUDED.arch, version = EXCLUDED.version,
    cpu_count = EXCLUDED.cpu_count, memory_mb = EXCLUDED.memory_mb, updated_at = now()
RETURNING *;

-- name: SetHostStatus :exec
UPDATE hosts SET status = sqlc.arg(status), updated_at = now() WHERE id = sqlc.arg(id);

-- name: LockSchedulableHosts :many
-- Online hosts a team may use (its own when BYOC, shared otherwise), locked
-- in ID order so concurrent placements serialise without deadlocks: what
-- HostsCommitted reads next cannot change until the placing transaction ends.
SELECT * FROM hosts
WHERE status = 'online' AND address <> ''
  AND ((sqlc.narg(team_id)::text IS NULL AND team_id IS NULL) OR team_id = sqlc.narg(team_id)::text)
ORDER BY id
FOR UPDATE;

-- name: LockOnlineHost :one
-- One online host, locked for a placement on it (snapshot template, resume).
SELECT * FROM hosts WHERE id = $1 AND status = 'online' AND address <> '' FOR UPDATE;

-- name: HostsCommitted :many
-- What the sandboxes placed on each host hold: pending, running, missing and
-- stopping ones (their VM may still run there) and paused ones while a
-- resume reserves their room; other paused and stopped ones hold nothing.
-- excluding_id is a sandbox not to count (the one being resumed); builds
-- counts the template builds' own sandboxes.
SELECT host_id::text AS host_id,
       count(*)::bigint AS active,
       coalesce(sum(vcpus), 0)::bigint AS vcpus,
       coalesce(sum(memory_mb), 0)::bigint AS memory_mb,
       count(*) FILTER (WHERE build_id IS NOT NULL)::bigint AS builds
FROM sandboxes
WHERE host_id = ANY(sqlc.arg(host_ids)::text[]) AND id <> sqlc.arg(excluding_id)::text
  AND (status IN ('pending', 'running', 'missing', 'stopping') OR (status = 'paused' AND resume_reserved_until > now()))
GROUP BY host_id;

-- name: ReserveResume :execrows
-- Holds a paused sandbox's room on its host while it resumes.
UPDATE sandboxes SET resume_reserved_until = sqlc.arg(until)
WHERE id = sqlc.arg(id) AND status = 'paused';

-- name: ReleaseResume :exec
UPDATE sandboxes SET resume_reserved_until = NULL WHERE id = $1 AND resume_reserved_until IS NOT NULL;

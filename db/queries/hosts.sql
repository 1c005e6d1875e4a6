-- name: GetHost :one
SELECT * FROM hosts WHERE id = $1;

-- name: ListHosts :many
SELECT * FROM hosts ORDER BY created_at, id;

-- name: ListOnlineHosts :many
-- Hosts that may take a new sandbox of the team: shared hosts and the team's own.
SELECT * FROM hosts
WHERE status = 'online' AND (team_id IS NULL OR team_id = sqlc.narg(team_id))
ORDER BY id;

-- name: ListAllOnlineHosts :many
SELECT * FROM hosts WHERE status = 'online' ORDER BY id;

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

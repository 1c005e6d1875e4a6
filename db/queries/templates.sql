-- name: GetTemplateByName :one
-- Team templates shadow platform templates of the same name.
SELECT * FROM templates
WHERE name = sqlc.arg(name) AND (team_id = sqlc.narg(team_id) OR team_id IS NULL)
ORDER BY team_id NULLS LAST
LIMIT 1;

-- name: ListTemplates :many
SELECT * FROM templates
WHERE team_id = sqlc.narg(team_id) OR team_id IS NULL
ORDER BY name;

-- name: InsertSnapshotTemplate :one
INSERT INTO templates (id, team_id, name, kind, vcpus, memory_mb, disk_mb, size_bytes, host_id)
VALUES ($1, $2, $3, 'snapshot', $4, $5, $6, $7, $8)
RETURNING *;

-- name: ListSnapshots :many
SELECT * FROM templates WHERE team_id = $1 AND kind = 'snapshot' ORDER BY created_at DESC, id;

-- name: GetSnapshot :one
SELECT * FROM templates WHERE team_id = sqlc.arg(team_id) AND name = sqlc.arg(name) AND kind = 'snapshot';

-- name: DeleteSnapshot :execrows
DELETE FROM templates WHERE team_id = sqlc.arg(team_id) AND name = sqlc.arg(name) AND kind = 'snapshot';

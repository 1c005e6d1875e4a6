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

-- name: InsertBuiltTemplate :one
-- A platform template (every team may start it) made by a build on one host.
INSERT INTO templates (id, team_id, name, kind, vcpus, memory_mb, disk_mb, size_bytes, host_id, build_id, env, workdir, default_user)
VALUES (sqlc.arg(id), NULL, sqlc.arg(name), sqlc.arg(kind), sqlc.arg(vcpus), sqlc.arg(memory_mb), sqlc.arg(disk_mb),
        sqlc.arg(size_bytes), sqlc.arg(host_id), sqlc.arg(build_id), sqlc.arg(env), sqlc.arg(workdir), sqlc.arg(default_user))
RETURNING *;

-- name: GetPlatformTemplate :one
SELECT * FROM templates WHERE team_id IS NULL AND name = $1;

-- name: DeletePlatformTemplate :execrows
DELETE FROM templates WHERE team_id IS NULL AND name = $1;

-- name: CountPlatformTemplateUsers :one
-- Live sandboxes of any team started from a platform template (a team's own
-- template of the same name shadows it, so those do not count).
SELECT count(*) FROM sandboxes s
WHERE s.template = sqlc.arg(name) AND s.status <> 'stopped'
  AND NOT EXISTS (SELECT 1 FROM templates t WHERE t.team_id = s.team_id AND t.name = s.template);

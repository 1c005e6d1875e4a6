-- name: CreateAPIKey :one
INSERT INTO team_api_keys (id, team_id, name, key_hash, key_prefix, created_by)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING *;

-- name: ListAPIKeys :many
SELECT k.id, k.team_id, k.name, k.key_prefix, k.created_by, k.created_at, k.last_used_at,
       COALESCE(u.email, '')::text AS creator_email
FROM team_api_keys k LEFT JOIN users u ON u.id = k.created_by
WHERE k.team_id = $1
ORDER BY k.created_at, k.id;

-- name: GetAPIKeyByHash :one
-- The authentication lookup. A key works only while its creator is still a
-- member of the key's team: removal revokes keys, and this is the second line.
SELECT k.* FROM team_api_keys k
JOIN users_teams ut ON ut.user_id = k.created_by AND ut.team_id = k.team_id
WHERE k.key_hash = $1;

-- name: GetAPIKey :one
SELECT * FROM team_api_keys WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id);

-- name: RevokeMemberAPIKeys :many
-- Run in the transaction that removes the member from the team.
DELETE FROM team_api_keys WHERE team_id = sqlc.arg(team_id) AND created_by = sqlc.arg(user_id)
RETURNING id, name;

-- name: DeleteAPIKey :execrows
DELETE FROM team_api_keys WHERE id = sqlc.arg(id) AND team_id = sqlc.arg(team_id);

-- name: TouchAPIKey :exec
-- Written at most once a minute per key so busy keys do not write per request.
UPDATE team_api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

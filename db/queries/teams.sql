-- name: CreateTeam :one
INSERT INTO teams (id, name) VALUES ($1, $2) RETURNING *;

-- name: GetTeam :one
SELECT * FROM teams WHERE id = $1;

-- name: RenameTeam :one
UPDATE teams SET name = sqlc.arg(name), updated_at = now() WHERE id = sqlc.arg(id) RETURNING *;

-- name: DeleteTeam :exec
DELETE FROM teams WHERE id = $1;

-- name: AddMember :exec
INSERT INTO users_teams (user_id, team_id, role, is_default) VALUES ($1, $2, $3, $4);

-- name: GetMembership :one
-- The authentication lookup: the user, and their role in the team (if any).
SELECT u.id AS user_id, u.email, u.is_admin, u.session_version, ut.role, t.name AS team_name
FROM users u
JOIN users_teams ut ON ut.user_id = u.id
JOIN teams t ON t.id = ut.team_id
WHERE u.id = sqlc.arg(user_id) AND ut.team_id = sqlc.arg(team_id);

-- name: ListMembers :many
SELECT u.id AS user_id, u.email, u.name, ut.role, ut.created_at
FROM users_teams ut JOIN users u ON u.id = ut.user_id
WHERE ut.team_id = $1
ORDER BY ut.created_at, u.id;

-- name: ListUserTeams :many
SELECT t.id, t.name, ut.role, ut.is_default, t.created_at
FROM users_teams ut JOIN teams t ON t.id = ut.team_id
WHERE ut.user_id = $1
ORDER BY t.created_at, t.id;

-- name: GetDefaultTeam :one
SELECT t.id, t.name, ut.role
FROM users_teams ut JOIN teams t ON t.id = ut.team_id
WHERE ut.user_id = $1
ORDER BY ut.is_default DESC, ut.created_at, t.id
LIMIT 1;

-- name: SetDefaultTeam :exec
UPDATE users_teams SET is_default = (team_id = sqlc.arg(team_id)) WHERE user_id = sqlc.arg(user_id);

-- name: UpdateMemberRole :execrows
UPDATE users_teams SET role = sqlc.arg(role) WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: RemoveMember :execrows
DELETE FROM users_teams WHERE team_id = sqlc.arg(team_id) AND user_id = sqlc.arg(user_id);

-- name: LockTeamOwners :many
-- Locks the team's owner rows so "keep at least one owner" holds under
-- concurrent demotions and removals.
SELECT user_id FROM users_teams WHERE team_id = $1 AND role = 'owner' FOR UPDATE;

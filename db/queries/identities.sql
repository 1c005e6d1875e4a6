-- name: CreateIdentity :one
INSERT INTO user_identities (user_id, provider, provider_user_id, login, email)
VALUES (sqlc.arg(user_id), sqlc.arg(provider), sqlc.arg(provider_user_id), sqlc.arg(login), sqlc.arg(email))
RETURNING *;

-- name: GetUserByIdentity :one
SELECT u.* FROM user_identities i JOIN users u ON u.id = i.user_id
WHERE i.provider = sqlc.arg(provider) AND i.provider_user_id = sqlc.arg(provider_user_id);

-- name: ListIdentities :many
SELECT * FROM user_identities WHERE user_id = $1 ORDER BY provider;

-- name: DeleteIdentity :execrows
DELETE FROM user_identities WHERE user_id = sqlc.arg(user_id) AND provider = sqlc.arg(provider);

-- name: LockUser :one
-- Serialises changes to one user's ways of signing in (unlinking the last).
SELECT * FROM users WHERE id = $1 FOR UPDATE;

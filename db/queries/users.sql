-- name: CreateUser :one
-- The first user of a fresh install becomes platform admin; callers hold the
-- signup advisory lock so two first signups cannot both see an empty table.
INSERT INTO users (id, email, name, password_hash, is_admin)
VALUES (sqlc.arg(id), sqlc.arg(email), sqlc.arg(name), sqlc.arg(password_hash),
        NOT EXISTS (SELECT 1 FROM users))
RETURNING *;

-- name: LockSignups :exec
SELECT pg_advisory_xact_lock(4242001);

-- name: GetUserByEmail :one
SELECT * FROM users WHERE lower(email) = lower(sqlc.arg(email));

-- name: GetUserByID :one
SELECT * FROM users WHERE id = $1;

-- name: UpdateUserName :one
UPDATE users SET name = sqlc.arg(name), updated_at = now() WHERE id = sqlc.arg(id) RETURNING *;

-- name: UpdateUserPassword :exec
-- A new password ends every existing session.
UPDATE users SET password_hash = sqlc.arg(password_hash), session_version = session_version + 1, updated_at = now()
WHERE id = sqlc.arg(id);

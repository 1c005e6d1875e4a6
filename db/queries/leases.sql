-- name: AcquireLease :one
-- Takes the lease when it is free, expired, or already ours; a change of
-- holder bumps the token. No row when another replica holds it.
INSERT INTO leases (name, holder, token, expires_at)
VALUES (sqlc.arg(name), sqlc.arg(holder), 1, now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8))
ON CONFLICT (name) DO UPDATE SET
    holder = EXCLUDED.holder,
    token = CASE WHEN leases.holder = EXCLUDED.holder AND leases.expires_at > now() THEN leases.token ELSE leases.token + 1 END,
    expires_at = EXCLUDED.expires_at,
    updated_at = now()
WHERE leases.expires_at <= now() OR leases.holder = EXCLUDED.holder
RETURNING token;

-- name: RenewLease :execrows
-- Extends a lease that is still ours and still valid; 0 rows means it is lost.
UPDATE leases SET expires_at = now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8), updated_at = now()
WHERE name = sqlc.arg(name) AND holder = sqlc.arg(holder) AND token = sqlc.arg(token) AND expires_at > now();

-- name: ReleaseLease :exec
-- Ends our lease at once, so another replica takes over without waiting.
UPDATE leases SET expires_at = now(), updated_at = now()
WHERE name = sqlc.arg(name) AND holder = sqlc.arg(holder) AND token = sqlc.arg(token);

-- name: GetLease :one
SELECT * FROM leases WHERE name = $1;

-- name: ListLeases :many
-- Every singleton loop's lease, with whether it is held now (by the
-- database clock).
SELECT name, holder, token, expires_at, (expires_at > now())::boolean AS held FROM leases ORDER BY name;

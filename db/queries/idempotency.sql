-- name: BeginIdempotencyKey :one
-- Records a new key in progress, or reuses one older than the window. No
-- row: the key is in use (GetIdempotencyKey says how).
INSERT INTO idempotency_keys (team_id, route, key, request_hash, resource_id, owner, attempt, lease_expires_at)
VALUES (sqlc.arg(team_id), sqlc.arg(route), sqlc.arg(key), sqlc.arg(request_hash), sqlc.arg(resource_id),
        sqlc.arg(owner), sqlc.arg(attempt), now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8))
ON CONFLICT (team_id, route, key) DO UPDATE SET
    request_hash = EXCLUDED.request_hash, resource_id = EXCLUDED.resource_id, owner = EXCLUDED.owner,
    attempt = EXCLUDED.attempt, lease_expires_at = EXCLUDED.lease_expires_at,
    status_code = NULL, response = NULL, created_at = now()
WHERE idempotency_keys.created_at <= now() - make_interval(secs => sqlc.arg(window_seconds)::float8)
RETURNING *;

-- name: GetIdempotencyKey :one
SELECT *, (lease_expires_at <= now())::boolean AS lease_expired FROM idempotency_keys
WHERE team_id = sqlc.arg(team_id) AND route = sqlc.arg(route) AND key = sqlc.arg(key);

-- name: TakeOverIdempotencyKey :one
-- Takes over a key still in progress whose owner stopped renewing it.
UPDATE idempotency_keys SET owner = sqlc.arg(owner), attempt = sqlc.arg(attempt),
    lease_expires_at = now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8)
WHERE team_id = sqlc.arg(team_id) AND route = sqlc.arg(route) AND key = sqlc.arg(key)
  AND attempt = sqlc.arg(seen_attempt) AND status_code IS NULL AND lease_expires_at <= now()
RETURNING *;

-- name: RenewIdempotencyKey :execrows
UPDATE idempotency_keys SET lease_expires_at = now() + make_interval(secs => sqlc.arg(ttl_seconds)::float8)
WHERE team_id = sqlc.arg(team_id) AND route = sqlc.arg(route) AND key = sqlc.arg(key)
  AND attempt = sqlc.arg(attempt) AND status_code IS NULL;

-- name: FinishIdempotencyKey :execrows
UPDATE idempotency_keys SET status_code = sqlc.arg(status_code), response = sqlc.arg(response)
WHERE team_id = sqlc.arg(team_id) AND route = sqlc.arg(route) AND key = sqlc.arg(key)
  AND attempt = sqlc.arg(attempt) AND status_code IS NULL;

-- name: ReleaseIdempotencyKey :exec
-- Forgets a key whose call failed on the server's side, so a retry runs it again.
DELETE FROM idempotency_keys
WHERE team_id = sqlc.arg(team_id) AND route = sqlc.arg(route) AND key = sqlc.arg(key)
  AND attempt = sqlc.arg(attempt) AND status_code IS NULL;

-- name: DeleteOldIdempotencyKeys :execrows
DELETE FROM idempotency_keys WHERE created_at <= now() - make_interval(secs => sqlc.arg(window_seconds)::float8);

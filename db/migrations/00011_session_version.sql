-- +goose Up
-- Sessions (JWTs) carry the user's session version; changing the password
-- increments it, which ends every session issued before.
ALTER TABLE users ADD COLUMN session_version integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE users DROP COLUMN session_version;

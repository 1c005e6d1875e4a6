-- +goose Up
-- Host registration and credentials (issue 6): teams may bring their own
-- hosts (BYOC), and each registered host holds a rotating refresh token.

ALTER TABLE teams ADD COLUMN byoc_enabled boolean NOT NULL DEFAULT false;

CREATE INDEX hosts_team_idx ON hosts (team_id);
CREATE INDEX hosts_status_heartbeat_idx ON hosts (status, last_heartbeat_at);

-- Refresh tokens are stored as SHA-256 (hex); the plain token is shown to
-- the agent once. A family is the chain of tokens rotated from one
-- registration: presenting a revoked token again revokes the whole family.
CREATE TABLE host_refresh_tokens (
    id          text PRIMARY KEY,
    host_id     text        NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    family_id   text        NOT NULL,
    token_hash  text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    -- The token that replaced this one on rotation; empty when revoked otherwise.
    replaced_by text        NOT NULL DEFAULT ''
);
CREATE INDEX host_refresh_tokens_host_idx ON host_refresh_tokens (host_id);
CREATE INDEX host_refresh_tokens_family_idx ON host_refresh_tokens (family_id);

-- +goose Down
DROP TABLE host_refresh_tokens;
DROP INDEX hosts_status_heartbeat_idx;
DROP INDEX hosts_team_idx;
ALTER TABLE teams DROP COLUMN byoc_enabled;

-- +goose Up
-- The audit trail: one row per user or system action, written in the same
-- transaction as the change it records. Rows are never updated or deleted
-- by the application. team_id has no foreign key: a team's trail outlives
-- the team (team.deleted is one of its rows); NULL is a platform row (a
-- shared host, a failed login), seen only by platform admins.
CREATE TABLE audit_logs (
    id            text PRIMARY KEY,
    -- The row's event id on the wrenn:events stream, stable for ever.
    event_id      text        NOT NULL UNIQUE,
    team_id       text,
    actor_type    text        NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id      text        NOT NULL,
    actor_name    text        NOT NULL DEFAULT '',
    resource_type text        NOT NULL,
    resource_id   text        NOT NULL,
    action        text        NOT NULL,
    scope         text        NOT NULL CHECK (scope IN ('team', 'admin')),
    status        text        NOT NULL CHECK (status IN ('success', 'info', 'warning', 'error')),
    metadata      jsonb       NOT NULL DEFAULT '{}',
    -- clock_timestamp, not now(): rows of one transaction stay in order and
    -- microsecond precision keeps the (created_at, id) keyset exact.
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- GET /v1/audit-logs: a team's (or, keyed '', the platform's) rows newest
-- first, optionally narrowed to a resource or an actor.
CREATE INDEX audit_logs_team_idx ON audit_logs ((coalesce(team_id, '')), created_at DESC, id DESC);
CREATE INDEX audit_logs_team_resource_idx ON audit_logs ((coalesce(team_id, '')), resource_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_team_actor_idx ON audit_logs ((coalesce(team_id, '')), actor_id, created_at DESC, id DESC);

-- The transactional outbox: a row per audit row not yet on the Redis
-- stream, inserted in the same transaction. The relay deletes it once the
-- event is published, so audit_logs itself stays append-only and a
-- published event is never sent again. xid lets the relay publish only rows
-- of transactions older than every running one, so a row committed later
-- never slips in front of one already sent.
CREATE TABLE event_outbox (
    seq    bigserial PRIMARY KEY,
    log_id text NOT NULL REFERENCES audit_logs (id),
    xid    xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- +goose Down
DROP TABLE event_outbox;
DROP TABLE audit_logs;

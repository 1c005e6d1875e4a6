-- +goose Up
-- Notification channels: a team's destinations for events (chat providers
-- and signed webhooks). config_sealed is the whole provider config as one
-- AES-256-GCM blob (the channel id as additional data, a key id prefix), so
-- no secret is ever stored in the clear.
CREATE TABLE channels (
    id              text PRIMARY KEY,
    team_id         text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    provider        text        NOT NULL,
    config_sealed   bytea       NOT NULL,
    events          text[]      NOT NULL,
    enabled         boolean     NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (team_id, name)
);

-- One row per (event, channel): the delivery and its durable retry
-- schedule. A pending row is due at next_attempt_at; locked_until marks a
-- replica working on it (expired: anyone may take it), so retries survive
-- the restart of every control plane. stream_id is the wrenn:events entry
-- to ack once every delivery of the event is final.
CREATE TABLE channel_deliveries (
    id               text PRIMARY KEY DEFAULT 'dlv-' || replace(gen_random_uuid()::text, '-', ''),
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    channel_id       text        NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    payload          text        NOT NULL,
    stream_id        text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, channel_id)
);
CREATE INDEX channel_deliveries_due ON channel_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX channel_deliveries_channel ON channel_deliveries (channel_id, created_at DESC, id DESC);
CREATE INDEX channel_deliveries_event ON channel_deliveries (event_id) WHERE status = 'pending';

-- +goose Down
DROP TABLE channel_deliveries;
DROP TABLE channels;

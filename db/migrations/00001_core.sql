-- +goose Up
-- Core tenancy and runtime tables. IDs are prefixed random strings made by
-- the application (usr-, team-, key-, tpl-, sb-, host-), never serials, so
-- they can be exposed and cannot be guessed.

CREATE TABLE users (
    id            text PRIMARY KEY,
    email         text        NOT NULL,
    name          text        NOT NULL DEFAULT '',
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_lower_idx ON users (lower(email));

CREATE TABLE teams (
    id         text PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users_teams (
    user_id    text        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id    text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    role       text        NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    is_default boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, team_id)
);
CREATE INDEX users_teams_team_idx ON users_teams (team_id);

CREATE TABLE team_api_keys (
    id           text PRIMARY KEY,
    team_id      text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    -- SHA-256 of the full key, hex; the key itself is shown once and never stored.
    key_hash     text        NOT NULL UNIQUE,
    -- First characters of the key, shown in listings so users can tell keys apart.
    key_prefix   text        NOT NULL,
    created_by   text        REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
CREATE INDEX team_api_keys_team_idx ON team_api_keys (team_id);

CREATE TABLE hosts (
    id                text PRIMARY KEY,
    -- NULL for shared (platform) hosts; set for a team's own (BYOC) host.
    team_id           text        REFERENCES teams (id) ON DELETE CASCADE,
    name              text        NOT NULL DEFAULT '',
    address           text        NOT NULL DEFAULT '',
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'online', 'unreachable', 'offline')),
    vmm               text        NOT NULL DEFAULT '',
    accel             text        NOT NULL DEFAULT '',
    arch              text        NOT NULL DEFAULT '',
    version           text        NOT NULL DEFAULT '',
    cpu_count         integer     NOT NULL DEFAULT 0,
    memory_mb         bigint      NOT NULL DEFAULT 0,
    disk_gb           bigint      NOT NULL DEFAULT 0,
    last_heartbeat_at timestamptz,
    created_by        text        REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE templates (
    id         text PRIMARY KEY,
    -- NULL for platform templates visible to every team.
    team_id    text        REFERENCES teams (id) ON DELETE CASCADE,
    name       text        NOT NULL,
    -- image: boots a root filesystem; snapshot: restores memory and disk.
    kind       text        NOT NULL CHECK (kind IN ('image', 'snapshot')),
    vcpus      integer     NOT NULL DEFAULT 1,
    memory_mb  integer     NOT NULL DEFAULT 256,
    disk_mb    integer     NOT NULL DEFAULT 1024,
    size_bytes bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX templates_team_name_idx ON templates (COALESCE(team_id, ''), name);

INSERT INTO templates (id, team_id, name, kind, vcpus, memory_mb, disk_mb)
VALUES ('tpl-minimal', NULL, 'minimal', 'image', 1, 256, 1024);

CREATE TABLE sandboxes (
    id             text PRIMARY KEY,
    team_id        text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    host_id        text        REFERENCES hosts (id) ON DELETE SET NULL,
    template       text        NOT NULL,
    status         text        NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'running', 'paused', 'stopped', 'error', 'missing')),
    vcpus          integer     NOT NULL,
    memory_mb      integer     NOT NULL,
    disk_mb        integer     NOT NULL,
    -- Idle seconds before auto-pause; 0 = never.
    timeout_sec    integer     NOT NULL DEFAULT 0 CHECK (timeout_sec >= 0),
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error_message  text        NOT NULL DEFAULT '',
    created_by     text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    last_active_at timestamptz,
    paused_at      timestamptz,
    stopped_at     timestamptz
);
CREATE INDEX sandboxes_team_created_idx ON sandboxes (team_id, created_at DESC, id DESC);
CREATE INDEX sandboxes_host_status_idx ON sandboxes (host_id, status);

-- +goose Down
DROP TABLE sandboxes;
DROP TABLE templates;
DROP TABLE hosts;
DROP TABLE team_api_keys;
DROP TABLE users_teams;
DROP TABLE teams;
DROP TABLE users;

-- +goose Up
-- Template builds: the row is the truth about a build (the Redis list only
-- wakes workers). A worker holds a build by its lease (worker, lease
-- expiry renewed while it runs); an expired lease is found by the reaper.
CREATE TABLE template_builds (
    id               text PRIMARY KEY,
    name             text        NOT NULL,
    base_template    text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- The parsed steps and the healthcheck (NULL: an image template).
    recipe           jsonb       NOT NULL,
    healthcheck      jsonb,
    vcpus            integer     NOT NULL,
    memory_mb        integer     NOT NULL,
    disk_mb          integer     NOT NULL,
    -- Per-step results, index order, with bounded output tails.
    steps            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    current_step     integer     NOT NULL DEFAULT 0,
    error_message    text        NOT NULL DEFAULT '',
    -- The submitter: the build sandbox runs in their team, as them.
    team_id          text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    created_by       text        NOT NULL,
    sandbox_id       text,
    template_id      text,
    attempts         integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    worker           text        NOT NULL DEFAULT '',
    lease_expires_at timestamptz,
    has_archive      boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX template_builds_created_idx ON template_builds (created_at DESC, id DESC);
CREATE INDEX template_builds_live_idx ON template_builds (status) WHERE status IN ('queued', 'running');
-- One live build per template name.
CREATE UNIQUE INDEX template_builds_live_name_idx ON template_builds (name) WHERE status IN ('queued', 'running');

-- Uploaded archives live in the database so every replica's workers read
-- them; a build's archive is dropped when the build ends.
CREATE TABLE template_build_archives (
    build_id text PRIMARY KEY REFERENCES template_builds (id) ON DELETE CASCADE,
    format   text  NOT NULL CHECK (format IN ('tar', 'tar.gz', 'zip')),
    data     bytea NOT NULL
);

-- Built templates: where they came from and the defaults (ENV, WORKDIR,
-- USER) new sandboxes and their execs get.
ALTER TABLE templates
    ADD COLUMN build_id       text REFERENCES template_builds (id) ON DELETE SET NULL,
    ADD COLUMN env            jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN workdir        text  NOT NULL DEFAULT '',
    ADD COLUMN default_user   text  NOT NULL DEFAULT '';

-- A build's own sandbox names its build, so placement can bound builds per host.
ALTER TABLE sandboxes ADD COLUMN build_id text;
CREATE INDEX sandboxes_build_idx ON sandboxes (host_id) WHERE build_id IS NOT NULL;

-- +goose Down
DROP INDEX sandboxes_build_idx;
ALTER TABLE sandboxes DROP COLUMN build_id;
ALTER TABLE templates DROP COLUMN build_id, DROP COLUMN env, DROP COLUMN workdir, DROP COLUMN default_user;
DROP TABLE template_build_archives;
DROP TABLE template_builds;

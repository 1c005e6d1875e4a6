-- +goose Up
-- What the E2B-compatible API needs of a sandbox (internal/controlplane/e2bapi):
-- end_at is E2B's end-of-life timer (unlike timeout_sec, the idle timer of
-- Wrenn's own API): when it passes, a running sandbox is destroyed, or paused
-- when on_end is 'pause'; NULL: no end. envd_access_token is the token the
-- control plane mints for the sandbox's envd and hands to the agent at
-- create; the E2B API returns it to the sandbox's team (the SDK talks to envd
-- with it) and the proxy checks it.
ALTER TABLE sandboxes
    ADD COLUMN end_at            timestamptz,
    ADD COLUMN on_end            text NOT NULL DEFAULT 'destroy' CHECK (on_end IN ('destroy', 'pause')),
    ADD COLUMN envd_access_token text;
CREATE INDEX sandboxes_end_at_idx ON sandboxes (end_at) WHERE end_at IS NOT NULL AND status = 'running';

-- +goose Down
DROP INDEX sandboxes_end_at_idx;
ALTER TABLE sandboxes DROP COLUMN end_at, DROP COLUMN on_end, DROP COLUMN envd_access_token;

-- +goose Up
-- The sandbox HTTP proxy: ports anyone may reach without credentials
-- (none by default), and whether traffic to a paused sandbox resumes it.
ALTER TABLE sandboxes
    ADD COLUMN public_ports integer[] NOT NULL DEFAULT '{}'
        CHECK (cardinality(public_ports) <= 16 AND 1 <= ALL (public_ports) AND 65535 >= ALL (public_ports)),
    ADD COLUMN auto_resume  boolean   NOT NULL DEFAULT false;

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN public_ports, DROP COLUMN auto_resume;

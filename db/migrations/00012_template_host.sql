-- +goose Up
-- A snapshot template lives on the host that took it; sandboxes from it
-- must start there. NULL for image templates (every host has them) and for
-- snapshots whose host was deleted.
ALTER TABLE templates ADD COLUMN host_id text REFERENCES hosts (id) ON DELETE SET NULL;

-- +goose Down
ALTER TABLE templates DROP COLUMN host_id;

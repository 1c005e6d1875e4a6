-- +goose Up
-- The platform's `base` template, the one E2B's SDK starts by default: a
-- Debian root filesystem built by `wrenn images build` (user `user`,
-- python3, git, curl). Its image is 1 GiB; the extra disk is the sandbox's
-- free space (envd grows the filesystem at boot).
INSERT INTO templates (id, team_id, name, kind, vcpus, memory_mb, disk_mb, workdir, default_user)
VALUES ('tpl-base', NULL, 'base', 'image', 1, 512, 2048, '/home/user', 'user')
ON CONFLICT DO NOTHING;

-- +goose Down
DELETE FROM templates WHERE id = 'tpl-base' AND team_id IS NULL;

-- +goose Up
-- stopping: the user destroyed the sandbox while its host was away; the
-- reconciler destroys the VM when the host answers, then records stopped.
ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_status_check;
ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_status_check
    CHECK (status IN ('pending', 'running', 'paused', 'stopped', 'error', 'missing', 'stopping'));

-- +goose Down
UPDATE sandboxes SET status = 'missing' WHERE status = 'stopping';
ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_status_check;
ALTER TABLE sandboxes ADD CONSTRAINT sandboxes_status_check
    CHECK (status IN ('pending', 'running', 'paused', 'stopped', 'error', 'missing'));

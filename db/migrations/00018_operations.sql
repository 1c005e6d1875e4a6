-- +goose Up
-- Recoverable lifecycle operations: an operation in flight (create, pause,
-- resume, destroy, snapshot) is recorded on its sandbox with the replica
-- that runs it and a lease that replica renews. When the lease expires (the
-- replica died or froze) the reconciler settles the row from what the host
-- agent reports. op_id fences renewals and the end of one operation from
-- another that took the row over. Expiry is judged by the database clock.
ALTER TABLE sandboxes
    ADD COLUMN op            text CHECK (op IN ('create', 'pause', 'resume', 'destroy', 'snapshot')),
    ADD COLUMN op_id         text,
    ADD COLUMN op_owner      text,
    ADD COLUMN op_expires_at timestamptz,
    ADD CONSTRAINT sandboxes_op_complete CHECK ((op IS NULL) = (op_id IS NULL) AND (op IS NULL) = (op_expires_at IS NULL));

-- Rows left pending by a control plane that died before this migration
-- belong to no running call: settle them as interrupted creates.
UPDATE sandboxes SET op = 'create', op_id = 'op-legacy-' || id, op_owner = '', op_expires_at = now()
WHERE status = 'pending';

-- Idempotency-Key: the first call's result per team, route and key, kept 24
-- hours. An entry without a status is in progress under a lease of its
-- owner (taken over once expired); resource_id is the sandbox or snapshot
-- id chosen before the work starts, so a retry finds what the first call
-- made.
CREATE TABLE idempotency_keys (
    team_id          text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    route            text        NOT NULL,
    key              text        NOT NULL,
    request_hash     text        NOT NULL,
    resource_id      text        NOT NULL,
    owner            text        NOT NULL,
    attempt          text        NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    status_code      integer,
    response         bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, route, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
ALTER TABLE sandboxes DROP CONSTRAINT sandboxes_op_complete,
    DROP COLUMN op, DROP COLUMN op_id, DROP COLUMN op_owner, DROP COLUMN op_expires_at;

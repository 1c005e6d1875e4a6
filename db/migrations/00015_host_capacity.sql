-- +goose Up
-- What each host reports at registration and in every heartbeat: the
-- largest sandbox its agent accepts (limits) and what it offers all its
-- sandboxes together (capacity), plus what the agent says its sandboxes
-- hold now (informational: admission counts the rows, see hosts.Placer).
-- 0 means "not reported" and bounds nothing.
ALTER TABLE hosts
    ADD COLUMN max_vcpus           integer NOT NULL DEFAULT 0 CHECK (max_vcpus >= 0),
    ADD COLUMN max_memory_mb       integer NOT NULL DEFAULT 0 CHECK (max_memory_mb >= 0),
    ADD COLUMN max_disk_mb         integer NOT NULL DEFAULT 0 CHECK (max_disk_mb >= 0),
    ADD COLUMN capacity_vcpus      integer NOT NULL DEFAULT 0 CHECK (capacity_vcpus >= 0),
    ADD COLUMN capacity_memory_mb  bigint  NOT NULL DEFAULT 0 CHECK (capacity_memory_mb >= 0),
    ADD COLUMN committed_vcpus     integer NOT NULL DEFAULT 0 CHECK (committed_vcpus >= 0),
    ADD COLUMN committed_memory_mb bigint  NOT NULL DEFAULT 0 CHECK (committed_memory_mb >= 0);

-- A paused sandbox holds no host resources, except while it resumes: the
-- resume reserves its room until this time (bounded by the lifecycle
-- timeout, so a crashed control plane cannot hold it for ever).
ALTER TABLE sandboxes ADD COLUMN resume_reserved_until timestamptz;

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN resume_reserved_until;
ALTER TABLE hosts
    DROP COLUMN max_vcpus, DROP COLUMN max_memory_mb, DROP COLUMN max_disk_mb,
    DROP COLUMN capacity_vcpus, DROP COLUMN capacity_memory_mb,
    DROP COLUMN committed_vcpus, DROP COLUMN committed_memory_mb;

-- +goose Up
-- What a team reserves right now: a running sandbox its full vCPUs and
-- memory, a paused one ceil(x/2) of each (rounded up per sandbox). The one
-- definition of the formula: the sampler and the live "current" numbers of
-- the stats API both read it.
CREATE VIEW team_usage AS
SELECT team_id,
       count(*) FILTER (WHERE status = 'running')::integer AS running,
       count(*) FILTER (WHERE status = 'paused')::integer AS paused,
       sum(CASE WHEN status = 'running' THEN vcpus ELSE (vcpus + 1) / 2 END)::integer AS reserved_vcpus,
       sum(CASE WHEN status = 'running' THEN memory_mb ELSE (memory_mb + 1) / 2 END)::bigint AS reserved_memory_mb
FROM sandboxes
WHERE status IN ('running', 'paused')
GROUP BY team_id;
-- The sampler reads team_usage every 10 s: it must not scan the stopped
-- sandboxes that pile up over the years.
CREATE INDEX sandboxes_active_team_idx ON sandboxes (team_id) WHERE status IN ('running', 'paused');

-- Usage snapshots of each team with a running or paused sandbox, at three
-- resolutions in one table: resolution_sec 10 is the sampler's tick, 60 and
-- 3600 are roll-ups holding the maxima of their minute or hour, so a 30-day
-- chart reads 720 rows instead of 259,200. sampled_at is the start of the
-- row's bucket (aligned to its resolution), so the primary key makes a
-- second sample in the same tick merge instead of adding a row: a missed
-- tick leaves a gap, never a duplicate.
CREATE TABLE sandbox_metrics_snapshots (
    team_id            text        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    resolution_sec     integer     NOT NULL CHECK (resolution_sec IN (10, 60, 3600)),
    sampled_at         timestamptz NOT NULL,
    running            integer     NOT NULL,
    paused             integer     NOT NULL,
    reserved_vcpus     integer     NOT NULL,
    reserved_memory_mb bigint      NOT NULL,
    PRIMARY KEY (team_id, resolution_sec, sampled_at)
);
-- Retention deletes by age across teams; rows arrive in time order, so a
-- BRIN index finds old ones at almost no cost to inserts.
CREATE INDEX sandbox_metrics_snapshots_age_idx ON sandbox_metrics_snapshots USING brin (sampled_at);

-- Resource samples of each sandbox as its agent reports them in the
-- reconciler's list (every few seconds while it runs), kept after it
-- pauses or stops for the same retention as the snapshots.
CREATE TABLE sandbox_metric_samples (
    sandbox_id         text        NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    sampled_at         timestamptz NOT NULL,
    cpu_percent        real        NOT NULL,
    host_cpu_percent   real        NOT NULL,
    memory_used_bytes  bigint      NOT NULL,
    memory_total_bytes bigint      NOT NULL,
    disk_used_bytes    bigint      NOT NULL,
    disk_total_bytes   bigint      NOT NULL,
    PRIMARY KEY (sandbox_id, sampled_at)
);
CREATE INDEX sandbox_metric_samples_age_idx ON sandbox_metric_samples USING brin (sampled_at);

-- +goose Down
DROP TABLE sandbox_metric_samples;
DROP TABLE sandbox_metrics_snapshots;
DROP INDEX sandboxes_active_team_idx;
DROP VIEW team_usage;

-- name: SampleTeamUsage :execrows
-- One tick of the usage sampler: each team's current usage (team_usage)
-- into the 10-second row and the minute and hour roll-ups of the tick time at.
-- A second sample in the same bucket keeps the maxima, so ticks that repeat
-- (a lease hand-over within one bucket) never add rows.
INSERT INTO sandbox_metrics_snapshots (team_id, resolution_sec, sampled_at, running, paused, reserved_vcpus, reserved_memory_mb)
SELECT u.team_id, r.sec, date_bin(make_interval(secs => r.sec), sqlc.arg(at)::timestamptz, timestamptz 'epoch'),
       u.running, u.paused, u.reserved_vcpus, u.reserved_memory_mb
FROM team_usage u CROSS JOIN (VALUES (10), (60), (3600)) AS r (sec)
ON CONFLICT (team_id, resolution_sec, sampled_at) DO UPDATE SET
    running = GREATEST(sandbox_metrics_snapshots.running, EXCLUDED.running),
    paused = GREATEST(sandbox_metrics_snapshots.paused, EXCLUDED.paused),
    reserved_vcpus = GREATEST(sandbox_metrics_snapshots.reserved_vcpus, EXCLUDED.reserved_vcpus),
    reserved_memory_mb = GREATEST(sandbox_metrics_snapshots.reserved_memory_mb, EXCLUDED.reserved_memory_mb);

-- name: GetTeamUsage :one
SELECT running, paused, reserved_vcpus, reserved_memory_mb FROM team_usage WHERE team_id = $1;

-- name: TeamUsageSeries :many
-- The maxima of each bucket of bucket_sec seconds (aligned to the epoch) in
-- [from_at, to_at), from the snapshots of one resolution. Buckets without a
-- snapshot are absent; the caller fills them.
SELECT date_bin(make_interval(secs => sqlc.arg(bucket_sec)::integer), sampled_at, timestamptz 'epoch')::timestamptz AS bucket,
       max(running)::integer AS running, max(paused)::integer AS paused,
       max(reserved_vcpus)::integer AS reserved_vcpus, max(reserved_memory_mb)::bigint AS reserved_memory_mb
FROM sandbox_metrics_snapshots
WHERE team_id = sqlc.arg(team_id) AND resolution_sec = sqlc.arg(resolution_sec)
  AND sampled_at >= sqlc.arg(from_at) AND sampled_at < sqlc.arg(to_at)
GROUP BY 1
ORDER BY 1;

-- name: DeleteSnapshotsBefore :execrows
-- One retention batch: at most batch_size snapshots older than before.
DELETE FROM sandbox_metrics_snapshots
WHERE (team_id, resolution_sec, sampled_at) IN (
    SELECT s.team_id, s.resolution_sec, s.sampled_at FROM sandbox_metrics_snapshots s
    WHERE s.sampled_at < sqlc.arg(before) LIMIT sqlc.arg(batch_size)
);

-- name: CountSandboxesByStatus :many
-- The wrenn_sandboxes gauge, read at each Prometheus scrape.
SELECT status, count(*)::bigint AS sandboxes FROM sandboxes GROUP BY status;

-- name: InsertSandboxSamples :execrows
-- Stores the samples a host's agent listed (a JSON array of rows named as
-- the columns), only for sandboxes on that host; a sample already stored
-- (listed again) is skipped.
INSERT INTO sandbox_metric_samples (sandbox_id, sampled_at, cpu_percent, host_cpu_percent, memory_used_bytes, memory_total_bytes, disk_used_bytes, disk_total_bytes)
SELECT x.sandbox_id, x.sampled_at, x.cpu_percent, x.host_cpu_percent, x.memory_used_bytes, x.memory_total_bytes, x.disk_used_bytes, x.disk_total_bytes
FROM jsonb_to_recordset(sqlc.arg(samples)::jsonb) AS x (sandbox_id text, sampled_at timestamptz, cpu_percent real, host_cpu_percent real,
     memory_used_bytes bigint, memory_total_bytes bigint, disk_used_bytes bigint, disk_total_bytes bigint)
JOIN sandboxes s ON s.id = x.sandbox_id AND s.host_id = sqlc.arg(host_id)::text
ON CONFLICT (sandbox_id, sampled_at) DO NOTHING;

-- name: SandboxSampleSeries :many
-- One sandbox's samples in buckets of bucket_sec seconds (aligned to the
-- epoch) in [from_at, to_at): mean CPU (guest and host), peak memory and disk.
SELECT date_bin(make_interval(secs => sqlc.arg(bucket_sec)::integer), sampled_at, timestamptz 'epoch')::timestamptz AS bucket,
       avg(cpu_percent)::float8 AS cpu_percent, avg(host_cpu_percent)::float8 AS host_cpu_percent,
       max(memory_used_bytes)::bigint AS memory_used_bytes, max(memory_total_bytes)::bigint AS memory_total_bytes,
       max(disk_used_bytes)::bigint AS disk_used_bytes, max(disk_total_bytes)::bigint AS disk_total_bytes
FROM sandbox_metric_samples
WHERE sandbox_id = sqlc.arg(sandbox_id) AND sampled_at >= sqlc.arg(from_at) AND sampled_at < sqlc.arg(to_at)
GROUP BY 1
ORDER BY 1;

-- name: DeleteSandboxSamplesBefore :execrows
-- One retention batch of sandbox samples.
DELETE FROM sandbox_metric_samples
WHERE (sandbox_id, sampled_at) IN (
    SELECT s.sandbox_id, s.sampled_at FROM sandbox_metric_samples s
    WHERE s.sampled_at < sqlc.arg(before) LIMIT sqlc.arg(batch_size)
);

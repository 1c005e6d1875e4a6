-- +goose Up
-- Leases let one control plane replica at a time run a singleton loop (the
-- reconciler, and later the relays and reapers). Expiry is judged by the
-- database clock only, so replicas' clocks never have to agree; token grows
-- at every change of holder and fences a holder that lost the lease.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    token      bigint NOT NULL DEFAULT 1,
    expires_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE leases;

-- +goose Up
-- The host's current mTLS leaf (SHA-256 of its DER) and when it expires;
-- the previous leaf's fingerprint stays accepted after a renewal, for the
-- moment between the new leaf's commit and the agent swapping it in. A new
-- registration clears it: the host's old key is no longer trusted.
ALTER TABLE hosts
    ADD COLUMN cert_fingerprint text,
    ADD COLUMN cert_fingerprint_prev text,
    ADD COLUMN cert_expires_at timestamptz;

-- +goose Down
ALTER TABLE hosts
    DROP COLUMN cert_fingerprint,
    DROP COLUMN cert_fingerprint_prev,
    DROP COLUMN cert_expires_at;

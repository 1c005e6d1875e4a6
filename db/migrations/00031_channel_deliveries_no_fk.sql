-- +goose Up
-- The foreign key from a delivery to its channel ran a check per delivery
-- row (a query taking a share lock on the channel's row): about a sixth of
-- PostgreSQL's work per delivery, and 8-10% of the dispatcher's throughput
-- to 10 channels (docs/benchmarks.md, "Notification channels"). What it gave,
-- a channel's deliveries deleted with it (also through its team), is kept
-- by a trigger on the rare delete instead of a check on every insert. A
-- delivery recorded while its channel is being deleted can outlive it: the
-- dispatcher deletes such a row when it next finds its channel gone.
ALTER TABLE channel_deliveries DROP CONSTRAINT channel_deliveries_channel_id_fkey;

-- +goose StatementBegin
CREATE FUNCTION channel_deliveries_delete_with_channel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM channel_deliveries WHERE channel_id = OLD.id;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER channel_deliveries_delete_with_channel AFTER DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION channel_deliveries_delete_with_channel();

-- +goose Down
DROP TRIGGER channel_deliveries_delete_with_channel ON channels;
DROP FUNCTION channel_deliveries_delete_with_channel();
DELETE FROM channel_deliveries d WHERE NOT EXISTS (SELECT 1 FROM channels c WHERE c.id = d.channel_id);
ALTER TABLE channel_deliveries ADD CONSTRAINT channel_deliveries_channel_id_fkey
    FOREIGN KEY (channel_id) REFERENCES channels (id) ON DELETE CASCADE;

-- sluice: the Redis invalidations a committed batch still owes.
-- Applied by deploy/migrate.sh in file-name order, once each.
--
-- The worker writes the keys a batch invalidates here in the batch's own
-- transaction, and deletes them once Redis has confirmed the invalidation
-- (usually in the next batch's transaction). What stays is owed: Redis was
-- down, or the worker died first. A worker performs the rows of the
-- partitions it is assigned (on assignment, and when Redis comes back), so
-- they survive a restart instead of waiting for the keys' TTL.

CREATE TABLE IF NOT EXISTS sluice_owed_invalidations (
    id          bigserial PRIMARY KEY,
    -- Whose they are: the consumer group, topic and partitions of the
    -- batch that owed them (a batch spans partitions; whoever holds any
    -- of them performs the row, and doing one twice is harmless).
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partitions  integer[] NOT NULL,
    -- What cache_keys holds: a key to UNLINK, a SCAN MATCH pattern whose
    -- matches are unlinked, or a version key to INCR.
    key         text NOT NULL,
    op          text NOT NULL CHECK (op IN ('key', 'pattern', 'bump')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- No other index: rows normally live for one batch, and every extra index
-- is paid on each batch's insert and delete. The scans that read them go
-- by id (the primary key) and filter the rest.

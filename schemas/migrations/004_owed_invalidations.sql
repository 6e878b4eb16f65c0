-- sluice: the Redis invalidations a committed batch still owes.
-- Applied by deploy/migrate.sh in file-name order, once each.
--
-- The worker writes the keys a batch invalidates here in the batch's own
-- transaction, and deletes them once Redis has confirmed the invalidation
-- (usually in the next batch's transaction). What stays is owed: Redis was
-- down, or the worker died first. A worker performs the rows of the
-- partitions it is assigned (on assignment, and when Redis comes back), so
-- they survive a restart instead of waiting for the keys' TTL.
--
-- One row per batch, its keys as arrays: a row per key cost several times
-- more on every batch's insert and delete (one tuple and one index entry
-- each), and the rows normally live for one batch only.

CREATE TABLE IF NOT EXISTS sluice_owed_invalidations (
    id          bigserial PRIMARY KEY,
    -- Whose they are: the consumer group, topic and partitions of the
    -- batch that owed them (a batch spans partitions; whoever holds any
    -- of them performs the row, and doing one twice is harmless).
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partitions  integer[] NOT NULL,
    -- What cache_keys holds, keys[i] with ops[i]: 'key' (UNLINK it),
    -- 'pattern' (SCAN MATCH it, UNLINK the matches) or 'bump' (INCR a
    -- version key).
    keys        text[] NOT NULL,
    ops         text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (cardinality(keys) = cardinality(ops)),
    CHECK (ops <@ ARRAY['key', 'pattern', 'bump'])
);
-- No other index: every one is paid on each batch's insert and delete. The
-- catch-up reads go by id (the primary key) and filter the rest.

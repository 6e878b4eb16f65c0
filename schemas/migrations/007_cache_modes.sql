-- sluice: owed invalidations of the generation and key-index modes
-- (docs/caching.md).
-- Applied by deploy/migrate.sh in file-name order, once each.
--
-- A batch may now owe 'gen' (INCR a generation counter, which never
-- expires) and 'index' (SSCAN a key-index set, SREM and UNLINK its
-- members) besides 'key', 'pattern' and 'bump'. Both are harmless to
-- perform twice, as the others are: a generation only grows, and a purged
-- index has nothing left to purge.

ALTER TABLE sluice_owed_invalidations
    DROP CONSTRAINT IF EXISTS sluice_owed_invalidations_ops_check;
ALTER TABLE sluice_owed_invalidations
    ADD CONSTRAINT sluice_owed_invalidations_ops_check
    CHECK (ops <@ ARRAY['key', 'pattern', 'bump', 'gen', 'index']);

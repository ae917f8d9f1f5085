-- Issue #7: a transaction's events (one json[] of a few hundred events, some
-- 100 KB) are compressed with lz4 instead of PostgreSQL's default pglz.
--
-- pglz was 4% of PostgreSQL's CPU in a drain (perf); in a test of 330-event
-- arrays it added 2.6 us per event, while lz4 stored them as small and was
-- faster than storing them uncompressed. A server built without lz4 keeps the
-- default: the migration must not stop the worker from starting there.
DO $$
BEGIN
    -- EXECUTE: parsed when run, so a server without the syntax is caught below.
    EXECUTE 'ALTER TABLE event_outbox ALTER COLUMN events SET COMPRESSION lz4';
-- feature_not_supported: built without lz4; syntax_error: before PostgreSQL 14.
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'event_outbox.events keeps the default compression: %', SQLERRM;
END
$$;

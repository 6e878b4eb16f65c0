-- sluice: what each of its roles may do (docs/security.md).
-- Applied by deploy/migrate.sh in file-name order, once each, as the role
-- that owns sluice's tables (the migration owner).
--
-- The roles themselves are made by deploy/roles.sh (sluice-roles), run
-- once per cluster by an administrator before the migrations: creating a
-- role needs CREATEROLE, which the migration owner should not hold.
--
--   sluice_worker  DML on sluice's tables, SELECT on the CRM tables it
--                  reads, EXECUTE on sluice's functions; no DDL.
--   sluice_agent   EXECUTE sluice_claim_turn and sluice_answer_turn,
--                  SELECT chat_turns and chat_messages; nothing else.
--   sluice_lookup  EXECUTE get_lead_full_context and
--                  get_lead_context_by_phone; nothing else.
--
-- RULE for later migrations: a migration that adds a table, sequence or
-- function grants it to the roles that need it in the same file (DML and
-- sequence USAGE to sluice_worker at least), and a function gets
-- REVOKE EXECUTE ... FROM PUBLIC before its GRANTs. The default
-- privileges below cover the worker's tables and sequences, not functions
-- nor the other roles; tests/system/test_pg_security.py checks every table
-- and function is covered.

DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(r, ', ') INTO missing
      FROM unnest(ARRAY['sluice_worker', 'sluice_agent', 'sluice_lookup']) AS r
     WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'roles missing: % (run sluice-roles, deploy/roles.sh, as an administrator before sluice-migrate)', missing;
    END IF;
END $$;

-- PostgreSQL before 15 lets every role create objects in schema public;
-- nobody but the owner should.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO sluice_worker, sluice_agent, sluice_lookup;

-- The worker stages its batches in temporary tables (ON COMMIT DELETE
-- ROWS); TEMP and CONNECT are PUBLIC's by default, granted here by name so
-- a database that revoked them from PUBLIC still runs sluice.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO sluice_worker',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO sluice_agent, sluice_lookup',
                   current_database());
END $$;

-- Functions are executable by PUBLIC by default: every role could call
-- every one. Only the roles named below may.
REVOKE EXECUTE ON FUNCTION get_lead_full_context(text),
    get_lead_context_by_phone(text), sluice_claim_turn(text),
    sluice_answer_turn(bigint) FROM PUBLIC;

-- The lead-context functions read CRM tables (leads, conversations,
-- messages) that sluice_lookup may not read itself: they run as their
-- owner, and only return what a template may see. A fixed search_path
-- (sluice's schema, then pg_temp last) keeps a caller's objects from
-- standing in for the tables. The chat functions update chat_turns,
-- which sluice_agent may only read: the same.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['get_lead_full_context(text)',
                             'get_lead_context_by_phone(text)',
                             'sluice_claim_turn(text)',
                             'sluice_answer_turn(bigint)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       f, current_schema());
    END LOOP;
END $$;

GRANT EXECUTE ON FUNCTION get_lead_full_context(text),
    get_lead_context_by_phone(text) TO sluice_lookup, sluice_worker;
GRANT EXECUTE ON FUNCTION sluice_claim_turn(text), sluice_answer_turn(bigint)
    TO sluice_agent, sluice_worker;

-- The worker: what it writes, and nothing it could drop or alter (only
-- the owner may DDL).
GRANT SELECT, INSERT, UPDATE, DELETE ON conversations, messages,
    sluice_offsets, sluice_owed_invalidations, campaign_runs,
    campaign_messages, chat_messages, chat_statuses, chat_turns
    TO sluice_worker;
-- The CRM's tables it reads: an inbox's state and a workspace's model.
-- Leads are read through get_lead_full_context.
GRANT SELECT ON inboxes, workspaces TO sluice_worker;
GRANT USAGE, SELECT ON SEQUENCE messages_id_seq, campaign_messages_id_seq,
    chat_messages_id_seq, sluice_owed_invalidations_id_seq TO sluice_worker;

-- The agents: the turns and their messages, read only.
GRANT SELECT ON chat_turns, chat_messages TO sluice_agent;

-- What the owner creates later in sluice's schema is sluice's data, the
-- worker's to write (a table or sequence a test or an operator adds, and
-- the triggers' tables they write); the rule above still asks a migration
-- for explicit grants. Functions created later are nobody's to call
-- until granted.
DO $$
BEGIN
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO sluice_worker',
                   current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO sluice_worker',
                   current_schema());
END $$;
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

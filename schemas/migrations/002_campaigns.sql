-- sluice: campaign runs, their outbox, and what a template reads about a
-- lead (docs/campaigns.md). Applied by deploy/migrate.sh after 001.

CREATE TABLE IF NOT EXISTS leads (
    id            text PRIMARY KEY,
    workspace_id  text,
    name          text,
    phone         text,
    email         text,
    tags          text[] NOT NULL DEFAULT '{}',
    attributes    jsonb NOT NULL DEFAULT '{}',
    deleted_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS inboxes (
    id            text PRIMARY KEY,
    workspace_id  text,
    name          text,
    connected     boolean NOT NULL DEFAULT true,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A conversation may belong to a lead: a template reads the lead's last one.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS lead_id text;
CREATE INDEX IF NOT EXISTS conversations_lead_updated
    ON conversations (lead_id, updated_at DESC) WHERE lead_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS campaign_runs (
    id            text PRIMARY KEY,
    campaign_id   text NOT NULL,
    workspace_id  text NOT NULL,
    inbox_id      text NOT NULL,
    end_time      timestamptz NOT NULL,
    total         integer NOT NULL,
    processed     integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    paused        integer NOT NULL DEFAULT 0,
    expired       integer NOT NULL DEFAULT 0,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'paused', 'expired', 'finished')),
    finished_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The outbox a sender reads: one row per message id, written once (a
-- paused one is evaluated again when its batch is posted again).
CREATE TABLE IF NOT EXISTS campaign_messages (
    id            bigserial PRIMARY KEY,
    message_id    text NOT NULL UNIQUE,
    run_id        text NOT NULL,
    lead_id       text NOT NULL,
    status        text NOT NULL
                  CHECK (status IN ('ready', 'failed', 'paused', 'expired')),
    parts         text[],
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS campaign_messages_run_status
    ON campaign_messages (run_id, status);

-- Everything a campaign template may read about a lead, or NULL for an
-- unknown lead. Deleted leads are returned (with deleted_at) so the worker
-- can tell "deleted" from "unknown".
CREATE OR REPLACE FUNCTION get_lead_full_context(p_lead_id text)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'lead', to_jsonb(l),
        'last_conversation', (
            SELECT jsonb_build_object(
                'id', c.id,
                'status', c.status,
                'last_event_type', c.last_event_type,
                'updated_at', c.updated_at)
            FROM conversations c
            WHERE c.lead_id = l.id
            ORDER BY c.updated_at DESC
            LIMIT 1),
        'message_count', (
            SELECT count(*) FROM messages m
            JOIN conversations c ON c.id = m.conversation_id
            WHERE c.lead_id = l.id))
    FROM leads l
    WHERE l.id = p_lead_id
$$;

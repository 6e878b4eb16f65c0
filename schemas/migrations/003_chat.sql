-- sluice: inbound chat messages, their delivery statuses, and the turns an
-- agent claims (docs/chat.md). Applied by deploy/migrate.sh after 002.

CREATE TABLE IF NOT EXISTS chat_messages (
    id                   bigserial PRIMARY KEY,
    provider_message_id  text NOT NULL UNIQUE,
    business_number      text NOT NULL,
    sender               text NOT NULL,
    type                 text NOT NULL,
    text                 text,
    raw                  jsonb NOT NULL,
    sent_at              timestamptz,
    received_at          timestamptz NOT NULL,
    inserted_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS chat_messages_conversation
    ON chat_messages (business_number, sender, sent_at);

CREATE TABLE IF NOT EXISTS chat_statuses (
    provider_message_id  text NOT NULL,
    status               text NOT NULL,
    recipient_id         text,
    status_at            timestamptz,
    raw                  jsonb NOT NULL,
    received_at          timestamptz NOT NULL,
    PRIMARY KEY (provider_message_id, status)
);

CREATE TABLE IF NOT EXISTS chat_turns (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    business_number   text NOT NULL,
    sender            text NOT NULL,
    lead_id           text,
    lead_context      jsonb,
    status            text NOT NULL DEFAULT 'open'
                      CHECK (status IN ('open', 'claimed', 'answered')),
    message_ids       text[] NOT NULL,
    first_message_at  timestamptz,
    last_message_at   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    claimed_at        timestamptz,
    claimed_by        text,
    answered_at       timestamptz
);

-- At most one open turn per conversation: new messages join it.
CREATE UNIQUE INDEX IF NOT EXISTS chat_turns_one_open
    ON chat_turns (business_number, sender) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS chat_turns_claimed
    ON chat_turns (business_number, sender) WHERE status = 'claimed';
CREATE INDEX IF NOT EXISTS chat_turns_open_age
    ON chat_turns (first_message_at, id) WHERE status = 'open';

-- The oldest open turn of a conversation the agent is not busy with, now
-- claimed; no row when there is none. SKIP LOCKED lets many agents claim
-- at once, and a turn the worker is appending to is simply skipped.
CREATE OR REPLACE FUNCTION sluice_claim_turn(agent text)
RETURNS SETOF chat_turns
LANGUAGE sql AS $$
    UPDATE chat_turns t
       SET status = 'claimed', claimed_at = now(), claimed_by = agent
     WHERE t.id = (
        SELECT o.id FROM chat_turns o
         WHERE o.status = 'open'
           AND NOT EXISTS (
               SELECT 1 FROM chat_turns c
                WHERE c.business_number = o.business_number
                  AND c.sender = o.sender AND c.status = 'claimed')
         ORDER BY o.first_message_at, o.id
         LIMIT 1
         FOR UPDATE SKIP LOCKED)
       AND t.status = 'open'
    RETURNING t.*
$$;

-- Marks a claimed turn answered; false when it was not claimed.
CREATE OR REPLACE FUNCTION sluice_answer_turn(turn_id bigint)
RETURNS boolean
LANGUAGE sql AS $$
    WITH a AS (
        UPDATE chat_turns SET status = 'answered', answered_at = now()
         WHERE id = turn_id AND status = 'claimed'
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM a)
$$;

-- A lead's context found by phone (digits compared, so "+1 555…" matches
-- a wa_id "1555…"), or NULL. Deleted leads are left out.
CREATE OR REPLACE FUNCTION get_lead_context_by_phone(p_phone text)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT get_lead_full_context(l.id)
      FROM leads l
     WHERE regexp_replace(l.phone, '[^0-9]', '', 'g')
           = regexp_replace(p_phone, '[^0-9]', '', 'g')
       AND l.deleted_at IS NULL
     ORDER BY l.updated_at DESC
     LIMIT 1
$$;

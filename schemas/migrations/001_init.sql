-- sluice: conversations, their messages, and the consumed Kafka offsets.
-- Applied by deploy/migrate.sh in file-name order, once each.

CREATE TABLE IF NOT EXISTS conversations (
    id                      text PRIMARY KEY,
    source                  text NOT NULL,
    status                  text NOT NULL DEFAULT 'active',
    last_event_type         text,
    transcript_received     boolean NOT NULL DEFAULT false,
    transcript_received_at  timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS messages (
    id                  bigserial PRIMARY KEY,
    -- No foreign key to conversations: the worker upserts the conversation
    -- in the same transaction, and a per-row RI trigger would cost more
    -- than the insert itself.
    conversation_id     text NOT NULL,
    external_event_id   text NOT NULL,
    position            integer NOT NULL,
    role                text NOT NULL,
    content             text NOT NULL,
    created_at          timestamptz NOT NULL,
    inserted_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (conversation_id, external_event_id)
);

CREATE INDEX IF NOT EXISTS messages_conversation_created
    ON messages (conversation_id, created_at, position);

-- The worker writes the next offset to read here in the same transaction
-- as the rows it produced, so a crash can neither lose nor repeat an effect.
CREATE TABLE IF NOT EXISTS sluice_offsets (
    group_id     text NOT NULL,
    topic        text NOT NULL,
    partition    integer NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

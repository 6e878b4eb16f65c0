-- sluice: campaign messages composed by a model (docs/campaigns.md).
-- Applied by deploy/migrate.sh in file-name order, once each.

-- A workspace's model: what a batch with a prompt and no `model` of its
-- own is composed with. The worker reads it through Redis
-- (`workspace:{id}`), so a change shows within that key's TTL.
CREATE TABLE IF NOT EXISTS workspaces (
    id          text PRIMARY KEY,
    ai_model    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What a composed message cost: the model as the provider reported it,
-- the tokens of its call, and how long the call took. NULL for a message
-- rendered from a template, and for one that never reached a model.
ALTER TABLE campaign_messages
    ADD COLUMN IF NOT EXISTS model              text,
    ADD COLUMN IF NOT EXISTS prompt_tokens      integer,
    ADD COLUMN IF NOT EXISTS completion_tokens  integer,
    ADD COLUMN IF NOT EXISTS compose_ms         integer;

-- Providers managed in the app (/admin/providers, `tokenvault provider …`). A row named like a
-- [providers.<name>] table of the configuration lays its `settings` over that table key by key
-- (origin "edited") until reverted (settings NULL again); a row of another name is a provider
-- added in the app (origin "added"). `enabled` = false hides a provider (its connections are kept).
-- `settings` is a JSON object of provider table keys; never a client secret (those stay in the
-- project vault, at <name>.client_id / <name>.client_secret).
CREATE TABLE providers (
    name TEXT PRIMARY KEY NOT NULL,
    settings TEXT,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    -- Bumped by every change: an edit made from a page loaded before another edit is refused.
    version BIGINT NOT NULL,
    -- Random, new with every write: a row deleted and made again is still seen as changed.
    revision TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

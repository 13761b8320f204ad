-- Webhook endpoints edited on /admin/webhooks. A row named like a [webhooks.<name>] table of the
-- configuration overrides that table (URL, events, secret) until it is reverted; a row of another
-- name is an endpoint added on the page. Secrets are sealed under the vault key
-- (AAD webhook_endpoints/<name>/secret and …/previous_secret), never stored in the clear.
CREATE TABLE webhook_endpoints (
    name TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    -- A JSON array of event filters; NULL: every event.
    events TEXT,
    secret BYTEA NOT NULL,
    -- After a rotation, the secrets it replaced (newline-separated, newest first, at most two):
    -- deliveries are signed with them too until previous_until (unix seconds), so that receivers
    -- can switch over without rejecting a delivery.
    previous_secret BYTEA,
    previous_until BIGINT,
    -- Bumped by every change: an edit made from a page loaded before another edit is refused.
    version BIGINT NOT NULL,
    -- Random, new with every write: a row deleted and made again (same name and version) is
    -- still seen as changed by the instances that reload.
    revision TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

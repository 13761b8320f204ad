DROP TABLE jobs;
-- (Revocations waiting in jobs are not moved back: the table returns empty.)
-- Tokens tokenvault no longer keeps but that are still live at the provider: those a reconnect, an
-- add-account answered by a connected account or an upgrade replaced (a row written in the same
-- transaction that swaps the tokens), and those a connect obtained and then threw away (another
-- account on a pinned reconnect). `oauth::retire` revokes them in the background, retried with
-- backoff a bounded number of times; a row is deleted once done or given up. The tokens are sealed
-- like a connection's (`Aad::RetiredToken`); `user_id` names whose they were (no foreign key: a
-- deleted user's tokens are still revoked).
CREATE TABLE token_revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL,
    service TEXT NOT NULL,
    account_id TEXT NOT NULL DEFAULT '',
    access_token BLOB NOT NULL,
    refresh_token BLOB,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX token_revocations_due ON token_revocations(next_attempt_at);

ALTER TABLE oauth_flows DROP COLUMN nonce_hash;
ALTER TABLE oauth_flows DROP COLUMN scopes;
ALTER TABLE oauth_flows DROP COLUMN add_account;
ALTER TABLE oauth_flows DROP COLUMN connection_id;
-- Back to one connection per (user, service): every account but the first connected of each
-- service is deleted (its tokens are lost; revoke them at the provider first if that matters).
-- The tokens of a kept row whose account is known were sealed bound to that account: the older
-- version cannot open them, so such a connection needs a reconnect after the rollback.
DELETE FROM connections WHERE id NOT IN (SELECT MIN(id) FROM connections GROUP BY user_id, service);
CREATE TABLE connections_old (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    access_token BLOB NOT NULL,
    refresh_token BLOB,
    token_type TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expires_at BIGINT,
    obtained_at BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    version BIGINT NOT NULL DEFAULT 1,
    updated_at BIGINT NOT NULL,
    refresh_lease_until BIGINT,
    refresh_after_401_at BIGINT,
    status_reason TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    refresh_token_expires_at BIGINT,
    expiry_warned_for BIGINT,
    UNIQUE (user_id, service)
);
INSERT INTO connections_old (id, user_id, service, access_token, refresh_token, token_type, scopes,
    expires_at, obtained_at, status, version, updated_at, refresh_lease_until, refresh_after_401_at,
    status_reason, attempts, next_attempt_at, refresh_token_expires_at, expiry_warned_for)
SELECT id, user_id, service, access_token, refresh_token, token_type, scopes,
    expires_at, obtained_at, status, version, updated_at, refresh_lease_until, refresh_after_401_at,
    status_reason, attempts, next_attempt_at, refresh_token_expires_at, expiry_warned_for
FROM connections;
UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'connections'))
WHERE name = 'connections_old';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'connections_old', seq FROM sqlite_sequence WHERE name = 'connections'
AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'connections_old');
DROP TABLE connections;
ALTER TABLE connections_old RENAME TO connections;
CREATE INDEX connections_obtained_at ON connections (obtained_at);

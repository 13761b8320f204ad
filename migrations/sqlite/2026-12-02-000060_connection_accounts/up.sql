-- Several accounts per service. A connection is (user, service, provider account):
--   account_id        the provider's id of the account ('' = not known: a provider without an
--                     account API, or a connection made before this migration; such a connection
--                     learns its account at its next reconnect)
--   account_label     what the user recognises it by (an email, a login), when known
--   requested_scopes  what tokenvault asked for (NULL: as granted); `scopes` is what was granted
-- SQLite cannot drop the old UNIQUE (user_id, service): the table is rebuilt. No table refers
-- to connections, so dropping the old one deletes nothing else.
CREATE TABLE connections_new (
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
    account_id TEXT NOT NULL DEFAULT '',
    account_label TEXT,
    requested_scopes TEXT,
    UNIQUE (user_id, service, account_id)
);
INSERT INTO connections_new (id, user_id, service, access_token, refresh_token, token_type, scopes,
    expires_at, obtained_at, status, version, updated_at, refresh_lease_until, refresh_after_401_at,
    status_reason, attempts, next_attempt_at, refresh_token_expires_at, expiry_warned_for)
SELECT id, user_id, service, access_token, refresh_token, token_type, scopes,
    expires_at, obtained_at, status, version, updated_at, refresh_lease_until, refresh_after_401_at,
    status_reason, attempts, next_attempt_at, refresh_token_expires_at, expiry_warned_for
FROM connections;
-- Keep the id counter where it was (past deleted rows): an id is never handed out twice, so audit
-- entries, webhook events and API clients naming a connection id never name another one.
UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT seq FROM sqlite_sequence WHERE name = 'connections'))
WHERE name = 'connections_new';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'connections_new', seq FROM sqlite_sequence WHERE name = 'connections'
AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'connections_new');
DROP TABLE connections;
ALTER TABLE connections_new RENAME TO connections;
CREATE INDEX connections_obtained_at ON connections (obtained_at);
-- What an authorization in flight is for: reconnecting (or upgrading) connection `connection_id`
-- (pinned to its account: another account is refused), or adding another account (`add_account`
-- true); neither: connect, or reconnect the one connection there is. `scopes`: what it asks for.
ALTER TABLE oauth_flows ADD COLUMN connection_id BIGINT;
ALTER TABLE oauth_flows ADD COLUMN add_account BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE oauth_flows ADD COLUMN scopes TEXT;
-- OpenID Connect: the SHA-256 of the nonce sent, which the id_token must carry back.
ALTER TABLE oauth_flows ADD COLUMN nonce_hash TEXT;

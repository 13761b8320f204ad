-- Several accounts per service. A connection is (user, service, provider account):
--   account_id        the provider's id of the account ('' = not known: a provider without an
--                     account API, or a connection made before this migration; such a connection
--                     learns its account at its next reconnect)
--   account_label     what the user recognises it by (an email, a login), when known
--   requested_scopes  what tokenvault asked for (NULL: as granted); `scopes` is what was granted
ALTER TABLE connections ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE connections ADD COLUMN account_label TEXT;
ALTER TABLE connections ADD COLUMN requested_scopes TEXT;
ALTER TABLE connections DROP CONSTRAINT connections_user_id_service_key;
ALTER TABLE connections ADD CONSTRAINT connections_user_id_service_account_id_key UNIQUE (user_id, service, account_id);
-- What an authorization in flight is for: reconnecting (or upgrading) connection `connection_id`
-- (pinned to its account: another account is refused), or adding another account (`add_account`
-- true); neither: connect, or reconnect the one connection there is. `scopes`: what it asks for.
ALTER TABLE oauth_flows ADD COLUMN connection_id BIGINT;
ALTER TABLE oauth_flows ADD COLUMN add_account BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE oauth_flows ADD COLUMN scopes TEXT;
-- OpenID Connect: the SHA-256 of the nonce sent, which the id_token must carry back.
ALTER TABLE oauth_flows ADD COLUMN nonce_hash TEXT;

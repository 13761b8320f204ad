ALTER TABLE oauth_flows DROP COLUMN nonce_hash;
ALTER TABLE oauth_flows DROP COLUMN scopes;
ALTER TABLE oauth_flows DROP COLUMN add_account;
ALTER TABLE oauth_flows DROP COLUMN connection_id;
-- Back to one connection per (user, service): every account but the first connected of each
-- service is deleted (its tokens are lost; revoke them at the provider first if that matters).
-- The tokens of a kept row whose account is known were sealed bound to that account: the older
-- version cannot open them, so such a connection needs a reconnect after the rollback.
DELETE FROM connections WHERE id NOT IN (SELECT MIN(id) FROM connections GROUP BY user_id, service);
ALTER TABLE connections DROP CONSTRAINT connections_user_id_service_account_id_key;
ALTER TABLE connections ADD CONSTRAINT connections_user_id_service_key UNIQUE (user_id, service);
ALTER TABLE connections DROP COLUMN requested_scopes;
ALTER TABLE connections DROP COLUMN account_label;
ALTER TABLE connections DROP COLUMN account_id;

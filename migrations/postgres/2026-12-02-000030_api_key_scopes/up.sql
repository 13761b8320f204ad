-- Scoped API keys. NULL means unrestricted, so every key created before this step keeps the
-- full access it had: all of its user's services, every capability, no expiry. A key with limits
-- is made as tvs_… (not tvk_…), which versions from before this step refuse: they cannot read
-- these columns, so they must not accept such a key. down.sql revokes the limited keys.
-- services: the service names the key may use, space-separated.
ALTER TABLE api_keys ADD COLUMN services TEXT;
-- capabilities: what it may do (connections:read, token:read, proxy), space-separated.
ALTER TABLE api_keys ADD COLUMN capabilities TEXT;
-- expires_at: unix seconds after which the key no longer works.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
-- last_used_ip: the client address of the last recorded use (with last_used_at).
ALTER TABLE api_keys ADD COLUMN last_used_ip TEXT;

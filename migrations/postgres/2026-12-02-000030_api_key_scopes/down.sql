-- Without these columns a limited key would become a full one: revoke every limited key first.
UPDATE api_keys SET revoked_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)
  WHERE revoked_at IS NULL AND (services IS NOT NULL OR capabilities IS NOT NULL OR expires_at IS NOT NULL);
ALTER TABLE api_keys DROP COLUMN last_used_ip;
ALTER TABLE api_keys DROP COLUMN expires_at;
ALTER TABLE api_keys DROP COLUMN capabilities;
ALTER TABLE api_keys DROP COLUMN services;

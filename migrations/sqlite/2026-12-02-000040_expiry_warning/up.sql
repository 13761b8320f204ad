-- The refresh-token expiry (connections.refresh_token_expires_at) that connection.expiring was
-- raised for, so it is raised once per expiry: a new refresh token with a new expiry is warned
-- about again. NULL: no warning raised yet.
ALTER TABLE connections ADD COLUMN expiry_warned_for BIGINT;

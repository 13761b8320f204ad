-- Connection health (issue 12). `status` may now also be 'degraded': a transient refresh failure
-- (5xx, timeout, 429), retried with capped exponential backoff.
-- status_reason: why the connection is degraded (e.g. 'temporarily_unavailable', 'timeout',
--   'rate_limited') or needs a reconnect ('invalid_grant', 'no_refresh_token',
--   'refresh_token_expired', 'revoked'); NULL when active.
-- attempts: failed refresh attempts since the last success (0 when active).
-- next_attempt_at: when a degraded connection may be refreshed again (unix seconds); no refresh
--   lease is granted before it, in any instance.
-- refresh_token_expires_at: when the provider said the refresh token dies
--   (`refresh_token_expires_in` / `refresh_expires_in`, made absolute); NULL: not said.
ALTER TABLE connections ADD COLUMN status_reason TEXT;
ALTER TABLE connections ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE connections ADD COLUMN refresh_token_expires_at BIGINT;
-- The keep-alive worker looks for connections idle since `obtained_at`.
CREATE INDEX connections_obtained_at ON connections (obtained_at);

UPDATE connections SET status = 'active' WHERE status = 'degraded';
DROP INDEX connections_obtained_at;
ALTER TABLE connections DROP COLUMN refresh_token_expires_at;
ALTER TABLE connections DROP COLUMN next_attempt_at;
ALTER TABLE connections DROP COLUMN attempts;
ALTER TABLE connections DROP COLUMN status_reason;

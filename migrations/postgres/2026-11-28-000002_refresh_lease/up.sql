-- A short lease on a connection while one request (in any instance) refreshes its tokens.
-- Others see the lease, wait, and re-read instead of refreshing again.
ALTER TABLE connections ADD COLUMN refresh_lease_until BIGINT;

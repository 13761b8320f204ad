-- Durable queued background work (`crate::jobs::queue`): one row per job of a `kind`, its
-- `payload` (the kind's own text; secrets in it are sealed by the kind), enqueued in the
-- transaction of the change that calls for it. A worker claims due rows with a lease
-- (`locked_by`, `locked_until`; `attempts` counts the claims); a failed attempt is retried at
-- `run_at` with backoff, and after `max_attempts` the row is dead (`dead_at`, kept for the
-- operator, shown in /metrics). A finished job's row is deleted.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_by TEXT,
    locked_until BIGINT,
    last_error TEXT,
    dead_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs(kind, run_at) WHERE dead_at IS NULL;

-- The first kind: token revocations (`oauth::retire`), until now in a table of their own. Rows
-- waiting there move over with their attempts and due time (one leased as it moves is due when
-- that lease would have ended); the sealed tokens go into the payload in hex, unchanged.
INSERT INTO jobs (kind, payload, attempts, max_attempts, run_at, created_at)
SELECT 'token_revocations', json_build_object('user_id', user_id, 'service', service, 'account_id', account_id,
    'access_token', encode(access_token, 'hex'), 'refresh_token', encode(refresh_token, 'hex'))::text,
    attempts, 8, next_attempt_at, created_at
FROM token_revocations ORDER BY id;
DROP TABLE token_revocations;

-- The webhook outbox. An event row is written in the same transaction as the change it reports
-- (`webhooks::outbox::record`); the delivery worker fans it out into one delivery per configured
-- endpoint whose filter matches (`fanned_out`), and delivers each at least once. `msg_id` is the
-- `webhook-id` of every attempt; `body` is the exact JSON that is signed and sent.
CREATE TABLE webhook_events (
    id BIGSERIAL PRIMARY KEY,
    msg_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    body TEXT NOT NULL,
    -- Only this endpoint (a test event), or NULL: every endpoint whose filter matches.
    target TEXT,
    fanned_out BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_events_pending ON webhook_events(fanned_out, id);

-- One event to one endpoint. Claimed by one instance at a time with a compare-and-swap on
-- `lease_until`; retried with backoff until `delivered` or `failed`.
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    event_id BIGINT NOT NULL REFERENCES webhook_events(id) ON DELETE CASCADE,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT,
    last_status_code BIGINT,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint, id);

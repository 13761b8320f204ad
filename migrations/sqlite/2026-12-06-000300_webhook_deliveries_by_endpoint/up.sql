-- The delivery worker claims each endpoint's due deliveries on their own (`webhooks::worker`: an
-- endpoint that stalls must not hold up the others), oldest first (`next_attempt_at`, then `id`):
-- this index answers "endpoint E's first pending deliveries due by now" in its own order, without
-- reading other endpoints' rows, the delivered ones kept for the admin page, or sorting a backlog.
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries(endpoint, status, next_attempt_at, id);

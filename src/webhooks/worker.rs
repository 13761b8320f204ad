//! The delivery worker, started with the server (`app.rs`, at liftoff; never for CLI commands) and
//! stopped by shutdown: every `POLL_INTERVAL`, or at once when [`Webhooks::wake`] rings after a
//! commit, it fans recorded events out, claims the due deliveries and sends them — signed, over
//! the one outbound client (timeouts, no redirects), reading at most `MAX_ANSWER_BYTES` of the
//! answer. An instance that dies mid-delivery leaves a lease that runs out; another attempt
//! follows under the same `webhook-id` (at least once).

use std::sync::Arc;
use std::time::Duration;

use super::outbox::{self, AttemptResult, Claimed};
use super::Webhooks;
use crate::db::models::webhooks as rows;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::oauth::http::Outbound;
use crate::util::now;

/// How often the outbox is read without a wake-up.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Deliveries claimed (and sent concurrently) per round.
const BATCH: i64 = 16;
/// How much of a receiver's answer is read (and then dropped): its status is what counts.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// Finished events are kept this long for `/admin/webhooks`, seconds.
const KEEP_SECONDS: i64 = 7 * 86_400;

/// The worker's handles.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub hooks: Arc<Webhooks>,
    pub http: Outbound,
    /// The client for endpoints set on the page while `webhook_private_urls` is off: it connects
    /// to public addresses only (`super::egress::PublicOnly`).
    pub public_http: Outbound,
    /// Attempts by endpoint and result, and their duration (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Opens the secrets of endpoints edited on `/admin/webhooks`.
    pub cipher: Arc<crate::vault::Cipher>,
    /// Seconds a claimed delivery is ours: longer than a request can take (`http_timeout`, which
    /// bounds the whole request, + `http_connect_timeout` + 5 s), so a live instance never loses a
    /// lease mid-request; after a crash mid-delivery the next attempt waits this long.
    pub lease: i64,
}

impl Worker {
    /// Deliver until the future is dropped (at shutdown).
    pub async fn run(self) {
        let mut rounds: u64 = 0;
        loop {
            match self.round().await {
                // A full batch: there may be more.
                Ok(n) if n as i64 >= BATCH => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhook delivery round failed; retrying"),
            }
            rounds += 1;
            if rounds % 600 == 0 {
                let before = now() - KEEP_SECONDS;
                if let Err(e) = self.db.run(move |conn| Ok(rows::prune(conn, before)?)).await {
                    tracing::warn!(error = %e, "could not prune delivered webhooks");
                }
            }
            rocket::tokio::select! {
                _ = self.hooks.woken() => {}
                _ = rocket::tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// One round: pick up endpoint edits, fan out, claim, send, record. How many deliveries were
    /// attempted.
    pub async fn round(&self) -> crate::error::AppResult<usize> {
        let (hooks, cipher) = (self.hooks.clone(), self.cipher.clone());
        self.db
            .run(move |conn| {
                hooks.reload(conn, &cipher)?;
                Ok(outbox::fan_out(conn, &hooks, 100)?)
            })
            .await?;
        let lease = self.lease;
        let claimed = self.db.run(move |conn| Ok(outbox::claim(conn, now(), lease, BATCH)?)).await?;
        let n = claimed.len();
        futures_util::future::join_all(claimed.into_iter().map(|c| self.attempt(c))).await;
        Ok(n)
    }

    async fn attempt(&self, c: Claimed) {
        let endpoint_name = c.delivery.endpoint.clone();
        let started = std::time::Instant::now();
        let result = match self.hooks.get(&endpoint_name) {
            // Its host passed check_public_host when it was loaded (or it is left out); a name
            // must also resolve to public addresses only.
            Some(endpoint) if endpoint.restricted => send(&self.public_http, &endpoint, &c).await,
            Some(endpoint) => send(&self.http, &endpoint, &c).await,
            // Configured when the event was fanned out, gone since (its table removed from the
            // configuration): nobody to send it to. (Deleting on the page fails them at once.)
            None => AttemptResult::NoAnswer("the endpoint is no longer configured".into()),
        };
        let (msg_id, attempt) = (c.event.msg_id.clone(), c.delivery.attempts + 1);
        let r = result.clone();
        match self.db.run(move |conn| Ok(outbox::finish(conn, &c, &r, now())?)).await {
            Ok(Some(status)) => {
                // `delivered`; `pending`: it will be retried; `failed`: the last attempt failed.
                let outcome = match status {
                    rows::DeliveryStatus::Pending => "retry",
                    other => other.as_str(),
                };
                self.metrics.webhook_attempt(&endpoint_name, outcome, started);
                tracing::info!(
                    endpoint = %endpoint_name, webhook_id = %msg_id, attempt, status = %status, result = ?result,
                    "webhook attempt"
                )
            }
            Ok(None) => {
                tracing::warn!(endpoint = %endpoint_name, webhook_id = %msg_id, "webhook lease lost during delivery")
            }
            Err(e) => {
                tracing::warn!(endpoint = %endpoint_name, webhook_id = %msg_id, error = %e, "could not record a webhook attempt")
            }
        }
    }
}

/// POST the event, signed for this attempt's timestamp.
async fn send(http: &Outbound, endpoint: &super::Endpoint, c: &Claimed) -> AttemptResult {
    let timestamp = now();
    let signature = endpoint.sign(&c.event.msg_id, timestamp, &c.event.body);
    let request = http
        .client()
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &c.event.msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(c.event.body.clone());
    match http.send_streaming(request, usize::MAX).await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Read a little (so a short answer leaves the connection reusable), never more.
            let mut read = 0;
            while read < MAX_ANSWER_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    _ => break,
                }
            }
            AttemptResult::Answered(status)
        }
        Err(e) => AttemptResult::NoAnswer(e.to_string()),
    }
}

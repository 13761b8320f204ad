//! The keep-alive worker: refreshes connections nobody used for `keepalive_interval` seconds, so
//! that refresh tokens that die from disuse (Google, Microsoft) stay alive and dead grants are
//! found without traffic; it also retries degraded connections whose next attempt is due, and
//! marks those whose refresh token has expired (without a provider call).
//!
//! - [`pass`] is one sweep (called directly by tests): candidates in id batches
//!   (`connections::keepalive_candidates`), grouped by provider, at most `keepalive_concurrency`
//!   refreshes in flight per provider, each through the refresh core's `refresh_if` — so the
//!   single-flight lock, the database lease and the backoff hold exactly as for API traffic, and
//!   across instances each connection is refreshed by one of them (the loser of the lease finds
//!   the row refreshed and leaves it).
//! - A provider's `429` + `Retry-After` sets the connection's next attempt (the refresh core) and
//!   pauses the worker towards that provider until then ([`Pace`], kept across passes); refused
//!   or missing client credentials pause it for [`admin_pause`] (they would fail for every
//!   connection of the provider, on every pass).
//! - Each pass first raises `connection.expiring` ([`raise_expiry_warnings`]) for connections
//!   whose refresh token expires within `expiry_warning` seconds: once per expiry, by one
//!   instance (a compare-and-swap on `connections.expiry_warned_for`), in the same transaction as
//!   its outbox row.
//! - [`KeepaliveJob`] ([`Worker::into_job`]) repeats passes every [`tick`], a background job of
//!   `crate::jobs` from liftoff to shutdown; the CLI never launches Rocket, so never runs it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use crate::cache::Caches;
use crate::changes::{self, Change, Subject};
use crate::config::Settings;
use crate::db::models::connections::{self, Connection, ConnectionStatus, Which};
use crate::db::Db;
use crate::error::AppResult;
use crate::oauth::http::Outbound;
use crate::oauth::managed::LiveCatalog;
use crate::oauth::metrics::OauthMetrics;
use crate::oauth::providers::{Catalog, Provider};
use crate::oauth::refresh::{refresh_if, AccessError, HttpEndpoint, RefreshLocks, Refresher};
use crate::oauth::store::Tokens;
use crate::oauth::tokens::TokenError;
use crate::util::now;
use crate::vault::Cipher;

/// Candidates read per database round trip.
const BATCH: i64 = 500;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Connections found idle, due or expired.
    pub candidates: usize,
    /// Refreshed (by this instance or, when it lost the lease, by another), or found fresh.
    pub ok: usize,
    /// The refresh failed (degraded, reconnect required, an administrator's problem).
    pub failed: usize,
    /// Left for later: the provider asked to slow down, the service is no longer configured, or
    /// the worker is stopping.
    pub skipped: usize,
    /// `connection.expiring` events raised by this pass.
    pub warned: usize,
}

/// The worker's pace per provider: no keep-alive refresh towards it before the time its last
/// `429` named.
#[derive(Debug, Default)]
pub struct Pace {
    paused_until: Mutex<HashMap<String, i64>>,
}

impl Pace {
    fn paused(&self, provider: &str, now: i64) -> bool {
        let map = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        map.get(provider).is_some_and(|until| *until > now)
    }

    fn pause(&self, provider: &str, until: i64) {
        let mut map = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(provider.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }
}

/// Whether the keep-alive worker should refresh `c` at `now`: it has a refresh token and is
/// active and idle since `idle_before`, degraded with its next attempt due, or its refresh token
/// has expired (marked without a provider call).
pub fn wants_refresh(c: &Connection, idle_before: i64, now: i64) -> bool {
    if c.refresh_token.is_none() {
        return false;
    }
    let expired = c.refresh_token_expires_at.is_some_and(|t| t <= now);
    match c.status {
        ConnectionStatus::Active => c.obtained_at <= idle_before || expired,
        ConnectionStatus::Degraded => expired || c.next_attempt_at.is_none_or(|t| t <= now),
        ConnectionStatus::ReconnectRequired => false,
    }
}

/// How long the worker leaves a provider alone whose client credentials were refused or are
/// missing: the keep-alive interval, at most an hour.
pub fn admin_pause(keepalive_interval: i64) -> i64 {
    keepalive_interval.min(3600)
}

/// How often the worker looks: a tenth of the interval, between 1 s and 60 s.
pub fn tick(keepalive_interval: i64) -> Duration {
    Duration::from_secs((keepalive_interval / 10).clamp(1, 60) as u64)
}

/// One keep-alive pass over every connection that [`wants_refresh`], with `ctx`'s provider
/// endpoint; `stopping` is asked before each refresh (the server's shutdown).
pub async fn pass(
    ctx: &Refresher<'_>,
    catalog: &Catalog,
    pace: &Pace,
    stopping: &(dyn Fn() -> bool + Sync),
) -> AppResult<PassReport> {
    let started = now();
    let idle_before = started - ctx.settings.refresh.keepalive_interval;
    let mut report = PassReport {
        warned: raise_expiry_warnings(ctx.tokens, ctx.settings.refresh.expiry_warning).await?,
        ..Default::default()
    };
    let mut after = 0;
    loop {
        let batch = ctx
            .tokens
            .db
            .run(move |conn| Ok(connections::keepalive_candidates(conn, now(), idle_before, after, BATCH)?))
            .await?;
        let Some(&(last, _, _)) = batch.last() else { break };
        after = last;
        report.candidates += batch.len();
        let mut by_service: BTreeMap<String, Vec<Which>> = BTreeMap::new();
        for (id, user_id, service) in batch {
            by_service.entry(service).or_default().push(Which::id(user_id, id));
        }
        let per_provider = by_service.into_iter().map(|(service, users)| async move {
            let Some(provider) = catalog.get(&service) else {
                return PassReport { skipped: users.len(), ..Default::default() };
            };
            provider_batch(ctx, &provider, users, pace, stopping).await
        });
        for r in futures_util::future::join_all(per_provider).await {
            report.ok += r.ok;
            report.failed += r.failed;
            report.skipped += r.skipped;
        }
        if stopping() {
            break;
        }
    }
    Ok(report)
}

/// Raise `connection.expiring` for every connection whose refresh token expires within `window`
/// seconds (0: never): once per expiry — a new refresh token with a new expiry is warned about
/// again — and, across instances, by whichever marks it first. How many were raised.
pub async fn raise_expiry_warnings(tokens: Tokens<'_>, window: i64) -> AppResult<usize> {
    if window <= 0 {
        return Ok(0);
    }
    let (db, mut raised, mut after) = (tokens.db, 0, 0);
    loop {
        let batch = db.run(move |conn| Ok(connections::expiring_unwarned(conn, now(), window, after, BATCH)?)).await?;
        let Some(last) = batch.last().map(|c| c.id) else { break };
        after = last;
        let ledger = tokens.ledger();
        let warned = db
            .run(move |conn| {
                let mut warned = Vec::new();
                for row in &batch {
                    let Some(expires) = row.refresh_token_expires_at else { continue };
                    let committed = changes::write(conn, &ledger.cipher, ledger.events_kept, |tx| {
                        if !connections::mark_expiry_warned(tx.conn(), row.id, expires)? {
                            return Ok(false);
                        }
                        tx.record(Change::ExpiryWarned { conn: Subject::of(row), status: row.status.as_str().into() })?;
                        Ok(true)
                    })?;
                    if *committed.value() {
                        let in_secs = expires - now();
                        tracing::info!(service = %row.service, user_id = row.user_id, in_secs, "refresh token expiring: warned");
                    }
                    warned.push(committed);
                }
                Ok(warned)
            })
            .await?;
        for committed in warned {
            if committed.settle(tokens.effects()) {
                raised += 1;
            }
        }
    }
    Ok(raised)
}

/// Keep-alive refreshes of one provider's connections, `keepalive_concurrency` at a time.
async fn provider_batch(
    ctx: &Refresher<'_>,
    provider: &Provider,
    users: Vec<Which>,
    pace: &Pace,
    stopping: &(dyn Fn() -> bool + Sync),
) -> PassReport {
    let report = Mutex::new(PassReport::default());
    let count = |f: fn(&mut PassReport)| f(&mut report.lock().unwrap_or_else(|e| e.into_inner()));
    let interval = ctx.settings.refresh.keepalive_interval;
    futures_util::stream::iter(users)
        .for_each_concurrent(ctx.settings.refresh.keepalive_concurrency, |which| async move {
            if stopping() || pace.paused(&provider.name, now()) {
                return count(|r| r.skipped += 1);
            }
            let needs = move |c: &Connection| wants_refresh(c, now() - interval, now());
            match refresh_if(ctx, which, provider, None, needs).await {
                Ok(_) => count(|r| r.ok += 1),
                Err(AccessError::Provider(TokenError::RateLimited(after))) => {
                    let wait = after.map_or(crate::oauth::refresh::health::BACKOFF_BASE, |s| s.min(86_400) as i64);
                    pace.pause(&provider.name, now() + wait);
                    tracing::warn!(provider = %provider.name, retry_after = wait, "keep-alive paused: the provider asked to slow down");
                    count(|r| r.failed += 1)
                }
                Err(AccessError::BackingOff { .. }) => count(|r| r.skipped += 1),
                Err(AccessError::ClientRejected(_) | AccessError::NotConfigured) => {
                    // The provider's client credentials are wrong or missing: an administrator's
                    // problem that every connection of the provider would hit again, each pass.
                    // Leave the provider alone for a while (one attempt and one event per pause).
                    pace.pause(&provider.name, now() + admin_pause(interval));
                    tracing::warn!(provider = %provider.name, "keep-alive paused: the client credentials need an administrator");
                    count(|r| r.failed += 1)
                }
                Err(_) => count(|r| r.failed += 1),
            }
        })
        .await;
    report.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The worker's own handles (owned: it outlives any request), cloned from the server's state.
pub struct Worker {
    pub db: Db,
    pub cipher: Arc<Cipher>,
    pub caches: Arc<Caches>,
    pub http: Outbound,
    pub metrics: OauthMetrics,
    pub locks: Arc<RefreshLocks>,
    pub settings: Arc<Settings>,
    /// Read once per pass: a provider disabled meanwhile is left alone from the next pass.
    pub catalog: Arc<LiveCatalog>,
    /// Rung after a pass recorded webhook events (`connection.expiring`, …).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl Worker {
    /// One [`pass`] with the server's handles and the HTTP endpoint (what [`KeepaliveJob`] repeats;
    /// tests call it directly).
    pub async fn pass(&self, pace: &Pace, stopping: &(dyn Fn() -> bool + Sync)) -> AppResult<PassReport> {
        let endpoint =
            HttpEndpoint { http: &self.http, default_lifetime: self.settings.refresh.default_token_lifetime };
        let tokens = Tokens {
            db: &self.db,
            cipher: &self.cipher,
            caches: &self.caches,
            events_kept: self.settings.flows.events_per_connection,
            webhooks: Some(&self.webhooks),
            // A refresh queues no job (rotated-out tokens are the provider's to drop).
            jobs: None,
        };
        let ctx = Refresher {
            tokens,
            endpoint: &endpoint,
            metrics: &self.metrics,
            locks: &self.locks,
            settings: &self.settings,
        };
        pass(&ctx, &self.catalog.current(), pace, stopping).await
    }

    /// This worker as a background job (`crate::jobs`): a pass every `every` ([`tick`]), the first
    /// one interval after start; no refresh starts once shutdown has begun (`every` is logged).
    pub fn into_job(self, every: Duration) -> KeepaliveJob {
        tracing::info!(
            interval = self.settings.refresh.keepalive_interval,
            every_secs = every.as_secs(),
            "keep-alive worker started"
        );
        KeepaliveJob { worker: self, pace: Pace::default() }
    }
}

/// The keep-alive passes as a background job.
pub struct KeepaliveJob {
    worker: Worker,
    pace: Pace,
}

#[rocket::async_trait]
impl crate::jobs::Job for KeepaliveJob {
    fn name(&self) -> &'static str {
        "keepalive"
    }

    async fn run(&mut self, stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        let stopping = || stop.is_cancelled();
        let r = self.worker.pass(&self.pace, &stopping).await.map_err(|e| format!("keep-alive pass failed: {e}"))?;
        if r.candidates > 0 || r.warned > 0 {
            tracing::info!(
                candidates = r.candidates,
                ok = r.ok,
                failed = r.failed,
                skipped = r.skipped,
                warned = r.warned,
                "keep-alive pass"
            )
        }
        Ok(crate::jobs::Next::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::{tick, wants_refresh, Pace};
    use crate::db::models::connections::{Connection, ConnectionStatus};
    use std::time::Duration;

    #[test]
    fn who_the_worker_refreshes() {
        let (now, idle_before) = (1_000_000, 1_000_000 - 86_400);
        let mut c = Connection::for_tests(1, "demo");
        c.obtained_at = idle_before;
        assert!(!wants_refresh(&c, idle_before, now), "no refresh token");
        c.refresh_token = Some(vec![1]);
        assert!(wants_refresh(&c, idle_before, now), "idle for the interval");
        c.obtained_at = idle_before + 1;
        assert!(!wants_refresh(&c, idle_before, now), "refreshed recently");
        c.refresh_token_expires_at = Some(now);
        assert!(wants_refresh(&c, idle_before, now), "its refresh token expired: to be marked");
        c.refresh_token_expires_at = None;
        c.status = ConnectionStatus::Degraded;
        c.next_attempt_at = Some(now + 1);
        assert!(!wants_refresh(&c, idle_before, now), "degraded, not due");
        c.next_attempt_at = Some(now);
        assert!(wants_refresh(&c, idle_before, now), "degraded and due, however recent");
        c.status = ConnectionStatus::ReconnectRequired;
        assert!(!wants_refresh(&c, idle_before, now));
    }

    #[test]
    fn the_tick_is_a_tenth_of_the_interval_within_bounds() {
        assert_eq!(tick(10), Duration::from_secs(1));
        assert_eq!(tick(300), Duration::from_secs(30));
        assert_eq!(tick(86_400), Duration::from_secs(60));
    }

    #[test]
    fn a_pause_only_grows() {
        let pace = Pace::default();
        assert!(!pace.paused("p", 100));
        pace.pause("p", 200);
        pace.pause("p", 150);
        assert!(pace.paused("p", 199));
        assert!(!pace.paused("p", 200));
        assert!(!pace.paused("q", 100));
    }
}

//! The state every request shares, below the routes: one handle per service (database, cipher,
//! outbound HTTP, caches, settings, provider catalog, refresh locks, login throttle, hasher,
//! metrics). `app::rocket` builds it and hands it to Rocket as managed state; guards and handlers
//! read it with `&State<AppState>`. The functions of `oauth/`, `auth/`, `vault/` and `db/` take
//! only the handles they need, never this struct.

use std::sync::Arc;

use crate::auth::password::Hasher;
use crate::auth::throttle::LoginThrottle;
use crate::cache::Caches;
use crate::config::Settings;
use crate::db::Db;
use crate::oauth::access::{Access, RefreshLocks};
use crate::oauth::http::Outbound;
use crate::oauth::managed::LiveCatalog;
use crate::oauth::store::Tokens;
use crate::vault::Cipher;

/// Every module's metrics, registered in one registry (rendered by `/metrics`). Each part is handed
/// only to the code that counts it.
pub struct AppMetrics {
    pub registry: Arc<crate::metrics::Metrics>,
    pub oauth: crate::oauth::metrics::OauthMetrics,
    pub webhooks: crate::webhooks::metrics::WebhookMetrics,
    pub audit: crate::audit::metrics::AuditMetrics,
    pub login: crate::auth::metrics::LoginMetrics,
    pub caches: crate::cache::CacheMetrics,
    /// The background jobs' runs, failures and queues (`crate::jobs`).
    pub jobs: crate::jobs::JobMetrics,
    /// One scrape at a time: the counters that follow running totals add what is new since the last.
    pub scrape: std::sync::Mutex<()>,
}

impl AppMetrics {
    pub fn new() -> AppMetrics {
        let registry = Arc::new(crate::metrics::Metrics::new());
        AppMetrics {
            oauth: crate::oauth::metrics::OauthMetrics::register(&registry),
            webhooks: crate::webhooks::metrics::WebhookMetrics::register(&registry),
            audit: crate::audit::metrics::AuditMetrics::register(&registry),
            login: crate::auth::metrics::LoginMetrics::register(&registry),
            caches: crate::cache::CacheMetrics::register(&registry),
            jobs: crate::jobs::JobMetrics::register(&registry),
            registry,
            scrape: Default::default(),
        }
    }
}

impl Default for AppMetrics {
    fn default() -> Self {
        AppMetrics::new()
    }
}

/// What handlers and guards share, in Rocket's managed state.
pub struct AppState {
    pub db: Db,
    pub settings: Arc<Settings>,
    pub cipher: Arc<Cipher>,
    pub http: Outbound,
    /// The providers in effect, swapped when they change in the app (`oauth::managed`).
    pub catalog: Arc<LiveCatalog>,
    /// Shared with the keep-alive worker, so that it and requests refresh a connection once.
    pub refresh_locks: Arc<RefreshLocks>,
    pub login_throttle: LoginThrottle,
    /// Every argon2 hash and verify of the server runs through it (bounded, see its docs).
    pub hasher: Arc<Hasher>,
    pub metrics: Arc<AppMetrics>,
    /// In-memory copies of API keys and connection rows (see `crate::cache`).
    pub caches: Arc<Caches>,
    /// The configured webhook endpoints and the delivery worker's wake-up (see `crate::webhooks`).
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// The audit log's batcher for reads (`token.read`, `proxy.call`; see `crate::audit`).
    pub audit: Arc<crate::audit::batcher::Batcher>,
    /// The wake-up of the workers of the jobs table (the token revocations, `oauth::retire`),
    /// rung by settling a unit of work that queued a job.
    pub job_wake: Arc<crate::jobs::Wake>,
    /// The background jobs' supervisor and metrics (see `crate::jobs`).
    pub jobs: Arc<crate::jobs::Supervisor>,
}

impl AppState {
    /// The token store's handles (`oauth::store`).
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens {
            db: &self.db,
            cipher: &self.cipher,
            caches: &self.caches,
            events_kept: self.settings.flows.events_per_connection,
            webhooks: Some(&self.webhooks),
            jobs: Some(&self.job_wake),
        }
    }

    /// What a unit of work needs (`crate::changes`).
    pub fn ledger(&self) -> crate::changes::Ledger {
        crate::changes::Ledger { cipher: self.cipher.clone(), events_kept: self.settings.flows.events_per_connection }
    }

    /// What this process does after a unit of work commits: drop its cached copies, wake the
    /// webhook worker.
    pub fn effects(&self) -> crate::changes::Effects<'_> {
        crate::changes::Effects {
            caches: Some(&self.caches),
            webhooks: Some(&self.webhooks),
            jobs: Some(&self.job_wake),
        }
    }

    /// Record `change` alone in a unit of work of its own, settled.
    pub async fn record(&self, change: crate::changes::Change) -> crate::error::AppResult<()> {
        self.db.write(self.ledger(), move |tx| tx.record(change)).await?.settle(self.effects());
        Ok(())
    }

    /// The keep-alive worker's handles (`oauth::keepalive`), cloned: it runs beside requests.
    pub fn keepalive(&self) -> crate::oauth::keepalive::Worker {
        crate::oauth::keepalive::Worker {
            db: self.db.clone(),
            cipher: self.cipher.clone(),
            caches: self.caches.clone(),
            http: self.http.clone(),
            metrics: self.metrics.oauth.clone(),
            locks: self.refresh_locks.clone(),
            settings: self.settings.clone(),
            catalog: self.catalog.clone(),
            webhooks: self.webhooks.clone(),
        }
    }

    /// The revocation worker's handles (`oauth::retire`), cloned: it runs beside requests.
    pub fn retire_worker(&self) -> crate::oauth::retire::Worker {
        crate::oauth::retire::Worker {
            db: self.db.clone(),
            cipher: self.cipher.clone(),
            http: self.http.clone(),
            catalog: self.catalog.clone(),
            queue: self.job_wake.clone(),
            default_lifetime: self.settings.refresh.default_token_lifetime,
            lease: (self.settings.http.timeout + self.settings.http.connect_timeout) as i64 * 2 + 5,
            worker: crate::jobs::queue::worker_id(),
        }
    }

    /// The webhook delivery worker's handles (`webhooks::worker`), cloned: it runs beside requests.
    pub fn webhook_worker(&self) -> crate::webhooks::worker::Worker {
        crate::webhooks::worker::Worker {
            db: self.db.clone(),
            hooks: self.webhooks.clone(),
            http: self.http.clone(),
            metrics: self.metrics.webhooks.clone(),
            cipher: self.cipher.clone(),
            public_http: crate::oauth::http::Outbound::with_resolver(
                &self.settings.http,
                Arc::new(crate::webhooks::egress::PublicOnly::default()),
            )
            .expect("the public-only client builds as the main one did"),
            lease: (self.settings.http.timeout + self.settings.http.connect_timeout) as i64 + 5,
        }
    }

    /// What getting a usable token needs (`oauth::access`, and the calls built on it).
    pub fn access(&self) -> Access<'_> {
        Access {
            tokens: self.tokens(),
            http: &self.http,
            metrics: &self.metrics.oauth,
            locks: &self.refresh_locks,
            settings: &self.settings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AppMetrics;

    /// `/metrics` shows the same families, labels and values as before each module registered its
    /// own (the fixture is the output of the single metrics struct this replaced, plus the jobs'
    /// families added since, `tokenvault_job_*` and `tokenvault_revoke_echo_timeouts_total`; durations vary, so the histograms' `_sum` lines
    /// are left out of the comparison).
    #[test]
    fn the_exposition_is_unchanged_by_modules_registering_their_own_metrics() {
        let m = AppMetrics::new();
        m.oauth.refresh("p", "ok");
        m.oauth.token_endpoint("p", "refresh", std::time::Instant::now());
        m.webhooks.attempt("e", "delivered", std::time::Instant::now());
        m.webhooks.set_deliveries(&[("pending", 2)]);
        m.login.set(Default::default(), Default::default());
        m.oauth.set_connections(&[("active", 3)]);
        m.caches.set(&[("api_keys", Default::default())]);
        m.audit.set_losses(Default::default());
        m.jobs.known("j");
        m.jobs.ran("j", false);
        let queue = crate::jobs::metrics::QueueFigures { job: "q".into(), depth: 2, oldest_age: 30, dead: Some(1) };
        m.jobs.set_queues(&[queue]);
        let stable =
            |text: &str| -> Vec<String> { text.lines().filter(|l| !l.contains("_sum")).map(str::to_string).collect() };
        let want = include_str!("../tests/fixtures/metrics-golden.txt");
        assert_eq!(stable(&m.registry.render()), stable(want));
    }
}

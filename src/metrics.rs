//! Prometheus metrics: requests by route and status, refreshes by outcome, token-endpoint
//! latency; connections by status are counted from the database, and the in-memory caches' hits,
//! misses and entries read, at scrape time.

use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rocket::fairing::{Fairing, Info, Kind};
use rocket::{Data, Request, Response};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    refreshes: IntCounterVec,
    token_endpoint_seconds: HistogramVec,
    connections: IntGaugeVec,
    cache_lookups: IntCounterVec,
    cache_entries: IntGaugeVec,
    login_throttle_entries: IntGaugeVec,
    password_hashing: IntGaugeVec,
    webhook_attempts: IntCounterVec,
    webhook_attempt_seconds: HistogramVec,
    webhook_deliveries: IntGaugeVec,
    audit_lost: IntCounterVec,
    audit_prune_refused: IntCounter,
    audit_checkpoints: IntCounterVec,
    scrape: std::sync::Mutex<()>,
}

/// The results `tokenvault_audit_checkpoints_total` counts: published (at least the log line), not
/// published (the head is not authenticated, or the database failed), or published after finding
/// the log no longer holding the previous checkpoint of this instance.
pub const CHECKPOINT_RESULTS: [&str; 3] = ["published", "failed", "inconsistent"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tokenvault".into()), None).expect("valid registry");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request duration by route")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route"],
        )
        .expect("valid metric");
        let refreshes = IntCounterVec::new(
            Opts::new("token_refreshes_total", "Token refreshes by provider and outcome"),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let token_endpoint_seconds = HistogramVec::new(
            HistogramOpts::new("token_endpoint_duration_seconds", "Provider token-endpoint latency")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["provider", "grant"],
        )
        .expect("valid metric");
        let connections = IntGaugeVec::new(Opts::new("connections", "Stored connections by status"), &["status"])
            .expect("valid metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new("cache_lookups_total", "In-memory cache lookups by cache and result (hit, miss)"),
            &["cache", "result"],
        )
        .expect("valid metric");
        let cache_entries =
            IntGaugeVec::new(Opts::new("cache_entries", "In-memory cache entries"), &["cache"]).expect("valid metric");
        let login_throttle_entries = IntGaugeVec::new(
            Opts::new("login_throttle_entries", "Entries in the login throttle's maps (address, account, device)"),
            &["map"],
        )
        .expect("valid metric");
        let password_hashing = IntGaugeVec::new(
            Opts::new(
                "password_hashing",
                "The password hasher: workers and queue (limits), running now, peak running, refused (503) so far",
            ),
            &["figure"],
        )
        .expect("valid metric");
        let webhook_attempts = IntCounterVec::new(
            Opts::new(
                "webhook_attempts_total",
                "Webhook delivery attempts by endpoint and result (delivered, retry, failed)",
            ),
            &["endpoint", "result"],
        )
        .expect("valid metric");
        let webhook_attempt_seconds = HistogramVec::new(
            HistogramOpts::new("webhook_attempt_duration_seconds", "Webhook delivery attempts, seconds")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let webhook_deliveries = IntGaugeVec::new(
            Opts::new("webhook_deliveries", "Webhook deliveries kept, by status (pending: waiting or retrying)"),
            &["status"],
        )
        .expect("valid metric");
        let audit_lost = IntCounterVec::new(
            Opts::new(
                "audit_entries_lost_total",
                "Audit entries of the batcher (reads, refused sign-ins) never written: queue_full, write_failed",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let audit_prune_refused = IntCounter::new(
            "audit_prune_refused_total",
            "Audit retention prunes that removed nothing because the chain did not verify up to the cut-off",
        )
        .expect("valid metric");
        let audit_checkpoints = IntCounterVec::new(
            Opts::new(
                "audit_checkpoints_total",
                "Audit checkpoints by result: published, failed (not published), inconsistent (the log no longer \
                 holds this instance's previous checkpoint)",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in CHECKPOINT_RESULTS {
            audit_checkpoints.with_label_values(&[result]);
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(audit_lost.clone()),
            Box::new(audit_prune_refused.clone()),
            Box::new(audit_checkpoints.clone()),
            Box::new(webhook_attempts.clone()),
            Box::new(webhook_attempt_seconds.clone()),
            Box::new(webhook_deliveries.clone()),
            Box::new(login_throttle_entries.clone()),
            Box::new(password_hashing.clone()),
            Box::new(request_seconds.clone()),
            Box::new(refreshes.clone()),
            Box::new(token_endpoint_seconds.clone()),
            Box::new(connections.clone()),
            Box::new(cache_lookups.clone()),
            Box::new(cache_entries.clone()),
        ] {
            registry.register(c).expect("metric registers once");
        }
        Metrics {
            registry,
            requests,
            request_seconds,
            refreshes,
            token_endpoint_seconds,
            connections,
            cache_lookups,
            cache_entries,
            login_throttle_entries,
            password_hashing,
            webhook_attempts,
            webhook_attempt_seconds,
            webhook_deliveries,
            audit_lost,
            audit_prune_refused,
            audit_checkpoints,
            scrape: Default::default(),
        }
    }

    /// Register another module's metrics (`crate::jobs`) in the same registry, so `/metrics`
    /// shows them.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// An audit prune refused (something before its cut-off did not verify).
    pub fn audit_prune_refused(&self) {
        self.audit_prune_refused.inc();
    }

    /// An audit checkpoint and its result (one of [`CHECKPOINT_RESULTS`]).
    pub fn audit_checkpoint(&self, result: &str) {
        self.audit_checkpoints.with_label_values(&[result]).inc();
    }

    pub fn refresh(&self, provider: &str, outcome: &str) {
        self.refreshes.with_label_values(&[provider, outcome]).inc();
    }

    /// One webhook attempt to `endpoint` (a configured name) and what it came to.
    pub fn webhook_attempt(&self, endpoint: &str, result: &str, started: Instant) {
        self.webhook_attempts.with_label_values(&[endpoint, result]).inc();
        self.webhook_attempt_seconds.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
    }

    /// The deliveries kept, by status (read at scrape time).
    pub fn set_webhook_deliveries(&self, by_status: &[(&str, i64)]) {
        for status in crate::db::models::webhooks::DeliveryStatus::ALL {
            self.webhook_deliveries.with_label_values(&[status.as_str()]).set(0);
        }
        for (status, n) in by_status {
            self.webhook_deliveries.with_label_values(&[*status]).set(*n);
        }
    }

    pub fn token_endpoint(&self, provider: &str, grant: &str, started: Instant) {
        self.token_endpoint_seconds.with_label_values(&[provider, grant]).observe(started.elapsed().as_secs_f64());
    }

    /// Set the login throttle's and the password hasher's figures (read at scrape time).
    pub fn set_login_figures(
        &self,
        sizes: crate::auth::throttle::ThrottleSizes,
        hashing: crate::auth::password::HasherStats,
    ) {
        for (map, n) in [("address", sizes.addresses), ("account", sizes.accounts), ("device", sizes.devices)] {
            self.login_throttle_entries.with_label_values(&[map]).set(n as i64);
        }
        for (figure, n) in [
            ("workers", hashing.workers as u64),
            ("queue", hashing.queue as u64),
            ("running", hashing.running as u64),
            ("peak", hashing.peak as u64),
            ("refused", hashing.refused),
        ] {
            self.password_hashing.with_label_values(&[figure]).set(n as i64);
        }
    }

    /// The text exposition, with the connection gauge set from `by_status`, the cache figures
    /// from `caches` and the audit batcher's losses (read at scrape time).
    pub fn render(
        &self,
        by_status: &[(&str, i64)],
        caches: &[(&str, crate::cache::CacheStats)],
        audit: AuditLosses,
    ) -> String {
        self.connections.reset();
        // Every status has its series, 0 when no connection has it (`degraded` shows before the
        // first failure, so an alert on it has something to watch).
        for status in crate::db::models::connections::ConnectionStatus::ALL {
            self.connections.with_label_values(&[status.as_str()]).set(0);
        }
        for (status, n) in by_status {
            self.connections.with_label_values(&[*status]).set(*n);
        }
        // Counters only go up: add what is new since the last scrape (one scrape at a time).
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (name, stats) in caches {
            for (result, total) in [("hit", stats.hits), ("miss", stats.misses)] {
                let counter = self.cache_lookups.with_label_values(&[name, result]);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
            self.cache_entries.with_label_values(&[name]).set(stats.entries as i64);
        }
        for (reason, total) in [("queue_full", audit.dropped), ("write_failed", audit.lost)] {
            let counter = self.audit_lost.with_label_values(&[reason]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding works");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// What the audit batcher never wrote, so far (`crate::audit::batcher::Batcher`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditLosses {
    /// Dropped because its queue was full.
    pub dropped: u64,
    /// Lost because a batch could not be written.
    pub lost: u64,
}

/// Counts every request by its route template (never the concrete path: low cardinality, no ids).
pub struct MetricsFairing(pub std::sync::Arc<Metrics>);

struct Started(Instant);

#[rocket::async_trait]
impl Fairing for MetricsFairing {
    fn info(&self) -> Info {
        Info { name: "Metrics", kind: Kind::Request | Kind::Response }
    }

    async fn on_request(&self, req: &mut Request<'_>, _: &mut Data<'_>) {
        req.local_cache(|| Started(Instant::now()));
    }

    async fn on_response<'r>(&self, req: &'r Request<'_>, res: &mut Response<'r>) {
        let route = req.route().map(|r| r.uri.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
        let method = req.method().as_str();
        self.0.requests.with_label_values(&[method, &route, &res.status().code.to_string()]).inc();
        let started = req.local_cache(|| Started(Instant::now())).0;
        self.0.request_seconds.with_label_values(&[method, &route]).observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::{AuditLosses, Metrics};

    /// The audit batcher's losses are counters that follow its totals across scrapes.
    #[test]
    fn audit_losses_are_exported_as_counters() {
        let m = Metrics::new();
        let text = m.render(&[], &[], AuditLosses { dropped: 3, lost: 0 });
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"queue_full\"} 3"), "{text}");
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"write_failed\"} 0"), "{text}");
        let text = m.render(&[], &[], AuditLosses { dropped: 5, lost: 2 });
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"queue_full\"} 5"), "{text}");
        assert!(text.contains("tokenvault_audit_entries_lost_total{reason=\"write_failed\"} 2"), "{text}");
    }

    /// Refused prunes and checkpoints are counters, every checkpoint result shown from the start.
    #[test]
    fn audit_prunes_refused_and_checkpoints_are_counted() {
        let m = Metrics::new();
        let text = m.render(&[], &[], AuditLosses::default());
        assert!(text.contains("tokenvault_audit_prune_refused_total 0"), "{text}");
        for result in super::CHECKPOINT_RESULTS {
            assert!(text.contains(&format!("tokenvault_audit_checkpoints_total{{result=\"{result}\"}} 0")), "{text}");
        }
        m.audit_prune_refused();
        m.audit_checkpoint("published");
        m.audit_checkpoint("published");
        let text = m.render(&[], &[], AuditLosses::default());
        assert!(text.contains("tokenvault_audit_prune_refused_total 1"), "{text}");
        assert!(text.contains("tokenvault_audit_checkpoints_total{result=\"published\"} 2"), "{text}");
    }
}

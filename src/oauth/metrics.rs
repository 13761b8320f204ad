//! The token layer's metrics: refreshes by provider and outcome, token-endpoint latency, and the
//! stored connections by status (counted from the database at scrape time).

use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

use crate::db::models::connections::ConnectionStatus;
use crate::metrics::{set_all, Metrics};

#[derive(Clone)]
pub struct OauthMetrics {
    refreshes: IntCounterVec,
    token_endpoint_seconds: HistogramVec,
    connections: IntGaugeVec,
}

impl OauthMetrics {
    pub fn register(m: &Metrics) -> OauthMetrics {
        OauthMetrics {
            refreshes: m.counters(
                "token_refreshes_total",
                "Token refreshes by provider and outcome",
                &["provider", "outcome"],
            ),
            token_endpoint_seconds: m.histograms(
                "token_endpoint_duration_seconds",
                "Provider token-endpoint latency",
                &["provider", "grant"],
                &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            connections: m.gauges("connections", "Stored connections by status", &["status"]),
        }
    }

    pub fn refresh(&self, provider: &str, outcome: &str) {
        self.refreshes.with_label_values(&[provider, outcome]).inc();
    }

    pub fn token_endpoint(&self, provider: &str, grant: &str, started: Instant) {
        self.token_endpoint_seconds.with_label_values(&[provider, grant]).observe(started.elapsed().as_secs_f64());
    }

    /// The connections by status (read at scrape time). Every status has its series, 0 when no
    /// connection has it (`degraded` shows before the first failure, so an alert has something to watch).
    pub fn set_connections(&self, by_status: &[(&str, i64)]) {
        let all: Vec<&str> = ConnectionStatus::ALL.iter().map(|s| s.as_str()).collect();
        set_all(&self.connections, &all, by_status);
    }
}

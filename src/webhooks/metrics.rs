//! The webhook worker's metrics: attempts by endpoint and result, their duration, and the
//! deliveries kept by status (counted from the database at scrape time).

use std::time::Instant;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

use crate::db::models::webhooks::DeliveryStatus;
use crate::metrics::{set_all, Metrics};

#[derive(Clone)]
pub struct WebhookMetrics {
    attempts: IntCounterVec,
    attempt_seconds: HistogramVec,
    deliveries: IntGaugeVec,
}

impl WebhookMetrics {
    pub fn register(m: &Metrics) -> WebhookMetrics {
        WebhookMetrics {
            attempts: m.counters(
                "webhook_attempts_total",
                "Webhook delivery attempts by endpoint and result (delivered, retry, failed)",
                &["endpoint", "result"],
            ),
            attempt_seconds: m.histograms(
                "webhook_attempt_duration_seconds",
                "Webhook delivery attempts, seconds",
                &["endpoint"],
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            ),
            deliveries: m.gauges(
                "webhook_deliveries",
                "Webhook deliveries kept, by status (pending: waiting or retrying)",
                &["status"],
            ),
        }
    }

    /// One webhook attempt to `endpoint` (a configured name) and what it came to.
    pub fn attempt(&self, endpoint: &str, result: &str, started: Instant) {
        self.attempts.with_label_values(&[endpoint, result]).inc();
        self.attempt_seconds.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
    }

    /// The deliveries kept, by status (read at scrape time).
    pub fn set_deliveries(&self, by_status: &[(&str, i64)]) {
        let all: Vec<&str> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        set_all(&self.deliveries, &all, by_status);
    }
}

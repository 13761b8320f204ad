//! Prometheus metrics, the base of them: one registry, the HTTP request metrics of the fairing
//! below, helpers with which each module registers its own metrics (`oauth::metrics`,
//! `webhooks::metrics`, `audit::metrics`, `auth::metrics`, `cache`), and the text exposition.
//! Figures read at scrape time are set by `/metrics` (`routes::health`) just before [`Metrics::render`].

use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rocket::fairing::{Fairing, Info, Kind};
use rocket::{Data, Request, Response};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
}

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
        let m = Metrics { registry, requests: requests.clone(), request_seconds: request_seconds.clone() };
        m.register(requests);
        m.register(request_seconds);
        m
    }

    /// Register `metric` (a name taken twice is a bug: it panics at start-up, in every test).
    pub fn register<C: Collector + Clone + 'static>(&self, metric: C) -> C {
        self.registry.register(Box::new(metric.clone())).expect("metric registers once");
        metric
    }

    /// A counter family `tokenvault_<name>` with `labels`, registered.
    pub fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A counter `tokenvault_<name>`, registered.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    /// A gauge family `tokenvault_<name>` with `labels`, registered.
    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    /// A histogram family `tokenvault_<name>` with `labels` and `buckets` (seconds), registered.
    pub fn histograms(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    /// The text exposition of everything registered (families sorted by name).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding works");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Set `counter` to `total`, a running total kept elsewhere (counters only go up: adds what is new
/// since the last scrape; the caller scrapes one at a time).
pub fn follow(counter: &IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Set a gauge family from `figures`, every one of `all` shown (0 when absent) so an alert on a
/// label has a series to watch before its first occurrence.
pub fn set_all(gauges: &IntGaugeVec, all: &[&str], figures: &[(&str, i64)]) {
    gauges.reset();
    for label in all {
        gauges.with_label_values(&[label]).set(0);
    }
    for (label, n) in figures {
        gauges.with_label_values(&[label]).set(*n);
    }
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
    use super::{follow, set_all, Metrics};

    /// A running total kept elsewhere is followed across scrapes, never going down.
    #[test]
    fn followed_totals_only_grow() {
        let m = Metrics::new();
        let c = m.counter("things_total", "things");
        follow(&c, 3);
        follow(&c, 5);
        follow(&c, 4);
        assert_eq!(c.get(), 5);
        assert!(m.render().contains("tokenvault_things_total 5"));
    }

    /// Every label of a gauge family is shown, 0 when absent.
    #[test]
    fn every_label_has_a_series() {
        let m = Metrics::new();
        let g = m.gauges("items", "items", &["status"]);
        set_all(&g, &["a", "b"], &[("b", 2)]);
        let text = m.render();
        assert!(text.contains("tokenvault_items{status=\"a\"} 0"), "{text}");
        assert!(text.contains("tokenvault_items{status=\"b\"} 2"), "{text}");
    }

    #[test]
    #[should_panic(expected = "metric registers once")]
    fn a_name_taken_twice_is_refused() {
        let m = Metrics::new();
        m.counter("twice_total", "x");
        m.counter("twice_total", "x");
    }
}

//! The jobs' metrics, registered in the server's registry (`state::AppMetrics`):
//! runs and failed runs by job (counters), and for the queued jobs the pending items and the age
//! of the oldest (gauges, read at scrape time with [`queues`]).

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::db::Conn;
use crate::error::AppResult;
use crate::metrics::Metrics;

/// What `/metrics` shows of the jobs.
#[derive(Clone)]
pub struct JobMetrics {
    runs: IntCounterVec,
    failures: IntCounterVec,
    queue_depth: IntGaugeVec,
    oldest_pending: IntGaugeVec,
    dead: IntGaugeVec,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobMetrics")
    }
}

/// One queue's figures: its job, how many items wait (due or not), the age of the oldest, seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFigures {
    pub job: String,
    pub depth: i64,
    pub oldest_age: i64,
    /// Jobs of a durable queue given up after their attempts (`jobs::queue`).
    pub dead: Option<i64>,
}

impl JobMetrics {
    /// The jobs' metrics, registered in `m`.
    pub fn register(m: &Metrics) -> JobMetrics {
        JobMetrics {
            runs: m.counters("job_runs_total", "Background job runs, by job", &["job"]),
            failures: m.counters("job_failures_total", "Background job runs that failed or panicked, by job", &["job"]),
            queue_depth: m.gauges("job_queue_depth", "Items waiting in a background job's queue, by job", &["job"]),
            oldest_pending: m.gauges(
                "job_oldest_pending_seconds",
                "Age of the oldest item waiting in a background job's queue (0 when empty), by job",
                &["job"],
            ),
            dead: m.gauges(
                "job_dead",
                "Durable jobs given up after their attempts (kept in the jobs table), by job",
                &["job"],
            ),
        }
    }

    /// `job` is running: its series show from now on (0 until it runs).
    pub fn known(&self, job: &str) {
        self.runs.with_label_values(&[job]);
        self.failures.with_label_values(&[job]);
    }

    /// One run of `job` ended, well or not.
    pub fn ran(&self, job: &str, ok: bool) {
        self.runs.with_label_values(&[job]).inc();
        if !ok {
            self.failures.with_label_values(&[job]).inc();
        }
    }

    pub fn runs(&self, job: &str) -> u64 {
        self.runs.with_label_values(&[job]).get()
    }

    pub fn failures(&self, job: &str) -> u64 {
        self.failures.with_label_values(&[job]).get()
    }

    /// Set the queue gauges (at scrape time).
    pub fn set_queues(&self, queues: &[QueueFigures]) {
        // A queue seen before and empty now shows 0, not its last figures.
        self.queue_depth.reset();
        self.oldest_pending.reset();
        self.dead.reset();
        for q in queues {
            self.queue_depth.with_label_values(&[&q.job]).set(q.depth);
            self.oldest_pending.with_label_values(&[&q.job]).set(q.oldest_age);
            if let Some(dead) = q.dead {
                self.dead.with_label_values(&[&q.job]).set(dead);
            }
        }
    }
}

/// The queued jobs' figures at `now`: webhook deliveries waiting (pending), and every kind of the
/// durable `jobs` table (`super::queue`; token revocations among them).
pub fn queues(conn: &mut Conn, now: i64) -> AppResult<Vec<QueueFigures>> {
    let age = |oldest: Option<i64>| oldest.map_or(0, |at| (now - at).max(0));
    let figures = |job: &str, (depth, oldest): (i64, Option<i64>)| QueueFigures {
        job: job.to_string(),
        depth,
        oldest_age: age(oldest),
        dead: None,
    };
    let mut out = vec![figures(crate::webhooks::worker::JOB, crate::db::models::webhooks::pending_figures(conn)?)];
    for f in super::queue::figures(conn)? {
        out.push(QueueFigures { job: f.kind, depth: f.waiting, oldest_age: age(f.oldest), dead: Some(f.dead) });
    }
    Ok(out)
}

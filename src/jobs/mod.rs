//! The one home of background work (issue 20): every loop the server runs beside requests is a
//! [`Job`], listed once in `crate::schedule::all`, run by one [`Supervisor`] that one fairing
//! (`crate::schedule::Fairing`) starts at liftoff and stops at shutdown with one cancellation
//! token. The intervals are in one place (`crate::schedule::Intervals`, derived from the
//! configuration). This module is low in the layers: the code a job drives implements [`Job`]
//! here; only `crate::schedule`, at the top, knows every job.
//!
//! A job is one run (`run`) and a wait policy: after a run it says whether it has more to do at
//! once ([`Next::Again`]), nothing before its interval or a wake-up ([`Next::Idle`]), or something
//! at a given time ([`Next::At`]). A run that fails is logged, counted
//! (`tokenvault_job_failures_total{job}`) and tried again at the job's interval; a run that panics
//! is caught and treated the same way: one job never stops another. Every run is counted
//! (`tokenvault_job_runs_total{job}`).
//!
//! Adding a job: implement [`Job`] next to the code it drives, then add one line to
//! `crate::schedule::all` with its interval (see `docs/ARCHITECTURE.md`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rocket::tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod listen;
pub mod metrics;
pub mod queue;

pub use metrics::JobMetrics;

/// A boxed future borrowing the job (the trait stays object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a job wants after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more now: run again one interval after this run ended, or at a wake-up.
    Idle,
    /// More is waiting: run again at once.
    Again,
    /// Run again at this instant, or at a wake-up.
    At(Instant),
}

/// The wake-up of the workers of the durable queue ([`queue`]): a unit of work that queued a
/// job says so (`crate::changes::Tx::job_queued`), and settling it rings this, so the job runs at
/// once rather than at its next poll.
#[derive(Debug, Default)]
pub struct Wake {
    notify: rocket::tokio::sync::Notify,
}

impl Wake {
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves at the next [`Wake::wake`] (or at once if one came since the last wait).
    pub fn notified(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.notify.notified())
    }
}

/// One kind of background work (its interval is given where it is listed: `crate::schedule::all`).
#[rocket::async_trait]
pub trait Job: Send + 'static {
    /// Its name: the `job` label of its metrics and the `job` field of its log lines.
    fn name(&self) -> &'static str;

    /// One run. `stop` is cancelled at shutdown (the run is dropped soon after; a long run may
    /// look at it to stop starting new work).
    async fn run(&mut self, stop: &CancellationToken) -> Result<Next, String>;

    /// Resolves when the job should run before its interval (its wake-up); never by default.
    fn woken(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// A job with its schedule, as listed in `crate::schedule::all`.
pub struct Scheduled {
    pub job: Box<dyn Job>,
    /// How long it waits after a run (without a wake-up).
    pub every: Duration,
    /// Whether the first run is at start (else one interval later).
    pub at_start: bool,
}

/// `job` run at start, then every `every`.
pub fn every(every: Duration, job: impl Job) -> Scheduled {
    Scheduled { job: Box::new(job), every, at_start: true }
}

impl Scheduled {
    /// The first run one interval after start rather than at start.
    pub fn first_after_interval(self) -> Scheduled {
        Scheduled { at_start: false, ..self }
    }
}

/// Runs jobs until its token is cancelled.
pub struct Supervisor {
    stop: CancellationToken,
    metrics: JobMetrics,
    tasks: Mutex<JoinSet<()>>,
}

impl Supervisor {
    pub fn new(metrics: JobMetrics) -> Supervisor {
        Supervisor { stop: CancellationToken::new(), metrics, tasks: Mutex::new(JoinSet::new()) }
    }

    /// The token that stops every job.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn metrics(&self) -> &JobMetrics {
        &self.metrics
    }

    /// Start each job on a task of its own (on the current Tokio runtime).
    pub fn start(&self, jobs: Vec<Scheduled>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        for job in jobs {
            self.metrics.known(job.job.name());
            tracing::debug!(job = job.job.name(), every_secs = job.every.as_secs_f64(), "background job started");
            tasks.spawn(drive(job, self.stop.clone(), self.metrics.clone()));
        }
    }

    /// Cancel every job and wait (at most `grace`) for their tasks to end; those still running
    /// then are aborted.
    pub async fn stop(&self, grace: Duration) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if rocket::tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!("background jobs did not stop in time; aborted");
        }
    }

    /// How many job tasks are still running.
    pub fn running(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One job's loop: run, count, wait; until `stop`.
async fn drive(scheduled: Scheduled, stop: CancellationToken, metrics: JobMetrics) {
    let Scheduled { mut job, every, at_start } = scheduled;
    let name = job.name();
    if !at_start {
        rocket::tokio::select! {
            _ = stop.cancelled() => return,
            _ = rocket::tokio::time::sleep(every) => {}
        }
    }
    while !stop.is_cancelled() {
        let ran = rocket::tokio::select! {
            _ = stop.cancelled() => return,
            ran = AssertUnwindSafe(job.run(&stop)).catch_unwind() => ran,
        };
        let next = match ran {
            Ok(Ok(next)) => {
                metrics.ran(name, true);
                next
            }
            Ok(Err(e)) => {
                metrics.ran(name, false);
                tracing::warn!(job = name, error = %e, "background job run failed; tried again at its interval");
                Next::Idle
            }
            Err(panic) => {
                metrics.ran(name, false);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(job = name, panic = %what, "background job run panicked; tried again at its interval");
                Next::Idle
            }
        };
        let until = match next {
            Next::Again => {
                rocket::tokio::task::yield_now().await;
                continue;
            }
            Next::Idle => Instant::now() + every,
            Next::At(at) => at,
        };
        rocket::tokio::select! {
            _ = stop.cancelled() => return,
            _ = rocket::tokio::time::sleep_until(until.into()) => {}
            _ = job.woken() => {}
        }
    }
}

#[cfg(test)]
mod tests;

//! The one home of background work (issue 20): every loop the server runs beside requests is a
//! [`Job`], listed once in [`all`], run by one [`Supervisor`] that one fairing ([`Fairing`])
//! starts at liftoff and stops at shutdown with one cancellation token. The intervals are in one
//! place ([`Intervals`], derived from the configuration).
//!
//! A job is one run (`run`) and a wait policy: after a run it says whether it has more to do at
//! once ([`Next::Again`]), nothing before its interval or a wake-up ([`Next::Idle`]), or something
//! at a given time ([`Next::At`]). A run that fails is logged, counted
//! (`tokenvault_job_failures_total{job}`) and tried again at the job's interval; a run that panics
//! is caught and treated the same way: one job never stops another. Every run is counted
//! (`tokenvault_job_runs_total{job}`).
//!
//! Adding a job: implement [`Job`] next to the code it drives, then add one line to [`all`] with
//! its interval (see `docs/ARCHITECTURE.md`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rocket::fairing::{Info, Kind};
use rocket::tokio::task::JoinSet;
use rocket::{Orbit, Rocket};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::state::AppState;

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

/// One kind of background work (its interval is given where it is listed: [`all`]).
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

/// The intervals of every job, in one place: what the configuration sets, and the fixed ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervals {
    /// The webhook outbox read without a wake-up.
    pub webhooks: Duration,
    /// The token-revocation queue read without a wake-up.
    pub revocations: Duration,
    /// `cache_invalidations` polled (other instances' writes): every second on SQLite; on
    /// PostgreSQL a slow fallback, commits waking the reader through the listener.
    pub cache_invalidations: Duration,
    /// The PostgreSQL listener (`listen`) started again after its connection failed.
    pub listen: Duration,
    /// A keep-alive pass: a tenth of `keepalive_interval`, between 1 s and 60 s.
    pub keepalive: Duration,
    /// Audit retention pruning.
    pub audit_prune: Duration,
    /// An audit checkpoint: `audit_checkpoint_interval`.
    pub audit_checkpoint: Duration,
}

impl Intervals {
    pub fn from_settings(settings: &Settings) -> Intervals {
        Intervals {
            webhooks: crate::webhooks::worker::POLL_INTERVAL,
            revocations: crate::oauth::retire::POLL_INTERVAL,
            cache_invalidations: match crate::db::Backend::of(&settings.database_url) {
                crate::db::Backend::Sqlite => crate::cache::POLL_INTERVAL,
                crate::db::Backend::Postgres => crate::cache::POLL_INTERVAL_LISTENING,
            },
            listen: Duration::from_secs(5),
            keepalive: crate::oauth::keepalive::tick(settings.refresh.keepalive_interval),
            audit_prune: crate::audit::batcher::PRUNE_EVERY,
            audit_checkpoint: Duration::from_secs(settings.audit.checkpoint_interval.max(1) as u64),
        }
    }
}

/// A job with its schedule, as listed in [`all`].
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

/// Every job of the server, from its state: the one list.
pub fn all(app: &AppState) -> Vec<Scheduled> {
    let t = Intervals::from_settings(&app.settings);
    let record_checkpoint = {
        let (hooks, cipher) = (app.webhooks.clone(), app.cipher.clone());
        Arc::new(move |conn: &mut crate::db::Conn, c: &_| {
            let fx = crate::changes::Effects { caches: None, webhooks: Some(&hooks) };
            crate::changes::checkpoint_event(conn, &cipher, &hooks, c).map(|done| done.settle(fx))
        })
    };
    let mut jobs = vec![
        every(t.webhooks, app.webhook_worker().into_job(t.webhooks)),
        every(t.revocations, app.retire_worker().into_job()),
        every(
            t.audit_checkpoint,
            crate::audit::checkpoint::Publisher::new(
                app.db.clone(),
                app.cipher.clone(),
                app.settings.audit.checkpoint_file.clone(),
                app.metrics.audit.clone(),
                record_checkpoint,
            ),
        ),
    ];
    if app.settings.audit.retention_days > 0 {
        let (db, cipher, days, metrics) =
            (app.db.clone(), app.cipher.clone(), app.settings.audit.retention_days, app.metrics.audit.clone());
        jobs.push(every(t.audit_prune, crate::audit::batcher::Pruner { db, cipher, days, metrics }));
    }
    let invalidations = Arc::new(rocket::tokio::sync::Notify::new());
    if app.caches.api_keys.enabled() || app.caches.connections.enabled() {
        jobs.push(every(
            t.cache_invalidations,
            crate::cache::InvalidationPoll::new(app.db.clone(), app.caches.clone(), invalidations.clone()),
        ));
    }
    if app.db.backend() == crate::db::Backend::Postgres {
        let hooks = app.webhooks.clone();
        let ring: listen::Ring = Arc::new(move |channel| match channel {
            crate::db::notify::Channel::Webhooks => hooks.wake(),
            crate::db::notify::Channel::CacheInvalidations => invalidations.notify_one(),
        });
        jobs.push(every(t.listen, listen::ListenJob { database_url: app.settings.database_url.clone(), ring }));
    }
    if app.settings.refresh.keepalive_worker {
        jobs.push(every(t.keepalive, app.keepalive().into_job(t.keepalive)).first_after_interval());
    }
    jobs
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

/// The fairing that starts the [`Supervisor`] with [`all`] at liftoff and stops it at shutdown
/// (the audit batcher, which is fed by requests rather than a schedule, is started here too).
pub struct Fairing {
    pub supervisor: Arc<Supervisor>,
}

/// How long shutdown waits for the jobs to end.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[rocket::async_trait]
impl rocket::fairing::Fairing for Fairing {
    fn info(&self) -> Info {
        Info { name: "Background jobs", kind: Kind::Liftoff | Kind::Shutdown }
    }

    async fn on_liftoff(&self, rocket: &Rocket<Orbit>) {
        let Some(app) = rocket.state::<AppState>() else { return };
        app.audit.start(app.db.clone(), app.cipher.clone());
        self.supervisor.start(all(app));
        // Stops when shutdown starts (SIGTERM, Ctrl-C): no database work while the process exits.
        let (shutdown, stop) = (rocket.shutdown(), self.supervisor.token());
        rocket::tokio::spawn(async move {
            rocket::tokio::select! {
                _ = shutdown => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }

    async fn on_shutdown(&self, _rocket: &Rocket<Orbit>) {
        self.supervisor.stop(STOP_GRACE).await;
    }
}

#[cfg(test)]
mod tests;

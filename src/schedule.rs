//! The server's background work, listed once: every [`Job`] with its interval ([`all`], the
//! intervals in [`Intervals`]), and the fairing that starts them at liftoff and stops them at
//! shutdown ([`Fairing`]). It sits at the top with `app.rs` (it reads the whole `AppState`): the
//! jobs themselves live beside the code they drive and know only `crate::jobs`.

use std::sync::Arc;
use std::time::Duration;

use rocket::fairing::{Info, Kind};
use rocket::{Orbit, Rocket};

use crate::config::Settings;
use crate::jobs::{every, listen, Scheduled, Supervisor};
use crate::state::AppState;

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

/// Every job of the server, from its state: the one list.
pub fn all(app: &AppState) -> Vec<Scheduled> {
    let t = Intervals::from_settings(&app.settings);
    let record_checkpoint = {
        let (hooks, cipher) = (app.webhooks.clone(), app.cipher.clone());
        Arc::new(move |conn: &mut crate::db::Conn, c: &_| {
            let fx = crate::changes::Effects { webhooks: Some(&hooks), ..Default::default() };
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
    // Always listed: besides the caches, it keeps the provider catalog in step with the
    // `providers` rows other instances (or the CLI) write.
    let live = app.catalog.clone();
    let providers: crate::cache::ProvidersReload = Arc::new(move |conn| live.reload(conn));
    jobs.push(every(
        t.cache_invalidations,
        crate::cache::InvalidationPoll::new(app.db.clone(), app.caches.clone(), invalidations.clone())
            .with_providers(providers),
    ));
    if app.db.backend() == crate::db::Backend::Postgres {
        let (hooks, caches) = (app.webhooks.clone(), app.caches.clone());
        let ring: listen::Ring = Arc::new(move |channel| match channel {
            crate::db::notify::Channel::Webhooks => hooks.wake(),
            crate::db::notify::Channel::CacheInvalidations => {
                // Cached access tokens are not used until the reader has read what this announces.
                caches.feed.heard();
                invalidations.notify_one();
            }
        });
        let caches = app.caches.clone();
        let listening: listen::Listening = Arc::new(move |look| caches.feed.listening(look));
        let database_url = app.settings.database_url.clone();
        jobs.push(every(t.listen, listen::ListenJob { database_url, ring, listening }));
    }
    if app.settings.authz.enabled {
        jobs.push(every(crate::authz::SWEEP_EVERY, crate::authz::Sweep { db: app.db.clone() }));
    }
    if app.settings.refresh.keepalive_worker {
        jobs.push(every(t.keepalive, app.keepalive().into_job(t.keepalive)).first_after_interval());
    }
    jobs
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

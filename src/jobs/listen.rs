//! The PostgreSQL listener as a background job (listed in `schedule::all` only on PostgreSQL): one
//! connection of its own, `LISTEN`ing on `db::notify`'s channels; each notification wakes the
//! job it is for (the webhook worker, the cache-invalidation reader) at once. Diesel gives no wait
//! on the connection's socket, so the listener looks at what has arrived every [`TICK`] (no query,
//! no round trip) and makes a round trip every [`CHECK_EVERY`] to find a connection that broke.
//! This process's own notifications wake their job [`OWN_DELAY`] later, as the one-second poll
//! did: the write already acted on this process (see `db::notify`).
//!
//! A run lasts until shutdown. When its connection fails the run fails (logged, counted) and the
//! supervisor starts it again at its interval; every (re)connection first wakes everything once,
//! for what was committed while nobody listened.
//!
//! While connected, the listener also hands out a [`Look`]: a request that must know whether
//! another instance's change is already waiting (a cached access token's check, `crate::cache`)
//! looks at the socket itself — no query, no round trip — instead of waiting for the next tick.
//!
//! And it hears this process's own commits back ([`echoed`]): a unit of work that ended a grant's
//! tokens (a `grant` invalidation, `changes::Db::write`) answers only once this listener received
//! its commit's notification — PostgreSQL sends it to every listening session at that commit, so
//! the other instances' peek ([`Look`]) finds it at their next request — or after [`ECHO_WITHIN`]
//! (counted: `tokenvault_revoke_echo_timeouts_total`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Job, Next};
use crate::db::notify::{Channel, Listener};

/// How often the listener looks at what has arrived.
pub const TICK: Duration = Duration::from_millis(50);
/// How often it makes sure its connection is alive.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);
/// How long after its own notification a job is woken.
pub const OWN_DELAY: Duration = Duration::from_secs(1);

/// How long a revoking request waits to hear its own commit's notification ([`echoed`]).
pub const ECHO_WITHIN: Duration = Duration::from_secs(1);
/// How often a waiting request looks at the listening connection.
const ECHO_LOOK: Duration = Duration::from_millis(2);
/// How many of this process's commits heard are remembered for the requests waiting for them.
const ECHOES_KEPT: usize = 256;

/// This process's listener, for the requests that wait for their commit's notification: how to
/// look at its connection while it listens, and the own commits heard (newest last).
struct Echoes {
    look: Mutex<Option<Look>>,
    heard: Mutex<VecDeque<i64>>,
    timeouts: AtomicU64,
}

static ECHOES: Echoes =
    Echoes { look: Mutex::new(None), heard: Mutex::new(VecDeque::new()), timeouts: AtomicU64::new(0) };

/// Unsets the look of [`ECHOES`] when the listener stops, however it stops.
struct Echoing;

impl Echoing {
    fn start(look: Look) -> Echoing {
        *ECHOES.look.lock().unwrap_or_else(|e| e.into_inner()) = Some(look);
        Echoing
    }
}

impl Drop for Echoing {
    fn drop(&mut self) {
        *ECHOES.look.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn heard_back(commits: Vec<i64>) {
    if commits.is_empty() {
        return;
    }
    let mut heard = ECHOES.heard.lock().unwrap_or_else(|e| e.into_inner());
    heard.extend(commits);
    while heard.len() > ECHOES_KEPT {
        heard.pop_front();
    }
}

/// Wait until this process's listener has received the notification of its own transaction `tx`
/// (`db::notify::commit_id`), at most `within`: true when it did; false at once when no listener
/// listens (SQLite, or reconnecting), false and counted when `within` passed.
pub async fn echoed(tx: i64, within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        let Some(look) = ECHOES.look.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return false };
        look();
        if take_heard(tx) {
            return true;
        }
        if Instant::now() >= until {
            ECHOES.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("a revocation answered without hearing its commit's notification within {within:?}");
            return false;
        }
        rocket::tokio::time::sleep(ECHO_LOOK).await;
    }
}

/// Whether own commit `tx` was heard (then forgotten).
fn take_heard(tx: i64) -> bool {
    let mut heard = ECHOES.heard.lock().unwrap_or_else(|e| e.into_inner());
    let at = heard.iter().position(|t| *t == tx);
    at.map(|at| heard.remove(at)).is_some()
}

/// How many times [`echoed`] gave up waiting, since the start.
pub fn echo_timeouts() -> u64 {
    ECHOES.timeouts.load(Ordering::Relaxed)
}

/// What a notification wakes, by channel.
pub type Ring = Arc<dyn Fn(Channel) + Send + Sync>;

/// Look at what has arrived on the listening connection now, ringing for it as the listener does.
pub type Look = Arc<dyn Fn() + Send + Sync>;

/// Told how to [`Look`] when the listener has connected, and `None` when it stopped listening.
pub type Listening = Arc<dyn Fn(Option<Look>) + Send + Sync>;

pub struct ListenJob {
    pub database_url: String,
    pub ring: Ring,
    pub listening: Listening,
}

#[rocket::async_trait]
impl Job for ListenJob {
    fn name(&self) -> &'static str {
        "pg_listen"
    }

    async fn run(&mut self, stop: &CancellationToken) -> Result<Next, String> {
        // A thread of its own rather than the runtime's blocking pool: it ends at `stop`, and
        // also when this run is dropped (a runtime shutting down does not wait for it).
        let (url, ring, stop) = (self.database_url.clone(), self.ring.clone(), stop.clone());
        let listening = self.listening.clone();
        let (done, result) = rocket::tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("pg-listen".into())
            .spawn(move || {
                let ended = listen(&url, ring, &*listening, &|| stop.is_cancelled() || done.is_closed());
                listening(None);
                let _ = done.send(ended);
            })
            .map_err(|e| format!("could not start the listener: {e}"))?;
        result.await.map_err(|_| "the listener stopped".to_string())?
    }
}

/// The listening connection and this process's own notifications heard, with when they wake their
/// jobs: shared by the listener's loop and the requests that [`Look`].
struct Ear {
    listener: Listener,
    own: Vec<(Channel, Instant)>,
}

impl Ear {
    /// Ring for what arrived (another instance's at once, this process's own [`OWN_DELAY`] later).
    fn hear(&mut self, ring: &(dyn Fn(Channel) + Sync)) -> Result<(), String> {
        let received = self.listener.received().map_err(|e| format!("the listening connection broke: {e}"));
        heard_back(self.listener.own_commits());
        for heard in received? {
            if !heard.own {
                ring(heard.channel);
            } else if !self.own.iter().any(|(c, _)| *c == heard.channel) {
                self.own.push((heard.channel, Instant::now() + OWN_DELAY));
            }
        }
        let now = Instant::now();
        self.own.retain(|(channel, at)| {
            let due = *at <= now;
            if due {
                ring(*channel);
            }
            !due
        });
        Ok(())
    }
}

fn lock(ear: &Mutex<Ear>) -> std::sync::MutexGuard<'_, Ear> {
    ear.lock().unwrap_or_else(|e| e.into_inner())
}

/// Listen until `stopped`; an error when the connection cannot be made or breaks. `listening` is
/// told how to look at the connection once it is made.
pub fn listen(
    url: &str,
    ring: Ring,
    listening: &(dyn Fn(Option<Look>) + Sync),
    stopped: &dyn Fn() -> bool,
) -> Result<Next, String> {
    let listener = Listener::connect(url)?;
    for channel in Channel::ALL {
        ring(channel);
    }
    let ear = Arc::new(Mutex::new(Ear { listener, own: Vec::new() }));
    let look: Look = {
        let (ear, ring) = (ear.clone(), ring.clone());
        // A broken connection is the loop's to report.
        Arc::new(move || {
            let _ = lock(&ear).hear(&*ring);
        })
    };
    listening(Some(look.clone()));
    let _echoing = Echoing::start(look);
    let mut checked = Instant::now();
    while !stopped() {
        lock(&ear).hear(&*ring)?;
        if checked.elapsed() >= CHECK_EVERY {
            lock(&ear).listener.check().map_err(|e| format!("the listening connection broke: {e}"))?;
            checked = Instant::now();
        }
        std::thread::sleep(TICK);
    }
    Ok(Next::Idle)
}

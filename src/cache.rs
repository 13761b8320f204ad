//! Short-lived in-memory copies of what the API's hot path reads on every request: API keys, access
//! tokens of tokenvault's authorization server, and connection rows. The database stays the source
//! of truth:
//!
//! - an entry lives at most `cache_ttl` seconds (`0` turns caching off);
//! - every write that changes a cached row invalidates it in this process right after it commits,
//!   and records an invalidation in the `cache_invalidations` table in the same transaction; every
//!   instance reads that table and drops what it names ([`crate::db::models::invalidations`]) —
//!   on PostgreSQL when the commit's notification arrives (`db::notify`, `jobs::listen`; every
//!   [`POLL_INTERVAL_LISTENING`] as a fallback), on SQLite every [`POLL_INTERVAL`] — so a revoked
//!   key or a deleted connection stops working everywhere within about a second, and within
//!   `cache_ttl` even for a change made behind tokenvault's back;
//! - a reader that misses fills the entry only if nothing was invalidated since it started reading
//!   the database (a generation counter checked under the same lock as invalidations), so a slow
//!   reader never puts back a row that a writer has just replaced or deleted.
//!
//! Connection rows are cached as stored: tokens stay sealed in memory and are opened per use.
//!
//! Access tokens are held to more: a cached one is used only while this process's reading of the
//! feed is current ([`FeedWatch::current`]: no invalidation heard and not yet read, and the feed
//! read within a bound), never past the token's own expiry, and a grant's end drops every cached
//! token of it ([`Invalidated::Grant`]) — so a revocation on another instance holds here as soon as
//! its notification arrives (see docs/multi-instance.md for the bound).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::models::connections::Connection;
use crate::db::models::invalidations::{self, Invalidated, Invalidation};
use crate::db::Db;
use crate::jobs::listen::Look;
use crate::util::now;

/// A map whose entries expire after `ttl`, with invalidation-safe fills.
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
    /// The load in flight per missing key ([`TtlCache::get_or_load`]): `Some(found)` once it
    /// succeeded, `None` if it failed.
    loading: Mutex<HashMap<K, Arc<Loading<V>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A cache's counters, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
}

/// The caches' metrics: lookups by cache and result, entries (read at scrape time).
#[derive(Clone)]
pub struct CacheMetrics {
    lookups: prometheus::IntCounterVec,
    entries: prometheus::IntGaugeVec,
    /// Revocations that answered before hearing their commit's notification (`jobs::listen::echoed`).
    echo_timeouts: prometheus::IntCounter,
}

impl CacheMetrics {
    pub fn register(m: &crate::metrics::Metrics) -> CacheMetrics {
        CacheMetrics {
            lookups: m.counters(
                "cache_lookups_total",
                "In-memory cache lookups by cache and result (hit, miss)",
                &["cache", "result"],
            ),
            entries: m.gauges("cache_entries", "In-memory cache entries", &["cache"]),
            echo_timeouts: m.counter(
                "revoke_echo_timeouts_total",
                "Revocations answered before this instance heard their commit's notification (PostgreSQL)",
            ),
        }
    }

    /// Follow each named cache's running totals.
    pub fn set(&self, caches: &[(&str, CacheStats)]) {
        for (name, stats) in caches {
            for (result, total) in [("hit", stats.hits), ("miss", stats.misses)] {
                crate::metrics::follow(&self.lookups.with_label_values(&[name, result]), total);
            }
            self.entries.with_label_values(&[name]).set(stats.entries as i64);
        }
        crate::metrics::follow(&self.echo_timeouts, crate::jobs::listen::echo_timeouts());
    }
}

struct Inner<K, V> {
    map: HashMap<K, (V, Instant)>,
    generation: u64,
}

type Loading<V> = rocket::tokio::sync::OnceCell<Option<Option<V>>>;

/// Removes a load's entry when the load ends, also when the request waiting for it is dropped
/// (a client that disconnects must not leave entries behind: keys can be anything a caller sends).
struct LoadingEntry<'a, K: Eq + Hash, V> {
    loading: &'a Mutex<HashMap<K, Arc<Loading<V>>>>,
    key: &'a K,
    cell: Arc<Loading<V>>,
}

impl<K: Eq + Hash, V> Drop for LoadingEntry<'_, K, V> {
    fn drop(&mut self) {
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.get(self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) {
            loading.remove(self.key);
        }
    }
}

/// A ticket taken before reading the database: [`TtlCache::fill`] with it stores the value only
/// if no invalidation happened since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity,
            inner: Mutex::new(Inner { map: HashMap::new(), generation: 0 }),
            loading: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.len() as u64,
        }
    }

    /// The cached value, or what `load` reads (cached unless invalidated meanwhile). Concurrent
    /// misses of one key wait for a single load instead of all reading the database (after an
    /// entry expires, a thousand requests for it make one query). `Ok(None)` is not cached.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<V>, E>>,
    {
        match self.get(key) {
            Some(v) => Ok(Some(v)),
            None => self.load_missing(key, load).await,
        }
    }

    /// [`TtlCache::get_or_load`] for a caller that has just missed with [`TtlCache::get`].
    pub async fn load_missing<F, Fut, E>(&self, key: &K, load: F) -> Result<Option<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<V>, E>>,
    {
        if !self.enabled() {
            return load().await;
        }
        // Everyone who misses while a load is in flight waits for that load and is woken with its
        // result at once (not one after another, as a queue on a lock would). An invalidation
        // removes the entry, so a miss after it starts a new load instead of joining an old one.
        let cell = {
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            loading.entry(key.clone()).or_default().clone()
        };
        let _entry = LoadingEntry { loading: &self.loading, key, cell: cell.clone() };
        let mut load = Some(load);
        let mut failure = None;
        let shared = cell
            .get_or_init(|| async {
                let load = load.take().expect("one initializer");
                let ticket = self.ticket();
                match load().await {
                    Ok(value) => {
                        if let Some(v) = &value {
                            self.fill(ticket, key.clone(), v.clone());
                        }
                        Some(value)
                    }
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            })
            .await
            .clone();
        match (shared, failure, load) {
            (Some(value), _, _) => Ok(value),
            (None, Some(e), _) => Err(e),
            // The shared load failed: each waiter tries once on its own, all at the same time.
            (None, None, Some(load)) => load().await,
            (None, None, None) => unreachable!("the initializer either stored a value or kept its error"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.enabled() {
            return None;
        }
        let found = {
            let inner = self.lock();
            inner.map.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(value, _)| value.clone())
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Take before reading the database.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().generation)
    }

    /// Store what was read with `ticket`, unless something was invalidated meanwhile.
    pub fn fill(&self, ticket: Ticket, key: K, value: V) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut inner = self.lock();
        if inner.generation != ticket.0 {
            return false;
        }
        if inner.map.len() >= self.capacity {
            let ttl = self.ttl;
            inner.map.retain(|_, (_, at)| at.elapsed() < ttl);
            if inner.map.len() >= self.capacity {
                inner.map.clear();
            }
        }
        inner.map.insert(key, (value, Instant::now()));
        true
    }

    /// A writer that has just committed `value` stores it (if nothing else was invalidated since
    /// its `ticket`, taken before the write) and invalidates everything read before it.
    pub fn replace(&self, ticket: Ticket, key: K, value: V) {
        let mut inner = self.lock();
        if inner.generation == ticket.0 && self.enabled() {
            inner.map.insert(key, (value, Instant::now()));
        } else {
            inner.map.remove(&key);
        }
        inner.generation += 1;
    }

    /// Drop every entry `gone` names (e.g. the tokens of one grant), and every fill of a read
    /// that started before.
    pub fn invalidate_where(&self, gone: impl Fn(&K, &V) -> bool) {
        let mut inner = self.lock();
        inner.map.retain(|k, (v, _)| !gone(k, v));
        inner.generation += 1;
        // Misses after this start loads of their own instead of joining older ones.
        self.loading.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn invalidate(&self, key: &K) {
        let mut inner = self.lock();
        inner.map.remove(key);
        inner.generation += 1;
        self.loading.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.generation += 1;
        self.loading.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an API key stands for, as cached.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub key_id: i64,
    pub user_id: i64,
    pub username: String,
    /// What the key may do, and until when.
    pub scope: Arc<crate::db::models::key_scope::KeyScope>,
    /// When this process last recorded a use of the key (shared by the copies of the entry).
    pub last_used_at: Arc<AtomicI64>,
}

impl CachedKey {
    /// A key of `user_id` without limits, never used.
    #[cfg(test)]
    pub fn for_tests(key_id: i64, user_id: i64) -> CachedKey {
        CachedKey { key_id, user_id, username: "a".into(), scope: Default::default(), last_used_at: Default::default() }
    }

    /// True at most once a minute per key: time to record a use.
    pub fn should_touch(&self, now: i64) -> bool {
        touch_due(&self.last_used_at, now)
    }
}

/// True at most once a minute per `mark` (shared by the copies of a cached entry): time to
/// record a use, off the request's path.
fn touch_due(mark: &AtomicI64, now: i64) -> bool {
    let last = mark.load(Ordering::Relaxed);
    last < now - 60 && mark.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// A valid access token of tokenvault's authorization server, as checked (`authz::tokens`): whose,
/// of which grant, for which resource, until when, and what its grant allows.
#[derive(Debug, Clone)]
pub struct CachedToken {
    pub grant_id: i64,
    pub user_id: i64,
    pub username: String,
    /// The resource (URL) the token is bound to.
    pub resource: String,
    /// The token's expiry (never after its grant's): a cached copy is not used past it.
    pub expires_at: i64,
    /// What the grant allows, as a limited key's scope.
    pub scope: Arc<crate::db::models::key_scope::KeyScope>,
    /// When this process last recorded a use of the grant through this token.
    pub last_used_at: Arc<AtomicI64>,
}

impl CachedToken {
    /// True at most once a minute per token: time to record a use of its grant.
    pub fn should_touch(&self, now: i64) -> bool {
        touch_due(&self.last_used_at, now)
    }

    #[cfg(test)]
    pub fn for_tests(grant_id: i64, expires_at: i64) -> CachedToken {
        CachedToken {
            grant_id,
            user_id: 7,
            username: "a".into(),
            resource: "https://tv.example/mcp".into(),
            expires_at,
            scope: Default::default(),
            last_used_at: Default::default(),
        }
    }
}

/// How current this process's reading of `cache_invalidations` is, which a cached access token's
/// use depends on: the poll ([`InvalidationPoll`]) says when it read the feed; on PostgreSQL the
/// listener (`jobs::listen`) says when it heard another instance's invalidation, and lends a
/// [`Look`] at its connection while it listens. Times are milliseconds since `base` (0: never).
pub struct FeedWatch {
    base: Instant,
    /// Notifications of invalidations heard (PostgreSQL).
    heard: AtomicU64,
    /// `heard` as it was when the last successful read of the feed started.
    applied: AtomicU64,
    /// When the last successful read of the feed started.
    read_at: AtomicU64,
    /// How to look at the listener's connection now, while it listens.
    look: Mutex<Option<Look>>,
}

impl Default for FeedWatch {
    fn default() -> Self {
        FeedWatch {
            base: Instant::now(),
            heard: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            read_at: AtomicU64::new(0),
            look: Mutex::new(None),
        }
    }
}

impl FeedWatch {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// The listener heard that another instance recorded an invalidation.
    pub fn heard(&self) {
        self.heard.fetch_add(1, Ordering::SeqCst);
    }

    /// The listener listens (`Some`: how to look at its connection) or stopped (`None`).
    pub fn listening(&self, look: Option<Look>) {
        *self.look.lock().unwrap_or_else(|e| e.into_inner()) = look;
    }

    /// Taken by the poll before it reads the feed.
    fn reading(&self) -> (u64, u64) {
        (self.heard.load(Ordering::SeqCst), self.now_ms())
    }

    /// The read started at `reading` succeeded and its rows were applied.
    fn read(&self, (heard, at): (u64, u64)) {
        self.applied.fetch_max(heard, Ordering::SeqCst);
        self.read_at.fetch_max(at, Ordering::SeqCst);
    }

    /// The feed could not be read.
    fn lost(&self) {
        self.read_at.store(0, Ordering::SeqCst);
    }

    /// Whether a cached access token may be used now. While the PostgreSQL listener listens, what
    /// has reached its connection is looked at first (another instance's commit notifies it before
    /// that instance answers its request): nothing heard may be left that the feed's last read
    /// did not cover, and that read is recent — within two polls on SQLite (one instance: only the
    /// CLI writes beside it), within two fallback polls while the listener listens.
    pub fn current(&self) -> bool {
        let look = self.look.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(look) = &look {
            look();
        }
        if self.applied.load(Ordering::SeqCst) < self.heard.load(Ordering::SeqCst) {
            return false;
        }
        let within = if look.is_some() { POLL_INTERVAL_LISTENING } else { POLL_INTERVAL };
        let read = self.read_at.load(Ordering::SeqCst);
        read != 0 && self.now_ms().saturating_sub(read) <= 2 * within.as_millis() as u64
    }
}

/// A user's connections to one service, first connected first (`Which::pick` chooses one).
pub type ConnectionSet = Arc<Vec<Arc<Connection>>>;

/// The caches of one process.
pub struct Caches {
    /// API key hash → key.
    pub api_keys: TtlCache<String, CachedKey>,
    /// (user id, service) → the user's connection rows to the service (one per account, first
    /// connected first), tokens sealed.
    pub connections: TtlCache<(i64, String), ConnectionSet>,
    /// Access token hash → the checked token: read through [`Caches::access_token`].
    pub access_tokens: TtlCache<String, CachedToken>,
    /// How current the reading of the feed is (what a cached access token's use depends on).
    pub feed: FeedWatch,
}

impl Caches {
    pub fn new(ttl_seconds: u64) -> Caches {
        let ttl = Duration::from_secs(ttl_seconds);
        Caches {
            api_keys: TtlCache::new(ttl, 100_000),
            connections: TtlCache::new(ttl, 100_000),
            access_tokens: TtlCache::new(ttl, 100_000),
            feed: FeedWatch::default(),
        }
    }

    /// The cached access token with this hash, if it may be used now: the feed's reading is
    /// current and the token has not expired (a copy never outlives its token).
    pub fn access_token(&self, hash: &str, now: i64) -> Option<CachedToken> {
        if !self.feed.current() {
            return None;
        }
        self.access_tokens.get(hash).filter(|t| t.expires_at > now)
    }

    /// Drop what an invalidation names (everything, when this version cannot tell what it names).
    pub fn apply(&self, inv: &Invalidation) {
        match &inv.target {
            Ok(what) => self.drop_named(what),
            Err(_) => self.clear(),
        }
    }

    fn drop_named(&self, what: &Invalidated) {
        match what {
            Invalidated::ApiKey(hash) => self.api_keys.invalidate(hash),
            Invalidated::Connection { user_id, service } => self.connections.invalidate(&(*user_id, service.clone())),
            Invalidated::Grant(id) => self.access_tokens.invalidate_where(|_, t| t.grant_id == *id),
            // Not a cache: the provider catalog, rebuilt by the poll's `on_providers`.
            Invalidated::Providers(_) => {}
        }
    }

    /// A unit of work of this process has committed: drop what it invalidated (other instances
    /// learn of it from the rows it recorded).
    pub fn after_write(&self, invalidated: &[Invalidated]) {
        for what in invalidated {
            self.drop_named(what);
        }
    }

    /// [`Caches::after_write`] for a refresh that has just stored `row` under its (user, service)
    /// with a ticket taken before the write: that row goes into the cached set in place of the old
    /// one (unless something else was invalidated meanwhile, see [`TtlCache::replace`]; a set not
    /// cached is simply dropped, to be read again).
    pub fn after_refresh(&self, invalidated: &[Invalidated], ticket: Ticket, row: Arc<Connection>) {
        let key = (row.user_id, row.service.clone());
        let mut replaced = false;
        for what in invalidated {
            match what {
                Invalidated::Connection { user_id, service } if !replaced && (*user_id, service) == (key.0, &key.1) => {
                    let updated = self.connections.get(&key).and_then(|set| {
                        let at = set.iter().position(|c| c.id == row.id)?;
                        let mut rows = set.as_ref().clone();
                        rows[at] = row.clone();
                        Some(Arc::new(rows))
                    });
                    match updated {
                        Some(set) => self.connections.replace(ticket, key.clone(), set),
                        None => self.connections.invalidate(&key),
                    }
                    replaced = true;
                }
                other => self.drop_named(other),
            }
        }
    }

    /// Counters per cache, by name.
    pub fn stats(&self) -> [(&'static str, CacheStats); 3] {
        [
            ("api_keys", self.api_keys.stats()),
            ("connections", self.connections.stats()),
            ("access_tokens", self.access_tokens.stats()),
        ]
    }

    /// Forget everything (after a change made outside tokenvault's own writes).
    pub fn clear(&self) {
        self.api_keys.clear();
        self.connections.clear();
        self.access_tokens.clear();
    }
}

/// How often every instance reads `cache_invalidations` (on SQLite).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often it is read on PostgreSQL, where other instances' commits wake the reader at once
/// (`db::notify`): the fallback, for a notification lost while the listener reconnected.
pub const POLL_INTERVAL_LISTENING: Duration = Duration::from_secs(30);
/// How many ids below the newest one each poll reads again: ids are handed out when a
/// transaction writes its row, but transactions commit in any order, so a row with a lower id can
/// appear after a higher one was seen. Rows already applied are skipped.
const REREAD_IDS: i64 = 256;
/// Invalidation rows older than this are deleted.
const KEEP_SECONDS: i64 = 3600;

/// What a poller has seen of `cache_invalidations`.
#[derive(Debug, Default)]
pub struct Feed {
    newest: i64,
    applied: std::collections::BTreeSet<i64>,
}

impl Feed {
    /// Start after `newest`: rows before it were written before this process had anything cached
    /// (those still committing are within the re-read window and are applied harmlessly).
    pub fn starting_at(newest: i64) -> Feed {
        Feed { newest, applied: Default::default() }
    }

    /// The id after which the next poll reads.
    pub fn read_after(&self) -> i64 {
        (self.newest - REREAD_IDS).max(0)
    }

    /// Apply what is new in `rows` (read with [`Feed::read_after`]) to `caches`; how many.
    pub fn apply(&mut self, rows: &[Invalidation], caches: &Caches) -> usize {
        let mut applied = 0;
        for inv in rows {
            if self.applied.insert(inv.id) {
                caches.apply(inv);
                applied += 1;
            }
            self.newest = self.newest.max(inv.id);
        }
        let floor = self.read_after();
        self.applied.retain(|id| *id > floor);
        applied
    }
}

/// Polling `cache_invalidations` (other instances' writes), as a background job (`crate::jobs`;
/// listed only when caching is on): the first run finds where the feed starts, each later one
/// applies what is new, and every 60th prunes rows older than `KEEP_SECONDS`. When the feed
/// cannot be read this process cannot trust its copies: they are cleared. It runs at its interval
/// and whenever `wake` is rung (on PostgreSQL by `jobs::listen`, at another instance's commit).
pub struct InvalidationPoll {
    db: Db,
    caches: Arc<Caches>,
    wake: Arc<rocket::tokio::sync::Notify>,
    feed: Option<Feed>,
    polls: u64,
    on_providers: Option<ProvidersReload>,
}

/// Rebuild the provider catalog from the database (see [`InvalidationPoll::with_providers`]).
pub type ProvidersReload = Arc<dyn Fn(&mut crate::db::Conn) -> crate::error::AppResult<bool> + Send + Sync>;

impl InvalidationPoll {
    pub fn new(db: Db, caches: Arc<Caches>, wake: Arc<rocket::tokio::sync::Notify>) -> InvalidationPoll {
        InvalidationPoll { db, caches, wake, feed: None, polls: 0, on_providers: None }
    }

    /// Also rebuild the provider catalog (`oauth::managed`, above this module: handed in as a
    /// function) when a row names `providers` or cannot be read, and every 30th poll regardless.
    pub fn with_providers(mut self, reload: ProvidersReload) -> InvalidationPoll {
        self.on_providers = Some(reload);
        self
    }

    async fn reload_providers(&self) {
        if let Some(reload) = self.on_providers.clone() {
            if let Err(e) = self.db.run(move |conn| reload(conn)).await {
                tracing::error!(error = %e, "could not reload the providers");
            }
        }
    }

    async fn poll(&mut self) -> Result<(), String> {
        let (db, caches) = (&self.db, &self.caches);
        let reading = caches.feed.reading();
        let Some(feed) = self.feed.as_mut() else {
            return match db.run(|conn| Ok(invalidations::newest_id(conn)?)).await {
                Ok(newest) => {
                    self.feed = Some(Feed::starting_at(newest));
                    caches.feed.read(reading);
                    Ok(())
                }
                Err(e) => Err(Self::lost(caches, e)),
            };
        };
        self.polls += 1;
        if self.polls % 60 == 0 {
            let before = now() - KEEP_SECONDS;
            if let Err(e) = db.run(move |conn| Ok(invalidations::delete_before(conn, before)?)).await {
                tracing::warn!(error = %e, "could not prune cache invalidations");
            }
        }
        let after = feed.read_after();
        let every_30th = self.polls % 30 == 0;
        match db.run(move |conn| Ok(invalidations::after(conn, after)?)).await {
            Ok(rows) => {
                feed.apply(&rows, caches);
                caches.feed.read(reading);
                let providers = rows.iter().any(|r| matches!(r.target, Ok(Invalidated::Providers(_)) | Err(_)));
                if providers || every_30th {
                    self.reload_providers().await;
                }
                Ok(())
            }
            Err(e) => Err(Self::lost(caches, e)),
        }
    }

    /// Without the feed this process cannot trust its copies: they are cleared.
    fn lost(caches: &Caches, e: crate::error::AppError) -> String {
        caches.feed.lost();
        caches.clear();
        format!("could not read cache invalidations; cache cleared: {e}")
    }
}

#[rocket::async_trait]
impl crate::jobs::Job for InvalidationPoll {
    fn name(&self) -> &'static str {
        "cache_invalidations"
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        self.poll().await.map(|()| crate::jobs::Next::Idle)
    }

    fn woken(&mut self) -> crate::jobs::BoxFuture<'_, ()> {
        Box::pin(self.wake.notified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let c: TtlCache<u32, u32> = TtlCache::new(Duration::from_millis(50), 10);
        assert!(c.fill(c.ticket(), 1, 10));
        assert_eq!(c.get(&1), Some(10));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn a_zero_ttl_turns_caching_off() {
        let c: TtlCache<u32, u32> = TtlCache::new(Duration::ZERO, 10);
        assert!(!c.fill(c.ticket(), 1, 10));
        c.replace(c.ticket(), 1, 10);
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn a_fill_after_an_invalidation_is_refused() {
        let c: TtlCache<u32, &str> = TtlCache::new(Duration::from_secs(60), 10);
        let reader = c.ticket(); // a reader starts reading the old row…
        c.invalidate(&1); // …a writer commits and invalidates…
        assert!(!c.fill(reader, 1, "old")); // …the reader's stale row is not cached.
        assert_eq!(c.get(&1), None);
        assert!(c.fill(c.ticket(), 1, "new"));
        assert_eq!(c.get(&1), Some("new"));
    }

    #[test]
    fn replace_stores_the_writers_row_and_blocks_older_fills() {
        let c: TtlCache<u32, &str> = TtlCache::new(Duration::from_secs(60), 10);
        let reader = c.ticket();
        let writer = c.ticket();
        c.replace(writer, 1, "v2");
        assert_eq!(c.get(&1), Some("v2"));
        assert!(!c.fill(reader, 1, "v1"), "a reader that started before the write must not win");
        assert_eq!(c.get(&1), Some("v2"));
    }

    #[test]
    fn replace_after_someone_elses_invalidation_only_removes() {
        let c: TtlCache<u32, &str> = TtlCache::new(Duration::from_secs(60), 10);
        let writer = c.ticket();
        c.invalidate(&1); // e.g. a delete that committed after our write
        c.replace(writer, 1, "v2");
        assert_eq!(c.get(&1), None);
    }

    #[rocket::async_test]
    async fn concurrent_misses_share_one_load() {
        let c: Arc<TtlCache<u32, u32>> = Arc::new(TtlCache::new(Duration::from_secs(60), 10));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, loads) = (c.clone(), loads.clone());
                rocket::tokio::spawn(async move {
                    c.get_or_load(&1, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        rocket::tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, ()>(Some(42))
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(Some(42)));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // Not found is not cached; errors are not cached.
        assert_eq!(c.get_or_load(&2, || async { Ok::<_, ()>(None) }).await, Ok(None));
        assert_eq!(c.get_or_load(&2, || async { Err::<Option<u32>, _>(()) }).await, Err(()));
        assert_eq!(c.get_or_load(&2, || async { Ok::<_, ()>(Some(7)) }).await, Ok(Some(7)));
        assert_eq!(c.get(&2), Some(7));
    }

    #[rocket::async_test]
    async fn a_miss_after_an_invalidation_does_not_join_the_older_load() {
        let c: Arc<TtlCache<u32, &str>> = Arc::new(TtlCache::new(Duration::from_secs(60), 10));
        let (release, wait) = rocket::tokio::sync::oneshot::channel::<()>();
        let (started, reading) = rocket::tokio::sync::oneshot::channel::<()>();
        let first = {
            let c = c.clone();
            rocket::tokio::spawn(async move {
                c.get_or_load(&1, || async {
                    let _ = started.send(());
                    let _ = wait.await; // the row is read before the revocation commits…
                    Ok::<_, ()>(Some("old"))
                })
                .await
            })
        };
        // Wait until the load is reading (its ticket is taken before that), not merely registered:
        // an invalidation before the ticket would rightly let the load's result be cached.
        reading.await.unwrap();
        c.invalidate(&1); // …which invalidates while that load is still in flight.
        let second = c.get_or_load(&1, || async { Ok::<_, ()>(Some("new")) }).await;
        assert_eq!(second, Ok(Some("new")), "a request after the invalidation must not get the old row");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(Some("old")), "the request that started before it may");
        assert_eq!(c.get(&1), Some("new"), "and the old row was not cached over the new one");
    }

    #[rocket::async_test]
    async fn when_the_shared_load_fails_the_waiters_try_at_once_on_their_own() {
        let c: Arc<TtlCache<u32, u32>> = Arc::new(TtlCache::new(Duration::from_secs(60), 10));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (in_flight, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (c, calls, in_flight, most) = (c.clone(), calls.clone(), in_flight.clone(), most.clone());
                rocket::tokio::spawn(async move {
                    c.get_or_load(&1, || async {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        most.fetch_max(in_flight.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        rocket::tokio::time::sleep(Duration::from_millis(50)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        if n == 0 {
                            Err("database down")
                        } else {
                            Ok(Some(7))
                        }
                    })
                    .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| **r == Ok(Some(7))).count(), 9);
        assert!(most.load(Ordering::SeqCst) > 1, "the retries ran side by side, not one after another");
    }

    #[rocket::async_test]
    async fn a_dropped_request_leaves_no_loading_entry() {
        let c: TtlCache<u32, u32> = TtlCache::new(Duration::from_secs(60), 10);
        let pending = c.get_or_load(&1, std::future::pending::<Result<Option<u32>, ()>>);
        assert!(rocket::tokio::time::timeout(Duration::from_millis(20), pending).await.is_err());
        assert!(c.loading.lock().unwrap().is_empty());
    }

    #[test]
    fn the_feed_applies_each_row_once_and_catches_late_commits() {
        let caches = Caches::new(60);
        let fill = |user: i64| {
            let set = Arc::new(vec![Arc::new(Connection::for_tests(user, "s"))]);
            caches.connections.fill(caches.connections.ticket(), (user, "s".into()), set);
        };
        let inv = |id: i64, user: i64| Invalidation::from_stored(id, "connection", &format!("{user}:s"));
        let mut feed = Feed::starting_at(1000);
        assert_eq!(feed.read_after(), 1000 - REREAD_IDS);
        fill(1);
        fill(2);
        assert_eq!(feed.apply(&[inv(1001, 1)], &caches), 1);
        assert!(caches.connections.get(&(1, "s".into())).is_none());
        // Row 1001 comes back in the next poll's window: not applied again.
        fill(1);
        assert_eq!(feed.apply(&[inv(1001, 1)], &caches), 0);
        assert!(caches.connections.get(&(1, "s".into())).is_some());
        // A transaction with a lower id commits after 1001 was seen: still applied.
        assert_eq!(feed.apply(&[inv(999, 2), inv(1001, 1)], &caches), 1);
        assert!(caches.connections.get(&(2, "s".into())).is_none());
        assert_eq!(feed.read_after(), 1001 - REREAD_IDS);
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let c: TtlCache<u32, u32> = TtlCache::new(Duration::from_secs(60), 10);
        assert_eq!(c.get(&1), None);
        c.fill(c.ticket(), 1, 1);
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(c.get(&1), Some(1));
        assert_eq!(c.stats(), CacheStats { hits: 2, misses: 1, entries: 1 });
    }

    #[test]
    fn the_capacity_is_a_bound() {
        let c: TtlCache<u32, u32> = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            c.fill(c.ticket(), i, i);
            assert!(c.len() <= 3);
        }
        assert_eq!(c.get(&9), Some(9));
    }

    #[test]
    fn invalidations_name_keys_and_connections() {
        let caches = Caches::new(60);
        let key = CachedKey::for_tests(1, 7);
        caches.api_keys.fill(caches.api_keys.ticket(), "hash".into(), key);
        let set = Arc::new(vec![Arc::new(Connection::for_tests(7, "dropbox"))]);
        caches.connections.fill(caches.connections.ticket(), (7, "dropbox".into()), set.clone());
        caches.connections.fill(caches.connections.ticket(), (7, "google".into()), set);
        let inv = |kind: &str, key: &str| Invalidation::from_stored(0, kind, key);
        caches.apply(&inv("connection", "7:dropbox"));
        assert!(caches.connections.get(&(7, "dropbox".into())).is_none());
        assert!(caches.connections.get(&(7, "google".into())).is_some());
        caches.apply(&inv("api_key", "hash"));
        assert!(caches.api_keys.get(&"hash".to_string()).is_none());
        caches.apply(&inv("something new", "x"));
        assert!(caches.connections.is_empty());
    }

    /// A cache whose feed was read just now (as the poll does), with a token of grant 5 and one of
    /// grant 6 cached, both valid until `exp`.
    fn with_tokens(exp: i64) -> Caches {
        let caches = Caches::new(60);
        caches.feed.read(caches.feed.reading());
        for (hash, grant) in [("t5", 5), ("t6", 6)] {
            let ticket = caches.access_tokens.ticket();
            assert!(caches.access_tokens.fill(ticket, hash.into(), CachedToken::for_tests(grant, exp)));
        }
        caches
    }

    #[test]
    fn a_grants_invalidation_drops_its_tokens_only_and_blocks_older_fills() {
        let caches = with_tokens(now() + 3600);
        let reader = caches.access_tokens.ticket(); // a check reads grant 5's token from the database…
        caches.apply(&Invalidation::from_stored(1, "grant", "5")); // …another instance revokes it.
        assert!(caches.access_token("t5", now()).is_none());
        assert_eq!(caches.access_token("t6", now()).map(|t| t.grant_id), Some(6));
        assert!(!caches.access_tokens.fill(reader, "t5".into(), CachedToken::for_tests(5, now() + 3600)));
        assert!(caches.access_token("t5", now()).is_none(), "the read from before the revocation is not cached");
        // This process's own revocation (settled): the same.
        caches.after_write(&[Invalidated::Grant(6)]);
        assert!(caches.access_tokens.is_empty());
    }

    #[test]
    fn a_cached_token_is_not_used_past_its_expiry() {
        let caches = with_tokens(now() + 2);
        assert!(caches.access_token("t5", now()).is_some());
        assert!(caches.access_token("t5", now() + 2).is_none(), "the entry never outlives the token");
    }

    #[test]
    fn cached_tokens_wait_for_the_feed_to_be_read() {
        let caches = with_tokens(now() + 3600);
        let fresh = Caches::new(60);
        let ticket = fresh.access_tokens.ticket();
        fresh.access_tokens.fill(ticket, "t5".into(), CachedToken::for_tests(5, now() + 3600));
        assert!(fresh.access_token("t5", now()).is_none(), "not before the feed's first read");
        // Another instance's invalidation was heard: not until the reader has read it.
        caches.feed.heard();
        assert!(caches.access_token("t5", now()).is_none());
        let reading = caches.feed.reading();
        caches.feed.heard(); // heard while that read ran: it may not cover it
        caches.feed.read(reading);
        assert!(caches.access_token("t5", now()).is_none());
        caches.feed.read(caches.feed.reading());
        assert!(caches.access_token("t5", now()).is_some());
        // The feed could not be read: nothing cached is trusted.
        caches.feed.lost();
        assert!(caches.access_token("t5", now()).is_none());
    }

    #[test]
    fn a_listener_is_looked_at_before_a_cached_token_is_used() {
        let Some(base) = Instant::now().checked_sub(Duration::from_secs(10)) else { return };
        let watch = Arc::new(FeedWatch { base, ..FeedWatch::default() });
        watch.read_at.store(1, Ordering::SeqCst); // the feed was read 10 s ago
        assert!(!watch.current(), "without a listener the feed must have been read within two polls");
        // A listener whose connection has another instance's notification waiting: looking at it
        // rings (as the listener's loop would at its next tick), and the token is not trusted.
        let waiting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let look: Look = {
            let (watch, waiting) = (Arc::downgrade(&watch), waiting.clone());
            Arc::new(move || {
                if waiting.swap(false, Ordering::SeqCst) {
                    watch.upgrade().unwrap().heard();
                }
            })
        };
        watch.listening(Some(look));
        assert!(watch.current(), "a listener rings at each other instance's commit: the old read is current");
        waiting.store(true, Ordering::SeqCst);
        assert!(!watch.current(), "a notification waiting on the connection is seen by the check itself");
        watch.read(watch.reading());
        assert!(watch.current());
        watch.read_at.store(1, Ordering::SeqCst);
        assert!(watch.current());
        watch.listening(None);
        assert!(!watch.current(), "once the listener stopped, a read 10 s old is not current");
    }

    #[test]
    fn a_tokens_use_is_recorded_at_most_once_a_minute() {
        let token = CachedToken::for_tests(5, i64::MAX);
        let copy = token.clone();
        assert!(token.should_touch(1_000));
        assert!(!copy.should_touch(1_059));
        assert!(copy.should_touch(1_061));
    }

    #[test]
    fn a_use_is_recorded_at_most_once_a_minute() {
        let key = CachedKey::for_tests(1, 7);
        let copy = key.clone();
        assert!(key.should_touch(1_000));
        assert!(!copy.should_touch(1_030), "copies share the mark");
        assert!(copy.should_touch(1_061));
    }
}

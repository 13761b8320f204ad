//! The batcher for high-volume reads (`token.read`, `proxy.call`) and for sign-in attempts the
//! throttle refused before any work (a flood must not become one database write per request): a
//! queue the request never waits on, bounded by entries and by bytes, drained by one task that
//! appends every ~200 ms or 500 entries in one transaction per batch. A full queue drops the entry
//! (counted, logged). A crash loses at most the reads queued since the last flush; security events
//! never go through here.
//!
//! What one batch can add to the database is bounded whatever the requests: every entry is cut to
//! `MAX_ENTRY_BYTES` when queued ([`Entry::bounded`]), identical ones become one ([`coalesce`]),
//! and one actor's calls keep at most [`PATHS_PER_BATCH`] distinct path templates per batch (the
//! others are recorded as `/…`, with their count). Every entry written here carries `at_last`: it
//! is appended after its events, so entries recorded meanwhile have lower ids.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rocket::tokio::time::Instant;

use rocket::tokio::sync::{mpsc, oneshot};

use super::Entry;
use crate::db::Db;
use crate::vault::Cipher;

pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
pub const BATCH: usize = 500;
const QUEUE: usize = 10_000;
/// The queue also holds at most this many bytes of entries (as [`queued_size`] counts them).
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Distinct path templates kept per actor (and service, connection, address, method, status) in
/// one batch; the calls beyond are recorded with the path `/…`.
pub const PATHS_PER_BATCH: usize = 16;

enum Msg {
    /// An entry and its size in the queue.
    Entry(Entry, usize),
    Flush(oneshot::Sender<()>),
}

/// What an entry weighs in the queue: its stored bytes and the fixed fields around them.
fn queued_size(e: &Entry) -> usize {
    e.stored_bytes() + 64
}

/// The handle in `AppState` (`app.audit`).
pub struct Batcher {
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    dropped: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
    /// Bytes of the entries in the queue now.
    queued_bytes: Arc<AtomicUsize>,
    /// Batches written (appends), for tests and benchmarks.
    batches: Arc<AtomicU64>,
    refusals: Arc<Mutex<RefusalWindow>>,
}

/// Refused sign-ins recorded per second at most (see [`Batcher::refusal`]).
pub const REFUSALS_PER_SECOND: u32 = 10;

#[derive(Default)]
struct RefusalWindow {
    second: i64,
    recorded: u32,
    suppressed: u64,
}

impl Default for Batcher {
    fn default() -> Self {
        Batcher::new()
    }
}

impl Batcher {
    pub fn new() -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        Batcher {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: Default::default(),
            lost: Default::default(),
            queued_bytes: Default::default(),
            batches: Default::default(),
            refusals: Default::default(),
        }
    }

    /// Queue a read; never waits. A full queue drops it (counted in [`Batcher::dropped`]).
    pub fn read(&self, entry: Entry) {
        self.queue(entry);
    }

    /// Queue an entry, cut to its stored bounds; false (counted, logged) when the queue is full —
    /// of entries, or of bytes.
    fn queue(&self, entry: Entry) -> bool {
        let entry = entry.bounded();
        let size = queued_size(&entry);
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let sent = before + size <= QUEUE_BYTES && self.tx.try_send(Msg::Entry(entry, size)).is_ok();
        if !sent {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped_total = n, "audit queue full: an entry was dropped");
            return false;
        }
        true
    }

    /// Queue a sign-in attempt refused before any work (throttled, or an impossible username).
    /// At most [`REFUSALS_PER_SECOND`] are recorded each second (across addresses), so a flood
    /// cannot fill the disk through the log; the next recorded one says how many were left out
    /// before it (`"suppressed_before": n`), or, when none follows within the second, an entry
    /// `{"refused": "suppressed"}` written by the flusher does. One the full queue refuses is
    /// counted the same way.
    pub fn refusal(&self, entry: Entry) {
        let second = crate::util::now();
        let suppressed = {
            let mut w = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            if w.second != second {
                (w.second, w.recorded) = (second, 0);
            }
            if w.recorded >= REFUSALS_PER_SECOND {
                w.suppressed += 1;
                return;
            }
            w.recorded += 1;
            std::mem::take(&mut w.suppressed)
        };
        if !self.queue(if suppressed > 0 { entry.with("suppressed_before", suppressed) } else { entry }) {
            // Not recorded: it and the count it carried wait for the next one (or the summary).
            self.refusals.lock().unwrap_or_else(|e| e.into_inner()).suppressed += suppressed + 1;
        }
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Entries lost because a batch could not be written.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Batches written so far (one append each).
    pub fn batches_written(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Write everything queued so far (at shutdown; tests).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Start the flushing task (once; later calls do nothing).
    pub fn start(&self, db: Db, cipher: Arc<Cipher>) {
        let Some(mut rx) = self.rx.lock().expect("not poisoned").take() else { return };
        let (lost, refusals) = (self.lost.clone(), self.refusals.clone());
        let (queued, batches) = (self.queued_bytes.clone(), self.batches.clone());
        let taken = move |size: usize| {
            queued.fetch_sub(size, Ordering::Relaxed);
        };
        rocket::tokio::spawn(async move {
            let mut buf: Vec<Entry> = Vec::new();
            let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
            // When the batch is written: FLUSH_EVERY after its first entry came, however steadily
            // more arrive (so one coalesced row spans at most that). Idle, the task still wakes
            // that often, to write the count of refusals a closed window left out.
            let mut due: Option<Instant> = None;
            loop {
                let wake = due.unwrap_or_else(|| Instant::now() + FLUSH_EVERY);
                let msg = match rocket::tokio::time::timeout_at(wake, rx.recv()).await {
                    Ok(msg) => msg,
                    Err(_) => {
                        if let Some(summary) = closed_window_summary(&refusals) {
                            buf.push(summary);
                        }
                        write(&db, &cipher, &lost, &batches, std::mem::take(&mut buf)).await;
                        due = None;
                        continue;
                    }
                };
                match msg {
                    None => break,
                    Some(Msg::Entry(e, size)) => {
                        taken(size);
                        due.get_or_insert_with(|| Instant::now() + FLUSH_EVERY);
                        buf.push(e)
                    }
                    Some(Msg::Flush(done)) => waiting.push(done),
                }
                // Take what else is queued now, without waiting.
                while buf.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Entry(e, size)) => {
                            taken(size);
                            buf.push(e)
                        }
                        Ok(Msg::Flush(done)) => waiting.push(done),
                        Err(_) => break,
                    }
                }
                if buf.len() >= BATCH || !waiting.is_empty() {
                    write(&db, &cipher, &lost, &batches, std::mem::take(&mut buf)).await;
                    due = None;
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
            }
            write(&db, &cipher, &lost, &batches, buf).await;
        });
    }
}

/// The entry that records the refusals a window left out, once that window is over and no later
/// refusal carried them (a flood that stopped): `{"refused": "suppressed", "suppressed_before": n}`.
fn closed_window_summary(refusals: &Mutex<RefusalWindow>) -> Option<Entry> {
    let mut w = refusals.lock().unwrap_or_else(|e| e.into_inner());
    if w.suppressed == 0 || w.second >= crate::util::now() {
        return None;
    }
    let n = std::mem::take(&mut w.suppressed);
    Some(
        Entry::new(super::Kind::SigninFailure, super::Actor::System)
            .with("refused", "suppressed")
            .with("suppressed_before", n),
    )
}

/// Entries of one batch that say the same thing (kind, user, actor, service, connection, address,
/// detail) become one, with `"count": n`, the time of the first as `at` and of the last as
/// `at_last`: a script reading its token a thousand times a second writes a few rows a second,
/// not a thousand — each row still says who read which connection's token from where, and when
/// to the flush interval. Before that, one actor's calls keep at most [`PATHS_PER_BATCH`] distinct
/// `path`s per group (the rest become `/…`), so a flood of distinct long paths is a few rows too.
/// Every entry returned has `at_last` (the same as `at` for a single event).
pub fn coalesce(mut batch: Vec<Entry>) -> Vec<Entry> {
    cap_paths(&mut batch);
    let mut out: Vec<(Entry, u64)> = Vec::with_capacity(batch.len().min(64));
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in batch {
        let key = group_key(&e, &e.detail);
        let last = e.at_last.unwrap_or(e.at).max(e.at);
        match index.get(&key) {
            Some(&i) => {
                let (first, n) = &mut out[i];
                *n += 1;
                first.at = first.at.min(e.at);
                first.at_last = Some(first.at_last.unwrap_or(first.at).max(last));
            }
            None => {
                index.insert(key, out.len());
                out.push((Entry { at_last: Some(last), ..e }, 1));
            }
        }
    }
    out.into_iter().map(|(e, n)| if n > 1 { e.with("count", n) } else { e }).collect()
}

fn group_key(e: &Entry, detail: &serde_json::Value) -> String {
    format!(
        "{}\u{1}{:?}\u{1}{}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{}",
        e.kind.as_str(),
        e.user_id,
        e.actor,
        e.service,
        e.connection_id,
        e.address,
        detail
    )
}

/// Keep at most [`PATHS_PER_BATCH`] distinct `path`s per group (everything but the path alike);
/// the later ones become [`super::PATH_CUT`].
fn cap_paths(batch: &mut [Entry]) {
    let mut seen: std::collections::HashMap<String, std::collections::HashSet<String>> = Default::default();
    for e in batch.iter_mut() {
        let Some(path) = e.detail.get("path").and_then(|p| p.as_str()).map(str::to_string) else { continue };
        let mut rest = e.detail.clone();
        if let Some(map) = rest.as_object_mut() {
            map.remove("path");
        }
        let paths = seen.entry(group_key(e, &rest)).or_default();
        if paths.contains(&path) {
            continue;
        }
        if paths.len() < PATHS_PER_BATCH {
            paths.insert(path);
        } else if let Some(map) = e.detail.as_object_mut() {
            map.insert("path".into(), super::PATH_CUT.into());
        }
    }
}

async fn write(db: &Db, cipher: &Arc<Cipher>, lost: &AtomicU64, batches: &AtomicU64, batch: Vec<Entry>) {
    if batch.is_empty() {
        return;
    }
    // What was lost is counted in reads (as they were queued), not in rows.
    let n = batch.len() as u64;
    let (batch, cipher) = (coalesce(batch), cipher.clone());
    match db.run(move |conn| super::append(conn, &cipher, &batch)).await {
        Ok(_) => {
            batches.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            let total = lost.fetch_add(n, Ordering::Relaxed) + n;
            tracing::error!(entries = n, lost_total = total, "audit batch could not be written: {e}");
        }
    }
}

/// How often the audit log is pruned (`audit_retention_days`).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Retention pruning, a background job (`crate::jobs`; listed only when `audit_retention_days` is
/// above 0): at start and then every [`PRUNE_EVERY`]. A prune that finds something that does not
/// verify removes nothing: it is logged as an error and counted
/// (`tokenvault_audit_prune_refused_total`) — and the run counts as failed.
pub struct Pruner {
    pub db: Db,
    pub cipher: Arc<Cipher>,
    pub days: i64,
    pub metrics: crate::audit::metrics::AuditMetrics,
}

#[rocket::async_trait]
impl crate::jobs::Job for Pruner {
    fn name(&self) -> &'static str {
        "audit_prune"
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        let (c, days) = (self.cipher.clone(), self.days);
        match self.db.run(move |conn| super::prune(conn, &c, days, crate::util::now())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "audit entries past retention pruned"),
            Ok(Err(broken)) => {
                self.metrics.prune_refused();
                tracing::error!(
                    "audit pruning refused, nothing removed: {broken}. Run `tokenvault audit verify`; the entries \
                     stay until the log verifies"
                );
                return Err("audit pruning refused".into());
            }
            Err(e) => return Err(format!("audit pruning failed: {e}")),
        }
        Ok(crate::jobs::Next::Idle)
    }
}

#[cfg(test)]
mod tests {
    use super::{coalesce, Batcher, FLUSH_EVERY, PATHS_PER_BATCH, QUEUE, QUEUE_BYTES};
    use crate::audit::{Actor, Entry, Kind};

    fn read(key: i64, connection: i64, address: &str, at: i64) -> Entry {
        let mut e = Entry::new(Kind::TokenRead, Actor::Key(key))
            .user(1)
            .service("fake")
            .connection(connection)
            .address(Some(address))
            .with("key_id", key);
        e.at = at;
        e
    }

    #[test]
    fn identical_reads_of_a_batch_become_one_entry_with_their_count() {
        let mut batch = Vec::new();
        for i in 0..1000 {
            batch.push(read(7, 1, "127.0.0.2", 100 + i % 2));
        }
        batch.push(read(7, 2, "127.0.0.2", 101));
        batch.push(read(7, 1, "127.0.0.3", 101));
        batch.push(read(8, 1, "127.0.0.2", 101));
        let out = coalesce(batch);
        assert_eq!(out.len(), 4, "one row per key, connection and address");
        assert_eq!(out[0].detail["count"], 1000);
        assert_eq!(out[0].at, 100, "the time of the first");
        assert_eq!(out[0].at_last, Some(101), "and of the last");
        assert_eq!(out[1].at_last, Some(101), "a single read written late is marked too");
        assert!(out[1..].iter().all(|e| e.detail.get("count").is_none()), "a single read has no count");
        assert_eq!(
            (out[1].connection_id, out[2].address.as_deref(), out[3].actor.clone()),
            (Some(2), Some("127.0.0.3"), Actor::Key(8))
        );
        // Another detail (a proxy call's status) is another entry.
        let a = Entry::new(Kind::ProxyCall, Actor::Key(7)).with("status", 200);
        let b = Entry::new(Kind::ProxyCall, Actor::Key(7)).with("status", 500);
        assert_eq!(coalesce(vec![a.clone(), b, a]).len(), 2);
    }

    /// A full queue drops a read and counts it; a refusal it cannot take is counted back into the
    /// next recorded one instead of vanishing.
    #[test]
    fn a_full_queue_counts_what_it_drops() {
        let b = Batcher::new();
        for i in 0..QUEUE + 5 {
            b.read(read(1, 1, "127.0.0.2", i as i64));
        }
        assert_eq!(b.dropped(), 5);
        b.refusal(Entry::new(Kind::SigninFailure, Actor::System).with("refused", "throttled"));
        assert_eq!(b.dropped(), 6);
        let w = b.refusals.lock().unwrap();
        assert_eq!((w.recorded, w.suppressed), (1, 1), "the refused refusal waits to be counted");
    }

    /// Issue 19, item 4: one actor's flood of long, distinct proxy paths (60 KB each, as in the
    /// issue) becomes at most PATHS_PER_BATCH + 1 rows per batch, each within the entry cap — a
    /// bounded amount per coalescing window, however many calls and however long their paths.
    #[test]
    fn a_flood_of_long_distinct_paths_is_a_few_bounded_rows_a_batch() {
        let letters = |mut i: usize| -> String {
            let mut s = String::new();
            for _ in 0..4 {
                s.push(char::from(b'a' + (i % 26) as u8));
                i /= 26;
            }
            s
        };
        let batch: Vec<Entry> = (0..600)
            .map(|i| {
                let segments: Vec<String> = (0..3000).map(|j| format!("{}seg{}", letters(i + j), letters(j))).collect();
                Entry::new(Kind::ProxyCall, Actor::Key(7))
                    .user(1)
                    .service("fake")
                    .connection(1)
                    .address(Some("127.0.0.2"))
                    .with("method", "GET")
                    .with("path", crate::audit::path_template(&segments))
                    .with("status", 404)
            })
            .collect();
        assert!(batch.iter().all(|e| e.detail["path"].as_str().unwrap().len() <= crate::audit::PATH_BYTES));
        let out = coalesce(batch);
        assert!(out.len() <= PATHS_PER_BATCH + 1, "{} rows", out.len());
        let bytes: usize = out.iter().map(|e| e.clone().bounded().stored_bytes()).sum();
        assert!(bytes <= (PATHS_PER_BATCH + 1) * crate::audit::MAX_ENTRY_BYTES, "{bytes} bytes");
        let counts: u64 = out.iter().map(|e| e.detail["count"].as_u64().unwrap_or(1)).sum();
        assert_eq!(counts, 600, "every call is counted");
        assert_eq!(out.last().unwrap().detail["path"], crate::audit::PATH_CUT);
        // Another actor (or status) has its own paths.
        let other = Entry::new(Kind::ProxyCall, Actor::Key(8)).with("path", "/x");
        assert_eq!(coalesce(vec![other.clone()])[0].detail["path"], "/x");
    }

    /// The queue holds at most QUEUE_BYTES of entries, whatever their number: large entries are
    /// dropped (and counted) long before QUEUE of them are queued.
    #[test]
    fn the_queue_is_bounded_by_bytes_too() {
        let b = Batcher::new();
        let big = |i: i64| {
            let mut e = read(1, 1, "127.0.0.2", i);
            for f in 0..8 {
                e = e.with(&format!("f{f}"), "y".repeat(120));
            }
            e
        };
        let size = super::queued_size(&big(0).bounded());
        assert!(size > 1000, "{size}");
        let fits = QUEUE_BYTES / size;
        assert!(fits < QUEUE, "the bytes bound is the tighter one here");
        for i in 0..(fits + 10) as i64 {
            b.read(big(i));
        }
        assert_eq!(b.dropped(), 10);
        assert!(b.queued_bytes.load(std::sync::atomic::Ordering::Relaxed) <= QUEUE_BYTES);
    }

    /// A steady trickle (one read every 40 ms, for a second) is written in batches of about 200 ms,
    /// not held until 500 entries: one coalesced row never spans more than a flush interval.
    #[rocket::async_test]
    async fn a_batch_is_written_one_flush_interval_after_its_first_entry() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("b.sqlite").to_string_lossy()).unwrap();
        let b = Batcher::new();
        b.start(db.clone(), std::sync::Arc::new(crate::vault::Cipher::for_tests(3)));
        let started = std::time::Instant::now();
        for _ in 0..25 {
            b.read(read(1, 1, "127.0.0.2", 100));
            rocket::tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        }
        b.flush().await;
        let spent = started.elapsed();
        let rows = crate::db::models::audit::after(&mut db.conn().unwrap(), 0, 100).unwrap();
        let counts: Vec<u64> = rows
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(&r.detail).unwrap()["count"].as_u64().unwrap_or(1))
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 25, "every read recorded: {counts:?}");
        let at_least = (spent.as_millis() / (FLUSH_EVERY.as_millis() * 2)) as usize;
        assert!(rows.len() >= at_least.max(2), "{} rows in {spent:?}: {counts:?}", rows.len());
    }
}

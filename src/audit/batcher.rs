//! The batcher for high-volume reads (`token.read`, `proxy.call`) and for sign-in attempts the
//! throttle refused before any work (a flood must not become one database write per request): a
//! bounded queue the request never waits on, drained by one task that appends every ~200 ms or 500 entries in one
//! transaction per batch. A full queue drops the entry (counted, logged). A crash loses at most
//! the reads queued since the last flush; security events never go through here.

use std::sync::atomic::{AtomicU64, Ordering};
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

enum Msg {
    Entry(Entry),
    Flush(oneshot::Sender<()>),
}

/// The handle in `AppState` (`app.audit`).
pub struct Batcher {
    tx: mpsc::Sender<Msg>,
    rx: Mutex<Option<mpsc::Receiver<Msg>>>,
    dropped: Arc<AtomicU64>,
    lost: Arc<AtomicU64>,
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
            refusals: Default::default(),
        }
    }

    /// Queue a read; never waits. A full queue drops it (counted in [`Batcher::dropped`]).
    pub fn read(&self, entry: Entry) {
        self.queue(entry);
    }

    /// Queue an entry; false (counted, logged) when the queue is full.
    fn queue(&self, entry: Entry) -> bool {
        if self.tx.try_send(Msg::Entry(entry)).is_err() {
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
                        write(&db, &cipher, &lost, std::mem::take(&mut buf)).await;
                        due = None;
                        continue;
                    }
                };
                match msg {
                    None => break,
                    Some(Msg::Entry(e)) => {
                        due.get_or_insert_with(|| Instant::now() + FLUSH_EVERY);
                        buf.push(e)
                    }
                    Some(Msg::Flush(done)) => waiting.push(done),
                }
                // Take what else is queued now, without waiting.
                while buf.len() < BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Entry(e)) => buf.push(e),
                        Ok(Msg::Flush(done)) => waiting.push(done),
                        Err(_) => break,
                    }
                }
                if buf.len() >= BATCH || !waiting.is_empty() {
                    write(&db, &cipher, &lost, std::mem::take(&mut buf)).await;
                    due = None;
                    for done in waiting.drain(..) {
                        let _ = done.send(());
                    }
                }
            }
            write(&db, &cipher, &lost, buf).await;
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
/// detail) become one, with `"count": n` and the time of the first: a script reading its token
/// a thousand times a second writes a few rows a second, not a thousand — each row still says
/// who read which connection's token from where, and when to the flush interval.
pub fn coalesce(batch: Vec<Entry>) -> Vec<Entry> {
    let mut out: Vec<(Entry, u64)> = Vec::with_capacity(batch.len().min(64));
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for e in batch {
        let key = format!(
            "{}\u{1}{:?}\u{1}{}\u{1}{:?}\u{1}{:?}\u{1}{:?}\u{1}{}",
            e.kind.as_str(),
            e.user_id,
            e.actor,
            e.service,
            e.connection_id,
            e.address,
            e.detail
        );
        match index.get(&key) {
            Some(&i) => out[i].1 += 1,
            None => {
                index.insert(key, out.len());
                out.push((e, 1));
            }
        }
    }
    out.into_iter().map(|(e, n)| if n > 1 { e.with("count", n) } else { e }).collect()
}

async fn write(db: &Db, cipher: &Arc<Cipher>, lost: &AtomicU64, batch: Vec<Entry>) {
    if batch.is_empty() {
        return;
    }
    // What was lost is counted in reads (as they were queued), not in rows.
    let n = batch.len() as u64;
    let (batch, cipher) = (coalesce(batch), cipher.clone());
    if let Err(e) = db.run(move |conn| super::append(conn, &cipher, &batch)).await {
        let total = lost.fetch_add(n, Ordering::Relaxed) + n;
        tracing::error!(entries = n, lost_total = total, "audit batch could not be written: {e}");
    }
}

/// Retention pruning: at start and then every hour (`audit_retention_days`; 0 keeps forever).
pub async fn prune_hourly(db: Db, cipher: Arc<Cipher>, days: i64) {
    if days <= 0 {
        return;
    }
    loop {
        let c = cipher.clone();
        match db.run(move |conn| super::prune(conn, &c, days, crate::util::now())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "audit entries past retention pruned"),
            Err(e) => tracing::warn!("audit pruning failed: {e}"),
        }
        rocket::tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{coalesce, Batcher, FLUSH_EVERY, QUEUE};
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

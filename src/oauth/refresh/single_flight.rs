//! In-process single-flight: one refresh per connection at a time in this process; the others
//! wait for its result instead of queueing on the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rocket::tokio::sync::{watch, MutexGuard};

/// One connection's lock, and the newest version this process has written to it. Requests that
/// find a refresh in flight wait for that version to be announced and are all woken at once; they
/// take the new row from the cache, where the refresher left it, so that a thousand waiters
/// neither queue on the lock one after another nor re-read the database.
pub struct ConnectionLock {
    mutex: rocket::tokio::sync::Mutex<()>,
    written_version: watch::Sender<i64>,
}

impl Default for ConnectionLock {
    fn default() -> Self {
        ConnectionLock { mutex: Default::default(), written_version: watch::Sender::new(0) }
    }
}

/// How a caller that wants to refresh gets on.
pub enum Entry<'a> {
    /// It holds the lock: it refreshes (keep the guard until [`ConnectionLock::written`]).
    Leader(MutexGuard<'a, ()>),
    /// This process wrote a newer version meanwhile: use it (from the cache).
    Written,
}

impl ConnectionLock {
    /// Announce that this process wrote `version` (waiters wake and re-read).
    pub fn written(&self, version: i64) {
        self.written_version.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    fn newer_than(&self, version: i64) -> bool {
        *self.written_version.borrow() > version
    }

    /// Resolves once this process has written a version newer than `version`.
    async fn written_after(&self, version: i64) {
        let mut rx = self.written_version.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|v| *v > version).await;
    }

    /// Take the lock to refresh the row seen at `seen_version`, unless this process writes a newer
    /// version first (or did while we waited for the lock).
    pub async fn enter(&self, seen_version: i64) -> Entry<'_> {
        let guard = rocket::tokio::select! {
            guard = self.mutex.lock() => guard,
            () = self.written_after(seen_version) => return Entry::Written,
        };
        if self.newer_than(seen_version) {
            // Refreshed by this process while we waited: the refresher left the new row in the
            // cache; read it without holding the lock.
            drop(guard);
            return Entry::Written;
        }
        Entry::Leader(guard)
    }
}

/// Per-connection locks of this process, keyed by the connection's row id (a connection deleted
/// and made anew gets a new id, and so a fresh lock whose version mark starts over).
#[derive(Default)]
pub struct RefreshLocks {
    locks: Mutex<HashMap<i64, Arc<ConnectionLock>>>,
}

impl RefreshLocks {
    pub fn get(&self, connection_id: i64) -> Arc<ConnectionLock> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(connection_id).or_default().clone()
    }
}

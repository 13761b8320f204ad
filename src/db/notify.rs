//! PostgreSQL's `LISTEN`/`NOTIFY` between instances: a change that other instances must see (an
//! event in the webhook outbox, a row of `cache_invalidations`) calls [`notify`] in its own
//! transaction, and PostgreSQL delivers the notification at commit (never for a rollback) to every
//! [`Listener`]. The listener of each instance (`jobs::listen`) then wakes its webhook worker or
//! its cache-invalidation reader at once, instead of their waiting for the next poll.
//!
//! On SQLite (one instance) [`notify`] does nothing: the instance's own wake-ups suffice. A
//! notification only says "look now": what to do is always read from the tables, so one that is
//! lost (the listener reconnecting) costs latency, never correctness — the polls remain, slower,
//! as the fallback.

use diesel::pg::PgConnection;
use diesel::{Connection, QueryResult, RunQueryDsl};

use super::Conn;

/// What a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An event was recorded in the webhook outbox.
    Webhooks,
    /// A row was written to `cache_invalidations`.
    CacheInvalidations,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Webhooks, Channel::CacheInvalidations];

    /// The PostgreSQL channel name (a constant: never built from input).
    pub fn name(self) -> &'static str {
        match self {
            Channel::Webhooks => "tokenvault_webhooks",
            Channel::CacheInvalidations => "tokenvault_cache_invalidations",
        }
    }

    fn named(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Tell the other instances, when the caller's transaction commits, that `channel` has news
/// (PostgreSQL; nothing on SQLite). PostgreSQL folds the same notification sent twice in one
/// transaction into one.
pub fn notify(conn: &mut Conn, channel: Channel) -> QueryResult<()> {
    if let Conn::Postgres(c) = conn {
        diesel::sql_query(format!("NOTIFY {}", channel.name())).execute(&mut **c)?;
    }
    Ok(())
}

/// A connection of its own (outside the pool) listening on every [`Channel`].
pub struct Listener {
    conn: PgConnection,
}

impl Listener {
    /// Connect to the PostgreSQL database at `url` and listen.
    pub fn connect(url: &str) -> Result<Listener, String> {
        let mut conn = PgConnection::establish(url).map_err(|e| format!("could not connect to listen: {e}"))?;
        for channel in Channel::ALL {
            diesel::sql_query(format!("LISTEN {}", channel.name()))
                .execute(&mut conn)
                .map_err(|e| format!("LISTEN {} failed: {e}", channel.name()))?;
        }
        Ok(Listener { conn })
    }

    /// The channels notified since the last call, each once, without waiting (what has reached
    /// the connection's socket: no query, no round trip). An error when the connection broke.
    pub fn received(&mut self) -> QueryResult<Vec<Channel>> {
        let mut out = Vec::new();
        for notification in self.conn.notifications_iter() {
            if let Some(channel) = Channel::named(&notification?.channel) {
                if !out.contains(&channel) {
                    out.push(channel);
                }
            }
        }
        Ok(out)
    }

    /// A round trip, to find a connection that broke without a word (the network dropped it).
    pub fn check(&mut self) -> QueryResult<()> {
        diesel::sql_query("SELECT 1").execute(&mut self.conn).map(|_| ())
    }
}

//! PostgreSQL's `LISTEN`/`NOTIFY` between instances: a change that other instances must see (an
//! event in the webhook outbox, a row of `cache_invalidations`) calls [`notify`] in its own
//! transaction, and PostgreSQL delivers the notification at commit (never for a rollback) to every
//! [`Listener`]. The listener of each instance (`jobs::listen`) then wakes its webhook worker or
//! its cache-invalidation reader at once, instead of their waiting for the next poll.
//!
//! Each notification carries the id of the process that sent it ([`instance`]) and of the sending
//! transaction, so a listener tells its own process's notifications ([`Heard::own`]) from other
//! instances', and hears back its own commits ([`Listener::own_commits`], [`commit_id`]: what a
//! revocation waits for before it answers, `jobs::listen::echoed`) (`jobs::listen`
//! acts on its own ones a second later: its writes already dropped its cached copies and woke its
//! worker, and reading its own invalidations back at once would only drop the copies just filled).
//!
//! On SQLite (one instance) [`notify`] does nothing: the instance's own wake-ups suffice. A
//! notification only says "look now": what to do is always read from the tables, so one that is
//! lost (the listener reconnecting) costs latency, never correctness — the polls remain, slower,
//! as the fallback.

use std::sync::OnceLock;

use diesel::pg::PgConnection;
use diesel::sql_types::Text;
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

/// This process's id in its notifications: unique per start.
pub fn instance() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{}-{}", std::process::id(), crate::util::random_token(6)))
}

/// Tell the other instances, when the caller's transaction commits, that `channel` has news
/// (PostgreSQL; nothing on SQLite). The payload is this process's id and the transaction's
/// ([`commit_id`]): PostgreSQL folds the same notification sent twice in one transaction into one.
pub fn notify(conn: &mut Conn, channel: Channel) -> QueryResult<()> {
    if let Conn::Postgres(c) = conn {
        diesel::sql_query("SELECT pg_notify($1, $2 || ' ' || txid_current())")
            .bind::<Text, _>(channel.name())
            .bind::<Text, _>(instance())
            .execute(&mut **c)?;
    }
    Ok(())
}

/// The id of the caller's transaction as its notifications carry it (PostgreSQL; `None` on
/// SQLite): what [`Listener::own_commits`] hands back once the commit's notification arrived.
pub fn commit_id(conn: &mut Conn) -> QueryResult<Option<i64>> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    match conn {
        Conn::Postgres(c) => {
            let row: Id = diesel::sql_query("SELECT txid_current() AS id").get_result(&mut **c)?;
            Ok(Some(row.id))
        }
        _ => Ok(None),
    }
}

/// A connection of its own (outside the pool) listening on every [`Channel`].
pub struct Listener {
    conn: PgConnection,
    /// The transactions of this process whose notifications arrived, not yet taken.
    own_commits: Vec<i64>,
}

/// A notification received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub channel: Channel,
    /// Sent by this process.
    pub own: bool,
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
        Ok(Listener { conn, own_commits: Vec::new() })
    }

    /// What was notified since the last call, each once, without waiting (what has reached the
    /// connection's socket: no query, no round trip). An error when the connection broke.
    pub fn received(&mut self) -> QueryResult<Vec<Heard>> {
        let mut out = Vec::new();
        for notification in self.conn.notifications_iter() {
            let notification = notification?;
            if let Some(channel) = Channel::named(&notification.channel) {
                let (from, tx) = notification.payload.split_once(' ').unwrap_or((&notification.payload, ""));
                let own = from == instance();
                if let (true, Ok(tx)) = (own, tx.parse()) {
                    self.own_commits.push(tx);
                }
                let heard = Heard { channel, own };
                if !out.contains(&heard) {
                    out.push(heard);
                }
            }
        }
        Ok(out)
    }

    /// The ids ([`commit_id`]) of this process's transactions whose notifications arrived since the
    /// last call (through [`Listener::received`]).
    pub fn own_commits(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.own_commits)
    }

    /// A round trip, to find a connection that broke without a word (the network dropped it).
    pub fn check(&mut self) -> QueryResult<()> {
        diesel::sql_query("SELECT 1").execute(&mut self.conn).map(|_| ())
    }
}

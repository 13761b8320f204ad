//! `cache_invalidations`: what every instance must drop from its caches (see `crate::cache`).

use diesel::prelude::*;

use crate::db::schema::cache_invalidations;
use crate::db::text_enum::UnknownText;
use crate::db::Conn;

crate::db::text_enum::text_enum! {
    /// What kind of cached thing a row names (`cache_invalidations.kind`; `key` says which one).
    pub enum InvalidationKind {
        /// `key` is the API key's hash.
        ApiKey = "api_key",
        /// `key` is `<user id>:<service>`.
        Connection = "connection",
        /// `key` is the provider's name: every instance rebuilds its provider catalog.
        Providers = "providers",
        /// `key` is a grant's id: every instance drops the cached access tokens of that grant.
        Grant = "grant",
    }
}

/// What an invalidation names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidated {
    /// The API key with this hash.
    ApiKey(String),
    /// The connection of (user, service).
    Connection { user_id: i64, service: String },
    /// The providers managed in the app (`key`: the one that changed).
    Providers(String),
    /// The access tokens of the grant with this id (it ended, or one of its tokens was revoked).
    Grant(i64),
}

impl Invalidated {
    pub fn kind(&self) -> InvalidationKind {
        match self {
            Invalidated::ApiKey(_) => InvalidationKind::ApiKey,
            Invalidated::Connection { .. } => InvalidationKind::Connection,
            Invalidated::Providers(_) => InvalidationKind::Providers,
            Invalidated::Grant(_) => InvalidationKind::Grant,
        }
    }

    /// The stored `key`.
    pub fn key(&self) -> String {
        match self {
            Invalidated::ApiKey(hash) => hash.clone(),
            Invalidated::Connection { user_id, service } => format!("{user_id}:{service}"),
            Invalidated::Providers(name) => name.clone(),
            Invalidated::Grant(id) => id.to_string(),
        }
    }

    /// Read back a stored (`kind`, `key`); the inverse of [`Invalidated::kind`] and [`Invalidated::key`].
    pub fn parse(kind: &str, key: &str) -> Result<Invalidated, UnknownText> {
        match kind.parse::<InvalidationKind>()? {
            InvalidationKind::ApiKey => Ok(Invalidated::ApiKey(key.to_string())),
            InvalidationKind::Providers => Ok(Invalidated::Providers(key.to_string())),
            InvalidationKind::Grant => key
                .parse::<i64>()
                .map(Invalidated::Grant)
                .map_err(|_| UnknownText { what: "grant invalidation key", text: key.chars().take(64).collect() }),
            InvalidationKind::Connection => key
                .split_once(':')
                .and_then(|(user, service)| Some((user.parse::<i64>().ok()?, service)))
                .map(|(user_id, service)| Invalidated::Connection { user_id, service: service.to_string() })
                .ok_or_else(|| UnknownText {
                    what: "connection invalidation key",
                    text: key.chars().take(64).collect(),
                }),
        }
    }
}

/// A row as read: its id, and what it names — or why this version cannot tell (a kind or key
/// written by a newer instance during a rolling upgrade): then the reader drops everything.
/// The kind is read as a string on purpose: one such row must not make the whole feed unreadable.
#[derive(Debug, Clone)]
pub struct Invalidation {
    pub id: i64,
    pub target: Result<Invalidated, UnknownText>,
}

impl Invalidation {
    pub fn from_stored(id: i64, kind: &str, key: &str) -> Invalidation {
        Invalidation { id, target: Invalidated::parse(kind, key) }
    }
}

#[derive(Insertable)]
#[diesel(table_name = cache_invalidations)]
struct NewInvalidation<'a> {
    kind: InvalidationKind,
    key: &'a str,
    created_at: i64,
}

/// Record that `what` changed, in the transaction of the change. Called by the unit of work
/// only (`crate::changes`: a change's invalidation is one of its projections); on PostgreSQL the
/// other instances read it at commit (`db::notify`), without waiting for their next poll.
pub fn record(conn: &mut Conn, what: &Invalidated) -> QueryResult<()> {
    let key = what.key();
    let row = NewInvalidation { kind: what.kind(), key: &key, created_at: crate::util::now() };
    crate::on_conn!(conn, conn => diesel::insert_into(cache_invalidations::table).values(&row).execute(conn))?;
    crate::db::notify::notify(conn, crate::db::notify::Channel::CacheInvalidations)?;
    Ok(())
}

/// Invalidations with an id above `after`, oldest first.
pub fn after(conn: &mut Conn, after: i64) -> QueryResult<Vec<Invalidation>> {
    let rows: Vec<(i64, String, String)> = crate::on_conn!(conn, conn => {
        cache_invalidations::table
            .filter(cache_invalidations::id.gt(after))
            .order(cache_invalidations::id.asc())
            .select((cache_invalidations::id, cache_invalidations::kind, cache_invalidations::key))
            .load(conn)
    })?;
    Ok(rows.into_iter().map(|(id, kind, key)| Invalidation::from_stored(id, &kind, &key)).collect())
}

/// The highest id so far (0 when there is none).
pub fn newest_id(conn: &mut Conn) -> QueryResult<i64> {
    crate::on_conn!(conn, conn => {
        cache_invalidations::table.select(diesel::dsl::max(cache_invalidations::id)).first::<Option<i64>>(conn)
    })
    .map(|id| id.unwrap_or(0))
}

pub fn delete_before(conn: &mut Conn, before: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(cache_invalidations::table.filter(cache_invalidations::created_at.lt(before))).execute(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_stored_as_its_string() {
        let kinds: Vec<_> = InvalidationKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["api_key", "connection", "providers", "grant"]);
        crate::db::text_enum::assert_text_round_trips!(InvalidationKind);
    }

    #[test]
    fn keys_read_back_as_what_they_name() {
        for what in [
            Invalidated::ApiKey("9f86d081884c7d65".into()),
            Invalidated::Connection { user_id: 7, service: "dropbox".into() },
            Invalidated::Providers("acme".into()),
            Invalidated::Connection { user_id: 7, service: "with:colon".into() },
            Invalidated::Grant(42),
        ] {
            let (kind, key) = (what.kind(), what.key());
            assert_eq!(Invalidated::parse(kind.as_str(), &key), Ok(what));
        }
        assert_eq!(Invalidated::Connection { user_id: 7, service: "dropbox".into() }.key(), "7:dropbox");
        let unknown = Invalidated::parse("session", "x").unwrap_err();
        assert_eq!(unknown.to_string(), r#"unknown InvalidationKind "session" in the database"#);
        let bad_key = Invalidated::parse("connection", "seven:dropbox").unwrap_err();
        assert_eq!(bad_key.to_string(), r#"unknown connection invalidation key "seven:dropbox" in the database"#);
        let bad_grant = Invalidated::parse("grant", "g1").unwrap_err();
        assert_eq!(bad_grant.to_string(), r#"unknown grant invalidation key "g1" in the database"#);
    }
}

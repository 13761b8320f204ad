//! `cache_invalidations`: what every instance must drop from its caches (see `crate::cache`).

use diesel::prelude::*;

use crate::db::schema::cache_invalidations;
use crate::db::Conn;

/// `key` is the API key's hash.
pub const KIND_API_KEY: &str = "api_key";
/// `key` is `<user id>:<service>`.
pub const KIND_CONNECTION: &str = "connection";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cache_invalidations)]
pub struct Invalidation {
    pub id: i64,
    pub kind: String,
    pub key: String,
    pub created_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = cache_invalidations)]
struct NewInvalidation<'a> {
    kind: &'a str,
    key: &'a str,
    created_at: i64,
}

fn insert(conn: &mut Conn, kind: &str, key: &str) -> QueryResult<()> {
    let row = NewInvalidation { kind, key, created_at: crate::util::now() };
    crate::on_conn!(conn, conn => diesel::insert_into(cache_invalidations::table).values(&row).execute(conn))?;
    Ok(())
}

/// Record that the connection of (user, service) changed.
pub fn connection(conn: &mut Conn, user_id: i64, service: &str) -> QueryResult<()> {
    insert(conn, KIND_CONNECTION, &format!("{user_id}:{service}"))
}

/// Record that the API key with this hash changed.
pub fn api_key(conn: &mut Conn, key_hash: &str) -> QueryResult<()> {
    insert(conn, KIND_API_KEY, key_hash)
}

/// Invalidations with an id above `after`, oldest first.
pub fn after(conn: &mut Conn, after: i64) -> QueryResult<Vec<Invalidation>> {
    crate::on_conn!(conn, conn => {
        cache_invalidations::table
            .filter(cache_invalidations::id.gt(after))
            .order(cache_invalidations::id.asc())
            .select(Invalidation::as_select())
            .load(conn)
    })
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

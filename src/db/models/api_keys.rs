use diesel::prelude::*;

use crate::db::models::users::User;
use crate::db::schema::{api_keys, users};
use crate::db::Conn;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    pub key_hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// The services the key may use, space-separated; `None`: all of its user's.
    pub services: Option<String>,
    /// What it may do (`auth::api_key::Capability`s), space-separated; `None`: everything.
    pub capabilities: Option<String>,
    /// When it stops working; `None`: never.
    pub expires_at: Option<i64>,
    /// The client address of the last recorded use.
    pub last_used_ip: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    pub user_id: i64,
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a str,
    pub created_at: i64,
    pub services: Option<&'a str>,
    pub capabilities: Option<&'a str>,
    pub expires_at: Option<i64>,
}

pub fn insert(conn: &mut Conn, new: &NewApiKey<'_>) -> QueryResult<ApiKey> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(api_keys::table).values(new).returning(ApiKey::as_returning()).get_result(conn)
    })
}

/// The live key with this hash (not revoked, not expired at `now`), and its user.
pub fn find_active(conn: &mut Conn, key_hash: &str, now: i64) -> QueryResult<Option<(ApiKey, User)>> {
    crate::on_conn!(conn, conn => {
        api_keys::table
            .inner_join(users::table)
            .filter(api_keys::key_hash.eq(key_hash))
            .filter(api_keys::revoked_at.is_null())
            .filter(api_keys::expires_at.is_null().or(api_keys::expires_at.gt(now)))
            .select((ApiKey::as_select(), User::as_select()))
            .first(conn)
            .optional()
    })
}

pub fn list_for_user(conn: &mut Conn, user_id: i64) -> QueryResult<Vec<ApiKey>> {
    crate::on_conn!(conn, conn => {
        api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .filter(api_keys::revoked_at.is_null())
            .order(api_keys::id.desc())
            .select(ApiKey::as_select())
            .load(conn)
    })
}

/// Record a use and the client's address, at most once a minute per key (keeps the hot path free
/// of writes).
pub fn touch(conn: &mut Conn, id: i64, now: i64, ip: Option<&str>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id))
                .filter(api_keys::last_used_at.is_null().or(api_keys::last_used_at.lt(now - 60))),
        )
        .set((api_keys::last_used_at.eq(now), api_keys::last_used_ip.eq(ip)))
        .execute(conn)
    })
}

/// Revoke one of the user's keys (in a unit of work, whose `ApiKeyRevoked` invalidates the cached
/// key); the revoked key's hash, or `None` when it is not theirs or already revoked.
pub fn revoke(conn: &mut Conn, user_id: i64, id: i64, now: i64) -> QueryResult<Option<String>> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id))
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(now))
        .returning(api_keys::key_hash)
        .get_result(conn)
        .optional()
    })
}

/// The live (unrevoked) keys limited to a list of services naming `service` (for deleting a
/// provider), by id.
pub fn naming_service(conn: &mut Conn, service: &str) -> QueryResult<Vec<ApiKey>> {
    let keys: Vec<ApiKey> = crate::on_conn!(conn, conn => {
        api_keys::table
            .filter(api_keys::revoked_at.is_null())
            .filter(api_keys::services.like(format!("%{service}%")))
            .order(api_keys::id)
            .select(ApiKey::as_select())
            .load(conn)
    })?;
    Ok(keys
        .into_iter()
        .filter(|k| k.services.as_deref().is_some_and(|s| s.split_whitespace().any(|n| n == service)))
        .collect())
}

/// Set a live key's list of services (never empty: `None` would mean every service).
pub fn set_services(conn: &mut Conn, id: i64, services: &str) -> QueryResult<usize> {
    debug_assert!(!services.trim().is_empty());
    crate::on_conn!(conn, conn => {
        diesel::update(api_keys::table.filter(api_keys::id.eq(id)).filter(api_keys::revoked_at.is_null()))
            .set(api_keys::services.eq(Some(services)))
            .execute(conn)
    })
}

/// Revoke every live key of the user (after a password change), in the caller's unit of work; the
/// revoked keys' (id, hash), by id.
pub fn revoke_all_for_user(conn: &mut Conn, user_id: i64, now: i64) -> QueryResult<Vec<(i64, String)>> {
    let mut revoked: Vec<(i64, String)> = crate::on_conn!(conn, conn => {
        diesel::update(api_keys::table.filter(api_keys::user_id.eq(user_id)).filter(api_keys::revoked_at.is_null()))
            .set(api_keys::revoked_at.eq(now))
            .returning((api_keys::id, api_keys::key_hash))
            .get_results(conn)
    })?;
    revoked.sort_unstable();
    Ok(revoked)
}

/// Revoke the user's oldest live (unexpired) keys until at most `keep` remain, in the caller's unit
/// of work; the keys revoked, oldest first.
pub fn revoke_oldest_beyond(conn: &mut Conn, user_id: i64, keep: i64, now: i64) -> QueryResult<Vec<ApiKey>> {
    // Newest first; an expired key does not count (it works no more, and evicting it would leave
    // a working key revoked while a dead one stays).
    let live = list_for_user(conn, user_id)?.into_iter().filter(|k| k.expires_at.is_none_or(|e| e > now));
    let mut evicted: Vec<ApiKey> = live.skip(usize::try_from(keep.max(0)).unwrap_or(0)).collect();
    evicted.reverse();
    for key in &mut evicted {
        crate::on_conn!(conn, conn => {
            diesel::update(api_keys::table.filter(api_keys::id.eq(key.id)).filter(api_keys::revoked_at.is_null()))
                .set(api_keys::revoked_at.eq(now))
                .execute(conn)
        })?;
        key.revoked_at = Some(now);
    }
    Ok(evicted)
}

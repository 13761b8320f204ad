use diesel::prelude::*;

use crate::db::models::users::User;
use crate::db::schema::{sessions, users};
use crate::db::Conn;

#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub id_hash: String,
    pub user_id: i64,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// What pages and URLs name the session by (never the id or its hash).
    pub public_id: String,
    /// The last request seen, at most a minute old; `None` until the first after sign-in.
    pub last_seen_at: Option<i64>,
    /// The client address and user agent of that request.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// Seconds between two updates of a session's `last_seen_at` (no write on every request).
pub const TOUCH_INTERVAL: i64 = 60;

pub fn insert(conn: &mut Conn, session: &Session) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(sessions::table).values(session).execute(conn)
    })
}

/// The unexpired session with this id hash, and its user.
pub fn find_valid(conn: &mut Conn, id_hash: &str, now: i64) -> QueryResult<Option<(Session, User)>> {
    crate::on_conn!(conn, conn => {
        sessions::table
            .inner_join(users::table)
            .filter(sessions::id_hash.eq(id_hash))
            .filter(sessions::expires_at.gt(now))
            .select((Session::as_select(), User::as_select()))
            .first(conn)
            .optional()
    })
}

/// Record a request of this session (its time, address and user agent) unless one was recorded
/// less than [`TOUCH_INTERVAL`] ago.
pub fn touch(
    conn: &mut Conn,
    id_hash: &str,
    now: i64,
    ip: Option<&str>,
    user_agent: Option<&str>,
) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            sessions::table
                .filter(sessions::id_hash.eq(id_hash))
                .filter(sessions::last_seen_at.is_null().or(sessions::last_seen_at.le(now - TOUCH_INTERVAL))),
        )
        .set((sessions::last_seen_at.eq(now), sessions::ip.eq(ip), sessions::user_agent.eq(user_agent)))
        .execute(conn)
    })
}

/// A user's unexpired sessions, the most recently used first.
pub fn list_for_user(conn: &mut Conn, user_id: i64, now: i64) -> QueryResult<Vec<Session>> {
    crate::on_conn!(conn, conn => {
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::expires_at.gt(now))
            .order((sessions::last_seen_at.desc(), sessions::created_at.desc()))
            .select(Session::as_select())
            .load(conn)
    })
}

/// End one of the user's sessions, named by its public id; its id hash, or `None` when the user
/// has no such session.
pub fn delete_by_public_id(conn: &mut Conn, user_id: i64, public_id: &str) -> QueryResult<Option<String>> {
    crate::on_conn!(conn, conn => {
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id)).filter(sessions::public_id.eq(public_id)))
            .returning(sessions::id_hash)
            .get_result(conn)
            .optional()
    })
}

/// End every session of the user except `keep_hash`; the id hashes of those ended.
pub fn delete_others(conn: &mut Conn, user_id: i64, keep_hash: &str) -> QueryResult<Vec<String>> {
    crate::on_conn!(conn, conn => {
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id)).filter(sessions::id_hash.ne(keep_hash)))
            .returning(sessions::id_hash)
            .get_results(conn)
    })
}

pub fn delete(conn: &mut Conn, id_hash: &str) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(sessions::table.find(id_hash)).execute(conn)
    })
}

/// End every session of a user (after a password change; the caller then starts a new one).
pub fn delete_for_user(conn: &mut Conn, user_id: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(sessions::table.filter(sessions::user_id.eq(user_id))).execute(conn)
    })
}

pub fn delete_expired(conn: &mut Conn, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(sessions::table.filter(sessions::expires_at.le(now))).execute(conn)
    })
}

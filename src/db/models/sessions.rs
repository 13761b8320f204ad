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
}

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

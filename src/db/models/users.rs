use diesel::prelude::*;

use crate::db::schema::users;
use crate::db::Conn;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: i64,
    pub password_changed_at: i64,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub is_admin: bool,
    pub created_at: i64,
    pub password_changed_at: i64,
}

pub fn find_by_username(conn: &mut Conn, name: &str) -> QueryResult<Option<User>> {
    crate::on_conn!(conn, conn => {
        users::table.filter(users::username.eq(name)).select(User::as_select()).first(conn).optional()
    })
}

pub fn find(conn: &mut Conn, id: i64) -> QueryResult<Option<User>> {
    crate::on_conn!(conn, conn => {
        users::table.find(id).select(User::as_select()).first(conn).optional()
    })
}

pub fn count(conn: &mut Conn) -> QueryResult<i64> {
    crate::on_conn!(conn, conn => {
        users::table.count().get_result(conn)
    })
}

/// Insert a user; `Ok(None)` when the name is taken.
pub fn create(conn: &mut Conn, new: &NewUser<'_>) -> QueryResult<Option<User>> {
    crate::on_conn!(conn, conn => {
        match diesel::insert_into(users::table).values(new).returning(User::as_returning()).get_result(conn) {
            Ok(u) => Ok(Some(u)),
            Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
            Err(e) => Err(e),
        }
    })
}

/// A user for unit tests (no usable password); its id.
#[cfg(test)]
pub fn for_tests(conn: &mut Conn, username: &str) -> i64 {
    let new = NewUser { username, password_hash: "x", is_admin: false, created_at: 0, password_changed_at: 0 };
    create(conn, &new).unwrap().expect("a new username").id
}

pub fn set_password(conn: &mut Conn, id: i64, hash: &str, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(users::table.find(id))
            .set((users::password_hash.eq(hash), users::password_changed_at.eq(now)))
            .execute(conn)
    })
}

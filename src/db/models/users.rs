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
    /// Bumped by every password change: a device cookie issued under another epoch is void.
    pub password_epoch: i64,
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

diesel::define_sql_function! {
    /// SQL `lower()`: folds A-Z on both backends (usernames are ASCII).
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// The account named `name` in any case (`Alice`, `ALICE` and `alice` are one account: the
/// `users_username_nocase` index on `lower(username)` makes them unique, and this lookup uses it).
pub fn find_by_username(conn: &mut Conn, name: &str) -> QueryResult<Option<User>> {
    let key = name.to_ascii_lowercase();
    crate::on_conn!(conn, conn => {
        users::table.filter(lower(users::username).eq(&key)).select(User::as_select()).first(conn).optional()
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

/// Set a new password hash and bump the password epoch; the new epoch.
pub fn set_password(conn: &mut Conn, id: i64, hash: &str, now: i64) -> QueryResult<i64> {
    crate::on_conn!(conn, conn => {
        diesel::update(users::table.find(id))
            .set((
                users::password_hash.eq(hash),
                users::password_changed_at.eq(now),
                users::password_epoch.eq(users::password_epoch + 1),
            ))
            .returning(users::password_epoch)
            .get_result(conn)
    })
}

/// Accounts whose names differ only in case, as (id, username), grouped by lower-cased name and
/// by id within a group: what keeps the `users_username_nocase` migration from being applied.
/// Reads only `id` and `username`, so it also runs on a database that step has not reached.
pub fn case_collisions(conn: &mut Conn) -> QueryResult<Vec<(i64, String)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        username: String,
    }
    let query = "SELECT id, username FROM users WHERE lower(username) IN \
                 (SELECT lower(username) FROM users GROUP BY lower(username) HAVING COUNT(*) > 1) \
                 ORDER BY lower(username), id";
    let rows: Vec<Row> = crate::on_conn!(conn, conn => diesel::sql_query(query).load(conn))?;
    Ok(rows.into_iter().map(|r| (r.id, r.username)).collect())
}

/// What [`rename`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renamed {
    /// The account with this id is now named as asked.
    Done(i64),
    /// No account has that name (exactly, or in another case when only one does).
    NoSuchUser,
    /// Several accounts have that name in other cases: name one exactly.
    Ambiguous(Vec<String>),
    /// Another account has the new name, in some case.
    Taken,
}

/// Rename the account named `from` — exactly that name, or, when no account has it, the one
/// account whose name differs only in case — to `to`, unless another account has `to` in any
/// case. Reads only `id` and `username`, so it also runs on a database whose names still collide
/// (the `user rename` command's way out of the `users_username_nocase` migration).
pub fn rename(conn: &mut Conn, from: &str, to: &str) -> QueryResult<Renamed> {
    let (from_key, to_key) = (from.to_ascii_lowercase(), to.to_ascii_lowercase());
    conn.transaction(|conn| {
        let exact: Option<i64> = crate::on_conn!(conn, conn => {
            users::table.filter(users::username.eq(from)).select(users::id).first(conn).optional()
        })?;
        let id = match exact {
            Some(id) => id,
            None => {
                let found: Vec<(i64, String)> = crate::on_conn!(conn, conn => {
                    users::table
                        .filter(lower(users::username).eq(&from_key))
                        .select((users::id, users::username))
                        .order(users::id)
                        .load(conn)
                })?;
                match found.as_slice() {
                    [] => return Ok(Renamed::NoSuchUser),
                    [(id, _)] => *id,
                    several => return Ok(Renamed::Ambiguous(several.iter().map(|(_, n)| n.clone()).collect())),
                }
            }
        };
        let others: i64 = crate::on_conn!(conn, conn => {
            users::table
                .filter(lower(users::username).eq(&to_key))
                .filter(users::id.ne(id))
                .count()
                .get_result(conn)
        })?;
        if others > 0 {
            return Ok(Renamed::Taken);
        }
        crate::on_conn!(conn, conn => {
            diesel::update(users::table.find(id)).set(users::username.eq(to)).execute(conn)
        })?;
        Ok(Renamed::Done(id))
    })
}

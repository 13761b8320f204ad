//! `providers`: providers added, edited, disabled in the app (`/admin/providers`, `tokenvault
//! provider …`). The rows are plain data; `crate::oauth::managed` decides what they mean.

use diesel::prelude::*;

use crate::db::schema::providers;
use crate::db::Conn;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = providers)]
pub struct StoredProvider {
    pub name: String,
    /// A JSON object of provider table keys laid over the configured table (or the whole table of
    /// an added provider); `None`: not edited (a row that only disables a configured provider).
    pub settings: Option<String>,
    pub enabled: bool,
    pub version: i64,
    /// Random, new with every write (see the migration).
    pub revision: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

pub fn all(conn: &mut Conn) -> QueryResult<Vec<StoredProvider>> {
    crate::on_conn!(conn, conn => {
        providers::table.order(providers::name.asc()).select(StoredProvider::as_select()).load(conn)
    })
}

/// What identifies the stored state of every row (name, version, revision): instances rebuild
/// their catalog only when it changed.
pub fn versions(conn: &mut Conn) -> QueryResult<Vec<(String, i64, String)>> {
    crate::on_conn!(conn, conn => {
        providers::table
            .order(providers::name.asc())
            .select((providers::name, providers::version, providers::revision))
            .load(conn)
    })
}

pub fn find(conn: &mut Conn, name: &str) -> QueryResult<Option<StoredProvider>> {
    crate::on_conn!(conn, conn => {
        providers::table.find(name).select(StoredProvider::as_select()).first(conn).optional()
    })
}

/// Insert `row`; false when a row of that name exists already.
pub fn insert(conn: &mut Conn, row: &StoredProvider) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(providers::table).values(row).on_conflict_do_nothing().execute(conn).map(|n| n == 1)
    })
}

/// Replace the row named `row.name` if it is still at version `expected` (compare-and-swap: an
/// edit made from a stale page is refused); `row.version` must be `expected + 1`.
pub fn replace(conn: &mut Conn, expected: i64, row: &StoredProvider) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(providers::table.filter(providers::name.eq(&row.name)).filter(providers::version.eq(expected)))
            .set((
                providers::settings.eq(&row.settings),
                providers::enabled.eq(row.enabled),
                providers::version.eq(row.version),
                providers::revision.eq(&row.revision),
                providers::updated_at.eq(row.updated_at),
                providers::updated_by.eq(&row.updated_by),
            ))
            .execute(conn)
            .map(|n| n == 1)
    })
}

/// Delete the row named `name` if it is still at version `expected`.
pub fn delete(conn: &mut Conn, name: &str, expected: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::delete(providers::table.filter(providers::name.eq(name)).filter(providers::version.eq(expected)))
            .execute(conn)
            .map(|n| n == 1)
    })
}

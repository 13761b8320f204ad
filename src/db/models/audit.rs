//! `audit_log` and `audit_head`: the rows of the tamper-evident audit log. The chain itself (what
//! is hashed, appending, verifying, pruning) is `crate::audit`; this file is only the queries.

use diesel::prelude::*;

use crate::db::schema::{audit_head, audit_log};
use crate::db::Conn;

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    pub user_id: Option<i64>,
    pub actor: String,
    pub service: Option<String>,
    pub connection_id: Option<i64>,
    pub account: Option<String>,
    pub address: Option<String>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    /// An entry of the batcher: the time of the last event it stands for (`at` is the first's).
    /// `None` for an entry written when its event happened.
    pub at_last: Option<i64>,
}

/// The chain's head row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = audit_head)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    pub anchor_id: i64,
    pub anchor_hash: String,
    pub mac: Option<String>,
}

/// Reserve `n` positions: the first statement of every append, so that it takes the head row's
/// lock (PostgreSQL) or the database's write lock (SQLite) before anything is read. Returns the
/// head as it was before the reservation (its `seq` is the id before the first new entry).
pub fn reserve(conn: &mut Conn, n: i64) -> QueryResult<Head> {
    crate::on_conn!(conn, conn => {
        diesel::update(audit_head::table.find(1i64)).set(audit_head::seq.eq(audit_head::seq + n)).execute(conn)?;
        let mut head: Head = audit_head::table.find(1i64).select(Head::as_select()).first(conn)?;
        head.seq -= n;
        Ok(head)
    })
}

/// The head row as stored.
pub fn head(conn: &mut Conn) -> QueryResult<Head> {
    crate::on_conn!(conn, conn => audit_head::table.find(1i64).select(Head::as_select()).first(conn))
}

/// Write the head (inside the appending transaction, after [`reserve`]).
pub fn set_head(conn: &mut Conn, head: &Head) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(audit_head::table.find(1i64))
            .set((
                audit_head::seq.eq(head.seq),
                audit_head::hash.eq(&head.hash),
                audit_head::anchor_id.eq(head.anchor_id),
                audit_head::anchor_hash.eq(&head.anchor_hash),
                audit_head::mac.eq(&head.mac),
            ))
            .execute(conn)
    })
}

pub fn insert(conn: &mut Conn, rows: &[AuditRow]) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => diesel::insert_into(audit_log::table).values(rows).execute(conn))
}

/// Up to `limit` entries with an id above `after`, in id order (for verify).
pub fn after(conn: &mut Conn, after: i64, limit: i64) -> QueryResult<Vec<AuditRow>> {
    crate::on_conn!(conn, conn => {
        audit_log::table
            .filter(audit_log::id.gt(after))
            .order(audit_log::id.asc())
            .limit(limit)
            .select(AuditRow::as_select())
            .load(conn)
    })
}

pub fn find(conn: &mut Conn, id: i64) -> QueryResult<Option<AuditRow>> {
    crate::on_conn!(conn, conn => {
        audit_log::table.find(id).select(AuditRow::as_select()).first(conn).optional()
    })
}

/// The highest id stored (`None`: no entry).
pub fn max_id(conn: &mut Conn) -> QueryResult<Option<i64>> {
    crate::on_conn!(conn, conn => audit_log::table.select(diesel::dsl::max(audit_log::id)).first(conn))
}

/// Whether the database has users: every user's making is recorded (`user.added`), so a database
/// with users has had a log. A log is started only in a database without (see `crate::audit`).
/// (Vault values are not counted: they can be set through the library without a record, as test
/// harnesses do before a server starts.)
pub fn database_has_history(conn: &mut Conn) -> QueryResult<bool> {
    use crate::db::schema::users;
    crate::on_conn!(conn, conn => {
        let users: i64 = users::table.count().get_result(conn)?;
        Ok(users > 0)
    })
}

/// Delete every entry up to and including `through`.
pub fn delete_through(conn: &mut Conn, through: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => diesel::delete(audit_log::table.filter(audit_log::id.le(through))).execute(conn))
}

pub fn count(conn: &mut Conn) -> QueryResult<i64> {
    crate::on_conn!(conn, conn => audit_log::table.count().get_result(conn))
}

/// Delete every entry (`tokenvault audit restart`, after they were archived).
pub fn delete_all(conn: &mut Conn) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => diesel::delete(audit_log::table).execute(conn))
}

/// What a listing is narrowed to (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub user_id: Option<i64>,
    pub kind: Option<String>,
    pub service: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    /// Only entries with an id below this one (the next page).
    pub before_id: Option<i64>,
}

/// Newest first, at most `limit`.
pub fn list(conn: &mut Conn, f: &Filter, limit: i64) -> QueryResult<Vec<AuditRow>> {
    crate::on_conn!(conn, conn => {
        let mut q = audit_log::table.into_boxed();
        if let Some(u) = f.user_id {
            q = q.filter(audit_log::user_id.eq(u));
        }
        if let Some(k) = &f.kind {
            q = q.filter(audit_log::kind.eq(k.clone()));
        }
        if let Some(s) = &f.service {
            q = q.filter(audit_log::service.eq(s.clone()));
        }
        if let Some(from) = f.from {
            q = q.filter(audit_log::at.ge(from));
        }
        if let Some(to) = f.to {
            q = q.filter(audit_log::at.lt(to));
        }
        if let Some(b) = f.before_id {
            q = q.filter(audit_log::id.lt(b));
        }
        q.order(audit_log::id.desc()).limit(limit).select(AuditRow::as_select()).load(conn)
    })
}

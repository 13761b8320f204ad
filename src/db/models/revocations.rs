//! `token_revocations`: tokens tokenvault replaced or threw away, to revoke at the provider
//! (worked by `oauth::retire`). Small and self-contained on purpose: a general jobs table may take
//! it over later.

use diesel::prelude::*;

use crate::db::schema::token_revocations;
use crate::db::Conn;

/// A token pair to revoke, sealed (`Aad::RetiredToken`).
#[derive(Debug, Insertable)]
#[diesel(table_name = token_revocations)]
pub struct NewRevocation<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub account_id: &'a str,
    pub access_token: &'a [u8],
    pub refresh_token: Option<&'a [u8]>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = token_revocations)]
pub struct Revocation {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub account_id: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    /// Failed attempts so far.
    pub attempts: i64,
    /// When it is attempted (next); while an instance works it, when its claim runs out.
    pub next_attempt_at: i64,
    pub created_at: i64,
}

pub fn insert(conn: &mut Conn, new: &NewRevocation<'_>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(token_revocations::table).values(new).execute(conn)
    })
}

/// Revocations waiting and when the oldest was queued (the `token_revocations` job's queue
/// figures on `/metrics`).
pub fn pending_figures(conn: &mut Conn) -> QueryResult<(i64, Option<i64>)> {
    crate::on_conn!(conn, conn => {
        token_revocations::table
            .select((diesel::dsl::count_star(), diesel::dsl::min(token_revocations::created_at)))
            .first(conn)
    })
}

/// Up to `limit` revocations due at `now`, oldest first.
pub fn due(conn: &mut Conn, now: i64, limit: i64) -> QueryResult<Vec<Revocation>> {
    crate::on_conn!(conn, conn => {
        token_revocations::table
            .filter(token_revocations::next_attempt_at.le(now))
            .order(token_revocations::id.asc())
            .limit(limit)
            .select(Revocation::as_select())
            .load(conn)
    })
}

/// Claim `row` until `until` (compare-and-swap on the `next_attempt_at` it was read with): true
/// when this caller won it, so that two instances never work one row at once.
pub fn claim(conn: &mut Conn, row: &Revocation, until: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        let n = diesel::update(
            token_revocations::table
                .filter(token_revocations::id.eq(row.id))
                .filter(token_revocations::next_attempt_at.eq(row.next_attempt_at)),
        )
        .set(token_revocations::next_attempt_at.eq(until))
        .execute(conn)?;
        Ok(n == 1)
    })
}

/// Done (revoked, found dead, or given up).
pub fn delete(conn: &mut Conn, id: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(token_revocations::table.find(id)).execute(conn)
    })
}

/// A failed attempt: try again at `next_attempt_at`.
pub fn retry_at(conn: &mut Conn, id: i64, attempts: i64, next_attempt_at: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(token_revocations::table.find(id))
            .set((token_revocations::attempts.eq(attempts), token_revocations::next_attempt_at.eq(next_attempt_at)))
            .execute(conn)
    })
}

/// Every row, for key rotation (few: each is worked within hours).
pub fn all(conn: &mut Conn) -> QueryResult<Vec<Revocation>> {
    crate::on_conn!(conn, conn => {
        token_revocations::table.order(token_revocations::id.asc()).select(Revocation::as_select()).load(conn)
    })
}

/// Key rotation: the row's tokens sealed again.
pub fn set_tokens(conn: &mut Conn, id: i64, access: &[u8], refresh: Option<&[u8]>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(token_revocations::table.find(id))
            .set((token_revocations::access_token.eq(access), token_revocations::refresh_token.eq(refresh)))
            .execute(conn)
    })
}

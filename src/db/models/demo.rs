//! Tables of the built-in demo authorization server. Codes and tokens are stored as SHA-256 hashes.

use diesel::prelude::*;

use crate::db::schema::{demo_codes, demo_grants, demo_tokens};
use crate::db::Conn;

pub const KIND_ACCESS: &str = "access";
pub const KIND_REFRESH: &str = "refresh";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = demo_codes)]
pub struct DemoCode {
    pub code_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scopes: String,
    pub account: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = demo_grants)]
pub struct DemoGrant {
    pub id: i64,
    pub client_id: String,
    pub account: String,
    pub scopes: String,
    pub revoked: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = demo_tokens)]
pub struct DemoToken {
    pub token_hash: String,
    pub grant_id: i64,
    pub kind: String,
    pub used: bool,
    pub expires_at: Option<i64>,
}

pub fn insert_code(conn: &mut Conn, code: &DemoCode) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(demo_codes::table).values(code).execute(conn)
    })
}

/// Remove and return a code: codes are single-use.
pub fn take_code(conn: &mut Conn, code_hash: &str) -> QueryResult<Option<DemoCode>> {
    crate::on_conn!(conn, conn => {
        diesel::delete(demo_codes::table.find(code_hash)).returning(DemoCode::as_returning()).get_result(conn).optional()
    })
}

pub fn create_grant(conn: &mut Conn, client_id: &str, account: &str, scopes: &str, now: i64) -> QueryResult<DemoGrant> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(demo_grants::table)
            .values((
                demo_grants::client_id.eq(client_id),
                demo_grants::account.eq(account),
                demo_grants::scopes.eq(scopes),
                demo_grants::revoked.eq(false),
                demo_grants::created_at.eq(now),
            ))
            .returning(DemoGrant::as_returning())
            .get_result(conn)
    })
}

pub fn insert_token(conn: &mut Conn, token: &DemoToken) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(demo_tokens::table).values(token).execute(conn)
    })
}

/// A token and its grant.
pub fn find_token(conn: &mut Conn, token_hash: &str) -> QueryResult<Option<(DemoToken, DemoGrant)>> {
    crate::on_conn!(conn, conn => {
        demo_tokens::table
            .inner_join(demo_grants::table)
            .filter(demo_tokens::token_hash.eq(token_hash))
            .select((DemoToken::as_select(), DemoGrant::as_select()))
            .first(conn)
            .optional()
    })
}

/// Mark a refresh token used; false when it already was (a replay).
pub fn mark_used(conn: &mut Conn, token_hash: &str) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        let n = diesel::update(demo_tokens::table.find(token_hash).filter(demo_tokens::used.eq(false)))
            .set(demo_tokens::used.eq(true))
            .execute(conn)?;
        Ok(n == 1)
    })
}

pub fn revoke_grant(conn: &mut Conn, grant_id: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(demo_grants::table.find(grant_id)).set(demo_grants::revoked.eq(true)).execute(conn)
    })
}

pub fn delete_expired_codes(conn: &mut Conn, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(demo_codes::table.filter(demo_codes::expires_at.le(now))).execute(conn)
    })
}

pub fn recent_grants(conn: &mut Conn, limit: i64) -> QueryResult<Vec<DemoGrant>> {
    crate::on_conn!(conn, conn => {
        demo_grants::table.order(demo_grants::id.desc()).limit(limit).select(DemoGrant::as_select()).load(conn)
    })
}

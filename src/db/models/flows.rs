use diesel::prelude::*;

use crate::db::schema::oauth_flows;
use crate::db::Conn;

/// An authorization request in flight, keyed by the SHA-256 of its `state`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = oauth_flows)]
pub struct Flow {
    pub state_hash: String,
    pub session_hash: String,
    pub user_id: i64,
    pub service: String,
    /// The PKCE verifier, sealed by the vault cipher.
    pub pkce_verifier: Vec<u8>,
    pub redirect_uri: String,
    pub return_to: String,
    pub created_at: i64,
    pub expires_at: i64,
    /// Reconnecting (or upgrading) this connection of the user: pinned to its account.
    pub connection_id: Option<i64>,
    /// Adding another account (rather than reconnecting the one there is).
    pub add_account: bool,
    /// The scopes asked for, space-separated (`None`: the provider's configured ones).
    pub scopes: Option<String>,
    /// OpenID Connect: the SHA-256 of the `nonce` sent, which the id_token must carry back.
    pub nonce_hash: Option<String>,
}

pub fn insert(conn: &mut Conn, flow: &Flow) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(oauth_flows::table).values(flow).execute(conn)
    })
}

/// Remove and return the flow for `state_hash`: a state can be used once, whatever happens next.
pub fn take(conn: &mut Conn, state_hash: &str) -> QueryResult<Option<Flow>> {
    crate::on_conn!(conn, conn => {
        diesel::delete(oauth_flows::table.find(state_hash)).returning(Flow::as_returning()).get_result(conn).optional()
    })
}

/// Keep at most `keep` pending flows of the user: `newest` (just started) and the most recent of
/// the others; the oldest are deleted (their `state` no longer completes). How many were deleted.
pub fn delete_oldest_beyond(conn: &mut Conn, user_id: i64, newest: &str, keep: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        let dropped: Vec<String> = oauth_flows::table
            .filter(oauth_flows::user_id.eq(user_id))
            .filter(oauth_flows::state_hash.ne(newest))
            .order((oauth_flows::created_at.desc(), oauth_flows::expires_at.desc()))
            .offset(keep.max(1) - 1)
            .select(oauth_flows::state_hash)
            .load(conn)?;
        if dropped.is_empty() {
            return Ok(0);
        }
        diesel::delete(oauth_flows::table.filter(oauth_flows::state_hash.eq_any(&dropped))).execute(conn)
    })
}

pub fn delete_expired(conn: &mut Conn, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(oauth_flows::table.filter(oauth_flows::expires_at.le(now))).execute(conn)
    })
}

pub fn delete_for_session(conn: &mut Conn, session_hash: &str) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(oauth_flows::table.filter(oauth_flows::session_hash.eq(session_hash))).execute(conn)
    })
}

/// Every flow's sealed verifier, for key rotation (flows are few and short-lived).
pub fn sealed_all(conn: &mut Conn) -> QueryResult<Vec<(String, Vec<u8>)>> {
    crate::on_conn!(conn, conn => {
        oauth_flows::table.select((oauth_flows::state_hash, oauth_flows::pkce_verifier)).load(conn)
    })
}

pub fn set_verifier(conn: &mut Conn, state_hash: &str, sealed: &[u8]) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(oauth_flows::table.find(state_hash)).set(oauth_flows::pkce_verifier.eq(sealed)).execute(conn)
    })
}

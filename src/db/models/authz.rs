//! The tables of tokenvault's own authorization server (`crate::authz`): clients, grants,
//! authorization codes and tokens. Codes and tokens are stored as SHA-256 hashes only.

use diesel::prelude::*;

use crate::db::models::users::User;
use crate::db::schema::{authz_clients, authz_codes, authz_grants, authz_tokens, users};
use crate::db::Conn;

crate::db::text_enum::text_enum! {
    /// How a client came to be known (`authz_clients.kind`).
    pub enum ClientKind {
        /// Registered by an administrator on `/admin/oauth-clients`.
        Admin = "admin",
        /// RFC 7591 dynamic registration (deleted when unused past its `expires_at`).
        Dynamic = "dynamic",
        /// A Client ID Metadata Document: `client_id` is its URL, the row a cache of it.
        Metadata = "metadata",
    }
}

crate::db::text_enum::text_enum! {
    /// `authz_tokens.kind`.
    pub enum TokenKind {
        Access = "access",
        Refresh = "refresh",
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = authz_clients)]
pub struct Client {
    pub id: i64,
    pub client_id: String,
    pub kind: ClientKind,
    pub name: String,
    /// Space-separated (a redirect URI holds no space).
    pub redirect_uris: String,
    /// SHA-256 of the secret of a confidential client; `None`: a public client.
    pub secret_hash: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub registered_from: Option<String>,
}

impl Client {
    pub fn redirect_uris(&self) -> impl Iterator<Item = &str> {
        self.redirect_uris.split_whitespace()
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = authz_clients)]
pub struct NewClient<'a> {
    pub client_id: &'a str,
    pub kind: ClientKind,
    pub name: &'a str,
    pub redirect_uris: &'a str,
    pub secret_hash: Option<&'a str>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub registered_from: Option<&'a str>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = authz_grants)]
pub struct Grant {
    pub id: i64,
    pub user_id: i64,
    pub client_pk: i64,
    /// Space-separated service names; `None`: every service, also those connected later.
    pub services: Option<String>,
    /// Space-separated scope names (`connections:read proxy:read …`).
    pub capabilities: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = authz_grants)]
pub struct NewGrant<'a> {
    pub user_id: i64,
    pub client_pk: i64,
    pub services: Option<&'a str>,
    pub capabilities: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = authz_codes)]
pub struct Code {
    pub id: i64,
    pub code_hash: String,
    pub grant_id: i64,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub resource: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = authz_codes)]
pub struct NewCode<'a> {
    pub code_hash: &'a str,
    pub grant_id: i64,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub resource: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = authz_tokens)]
pub struct Token {
    pub id: i64,
    pub token_hash: String,
    pub kind: TokenKind,
    pub grant_id: i64,
    pub resource: String,
    pub parent_id: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub rotated_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = authz_tokens)]
pub struct NewToken<'a> {
    pub token_hash: &'a str,
    pub kind: TokenKind,
    pub grant_id: i64,
    pub resource: &'a str,
    pub parent_id: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
}

pub fn insert_client(conn: &mut Conn, new: &NewClient<'_>) -> QueryResult<Client> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(authz_clients::table).values(new).returning(Client::as_returning()).get_result(conn)
    })
}

pub fn find_client(conn: &mut Conn, client_id: &str) -> QueryResult<Option<Client>> {
    crate::on_conn!(conn, conn => {
        authz_clients::table
            .filter(authz_clients::client_id.eq(client_id))
            .select(Client::as_select())
            .first(conn)
            .optional()
    })
}

pub fn client_by_pk(conn: &mut Conn, id: i64) -> QueryResult<Option<Client>> {
    crate::on_conn!(conn, conn => {
        authz_clients::table.find(id).select(Client::as_select()).first(conn).optional()
    })
}

/// One page of the clients, newest first.
pub fn list_clients(conn: &mut Conn, offset: i64, limit: i64) -> QueryResult<Vec<Client>> {
    crate::on_conn!(conn, conn => {
        authz_clients::table
            .order(authz_clients::id.desc())
            .offset(offset)
            .limit(limit)
            .select(Client::as_select())
            .load(conn)
    })
}

/// Replace a cached metadata-document client's name, redirect URIs and cache expiry.
pub fn refresh_metadata_client(
    conn: &mut Conn,
    id: i64,
    name: &str,
    redirect_uris: &str,
    expires_at: i64,
) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(authz_clients::table.find(id))
            .set((
                authz_clients::name.eq(name),
                authz_clients::redirect_uris.eq(redirect_uris),
                authz_clients::expires_at.eq(Some(expires_at)),
            ))
            .execute(conn)
    })
}

/// A client was used (an authorization or a token request): it is no longer an unused registration.
pub fn touch_client(conn: &mut Conn, id: i64, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(authz_clients::table.find(id)).set(authz_clients::last_used_at.eq(Some(now))).execute(conn)
    })
}

/// Delete dynamic registrations never used and past their `expires_at`; how many.
pub fn delete_unused_registrations(conn: &mut Conn, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(
            authz_clients::table
                .filter(authz_clients::kind.eq(ClientKind::Dynamic))
                .filter(authz_clients::last_used_at.is_null())
                .filter(authz_clients::expires_at.lt(now)),
        )
        .execute(conn)
    })
}

/// Delete cached metadata-document clients whose copy went stale before `before` and that hold
/// no grant (any visitor can make the server fetch one: they must not pile up); how many.
pub fn delete_stale_documents(conn: &mut Conn, before: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        let granted = authz_grants::table.filter(authz_grants::client_pk.eq(authz_clients::id));
        diesel::delete(
            authz_clients::table
                .filter(authz_clients::kind.eq(ClientKind::Metadata))
                .filter(authz_clients::expires_at.lt(before))
                .filter(diesel::dsl::not(diesel::dsl::exists(granted))),
        )
        .execute(conn)
    })
}

/// Keep at most `keep` cached metadata-document clients that hold no grant: delete the least
/// recently used others (by last use, else by when first fetched); how many.
pub fn evict_unused_documents(conn: &mut Conn, keep: usize) -> QueryResult<usize> {
    let unused: Vec<(i64, Option<i64>, i64)> = crate::on_conn!(conn, conn => {
        let granted = authz_grants::table.filter(authz_grants::client_pk.eq(authz_clients::id));
        authz_clients::table
            .filter(authz_clients::kind.eq(ClientKind::Metadata))
            .filter(diesel::dsl::not(diesel::dsl::exists(granted)))
            .select((authz_clients::id, authz_clients::last_used_at, authz_clients::created_at))
            .load(conn)
    })?;
    if unused.len() <= keep {
        return Ok(0);
    }
    let mut by_use: Vec<(i64, i64)> =
        unused.into_iter().map(|(id, used, created)| (used.unwrap_or(created), id)).collect();
    by_use.sort_unstable_by(|a, b| b.cmp(a));
    let evicted: Vec<i64> = by_use[keep..].iter().map(|(_, id)| *id).collect();
    let mut n = 0;
    for ids in evicted.chunks(500) {
        n += crate::on_conn!(conn, conn => {
            diesel::delete(authz_clients::table.filter(authz_clients::id.eq_any(ids))).execute(conn)
        })?;
    }
    Ok(n)
}

/// Delete grants that ended (revoked or expired) before `before`, with their codes and tokens
/// (the audit log keeps their story); how many.
pub fn delete_ended_grants(conn: &mut Conn, before: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(
            authz_grants::table.filter(authz_grants::revoked_at.lt(before).or(authz_grants::expires_at.lt(before))),
        )
        .execute(conn)
    })
}

/// Delete a client (its grants, codes and tokens go with it); whether it existed.
pub fn delete_client(conn: &mut Conn, id: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::delete(authz_clients::table.find(id)).execute(conn).map(|n| n > 0)
    })
}

pub fn insert_grant(conn: &mut Conn, new: &NewGrant<'_>) -> QueryResult<Grant> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(authz_grants::table).values(new).returning(Grant::as_returning()).get_result(conn)
    })
}

pub fn find_grant(conn: &mut Conn, id: i64) -> QueryResult<Option<Grant>> {
    crate::on_conn!(conn, conn => {
        authz_grants::table.find(id).select(Grant::as_select()).first(conn).optional()
    })
}

/// The user's live grants (not revoked, not expired), newest first, with their clients.
pub fn live_grants_for_user(conn: &mut Conn, user_id: i64, now: i64) -> QueryResult<Vec<(Grant, Client)>> {
    crate::on_conn!(conn, conn => {
        authz_grants::table
            .inner_join(authz_clients::table)
            .filter(authz_grants::user_id.eq(user_id))
            .filter(authz_grants::revoked_at.is_null())
            .filter(authz_grants::expires_at.gt(now))
            .order(authz_grants::id.desc())
            .select((Grant::as_select(), Client::as_select()))
            .load(conn)
    })
}

/// The live grants of client `client_pk` (deleting the client revokes them).
pub fn live_grants_for_client(conn: &mut Conn, client_pk: i64, now: i64) -> QueryResult<Vec<Grant>> {
    crate::on_conn!(conn, conn => {
        authz_grants::table
            .filter(authz_grants::client_pk.eq(client_pk))
            .filter(authz_grants::revoked_at.is_null())
            .filter(authz_grants::expires_at.gt(now))
            .select(Grant::as_select())
            .load(conn)
    })
}

/// Every live grant, newest first, with its client and user (the administrators' page).
pub fn all_live_grants(conn: &mut Conn, now: i64, limit: i64) -> QueryResult<Vec<(Grant, Client, User)>> {
    crate::on_conn!(conn, conn => {
        authz_grants::table
            .inner_join(authz_clients::table)
            .inner_join(users::table)
            .filter(authz_grants::revoked_at.is_null())
            .filter(authz_grants::expires_at.gt(now))
            .order(authz_grants::id.desc())
            .limit(limit)
            .select((Grant::as_select(), Client::as_select(), User::as_select()))
            .load(conn)
    })
}

/// Revoke a live grant (of `user_id`, when given); whether it was live. Its tokens stop working
/// with it: every check reads the grant.
pub fn revoke_grant(conn: &mut Conn, id: i64, user_id: Option<i64>, now: i64) -> QueryResult<Option<Grant>> {
    crate::on_conn!(conn, conn => {
        let target = authz_grants::table.filter(authz_grants::id.eq(id)).filter(authz_grants::revoked_at.is_null());
        match user_id {
            Some(uid) => diesel::update(target.filter(authz_grants::user_id.eq(uid)))
                .set(authz_grants::revoked_at.eq(Some(now)))
                .returning(Grant::as_returning())
                .get_result(conn)
                .optional(),
            None => diesel::update(target)
                .set(authz_grants::revoked_at.eq(Some(now)))
                .returning(Grant::as_returning())
                .get_result(conn)
                .optional(),
        }
    })
}

/// The unrevoked grants limited to a list of services naming `service` (for deleting a
/// provider), by id, with their clients.
pub fn grants_naming_service(conn: &mut Conn, service: &str) -> QueryResult<Vec<(Grant, Client)>> {
    let grants: Vec<(Grant, Client)> = crate::on_conn!(conn, conn => {
        authz_grants::table
            .inner_join(authz_clients::table)
            .filter(authz_grants::revoked_at.is_null())
            .filter(authz_grants::services.like(format!("%{service}%")))
            .order(authz_grants::id)
            .select((Grant::as_select(), Client::as_select()))
            .load(conn)
    })?;
    let names = |g: &Grant| g.services.as_deref().is_some_and(|s| s.split_whitespace().any(|n| n == service));
    Ok(grants.into_iter().filter(|(g, _)| names(g)).collect())
}

/// Set an unrevoked grant's list of services (never empty: `None` would mean every service).
pub fn set_grant_services(conn: &mut Conn, id: i64, services: &str) -> QueryResult<usize> {
    debug_assert!(!services.trim().is_empty());
    crate::on_conn!(conn, conn => {
        diesel::update(authz_grants::table.filter(authz_grants::id.eq(id)).filter(authz_grants::revoked_at.is_null()))
            .set(authz_grants::services.eq(Some(services)))
            .execute(conn)
    })
}

/// Record a use of a grant and the client's address, at most once a minute.
pub fn touch_grant(conn: &mut Conn, id: i64, now: i64, ip: Option<&str>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            authz_grants::table
                .filter(authz_grants::id.eq(id))
                .filter(authz_grants::last_used_at.is_null().or(authz_grants::last_used_at.lt(now - 60))),
        )
        .set((authz_grants::last_used_at.eq(Some(now)), authz_grants::last_used_ip.eq(ip)))
        .execute(conn)
    })
}

pub fn insert_code(conn: &mut Conn, new: &NewCode<'_>) -> QueryResult<Code> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(authz_codes::table).values(new).returning(Code::as_returning()).get_result(conn)
    })
}

/// The code with this hash, used or not.
pub fn find_code(conn: &mut Conn, code_hash: &str) -> QueryResult<Option<Code>> {
    crate::on_conn!(conn, conn => {
        authz_codes::table.filter(authz_codes::code_hash.eq(code_hash)).select(Code::as_select()).first(conn).optional()
    })
}

/// Mark the code with this hash used, once: `Ok(Ok(code))` for its first use (it may have
/// expired: the caller checks), `Ok(Err(Some(code)))` when it was used before, `Ok(Err(None))`
/// when there is no such code.
pub fn use_code(conn: &mut Conn, code_hash: &str, now: i64) -> QueryResult<Result<Code, Option<Code>>> {
    let first: Option<Code> = crate::on_conn!(conn, conn => {
        diesel::update(
            authz_codes::table.filter(authz_codes::code_hash.eq(code_hash)).filter(authz_codes::used_at.is_null()),
        )
        .set(authz_codes::used_at.eq(Some(now)))
        .returning(Code::as_returning())
        .get_result(conn)
        .optional()
    })?;
    if let Some(code) = first {
        return Ok(Ok(code));
    }
    let again = crate::on_conn!(conn, conn => {
        authz_codes::table.filter(authz_codes::code_hash.eq(code_hash)).select(Code::as_select()).first(conn).optional()
    })?;
    Ok(Err(again))
}

pub fn insert_token(conn: &mut Conn, new: &NewToken<'_>) -> QueryResult<Token> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(authz_tokens::table).values(new).returning(Token::as_returning()).get_result(conn)
    })
}

/// The token with this hash, of `kind`, with its grant and the grant's user (whatever their state:
/// the caller checks expiry, revocation and rotation).
pub fn find_token(conn: &mut Conn, token_hash: &str, kind: TokenKind) -> QueryResult<Option<(Token, Grant, User)>> {
    crate::on_conn!(conn, conn => {
        authz_tokens::table
            .inner_join(authz_grants::table.inner_join(users::table))
            .filter(authz_tokens::token_hash.eq(token_hash))
            .filter(authz_tokens::kind.eq(kind))
            .select((Token::as_select(), Grant::as_select(), User::as_select()))
            .first(conn)
            .optional()
    })
}

/// Hold the token with this hash for the rest of the transaction, so that concurrent uses of it
/// run one after the other and each reads what the one before committed — the same answers on
/// both backends: PostgreSQL locks its row (`SELECT … FOR UPDATE`), SQLite takes its write lock
/// now (a deferred transaction that read first could not write later: `SQLITE_BUSY`). Call it
/// before reading anything in the transaction.
pub fn lock_token(conn: &mut Conn, token_hash: &str) -> QueryResult<()> {
    match conn {
        Conn::Sqlite(c) => sqlite_write_lock(c),
        Conn::Postgres(c) => {
            let c: &mut diesel::pg::PgConnection = c;
            authz_tokens::table
                .filter(authz_tokens::token_hash.eq(token_hash))
                .select(authz_tokens::id)
                .for_update()
                .load::<i64>(c)
                .map(drop)
        }
    }
}

/// [`lock_token`] for an authorization code: its exchange reads, checks, then marks it used.
pub fn lock_code(conn: &mut Conn, code_hash: &str) -> QueryResult<()> {
    match conn {
        Conn::Sqlite(c) => sqlite_write_lock(c),
        Conn::Postgres(c) => {
            let c: &mut diesel::pg::PgConnection = c;
            authz_codes::table
                .filter(authz_codes::code_hash.eq(code_hash))
                .select(authz_codes::id)
                .for_update()
                .load::<i64>(c)
                .map(drop)
        }
    }
}

/// Take SQLite's write lock now (waiting for it under the busy timeout), before anything is read.
fn sqlite_write_lock(c: &mut diesel::sqlite::SqliteConnection) -> QueryResult<()> {
    diesel::sql_query("UPDATE authz_tokens SET id = id WHERE 0").execute(c).map(drop)
}

/// Mark a refresh token rotated, once: whether this call did it.
pub fn rotate_token(conn: &mut Conn, id: i64, now: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(authz_tokens::table.filter(authz_tokens::id.eq(id)).filter(authz_tokens::rotated_at.is_null()))
            .set(authz_tokens::rotated_at.eq(Some(now)))
            .execute(conn)
            .map(|n| n == 1)
    })
}

/// Revoke the tokens issued from the refresh token `parent_id` (a retried refresh replaces them).
pub fn revoke_children(conn: &mut Conn, parent_id: i64, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            authz_tokens::table.filter(authz_tokens::parent_id.eq(parent_id)).filter(authz_tokens::revoked_at.is_null()),
        )
        .set(authz_tokens::revoked_at.eq(Some(now)))
        .execute(conn)
    })
}

/// Whether a refresh token issued for the refresh of `parent_id` was itself used (rotated).
pub fn child_refresh_used(conn: &mut Conn, parent_id: i64) -> QueryResult<bool> {
    let n: i64 = crate::on_conn!(conn, conn => {
        authz_tokens::table
            .filter(authz_tokens::parent_id.eq(parent_id))
            .filter(authz_tokens::kind.eq(TokenKind::Refresh))
            .filter(authz_tokens::rotated_at.is_not_null())
            .count()
            .get_result(conn)
    })?;
    Ok(n > 0)
}

/// Revoke one token (RFC 7009).
pub fn revoke_token(conn: &mut Conn, id: i64, now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(authz_tokens::table.filter(authz_tokens::id.eq(id)).filter(authz_tokens::revoked_at.is_null()))
            .set(authz_tokens::revoked_at.eq(Some(now)))
            .execute(conn)
    })
}

/// Delete tokens and codes expired before `before` (they can never be used again).
pub fn prune_expired(conn: &mut Conn, before: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        let tokens = diesel::delete(authz_tokens::table.filter(authz_tokens::expires_at.lt(before))).execute(conn)?;
        let codes = diesel::delete(authz_codes::table.filter(authz_codes::expires_at.lt(before))).execute(conn)?;
        Ok(tokens + codes)
    })
}

#[cfg(test)]
mod tests {
    use super::{ClientKind, TokenKind};

    #[test]
    fn kinds_round_trip() {
        crate::db::text_enum::assert_text_round_trips!(ClientKind);
        crate::db::text_enum::assert_text_round_trips!(TokenKind);
    }
}

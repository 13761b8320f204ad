//! Authorization codes and tokens. A code is one use, lives [`super::CODE_LIFETIME`] seconds,
//! and is bound to its redirect URI, PKCE S256 challenge and resource; a second presentation
//! revokes the grant (and so everything the first issued). Access tokens are opaque, stored as
//! SHA-256, bound to one resource. Refresh tokens are rotated on every use; one presented again
//! within [`super::REFRESH_GRACE`] seconds of its rotation is an honest retry (a new pair, the
//! pair of its first use revoked), later it is a replay and the whole grant is revoked — as it is
//! at once when the refresh token of that first use was already used, or when a refresh token a
//! retry revoked is presented (whoever holds it saw the answer the retrying client did not).
//!
//! The functions run inside a unit of work (`crate::changes`): what they record (a grant, tokens
//! issued, a grant revoked) commits with them, and a refusal that revokes a grant commits too
//! (they answer `Ok(Err(refusal))`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use super::grants::{subject, GrantScope};
use super::{ACCESS_PREFIX, CODE_LIFETIME, CODE_PREFIX, REFRESH_GRACE, REFRESH_PREFIX};
use crate::cache::{CachedToken, Caches};
use crate::changes::{Actor, Change, GrantEnd, Issued, Tx};
use crate::db::models::authz::{self as model, Client, Grant, NewCode, NewGrant, NewToken, TokenKind};
use crate::db::{Conn, Db};
use crate::error::AppResult;
use crate::util::{ct_eq, now, random_token, sha256_hex, Secret};

/// Tokens issued by the token endpoint.
pub struct IssuedTokens {
    pub access: Secret,
    pub refresh: Secret,
    pub expires_in: i64,
    pub scope: String,
}

/// Why the token endpoint refuses (RFC 6749 §5.2), with a description for the client (never a
/// secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    InvalidGrant(&'static str),
    InvalidRequest(&'static str),
    /// RFC 8707: the resource asked is not the one the grant was given for.
    InvalidTarget,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InvalidGrant(_) => "invalid_grant",
            Refusal::InvalidRequest(_) => "invalid_request",
            Refusal::InvalidTarget => "invalid_target",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            Refusal::InvalidGrant(d) | Refusal::InvalidRequest(d) => d,
            Refusal::InvalidTarget => "the resource is not the one this grant was given for",
        }
    }
}

/// What the user allowed on the consent page: the grant to create and the code's bindings.
pub struct Allowed<'a> {
    pub user_id: i64,
    pub client: &'a Client,
    pub scope: &'a GrantScope,
    pub lifetime: i64,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub resource: &'a str,
    pub address: Option<std::net::IpAddr>,
}

/// Create the grant the user allowed and its authorization code (returned: it goes into the
/// redirect, never anywhere else).
pub fn allow(tx: &mut Tx<'_>, a: Allowed<'_>) -> AppResult<Secret> {
    let at = now();
    let services = a.scope.services.as_ref().map(|s| s.join(" "));
    let grant = model::insert_grant(
        tx.conn(),
        &NewGrant {
            user_id: a.user_id,
            client_pk: a.client.id,
            services: services.as_deref(),
            capabilities: &a.scope.capability_names().join(" "),
            created_at: at,
            expires_at: at + a.lifetime,
        },
    )?;
    let code = format!("{CODE_PREFIX}{}", random_token(32));
    model::insert_code(
        tx.conn(),
        &NewCode {
            code_hash: &sha256_hex(&code),
            grant_id: grant.id,
            redirect_uri: a.redirect_uri,
            code_challenge: a.code_challenge,
            resource: a.resource,
            created_at: at,
            expires_at: at + CODE_LIFETIME,
        },
    )?;
    model::touch_client(tx.conn(), a.client.id, at)?;
    tx.record(Change::GrantCreated { grant: subject(&grant, a.client), address: a.address })?;
    Ok(crate::util::secret(code))
}

/// Whether `verifier` (RFC 7636: 43 to 128 unreserved characters) hashes to `challenge` (S256).
pub fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let valid_chars = verifier.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    (43..=128).contains(&verifier.len())
        && valid_chars
        && ct_eq(&URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())), challenge)
}

/// Whether a grant can still issue tokens.
fn live(grant: &Grant, at: i64) -> bool {
    grant.revoked_at.is_none() && grant.expires_at > at
}

/// Issue an access token for `resource` and a refresh token (issued from `parent`, a refresh token).
fn issue(
    conn: &mut Conn,
    grant: &Grant,
    resource: &str,
    parent: Option<i64>,
    access_lifetime: i64,
) -> AppResult<IssuedTokens> {
    let at = now();
    let access = format!("{ACCESS_PREFIX}{}", random_token(32));
    let refresh = format!("{REFRESH_PREFIX}{}", random_token(32));
    // An access token never outlives its grant; the refresh token lives as long as the grant.
    let access_expires = (at + access_lifetime).min(grant.expires_at);
    for (token, kind, expires_at) in
        [(&access, TokenKind::Access, access_expires), (&refresh, TokenKind::Refresh, grant.expires_at)]
    {
        model::insert_token(
            conn,
            &NewToken {
                token_hash: &sha256_hex(token),
                kind,
                grant_id: grant.id,
                resource,
                parent_id: parent,
                created_at: at,
                expires_at,
            },
        )?;
    }
    // Tokens issued: the client is used (a dynamic registration is no longer swept as unused).
    model::touch_client(conn, grant.client_pk, at)?;
    Ok(IssuedTokens {
        access: crate::util::secret(access),
        refresh: crate::util::secret(refresh),
        expires_in: access_expires - at,
        scope: GrantScope::of(grant).scope_text(),
    })
}

/// The grant of a client (`None`: not this client's, or gone).
fn client_grant(conn: &mut Conn, client: &Client, grant_id: i64) -> AppResult<Option<Grant>> {
    Ok(model::find_grant(conn, grant_id)?.filter(|g| g.client_pk == client.id))
}

/// A code presented again after it was exchanged: someone else may hold it. Revoke the grant,
/// and with it every token the first exchange issued (RFC 6749 §4.1.2, OAuth 2.1 §4.1.3).
fn end_reused_code(
    tx: &mut Tx<'_>,
    client: &Client,
    used: &model::Code,
    at: i64,
) -> AppResult<Result<IssuedTokens, Refusal>> {
    if let Some(grant) = client_grant(tx.conn(), client, used.grant_id)? {
        if let Some(grant) = model::revoke_grant(tx.conn(), grant.id, None, at)? {
            tx.record(Change::GrantRevoked {
                by: Actor::System,
                grant: subject(&grant, client),
                why: GrantEnd::CodeReused,
            })?;
        }
    }
    Ok(Err(Refusal::InvalidGrant("the authorization code was already used")))
}

/// The `authorization_code` grant: the code (one use), its redirect URI, the PKCE verifier and —
/// when given — the same resource. Everything is checked before the code is marked used, so a
/// wrong guess (another client, redirect URI or verifier) does not spend an honest client's code;
/// a code presented again after its exchange revokes the grant.
pub fn exchange_code(
    tx: &mut Tx<'_>,
    client: &Client,
    code: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
    resource: Option<&str>,
    access_lifetime: i64,
) -> AppResult<Result<IssuedTokens, Refusal>> {
    let at = now();
    let hash = sha256_hex(code);
    // Read, checked, then marked used: concurrent exchanges of one code run one after the other.
    model::lock_code(tx.conn(), &hash)?;
    let code = match model::find_code(tx.conn(), &hash)? {
        None => return Ok(Err(Refusal::InvalidGrant("unknown authorization code"))),
        Some(used) if used.used_at.is_some() => return end_reused_code(tx, client, &used, at),
        Some(code) => code,
    };
    let Some(grant) = client_grant(tx.conn(), client, code.grant_id)? else {
        return Ok(Err(Refusal::InvalidGrant("the authorization code was issued to another client")));
    };
    if code.expires_at <= at || !live(&grant, at) {
        return Ok(Err(Refusal::InvalidGrant("the authorization code has expired")));
    }
    if redirect_uri != Some(code.redirect_uri.as_str()) {
        return Ok(Err(Refusal::InvalidGrant("redirect_uri differs from the authorization request's")));
    }
    let Some(verifier) = verifier else {
        return Ok(Err(Refusal::InvalidRequest("code_verifier is required (PKCE)")));
    };
    if !pkce_ok(verifier, &code.code_challenge) {
        return Ok(Err(Refusal::InvalidGrant("code_verifier does not match the code_challenge")));
    }
    if resource.is_some_and(|r| r.trim_end_matches('/') != code.resource) {
        return Ok(Err(Refusal::InvalidTarget));
    }
    // Marked used once: a concurrent exchange of the same code that got here first wins, and
    // this one is a second use.
    if let Err(used) = model::use_code(tx.conn(), &hash, at)? {
        return match used {
            Some(used) => end_reused_code(tx, client, &used, at),
            None => Ok(Err(Refusal::InvalidGrant("unknown authorization code"))),
        };
    }
    let issued = issue(tx.conn(), &grant, &code.resource, None, access_lifetime)?;
    let how = Issued::Code;
    tx.record(Change::GrantTokensIssued { grant: subject(&grant, client), how, resource: code.resource })?;
    Ok(Ok(issued))
}

/// The `refresh_token` grant, with rotation and reuse detection (see the module comment).
pub fn refresh(
    tx: &mut Tx<'_>,
    client: &Client,
    refresh_token: &str,
    resource: Option<&str>,
    access_lifetime: i64,
) -> AppResult<Result<IssuedTokens, Refusal>> {
    let hash = sha256_hex(refresh_token);
    // Concurrent refreshes with one token run one after the other (see `model::lock_token`).
    model::lock_token(tx.conn(), &hash)?;
    let at = now();
    let Some((token, grant, _)) = model::find_token(tx.conn(), &hash, TokenKind::Refresh)? else {
        return Ok(Err(Refusal::InvalidGrant("unknown refresh token")));
    };
    if grant.client_pk != client.id {
        return Ok(Err(Refusal::InvalidGrant("the refresh token was issued to another client")));
    }
    if !live(&grant, at) || token.expires_at <= at {
        return Ok(Err(Refusal::InvalidGrant("the refresh token is no longer valid")));
    }
    if token.revoked_at.is_some() {
        // Revoked while its grant lives: it was issued for a refresh that an honest retry then
        // replaced. Whoever holds it saw an answer the retrying client never did: reuse.
        return end_replayed_grant(tx, &grant, client, at);
    }
    if resource.is_some_and(|r| r.trim_end_matches('/') != token.resource) {
        return Ok(Err(Refusal::InvalidTarget));
    }
    let first_use = model::rotate_token(tx.conn(), token.id, at)?;
    let how = if first_use {
        Issued::Refresh
    } else {
        let rotated_at = token.rotated_at.unwrap_or(at);
        // A rotated refresh token replayed past the grace, or after the refresh token its first
        // use issued was itself used (so the answer did arrive): it leaked, or the client is
        // broken. End the grant.
        if at - rotated_at > REFRESH_GRACE || model::child_refresh_used(tx.conn(), token.id)? {
            return end_replayed_grant(tx, &grant, client, at);
        }
        // An honest retry: what its first use issued is replaced.
        model::revoke_children(tx.conn(), token.id, at)?;
        Issued::RefreshRetry
    };
    let issued = issue(tx.conn(), &grant, &token.resource, Some(token.id), access_lifetime)?;
    tx.record(Change::GrantTokensIssued { grant: subject(&grant, client), how, resource: token.resource })?;
    Ok(Ok(issued))
}

/// A refresh token was reused: revoke its whole grant (every token of it, on every instance at the
/// next request), recorded as `GrantEnd::RefreshReplayed`.
fn end_replayed_grant(
    tx: &mut Tx<'_>,
    grant: &model::Grant,
    client: &Client,
    at: i64,
) -> AppResult<Result<IssuedTokens, Refusal>> {
    if let Some(grant) = model::revoke_grant(tx.conn(), grant.id, None, at)? {
        let grant = subject(&grant, client);
        tx.record(Change::GrantRevoked { by: Actor::System, grant, why: GrantEnd::RefreshReplayed })?;
    }
    Ok(Err(Refusal::InvalidGrant("the refresh token was already used; the grant is revoked")))
}

/// RFC 7009: revoke a token of `client` (another client's, or an unknown one, is ignored: the
/// answer is the same). A refresh token ends its whole grant; an access token only itself.
pub fn revoke(tx: &mut Tx<'_>, client: &Client, token: &str) -> AppResult<()> {
    let at = now();
    let hash = sha256_hex(token);
    for kind in [TokenKind::Refresh, TokenKind::Access] {
        let Some((row, grant, _)) = model::find_token(tx.conn(), &hash, kind)? else { continue };
        if grant.client_pk != client.id {
            return Ok(());
        }
        let revoked = model::revoke_token(tx.conn(), row.id, at)? > 0;
        if kind == TokenKind::Refresh {
            if let Some(grant) = model::revoke_grant(tx.conn(), grant.id, None, at)? {
                let grant = subject(&grant, client);
                tx.record(Change::GrantRevoked { by: Actor::System, grant, why: GrantEnd::ByClient })?;
            }
        } else if revoked && live(&grant, at) {
            // Cached copies of it, on every instance, go with the grant's others.
            tx.record(Change::GrantTokenRevoked { grant: subject(&grant, client) })?;
        }
        return Ok(());
    }
    Ok(())
}

/// The holder of a valid access token: its user and grant, the resource it is bound to, its expiry
/// and the limits its grant holds it to (as cached).
pub type TokenHolder = CachedToken;

/// Why an access token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRefused {
    /// Unknown, expired, revoked, or its grant ended.
    Invalid,
    /// Valid, but for another resource (`/mcp`'s at `/api/v1` or the reverse).
    OtherResource,
}

/// The valid access token with this hash, from the database (for any resource: the caller checks
/// it); a use of its grant is recorded, with the client's address, at most once a minute.
pub fn load_access(conn: &mut Conn, hash: &str, at: i64, ip: Option<&str>) -> AppResult<Option<TokenHolder>> {
    let Some((row, grant, user)) = model::find_token(conn, hash, TokenKind::Access)? else { return Ok(None) };
    if row.revoked_at.is_some() || row.expires_at <= at || !live(&grant, at) {
        return Ok(None);
    }
    let mut last_used = grant.last_used_at.unwrap_or(0);
    if last_used < at - 60 {
        model::touch_grant(conn, grant.id, at, ip)?;
        last_used = at;
    }
    Ok(Some(CachedToken {
        grant_id: grant.id,
        user_id: user.id,
        username: user.username,
        resource: row.resource,
        expires_at: row.expires_at,
        scope: Arc::new(GrantScope::of(&grant).key_scope(grant.expires_at)),
        last_used_at: Arc::new(AtomicI64::new(last_used)),
    }))
}

/// Check an access token for `resource` (its URL): from this process's cache when it may be
/// trusted (`Caches::access_token`: a grant's end on any instance drops its tokens; see
/// `crate::cache`), else from the database, as an API key is checked. A use of the grant is
/// recorded at most once a minute, off the request's path when the token was cached.
pub async fn check_access(
    db: &Db,
    caches: &Caches,
    token: &str,
    resource: &str,
    ip: Option<String>,
) -> AppResult<Result<TokenHolder, AccessRefused>> {
    if !token.starts_with(ACCESS_PREFIX) {
        return Ok(Err(AccessRefused::Invalid));
    }
    let (hash, at) = (sha256_hex(token), now());
    let found = match caches.access_token(&hash, at) {
        Some(cached) => {
            if cached.should_touch(at) {
                touch_later(db, cached.grant_id, ip);
            }
            Some(cached)
        }
        None => {
            let lookup = hash.clone();
            let load = || async move { db.run(move |conn| load_access(conn, &lookup, now(), ip.as_deref())).await };
            caches.access_tokens.load_missing(&hash, load).await?
        }
    };
    Ok(match found {
        Some(holder) if holder.expires_at > at && holder.resource == resource => Ok(holder),
        Some(holder) if holder.expires_at > at => Err(AccessRefused::OtherResource),
        _ => Err(AccessRefused::Invalid),
    })
}

/// Record a use of a grant through a cached token, off the request's path.
fn touch_later(db: &Db, grant_id: i64, ip: Option<String>) {
    let db = db.clone();
    rocket::tokio::spawn(async move {
        let touched = db.run(move |conn| Ok(model::touch_grant(conn, grant_id, now(), ip.as_deref())?)).await;
        if let Err(e) = touched {
            tracing::warn!(error = %e, "could not record a grant's use");
        }
    });
}

/// RFC 7662: what the introspection endpoint says of a token presented by `client` (only its
/// own tokens are described; any other is `active: false`).
pub fn introspect(conn: &mut Conn, client: &Client, token: &str, at: i64) -> AppResult<serde_json::Value> {
    let hash = sha256_hex(token);
    for kind in [TokenKind::Access, TokenKind::Refresh] {
        let Some((row, grant, user)) = model::find_token(conn, &hash, kind)? else { continue };
        let dead = row.revoked_at.is_some()
            || row.expires_at <= at
            || !live(&grant, at)
            || (kind == TokenKind::Refresh && row.rotated_at.is_some());
        if grant.client_pk != client.id || dead {
            break;
        }
        return Ok(serde_json::json!({
            "active": true,
            "scope": GrantScope::of(&grant).scope_text(),
            "client_id": client.client_id,
            "username": user.username,
            "token_type": if kind == TokenKind::Access { "Bearer" } else { "refresh_token" },
            "exp": row.expires_at,
            "iat": row.created_at,
            "sub": user.id.to_string(),
            "aud": row.resource,
        }));
    }
    Ok(serde_json::json!({ "active": false }))
}

/// Grants that ended are deleted this long after (the audit log keeps their story).
pub const ENDED_GRANTS_KEPT: i64 = 30 * 86_400;

/// The sweep (job `authz_sweep`): expired codes and tokens, unused dynamic registrations, grants
/// ended more than [`ENDED_GRANTS_KEPT`] ago, and stale metadata-document clients without a
/// grant; how many rows went.
pub fn sweep(conn: &mut Conn, at: i64) -> AppResult<usize> {
    let mut n = model::prune_expired(conn, at - REFRESH_GRACE)?;
    n += model::delete_unused_registrations(conn, at)?;
    n += model::delete_ended_grants(conn, at - ENDED_GRANTS_KEPT)?;
    n += model::delete_stale_documents(conn, at - super::metadata_doc::MAX_CACHE_SECS)?;
    n += model::evict_unused_documents(conn, super::metadata_doc::MAX_DOCUMENT_CLIENTS)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_only() {
        let verifier = "a".repeat(43);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert!(pkce_ok(&verifier, &challenge));
        assert!(!pkce_ok(&"b".repeat(43), &challenge));
        assert!(!pkce_ok("short", &challenge));
        assert!(!pkce_ok(&verifier, &verifier), "plain is not accepted");
    }
}

//! Storing what a refresh came to, each with its event: new tokens (sealed, compare-and-swap on
//! the version, the new row put in the cache, the connection active again), "reconnect required"
//! with its reason, "degraded" with its backoff, or an administrator's problem (the lease
//! released, the tokens kept).

use std::sync::Arc;

use super::classify::Dead;
use super::context::{AccessError, FreshToken, Refresher};
use super::read::{fresh_from, load};
use super::{health, lease};
use crate::changes::{Change, Committed, Subject};
use crate::db::models::connections::{self, Connection, ConnectionStatus, Refreshed, RowRef, Which};
use crate::db::models::invalidations::Invalidated;
use crate::db::Conn;
use crate::error::AppError;
use crate::oauth::providers::Provider;
use crate::oauth::tokens::{TokenError, TokenSet};
use crate::util::{now, ExposeSecret};
use crate::vault::{Aad, Cipher};

/// Seal and store the new tokens of `row` (whose lease we hold; `after_401`: the lease was taken
/// at this time to answer a 401) with their event, in one transaction; a new refresh token
/// replaces the old one in the same write, an answer without one keeps it. The new row goes into
/// the cache. If the row changed under the lease (deleted or reconnected), what is there is used.
pub async fn store_tokens(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: &Connection,
    after_401: Option<i64>,
    set: TokenSet,
) -> Result<FreshToken, AccessError> {
    let (user_id, service, id, version) = (row.user_id, row.service.clone(), row.id, row.version);
    let Sealed { access, refresh, refresh_expiry } = Sealed::of(ctx.tokens.cipher, row, &set);
    let scopes = set.scopes.join(" ");
    let (token_type, expires_at, obtained_at) = (set.token_type.clone(), set.expires_at, set.obtained_at);
    let rotated = set.refresh_token.is_some();
    // The row this write makes, for the cache (the tokens stay sealed there).
    let new_row = Connection {
        access_token: access.clone(),
        refresh_token: refresh.clone().or_else(|| row.refresh_token.clone()),
        token_type: token_type.clone(),
        scopes: scopes.clone(),
        expires_at,
        obtained_at,
        version: version + 1,
        updated_at: obtained_at,
        refresh_lease_until: None,
        refresh_after_401_at: after_401.or(row.refresh_after_401_at),
        status: ConnectionStatus::Active,
        status_reason: None,
        attempts: 0,
        next_attempt_at: None,
        refresh_token_expires_at: refresh_expiry.unwrap_or(row.refresh_token_expires_at),
        ..row.clone()
    };
    let ticket = ctx.tokens.caches.connections.ticket();
    let recovered = row.status == ConnectionStatus::Degraded;
    let subject = Subject::of(row);
    let committed = ctx
        .tokens
        .db
        .write(ctx.tokens.ledger(), move |tx| {
            let r = Refreshed {
                access_token: &access,
                refresh_token: refresh.as_deref(),
                token_type: &token_type,
                scopes: &scopes,
                expires_at,
                obtained_at,
                refresh_token_expires_at: refresh_expiry,
            };
            let at = RowRef { id, version, user_id, service: &service };
            let stored = connections::store_refreshed(tx.conn(), at, &r)?;
            if stored {
                tx.record(Change::ConnectionRefreshed { conn: subject, rotated, recovered })?;
            } else {
                tx.saw_stale(Invalidated::Connection { user_id, service });
            }
            Ok(stored)
        })
        .await?;
    if !*committed.value() {
        // The row changed under our lease (deleted or reconnected meanwhile): use what is there.
        committed.settle(ctx.tokens.effects());
        let row = load(ctx, Which::id(user_id, id), &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    committed.settle_refresh(ctx.tokens.effects(), ticket, Arc::new(new_row));
    Ok(FreshToken {
        access_token: set.access_token,
        token_type: set.token_type,
        expires_at,
        scopes: set.scopes,
        version: version + 1,
        connection_id: id,
    })
}

/// A refresh's tokens sealed for `row`, and the refresh token's expiry to store (`None`: keep the
/// stored one).
struct Sealed {
    access: Vec<u8>,
    refresh: Option<Vec<u8>>,
    refresh_expiry: Option<Option<i64>>,
}

impl Sealed {
    fn of(cipher: &Cipher, row: &Connection, set: &TokenSet) -> Sealed {
        let (user_id, service, account) = (row.user_id, row.service.as_str(), row.account_id.as_str());
        let access = cipher.seal_str(set.access_token.expose_secret(), Aad::AccessToken { user_id, service, account });
        let refresh = set
            .refresh_token
            .as_ref()
            .map(|r| cipher.seal_str(r.expose_secret(), Aad::RefreshToken { user_id, service, account }));
        // A new refresh token's expiry is what this answer says (or unknown); an old one keeps
        // its stored expiry unless the answer names one.
        let refresh_expiry =
            (set.refresh_token.is_some() || set.refresh_expires_at.is_some()).then_some(set.refresh_expires_at);
        Sealed { access, refresh, refresh_expiry }
    }
}

/// Mark `row` (whose lease we hold) "reconnect required", with its reason and event, if it is
/// still at its version; if someone changed it meanwhile (refreshed or reconnected), use their
/// token instead. The sealed tokens stay where they are.
pub async fn reconnect_required(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: &Connection,
    dead: Dead,
) -> Result<FreshToken, AccessError> {
    let (user_id, id) = (row.user_id, row.id);
    let change = Change::ReconnectRequired {
        conn: Subject::of(row),
        reason: dead.reason.to_string(),
        detail: dead.detail.to_string(),
    };
    let committed = mark_with_event(ctx, row, change, move |conn, at| {
        connections::mark_reconnect_required(conn, at, dead.reason, now())
    })
    .await?;
    if !committed.settle(ctx.tokens.effects()) {
        let row = load(ctx, Which::id(user_id, id), &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    tracing::warn!(service = %row.service, user_id, reason = dead.reason, "reconnect required");
    Err(AccessError::ReconnectRequired)
}

/// Write a mark of `row` with `mark` (a compare-and-swap on its version) and, if it was written,
/// record `change`, in one unit of work.
async fn mark_with_event<F>(
    ctx: &Refresher<'_>,
    row: &Connection,
    change: Change,
    mark: F,
) -> Result<Committed<bool>, AppError>
where
    F: FnOnce(&mut Conn, RowRef<'_>) -> diesel::QueryResult<bool> + Send + 'static,
{
    let (id, version, user_id, service) = (row.id, row.version, row.user_id, row.service.clone());
    ctx.tokens
        .db
        .write(ctx.tokens.ledger(), move |tx| {
            let marked = mark(tx.conn(), RowRef { id, version, user_id, service: &service })?;
            if marked {
                tx.record(change)?;
            } else {
                tx.saw_stale(Invalidated::Connection { user_id, service });
            }
            Ok(marked)
        })
        .await
}

/// tokenvault has no client credentials for the provider: release the lease, record why (an
/// administrator's problem), count it; nothing was sent to the provider.
pub async fn not_configured(ctx: &Refresher<'_>, provider: &Provider, row: &Connection) -> AccessError {
    let detail = "tokenvault has no client credentials for this service; an administrator must set them";
    if let Err(e) = admin_problem(ctx, row, detail).await {
        return e.into();
    }
    ctx.metrics.refresh(&provider.name, "not_configured");
    // Logged once, by the error's responder (`AppError::NotConfigured`).
    AccessError::NotConfigured
}

/// An administrator must act and the tokens are kept: release the lease of `row` and record a
/// `failed (admin)` event saying why.
async fn admin_problem(ctx: &Refresher<'_>, row: &Connection, detail: &'static str) -> Result<(), AppError> {
    let (user_id, service) = (row.user_id, row.service.clone());
    lease::release(ctx, row.id, row.version).await;
    let change = Change::RefreshNeedsAdmin { user_id, service, detail: detail.to_string() };
    ctx.tokens.record(change).await
}

/// A transient failure: mark `row` (whose lease we hold) degraded — its reason, one more
/// attempt, the next one after the backoff or the provider's `Retry-After` — with its
/// `failed (retryable)` event, in one transaction, if it is still at its version (the write
/// releases the lease). The tokens are kept.
pub async fn degraded(ctx: &Refresher<'_>, row: &Connection, e: TokenError) -> AccessError {
    let (id, version, user_id) = (row.id, row.version, row.user_id);
    let attempt = row.attempts + 1;
    let at = now();
    let next = health::next_attempt_at(at, attempt, &e, id);
    let reason = health::transient_reason(&e);
    let detail = format!("{e}; the tokens were kept and it will be retried (attempt {attempt}, in {} s)", next - at);
    // Entering `degraded` (not each retry while in it) raises `connection.refresh_failed`.
    let entering = row.status != ConnectionStatus::Degraded;
    let change = Change::ConnectionDegraded { conn: Subject::of(row), reason: reason.clone(), detail, entering };
    let committed = mark_with_event(ctx, row, change, move |conn, at_row| {
        connections::mark_degraded(conn, at_row, &reason, next, at)
    })
    .await;
    match committed {
        Ok(committed) => {
            committed.settle(ctx.tokens.effects());
        }
        Err(err) => {
            lease::release(ctx, id, version).await;
            return err.into();
        }
    }
    tracing::warn!(service = %row.service, user_id, attempt, retry_in = next - at, "connection degraded");
    AccessError::Provider(e)
}

/// The provider refused tokenvault's client credentials and the tokens are kept: release the
/// lease and record it (an administrator's problem).
pub async fn client_rejected(ctx: &Refresher<'_>, row: &Connection, e: TokenError) -> AccessError {
    let detail = "the provider rejected tokenvault's client credentials; an administrator must check them";
    if let Err(err) = admin_problem(ctx, row, detail).await {
        return err.into();
    }
    // Logged once, by the error's responder (`AppError::ClientRejected`).
    AccessError::ClientRejected(e)
}

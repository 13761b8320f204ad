//! Storing what a refresh came to, each with its event: new tokens (sealed, compare-and-swap on
//! the version, the new row put in the cache), "reconnect required", or a failure (the lease
//! released, the tokens kept).

use std::sync::Arc;

use super::{fresh_from, lease, load, AccessError, FreshToken, Refresher};
use crate::db::models::connections::{self, Connection, Refreshed, RowRef};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::oauth::providers::Provider;
use crate::oauth::store::record_event;
use crate::oauth::tokens::{TokenError, TokenSet};
use crate::util::{now, ExposeSecret};
use crate::vault::Aad;
use crate::webhooks::{self, outbox::EventData, EventType};

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
    let cipher = ctx.tokens.cipher;
    let access = cipher.seal_str(set.access_token.expose_secret(), Aad::AccessToken { user_id, service: &service });
    let refresh = set
        .refresh_token
        .as_ref()
        .map(|r| cipher.seal_str(r.expose_secret(), Aad::RefreshToken { user_id, service: &service }));
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
        ..row.clone()
    };
    let ticket = ctx.tokens.caches.connections.ticket();
    let keep = ctx.tokens.events_kept;
    let written = ctx
        .tokens
        .db
        .run(move |conn| {
            conn.transaction(|conn| {
                let r = Refreshed {
                    access_token: &access,
                    refresh_token: refresh.as_deref(),
                    token_type: &token_type,
                    scopes: &scopes,
                    expires_at,
                    obtained_at,
                };
                let at = RowRef { id, version, user_id, service: &service };
                let written = connections::store_refreshed(conn, at, &r)?;
                if *written.value() {
                    let detail = if rotated { "new refresh token stored" } else { "refresh token kept" };
                    record_event(conn, keep, user_id, &service, EventKind::Refresh, EventOutcome::Ok, detail)?;
                }
                Ok(written)
            })
        })
        .await?;
    if !*written.value() {
        // The row changed under our lease (deleted or reconnected meanwhile): use what is there.
        ctx.tokens.caches.after_write(written);
        let row = load(ctx, user_id, &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    ctx.tokens.caches.after_refresh(written, ticket, Arc::new(new_row));
    Ok(FreshToken {
        access_token: set.access_token,
        token_type: set.token_type,
        expires_at,
        scopes: set.scopes,
        version: version + 1,
    })
}

/// Mark `row` (whose lease we hold) "reconnect required", with its event, if it is still at its
/// version; if someone changed it meanwhile (refreshed or reconnected), use their token instead.
/// The sealed tokens stay where they are.
pub async fn reconnect_required(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: &Connection,
    detail: &'static str,
) -> Result<FreshToken, AccessError> {
    let (id, version, user_id, service) = (row.id, row.version, row.user_id, row.service.clone());
    let keep = ctx.tokens.events_kept;
    let snapshot = row.clone();
    let written = ctx
        .tokens
        .db
        .run(move |conn| {
            conn.transaction(|conn| {
                let at = RowRef { id, version, user_id, service: &service };
                let written = connections::mark_reconnect_required(conn, at, now())?;
                if *written.value() {
                    let (kind, outcome) = (EventKind::Refresh, EventOutcome::ReconnectRequired);
                    record_event(conn, keep, user_id, &service, kind, outcome, detail)?;
                    let status = connections::ConnectionStatus::ReconnectRequired.as_str();
                    let data = EventData::of(conn, &snapshot, status, Some(reason_code(detail)))?;
                    webhooks::outbox::record(conn, EventType::ConnectionReconnectRequired, &data)?;
                }
                Ok(written)
            })
        })
        .await?;
    if !ctx.tokens.caches.after_write(written) {
        let row = load(ctx, user_id, &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    tracing::warn!(service = %row.service, user_id, reason = detail, "reconnect required");
    Err(AccessError::ReconnectRequired)
}

/// The webhook's `reason` for a verdict's event detail.
fn reason_code(detail: &str) -> &'static str {
    if detail == super::classify::NO_REFRESH_TOKEN {
        "no_refresh_token"
    } else {
        "invalid_grant"
    }
}

/// tokenvault has no client credentials for the provider: release the lease, record why (an
/// administrator's problem), count it; nothing was sent to the provider.
pub async fn not_configured(ctx: &Refresher<'_>, provider: &Provider, row: &Connection) -> AccessError {
    let (user_id, service) = (row.user_id, row.service.clone());
    lease::release(ctx, row.id, row.version).await;
    let detail = "tokenvault has no client credentials for this service; an administrator must set them";
    let keep = ctx.tokens.events_kept;
    let recorded = ctx
        .tokens
        .db
        .run(move |conn| {
            record_event(conn, keep, user_id, &service, EventKind::Refresh, EventOutcome::FailedAdmin, detail)
        })
        .await;
    if let Err(e) = recorded {
        return e.into();
    }
    ctx.metrics.refresh(&provider.name, "not_configured");
    // Logged once, by the error's responder (`AppError::NotConfigured`).
    AccessError::NotConfigured
}

/// The refresh failed and the tokens are kept: release the lease and record the failure, an
/// administrator's problem (`client`: the client credentials were refused) or retryable.
pub async fn failed(ctx: &Refresher<'_>, row: &Connection, e: TokenError, client: bool) -> AccessError {
    let (user_id, service) = (row.user_id, row.service.clone());
    lease::release(ctx, row.id, row.version).await;
    let detail = if client {
        "the provider rejected tokenvault's client credentials; an administrator must check them".to_string()
    } else {
        format!("{e}; the tokens were kept and it will be retried")
    };
    let outcome = if client { EventOutcome::FailedAdmin } else { EventOutcome::FailedRetryable };
    let keep = ctx.tokens.events_kept;
    let recorded = ctx
        .tokens
        .db
        .run(move |conn| record_event(conn, keep, user_id, &service, EventKind::Refresh, outcome, &detail))
        .await;
    if let Err(e) = recorded {
        return e.into();
    }
    if client {
        // Logged once, by the error's responder (`AppError::ClientRejected`).
        AccessError::ClientRejected(e)
    } else {
        AccessError::Provider(e)
    }
}

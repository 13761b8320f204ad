//! Reading a connection for a refresh: from the cache or the database, usable or not, and its
//! stored token as a [`FreshToken`] (or how long a degraded one must wait). Every step of a
//! refresh reads through here; nothing here writes.

use std::sync::Arc;

use crate::cache::ConnectionSet;
use crate::db::models::connections::{self, Connection, ConnectionStatus, Which};
use crate::error::AppError;
use crate::oauth::store::Tokens;
use crate::vault::Aad;

use super::context::{AccessError, FreshToken, Refresher};
use super::health;

pub(super) fn fresh_from(ctx: &Refresher<'_>, c: &Connection) -> Result<FreshToken, AccessError> {
    // Only the access token is opened on this path.
    let access = ctx
        .tokens
        .cipher
        .open(&c.access_token, Aad::AccessToken { user_id: c.user_id, service: &c.service, account: &c.account_id })
        .map_err(AppError::from)?;
    Ok(FreshToken {
        access_token: access,
        token_type: c.token_type.clone(),
        expires_at: c.expires_at,
        scopes: crate::util::scope_list(&c.scopes),
        version: c.version,
        connection_id: c.id,
    })
}

/// A degraded connection whose next attempt is not due: its stored token while that is valid
/// (degraded is not unusable), else how long to wait — without a provider call. `None`: a
/// refresh may be tried.
pub(super) fn backing_off(ctx: &Refresher<'_>, row: &Connection) -> Option<Result<FreshToken, AccessError>> {
    let now = crate::util::now();
    let retry_after = health::wait(row, now)?;
    if row.expires_at.is_none_or(|e| e > now) {
        return Some(fresh_from(ctx, row));
    }
    Some(Err(AccessError::BackingOff { retry_after }))
}

fn usable(row: Arc<Connection>) -> Result<Arc<Connection>, AccessError> {
    if row.status == ConnectionStatus::ReconnectRequired {
        return Err(AccessError::ReconnectRequired);
    }
    Ok(row)
}

/// The user's connections to `service` as the database has them, first connected first.
async fn read_set(ctx: &Refresher<'_>, user_id: i64, service: &str) -> Result<ConnectionSet, AccessError> {
    let svc = service.to_string();
    let rows = ctx.tokens.db.run(move |conn| Ok(connections::list_for(conn, user_id, &svc)?)).await?;
    Ok(Arc::new(rows.into_iter().map(Arc::new).collect()))
}

/// The connection row as the database has it now (its set cached for the next request).
pub(super) async fn load(ctx: &Refresher<'_>, which: Which, service: &str) -> Result<Arc<Connection>, AccessError> {
    let cache = &ctx.tokens.caches.connections;
    let ticket = cache.ticket();
    let set = read_set(ctx, which.user_id, service).await?;
    let row = which.pick(&set).cloned();
    if !set.is_empty() {
        cache.fill(ticket, (which.user_id, service.to_string()), set);
    }
    usable(row.ok_or(AccessError::NotConnected)?)
}

/// The connection row from the cache (see `crate::cache`), else from the database (one read for
/// all concurrent misses). Good enough to decide whether a refresh is needed; the refresh itself
/// always re-reads the database.
pub(super) async fn current(ctx: &Refresher<'_>, which: Which, service: &str) -> Result<Arc<Connection>, AccessError> {
    let set = connection_set(ctx.tokens, which.user_id, service).await?;
    usable(which.pick(&set).cloned().ok_or(AccessError::NotConnected)?)
}

/// The user's connections to `service` (first connected first; empty when none), from the cache
/// (see `crate::cache`), else from the database (one read for all concurrent misses): how the
/// API picks the account a request names before asking for its token.
pub async fn connection_set(tokens: Tokens<'_>, user_id: i64, service: &str) -> Result<ConnectionSet, AccessError> {
    let key = (user_id, service.to_string());
    let set = tokens
        .caches
        .connections
        .get_or_load(&key, || async {
            let svc = service.to_string();
            let rows = tokens.db.run(move |conn| Ok(connections::list_for(conn, user_id, &svc)?)).await?;
            let set: ConnectionSet = Arc::new(rows.into_iter().map(Arc::new).collect());
            Ok::<_, AccessError>((!set.is_empty()).then_some(set))
        })
        .await?;
    Ok(set.unwrap_or_default())
}

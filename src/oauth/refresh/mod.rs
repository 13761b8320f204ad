//! The refresh core: how a connection's tokens are renewed, in pieces that are tested on their
//! own (`tests.rs`: a SQLite file, a real cipher and a scripted provider; no HTTP, no Rocket).
//!
//! - [`single_flight`]: an in-process lock per connection; a caller that finds a refresh in
//!   flight waits for the version it writes and takes the new row from the cache.
//! - [`lease`]: a short lease in the database taken with a version compare-and-swap, so that no
//!   other instance refreshes at the same time; those wait for the holder's result and re-read.
//!   A lease left by a dead process blocks until it expires (`http_timeout` + 2 s).
//! - [`endpoint`]: "the provider" ([`TokenEndpoint`]): its token endpoint's refresh call, over
//!   HTTP in the server ([`HttpEndpoint`]).
//! - [`classify`]: the provider's answer as a [`Verdict`]: refreshed, reconnect required,
//!   an administrator's problem, or transient.
//! - [`outcome`]: storing the verdict with its event: sealed new tokens (rotation: a new refresh
//!   token replaces the old one in the same write; an answer without one keeps it; the
//!   connection active again), the mark "reconnect required" with its reason, the mark
//!   "degraded" with its backoff ([`health`]), or an administrator's problem (lease released,
//!   tokens kept).
//! - [`health`]: reason codes and the capped exponential backoff of a degraded connection; a
//!   degraded connection whose next attempt is not due is answered without a provider call.
//!
//! `oauth::access` (`fresh_token`, `refresh_after_401`) decides *whether* to refresh and calls
//! [`refresh_if`] with the real endpoint.

pub mod classify;
pub mod due;
pub mod endpoint;
pub mod health;
pub mod lease;
pub mod outcome;
pub mod single_flight;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::cache::ConnectionSet;
use crate::config::Settings;
use crate::db::models::connections::{self, Connection, ConnectionStatus, Which};
use crate::error::AppError;
use crate::oauth::metrics::OauthMetrics;
use crate::oauth::providers::Provider;
use crate::oauth::store::{open_tokens, Tokens};
use crate::oauth::tokens::TokenError;
use crate::util::Secret;
use crate::vault::store::ClientCredentials;
use crate::vault::Aad;

pub use classify::{classify, Verdict};
pub use endpoint::{HttpEndpoint, TokenEndpoint};
pub use lease::Acquired;
pub use single_flight::{ConnectionLock, RefreshLocks};

/// What a refresh needs: the token store, the provider's token endpoint, the metrics, this
/// process's refresh locks and the settings that time it (`http_timeout` for the lease).
#[derive(Clone, Copy)]
pub struct Refresher<'a> {
    pub tokens: Tokens<'a>,
    pub endpoint: &'a dyn TokenEndpoint,
    pub metrics: &'a OauthMetrics,
    pub locks: &'a RefreshLocks,
    pub settings: &'a Settings,
}

/// Why no usable token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("not connected")]
    NotConnected,
    #[error("the connection needs to be authorized again")]
    ReconnectRequired,
    /// The provider refused tokenvault's client credentials: an administrator's problem.
    #[error("client credentials rejected: {0}")]
    ClientRejected(TokenError),
    /// tokenvault has no client credentials for the provider (the vault entry is gone): an
    /// administrator's problem; the tokens are kept and nothing is sent to the provider.
    #[error("no client credentials")]
    NotConfigured,
    /// A transient provider failure (5xx, timeout, network, garbage); the tokens are kept.
    #[error("provider failure: {0}")]
    Provider(TokenError),
    /// The connection is degraded, its access token has expired and its next attempt is this
    /// many seconds away: nothing is sent to the provider.
    #[error("degraded, next attempt in {retry_after} s")]
    BackingOff { retry_after: u64 },
    #[error(transparent)]
    App(#[from] AppError),
}

impl AccessError {
    /// The one error (page or JSON) for each case, where the caller does not handle it itself.
    pub fn into_app_error(self, provider: &Provider) -> AppError {
        match self {
            AccessError::NotConnected => AppError::NotConnected(provider.service()),
            AccessError::ReconnectRequired => AppError::ReconnectRequired(provider.service()),
            AccessError::NotConfigured => {
                AppError::NotConfigured { service: provider.service(), client_id_path: provider.client_id_path() }
            }
            AccessError::ClientRejected(e) | AccessError::Provider(e) => e.to_app_error(provider),
            AccessError::BackingOff { retry_after } => {
                AppError::ProviderUnavailable { service: provider.service(), retry_after }
            }
            AccessError::App(e) => e,
        }
    }
}

/// A usable access token and what it belongs to.
#[derive(Debug)]
pub struct FreshToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub scopes: Vec<String>,
    /// The connection's version this token came from (for `access::refresh_after_401`).
    pub version: i64,
    /// The connection it came from.
    pub connection_id: i64,
}

fn fresh_from(ctx: &Refresher<'_>, c: &Connection) -> Result<FreshToken, AccessError> {
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
fn backing_off(ctx: &Refresher<'_>, row: &Connection) -> Option<Result<FreshToken, AccessError>> {
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
async fn load(ctx: &Refresher<'_>, which: Which, service: &str) -> Result<Arc<Connection>, AccessError> {
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
async fn current(ctx: &Refresher<'_>, which: Which, service: &str) -> Result<Arc<Connection>, AccessError> {
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

/// A usable token for (user, service): the stored one, or — if `needs` says so of its row — one
/// refreshed now, by this caller or by whoever refreshed first (single-flight in this process,
/// the lease across instances). With `cooldown` (a refresh after a 401), the lease is taken only
/// if no other refresh after a 401 was attempted within that many seconds, and records this one.
pub async fn refresh_if<F>(
    ctx: &Refresher<'_>,
    which: Which,
    provider: &Provider,
    cooldown: Option<i64>,
    needs: F,
) -> Result<FreshToken, AccessError>
where
    F: Fn(&Connection) -> bool,
{
    let row = current(ctx, which, &provider.name).await?;
    // The same row from here on, whatever is connected meanwhile.
    let which = Which::id(which.user_id, row.id);
    if !needs(&row) {
        return fresh_from(ctx, &row);
    }
    if let Some(answer) = backing_off(ctx, &row) {
        return answer;
    }
    let lock = ctx.locks.get(row.id);
    let _guard = match lock.enter(row.version).await {
        single_flight::Entry::Leader(guard) => guard,
        single_flight::Entry::Written => {
            let row = current(ctx, which, &provider.name).await?;
            return backing_off(ctx, &row).unwrap_or_else(|| fresh_from(ctx, &row));
        }
    };
    let (row, creds, after_401) = match lease::acquire(ctx, provider, row, cooldown, needs).await? {
        Acquired::Lease { row, creds, after_401 } => (row, creds, after_401),
        Acquired::Theirs(token) => return Ok(token),
    };
    let result = refresh_now(ctx, provider, &row, after_401, creds).await;
    // Whatever happened, the row moved past its version if we wrote it (refreshed, marked
    // reconnect-required or degraded); waiters re-read it.
    if matches!(result, Ok(_) | Err(AccessError::ReconnectRequired | AccessError::Provider(_))) {
        lock.written(row.version + 1);
    }
    result
}

/// Refresh `row` (whose lease we took; `after_401`: at this time, to answer a 401) with the
/// client's credentials (`None`: not configured) and store the outcome.
async fn refresh_now(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: &Connection,
    after_401: Option<i64>,
    creds: Option<ClientCredentials>,
) -> Result<FreshToken, AccessError> {
    let (_, refresh_token) = open_tokens(ctx.tokens.cipher, row)?;
    let Some(refresh_token) = refresh_token else {
        return outcome::reconnect_required(ctx, provider, row, classify::NO_REFRESH_TOKEN).await;
    };
    if row.refresh_token_expires_at.is_some_and(|t| t <= crate::util::now()) {
        return outcome::reconnect_required(ctx, provider, row, classify::REFRESH_TOKEN_EXPIRED).await;
    }
    let Some(creds) = creds else {
        return Err(outcome::not_configured(ctx, provider, row).await);
    };
    let current_scopes: Vec<String> = crate::util::scope_list(&row.scopes);
    let started = std::time::Instant::now();
    let answer = ctx.endpoint.refresh(provider, &creds, &refresh_token, &current_scopes).await;
    let (service, user_id) = (&row.service, row.user_id);
    tracing::info!(service = %service, user_id, ok = answer.is_ok(), millis = started.elapsed().as_millis() as u64, "token refresh");
    ctx.metrics.token_endpoint(&provider.name, "refresh_token", started);
    let verdict = classify(answer);
    ctx.metrics.refresh(&provider.name, verdict.metric());
    match verdict {
        Verdict::Refreshed(set) => outcome::store_tokens(ctx, provider, row, after_401, set).await,
        Verdict::ReconnectRequired(dead) => outcome::reconnect_required(ctx, provider, row, dead).await,
        Verdict::AdminProblem(e) => Err(outcome::client_rejected(ctx, row, e).await),
        Verdict::Transient(e) => Err(outcome::degraded(ctx, row, e).await),
    }
}

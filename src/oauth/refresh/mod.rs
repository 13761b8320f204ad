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
//! - [`context`]: what every step shares ([`Refresher`], [`FreshToken`], [`AccessError`]), and
//!   `read`: every read of a connection for a refresh (cache or database, its stored token).
//!
//! One refresh reads top to bottom in [`refresh_if`]: load (`read`) → decide (`needs`, the
//! backoff) → take the lock and the lease ([`single_flight`], [`lease`]) → call the provider
//! ([`endpoint`], [`classify`]) → apply the outcome, one unit of work ([`outcome`]) → release.
//! The steps are siblings: none calls back into this module.
//!
//! `oauth::access` (`fresh_token`, `refresh_after_401`) decides *whether* to refresh and calls
//! [`refresh_if`] with the real endpoint.

pub mod classify;
pub mod context;
pub mod due;
pub mod endpoint;
pub mod health;
pub mod lease;
pub mod outcome;
mod read;
pub mod single_flight;
#[cfg(test)]
mod tests;

use crate::db::models::connections::{Connection, Which};
use crate::oauth::providers::Provider;
use crate::oauth::store::open_tokens;
use crate::vault::store::ClientCredentials;

pub use classify::{classify, Verdict};
pub use context::{AccessError, FreshToken, Refresher};
pub use endpoint::{HttpEndpoint, TokenEndpoint};
pub use lease::Acquired;
pub use read::connection_set;
use read::{backing_off, current, fresh_from};
pub use single_flight::{ConnectionLock, RefreshLocks};

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

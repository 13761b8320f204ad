//! The refresh lease in the database (`connections.refresh_lease_until`), taken by a version
//! compare-and-swap so that no other instance refreshes the same connection at the same time.

use std::sync::Arc;
use std::time::Duration;

use super::context::{AccessError, FreshToken, Refresher};
use super::due::cooldown_bound;
use super::read::{backing_off, fresh_from, load};
use crate::db::models::connections::{self, Connection, Which};
use crate::oauth::providers::Provider;
use crate::oauth::tokens::TokenError;
use crate::util::now;
use crate::vault::store::{client_credentials, ClientCredentials};

/// What trying for the lease came to.
pub enum Acquired {
    /// We hold the lease on `row` (`after_401`: taken at this time, to answer a 401) and have the
    /// client's credentials (`None`: not configured).
    Lease { row: Arc<Connection>, creds: Option<ClientCredentials>, after_401: Option<i64> },
    /// Someone else refreshed or reconnected, or a refresh after a 401 was attempted within the
    /// cooldown: their token.
    Theirs(FreshToken),
}

/// Take the lease of `row` (read at `seen_version`, from the cache perhaps), waiting while another
/// holder has it. With `cooldown` (a refresh after a 401), it is taken only if no other refresh
/// after a 401 was attempted within that many seconds, and records this one. Gives up with a
/// timeout when the holder neither finishes nor lets its lease expire in time.
pub async fn acquire<F>(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: Arc<Connection>,
    cooldown: Option<i64>,
    needs: F,
) -> Result<Acquired, AccessError>
where
    F: Fn(&Connection) -> bool,
{
    let seen_version = row.version;
    let wait_limit = now() + ctx.settings.http.timeout as i64 + 5;
    // The compare-and-swap that takes the lease is the authoritative check: it succeeds only if
    // nobody changed the row since `row` was read (from the cache, perhaps), so the first attempt
    // needs no re-read. The client credentials come in the same round trip.
    let mut row = row;
    loop {
        let attempt = now();
        let after_401_by = cooldown.map(|c| cooldown_bound(c, attempt));
        if let Some(creds) = take(ctx, provider, &row, attempt, after_401_by).await? {
            return Ok(Acquired::Lease { row, creds, after_401: after_401_by.map(|_| attempt) });
        }
        // Lost: the row changed (someone refreshed or reconnected: use their token), another
        // instance holds the lease (wait for its result), or — after a 401 — a refresh was
        // attempted within the cooldown (the re-read row says so: `needs` is false).
        row = load(ctx, Which::id(row.user_id, row.id), &provider.name).await?;
        // Degraded meanwhile (here or in another instance), or backing off: not before its next
        // attempt.
        if let Some(answer) = backing_off(ctx, &row) {
            return answer.map(Acquired::Theirs);
        }
        let leased = row.refresh_lease_until.is_some_and(|until| until >= now());
        if row.version != seen_version || (!leased && !needs(&row)) {
            return Ok(Acquired::Theirs(fresh_from(ctx, &row)?));
        }
        if now() > wait_limit {
            return Err(AccessError::Provider(TokenError::Timeout));
        }
        rocket::tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One compare-and-swap for the lease, at `attempt`; with it, the client credentials (inner
/// `None`: not configured). `None` when lost. If reading the credentials fails, the lease is
/// released in the same round trip.
async fn take(
    ctx: &Refresher<'_>,
    provider: &Provider,
    row: &Connection,
    attempt: i64,
    after_401_by: Option<i64>,
) -> Result<Option<Option<ClientCredentials>>, AccessError> {
    let lease_until = attempt + ctx.settings.http.timeout as i64 + 2;
    let (id, version) = (row.id, row.version);
    let (cipher, name) = (ctx.tokens.cipher.clone(), provider.name.clone());
    let lease = ctx
        .tokens
        .db
        .run(move |conn| {
            if !connections::take_refresh_lease(conn, id, version, attempt, lease_until, after_401_by)? {
                return Ok(None);
            }
            match client_credentials(conn, &cipher, &name) {
                Ok(creds) => Ok(Some(creds)),
                Err(e) => {
                    connections::release_refresh_lease(conn, id, version)?;
                    Err(e)
                }
            }
        })
        .await?;
    Ok(lease)
}

/// Give the lease of connection `id` at `version` back (it expires by itself if this fails).
pub async fn release(ctx: &Refresher<'_>, id: i64, version: i64) {
    if let Err(e) = ctx.tokens.db.run(move |conn| Ok(connections::release_refresh_lease(conn, id, version)?)).await {
        tracing::error!(error = %e, "could not release a refresh lease (it expires by itself)");
    }
}

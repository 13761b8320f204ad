//! Getting a usable access token: the one refresh mechanism every caller uses.
//!
//! - Proactive: a token that expires within its margin is refreshed before use; the margin is
//!   `refresh_margin`, but at most half of the token's lifetime (`expires_at - obtained_at`, both
//!   stored), so a token just issued is used, not refreshed, however short-lived ([`refresh_due`]).
//! - Reactive: after a 401, [`refresh_after_401`] refreshes once — unless another request already
//!   replaced the token the 401 was for, in which case that newer token is used, or a refresh
//!   after a 401 was attempted less than `refresh_cooldown` seconds ago, in which case the 401
//!   stands: a provider that answers 401 for a missing scope costs one refresh per cooldown, not
//!   one per request. The cooldown is the stored row's `refresh_after_401_at` (set with the lease
//!   of such a refresh, by any instance) and is part of the lease's compare-and-swap, so it holds
//!   across instances and against stale cached rows.
//! - Single-flight: an in-process lock per connection, plus a short lease in the database taken
//!   with a version compare-and-swap, so that no other request or instance refreshes at the same
//!   time; those wait and re-read instead.
//! - Rotation: a new refresh token replaces the old one in the same write as the new access
//!   token; a response without one keeps the old one.
//! - Failures: `invalid_grant` marks the connection "reconnect required" (after re-reading it, in
//!   case someone else refreshed it meanwhile); `invalid_client` keeps the tokens and reports an
//!   administrator problem; anything else keeps the tokens and is retryable.

use crate::util::ExposeSecret;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Settings;
use crate::db::models::connections::{self, Connection, ConnectionStatus, Refreshed, RowRef};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::oauth::http::Outbound;
use crate::oauth::providers::Provider;
use crate::oauth::store::{open_tokens, record_event, Tokens};
use crate::oauth::tokens::{self, TokenError};
use crate::util::{now, Secret};
use crate::vault::store::{client_credentials, ClientCredentials};
use crate::vault::Aad;

/// What getting a usable token needs: the token store, the outbound client and the metrics for
/// the provider's token endpoint, this process's refresh locks, and the settings that time a
/// refresh (`refresh_margin`, `refresh_cooldown`, `http_timeout`, `default_token_lifetime`).
/// Borrowed from the server's state (`AppState::access`) or made by a test.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    pub tokens: Tokens<'a>,
    pub http: &'a Outbound,
    pub metrics: &'a Metrics,
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
    /// The connection's version this token came from (for [`refresh_after_401`]).
    pub version: i64,
}

/// One connection's lock, and the newest version this process has written to it. Requests that
/// find a refresh in flight wait for that version to be announced and are all woken at once; they
/// take the new row from the cache, where the refresher left it, so that a thousand waiters
/// neither queue on the lock one after another nor re-read the database.
pub struct ConnectionLock {
    mutex: rocket::tokio::sync::Mutex<()>,
    written_version: rocket::tokio::sync::watch::Sender<i64>,
}

impl Default for ConnectionLock {
    fn default() -> Self {
        ConnectionLock { mutex: Default::default(), written_version: rocket::tokio::sync::watch::Sender::new(0) }
    }
}

impl ConnectionLock {
    fn written(&self, version: i64) {
        self.written_version.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    fn newer_than(&self, version: i64) -> bool {
        *self.written_version.borrow() > version
    }

    /// Resolves once this process has written a version newer than `version`.
    async fn written_after(&self, version: i64) {
        let mut rx = self.written_version.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|v| *v > version).await;
    }
}

/// Per-connection locks of this process, keyed by the connection's row id (a connection deleted
/// and made anew gets a new id, and so a fresh lock whose version mark starts over).
#[derive(Default)]
pub struct RefreshLocks {
    locks: Mutex<HashMap<i64, Arc<ConnectionLock>>>,
}

impl RefreshLocks {
    fn get(&self, connection_id: i64) -> Arc<ConnectionLock> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, l| Arc::strong_count(l) > 1);
        }
        map.entry(connection_id).or_default().clone()
    }
}

fn fresh_from(ctx: &Access<'_>, c: &Connection) -> Result<FreshToken, AccessError> {
    // Only the access token is opened on this path.
    let access = ctx
        .tokens
        .cipher
        .open(&c.access_token, Aad::AccessToken { user_id: c.user_id, service: &c.service })
        .map_err(AppError::from)?;
    Ok(FreshToken {
        access_token: access,
        token_type: c.token_type.clone(),
        expires_at: c.expires_at,
        scopes: crate::util::scope_list(&c.scopes),
        version: c.version,
    })
}

fn usable(row: Arc<Connection>) -> Result<Arc<Connection>, AccessError> {
    if row.status == ConnectionStatus::ReconnectRequired {
        return Err(AccessError::ReconnectRequired);
    }
    Ok(row)
}

/// The connection row as the database has it now (and cached for the next request).
async fn load(ctx: &Access<'_>, user_id: i64, service: &str) -> Result<Arc<Connection>, AccessError> {
    let cache = &ctx.tokens.caches.connections;
    let ticket = cache.ticket();
    let svc = service.to_string();
    let row = ctx.tokens.db.run(move |conn| Ok(connections::find(conn, user_id, &svc)?)).await?;
    let row = Arc::new(row.ok_or(AccessError::NotConnected)?);
    cache.fill(ticket, (user_id, service.to_string()), row.clone());
    usable(row)
}

/// The connection row from the cache (see `crate::cache`), else from the database (one read for
/// all concurrent misses). Good enough to decide whether a refresh is needed; the refresh itself
/// always re-reads the database.
async fn current(ctx: &Access<'_>, user_id: i64, service: &str) -> Result<Arc<Connection>, AccessError> {
    let key = (user_id, service.to_string());
    let row = ctx
        .tokens
        .caches
        .connections
        .get_or_load(&key, || async {
            let svc = service.to_string();
            let row = ctx.tokens.db.run(move |conn| Ok(connections::find(conn, user_id, &svc)?)).await?;
            Ok::<_, AccessError>(row.map(Arc::new))
        })
        .await?;
    usable(row.ok_or(AccessError::NotConnected)?)
}

/// Whether a token obtained at `obtained_at` and expiring at `expires_at` (`None`: never) is due
/// for a proactive refresh at `now`: when it expires within `refresh_margin` seconds, the margin
/// being at most half of its lifetime — a 20 s token is refreshed after 10 s, not on every use.
pub fn refresh_due(obtained_at: i64, expires_at: Option<i64>, refresh_margin: i64, now: i64) -> bool {
    let Some(expires_at) = expires_at else { return false };
    let half_life = expires_at.saturating_sub(obtained_at).max(0) / 2;
    expires_at.saturating_sub(refresh_margin.min(half_life)) <= now
}

/// Whether a 401 may be answered with a refresh at `now`, the connection's last refresh after a
/// 401 having been attempted at `last_attempt` (`None`: never since it was made): only if that was
/// at least `cooldown` seconds ago. A newer one (in any instance) got the token the provider
/// refuses now, and another would be refused the same way.
pub fn may_refresh_after_401(last_attempt: Option<i64>, cooldown: i64, now: i64) -> bool {
    last_attempt.is_none_or(|t| t <= cooldown_bound(cooldown, now))
}

/// The latest refresh attempt that still allows a refresh after a 401 at `now`.
fn cooldown_bound(cooldown: i64, now: i64) -> i64 {
    now.saturating_sub(cooldown)
}

/// A usable access token for (user, service), refreshed first if it expires soon.
pub async fn fresh_token(ctx: &Access<'_>, user_id: i64, provider: &Provider) -> Result<FreshToken, AccessError> {
    let margin = ctx.settings.refresh_margin;
    refresh_if(ctx, user_id, provider, None, move |c| refresh_due(c.obtained_at, c.expires_at, margin, now())).await
}

/// The provider answered 401 to the token of `stale_version`: the token to retry with — a newer
/// one another request stored meanwhile, or one refreshed now — or `None` when the 401 must be
/// passed through: the token is still that of `stale_version` and a refresh after a 401 was
/// attempted within `refresh_cooldown` (here or in another instance).
pub async fn refresh_after_401(
    ctx: &Access<'_>,
    user_id: i64,
    provider: &Provider,
    stale_version: i64,
) -> Result<Option<FreshToken>, AccessError> {
    let cooldown = ctx.settings.refresh_cooldown;
    let token = refresh_if(ctx, user_id, provider, Some(cooldown), move |c| {
        c.version == stale_version && may_refresh_after_401(c.refresh_after_401_at, cooldown, now())
    })
    .await?;
    Ok((token.version != stale_version).then_some(token))
}

/// Refresh the connection if `needs` says so of its row (single-flight, see the module doc). With
/// `cooldown` (a refresh after a 401), the lease is taken only if no other refresh after a 401 was
/// attempted within that many seconds, and records this one.
async fn refresh_if<F>(
    ctx: &Access<'_>,
    user_id: i64,
    provider: &Provider,
    cooldown: Option<i64>,
    needs: F,
) -> Result<FreshToken, AccessError>
where
    F: Fn(&Connection) -> bool,
{
    let row = current(ctx, user_id, &provider.name).await?;
    if !needs(&row) {
        return fresh_from(ctx, &row);
    }
    let seen_version = row.version;
    let lock = ctx.locks.get(row.id);
    let guard = rocket::tokio::select! {
        guard = lock.mutex.lock() => guard,
        () = lock.written_after(seen_version) => {
            let row = current(ctx, user_id, &provider.name).await?;
            return fresh_from(ctx, &row);
        }
    };
    if lock.newer_than(seen_version) {
        // Refreshed by this process while we waited: the refresher left the new row in the cache;
        // read it without holding the lock.
        drop(guard);
        let row = current(ctx, user_id, &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    let _guard = guard;
    let wait_limit = now() + ctx.settings.http_timeout as i64 + 5;
    // The compare-and-swap that takes the lease is the authoritative check: it succeeds only if
    // nobody changed the row since `row` was read (from the cache, perhaps), so the first attempt
    // needs no re-read. The client credentials come in the same round trip.
    let mut row = row;
    loop {
        let attempt = now();
        let lease_until = attempt + ctx.settings.http_timeout as i64 + 2;
        let after_401_by = cooldown.map(|c| cooldown_bound(c, attempt));
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
        if let Some(creds) = lease {
            let result = refresh_now(ctx, provider, &row, after_401_by.map(|_| attempt), creds).await;
            // Whatever happened, the row moved past `version` if we wrote it (refreshed, or
            // marked reconnect-required); waiters re-read it.
            if matches!(result, Ok(_) | Err(AccessError::ReconnectRequired)) {
                lock.written(version + 1);
            }
            return result;
        }
        // Lost: the row changed (someone refreshed or reconnected: use their token), another
        // instance holds the lease (wait for its result), or — after a 401 — a refresh was
        // attempted within the cooldown (the re-read row says so: `needs` is false).
        row = load(ctx, user_id, &provider.name).await?;
        let leased = row.refresh_lease_until.is_some_and(|until| until >= now());
        if row.version != seen_version || (!leased && !needs(&row)) {
            return fresh_from(ctx, &row);
        }
        if now() > wait_limit {
            return Err(AccessError::Provider(TokenError::Timeout));
        }
        rocket::tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Refresh `row` (whose lease we took; `after_401`: at this time, to answer a 401) with the
/// client's credentials (`None`: not configured) and store the result.
async fn refresh_now(
    ctx: &Access<'_>,
    provider: &Provider,
    row: &Connection,
    after_401: Option<i64>,
    creds: Option<ClientCredentials>,
) -> Result<FreshToken, AccessError> {
    let (user_id, service, id, version) = (row.user_id, row.service.clone(), row.id, row.version);
    let (_, refresh_token) = open_tokens(ctx.tokens.cipher, row)?;
    let Some(refresh_token) = refresh_token else {
        return reconnect_required(ctx, provider, row, "no refresh token to renew access").await;
    };
    let Some(creds) = creds else {
        release(ctx, id, version).await;
        let detail = "tokenvault has no client credentials for this service; an administrator must set them";
        let keep = ctx.tokens.events_kept;
        ctx.tokens
            .db
            .run(move |conn| {
                record_event(conn, keep, user_id, &service, EventKind::Refresh, EventOutcome::FailedAdmin, detail)
            })
            .await?;
        ctx.metrics.refresh(&provider.name, "not_configured");
        // Logged once, by the error's responder (`AppError::NotConfigured`).
        return Err(AccessError::NotConfigured);
    };
    let current_scopes: Vec<String> = crate::util::scope_list(&row.scopes);
    let started = std::time::Instant::now();
    let result = tokens::refresh(
        ctx.http,
        provider,
        &creds,
        &refresh_token,
        ctx.settings.default_token_lifetime,
        &current_scopes,
    )
    .await;
    tracing::info!(service = %service, user_id, ok = result.is_ok(), millis = started.elapsed().as_millis() as u64, "token refresh");
    ctx.metrics.token_endpoint(&provider.name, "refresh_token", started);
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_invalid_grant() => "invalid_grant",
        Err(e) if e.is_client_error() => "client_error",
        Err(_) => "transient_error",
    };
    ctx.metrics.refresh(&provider.name, outcome);
    match result {
        Ok(set) => {
            let access = ctx
                .tokens
                .cipher
                .seal_str(set.access_token.expose_secret(), Aad::AccessToken { user_id, service: &service });
            let refresh = set.refresh_token.as_ref().map(|r| {
                ctx.tokens.cipher.seal_str(r.expose_secret(), Aad::RefreshToken { user_id, service: &service })
            });
            let scopes = set.scopes.join(" ");
            let (token_type, expires_at, obtained_at) = (set.token_type.clone(), set.expires_at, set.obtained_at);
            let rotated = set.refresh_token.is_some();
            let svc = service.clone();
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
            let stored = ctx
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
                        let at = RowRef { id, version, user_id, service: &svc };
                        let written = connections::store_refreshed(conn, at, &r)?;
                        if *written.value() {
                            let detail = if rotated { "new refresh token stored" } else { "refresh token kept" };
                            record_event(conn, keep, user_id, &svc, EventKind::Refresh, EventOutcome::Ok, detail)?;
                        }
                        Ok(written)
                    })
                })
                .await?;
            if !*stored.value() {
                // The row changed under our lease (deleted or reconnected meanwhile): use what is there.
                ctx.tokens.caches.after_write(stored);
                let row = load(ctx, user_id, &provider.name).await?;
                return fresh_from(ctx, &row);
            }
            ctx.tokens.caches.after_refresh(stored, ticket, Arc::new(new_row));
            Ok(FreshToken {
                access_token: set.access_token,
                token_type: set.token_type,
                expires_at,
                scopes: set.scopes,
                version: version + 1,
            })
        }
        Err(e) if e.is_invalid_grant() => {
            reconnect_required(ctx, provider, row, "the provider no longer accepts the refresh token (invalid_grant)")
                .await
        }
        Err(e) => {
            release(ctx, id, version).await;
            let svc = service.clone();
            let client = e.is_client_error();
            let detail = if client {
                "the provider rejected tokenvault's client credentials; an administrator must check them".to_string()
            } else {
                format!("{e}; the tokens were kept and it will be retried")
            };
            let outcome = if client { EventOutcome::FailedAdmin } else { EventOutcome::FailedRetryable };
            let keep = ctx.tokens.events_kept;
            ctx.tokens
                .db
                .run(move |conn| record_event(conn, keep, user_id, &svc, EventKind::Refresh, outcome, &detail))
                .await?;
            if client {
                // Logged once, by the error's responder (`AppError::ClientRejected`).
                Err(AccessError::ClientRejected(e))
            } else {
                Err(AccessError::Provider(e))
            }
        }
    }
}

/// Mark `row` (whose lease we hold) "reconnect required", with its event, if it is still at its
/// version; if someone changed it meanwhile (refreshed or reconnected), use their token instead.
async fn reconnect_required(
    ctx: &Access<'_>,
    provider: &Provider,
    row: &Connection,
    detail: &'static str,
) -> Result<FreshToken, AccessError> {
    let (id, version, user_id, service) = (row.id, row.version, row.user_id, row.service.clone());
    let keep = ctx.tokens.events_kept;
    let marked = ctx
        .tokens
        .db
        .run(move |conn| {
            conn.transaction(|conn| {
                let at = RowRef { id, version, user_id, service: &service };
                let written = connections::mark_reconnect_required(conn, at, now())?;
                if *written.value() {
                    let (kind, outcome) = (EventKind::Refresh, EventOutcome::ReconnectRequired);
                    record_event(conn, keep, user_id, &service, kind, outcome, detail)?;
                }
                Ok(written)
            })
        })
        .await?;
    if !ctx.tokens.caches.after_write(marked) {
        let row = load(ctx, user_id, &provider.name).await?;
        return fresh_from(ctx, &row);
    }
    tracing::warn!(service = %row.service, user_id, reason = detail, "reconnect required");
    Err(AccessError::ReconnectRequired)
}

async fn release(ctx: &Access<'_>, id: i64, version: i64) {
    if let Err(e) = ctx.tokens.db.run(move |conn| Ok(connections::release_refresh_lease(conn, id, version)?)).await {
        tracing::error!(error = %e, "could not release a refresh lease (it expires by itself)");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{fresh_token, may_refresh_after_401, refresh_due, Access, AccessError, RefreshLocks};
    use crate::cache::Caches;
    use crate::config::{RawConfig, Settings};
    use crate::db::models::events::EventKind;
    use crate::db::models::{connections, events, users};
    use crate::db::Db;
    use crate::metrics::Metrics;
    use crate::oauth::http::Outbound;
    use crate::oauth::store::{self, Tokens};
    use crate::oauth::tokens::TokenSet;
    use crate::util::{now, ExposeSecret, Secret};
    use crate::vault::Cipher;

    /// `Access` is made of plain handles: the refresh path runs in a unit test, without Rocket and,
    /// here, without a provider (no client credentials: nothing is sent).
    #[rocket::async_test]
    async fn tokens_are_used_until_due_and_kept_when_a_refresh_cannot_be_made() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let settings = Settings::resolve(&RawConfig::default(), "debug").unwrap();
        let (cipher, caches, locks) = (Arc::new(Cipher::for_tests(3)), Caches::new(60), RefreshLocks::default());
        let (http, metrics) = (Outbound::new(&settings).unwrap(), Metrics::new());
        let tokens = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10 };
        let ctx = Access { tokens, http: &http, metrics: &metrics, locks: &locks, settings: &settings };
        let provider = crate::oauth::providers::demo(&settings);
        let user = users::NewUser {
            username: "ann",
            password_hash: "x",
            is_admin: false,
            created_at: 0,
            password_changed_at: 0,
        };
        let user_id = users::create(&mut db.conn().unwrap(), &user).unwrap().unwrap().id;
        assert!(matches!(fresh_token(&ctx, user_id, &provider).await, Err(AccessError::NotConnected)));

        let set = |expires_at| TokenSet {
            access_token: Secret::from("AT-1"),
            refresh_token: Some(Secret::from("RT-1")),
            token_type: "Bearer".into(),
            scopes: vec!["read".into()],
            expires_at,
            obtained_at: now() - 100,
        };
        store::save(tokens, user_id, "demo", set(Some(now() + 3600)), EventKind::Connect).await.unwrap();
        let token = fresh_token(&ctx, user_id, &provider).await.unwrap();
        assert_eq!((token.access_token.expose_secret(), token.version), ("AT-1", 1));
        assert_eq!(caches.connections.len(), 1, "the row is cached for the next call");

        // Expired, and the vault holds no client credentials: the tokens and the row stay as they
        // were, the lease is released, and the user's events say why.
        store::save(tokens, user_id, "demo", set(Some(now() - 1)), EventKind::Connect).await.unwrap();
        assert!(matches!(fresh_token(&ctx, user_id, &provider).await, Err(AccessError::NotConfigured)));
        let mut conn = db.conn().unwrap();
        let row = connections::find(&mut conn, user_id, "demo").unwrap().unwrap();
        assert_eq!((row.version, row.refresh_lease_until), (2, None), "reconnected once, not refreshed");
        let newest = events::recent(&mut conn, user_id, "demo", 1).unwrap().remove(0);
        assert!(newest.detail.contains("no client credentials"), "{}", newest.detail);
    }

    #[test]
    fn the_margin_is_at_most_half_the_lifetime() {
        let t0 = 1_000_000;
        // A 20 s token with a 60 s margin: used for its first 10 s, refreshed from then on.
        for (age, due) in [(0, false), (1, false), (9, false), (10, true), (19, true), (25, true)] {
            assert_eq!(refresh_due(t0, Some(t0 + 20), 60, t0 + age), due, "20 s token at {age} s");
        }
        // A long-lived token: `refresh_margin` is the bound.
        let hour = Some(t0 + 3600);
        assert!(!refresh_due(t0, hour, 60, t0 + 3539));
        assert!(refresh_due(t0, hour, 60, t0 + 3540));
        // No margin: refreshed when expired.
        assert!(!refresh_due(t0, Some(t0 + 20), 0, t0 + 19));
        assert!(refresh_due(t0, Some(t0 + 20), 0, t0 + 20));
        // A token without an expiry is never due; one stored as expired (or expiring before it
        // was obtained) is due at once.
        assert!(!refresh_due(t0, None, 60, i64::MAX));
        assert!(refresh_due(t0, Some(0), 60, t0));
        assert!(refresh_due(t0, Some(t0 - 5), 60, t0));
        // A 1 s token is refreshed once it has expired, not before.
        assert!(!refresh_due(t0, Some(t0 + 1), 60, t0));
        assert!(refresh_due(t0, Some(t0 + 1), 60, t0 + 1));
        // No overflow at the edges.
        assert!(!refresh_due(i64::MIN, Some(i64::MAX), i64::MAX, 0));
    }

    #[test]
    fn a_401_refreshes_only_once_per_cooldown() {
        let t0 = 1_000_000;
        assert!(may_refresh_after_401(None, 30, t0), "no refresh attempted since the connection was made");
        assert!(!may_refresh_after_401(Some(t0), 30, t0), "attempted just now");
        assert!(!may_refresh_after_401(Some(t0 - 29), 30, t0));
        assert!(may_refresh_after_401(Some(t0 - 30), 30, t0));
        assert!(may_refresh_after_401(Some(t0 - 3600), 30, t0));
        // A clock that went back (another instance's attempt "in the future") does not allow one.
        assert!(!may_refresh_after_401(Some(t0 + 5), 30, t0));
        assert!(may_refresh_after_401(Some(i64::MIN), 30, i64::MIN + 30));
        assert!(!may_refresh_after_401(Some(i64::MAX), 30, i64::MIN));
    }
}

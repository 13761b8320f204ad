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
//!
//! This file decides *when* to refresh; how is the refresh core, `oauth::refresh`.

use std::sync::Arc;

use crate::config::Settings;
use crate::db::models::connections::{Connection, Which};
use crate::error::AppError;
use crate::oauth::http::Outbound;
use crate::oauth::metrics::OauthMetrics;
use crate::oauth::providers::Provider;
use crate::oauth::refresh::{refresh_if, HttpEndpoint, Refresher};
use crate::oauth::store::Tokens;
use crate::util::now;

pub use crate::oauth::refresh::due::{may_refresh_after_401, refresh_due};
pub use crate::oauth::refresh::{connection_set, AccessError, FreshToken, RefreshLocks};

/// What getting a usable token needs: the token store, the outbound client and the metrics for
/// the provider's token endpoint, this process's refresh locks, and the settings that time a
/// refresh (`refresh_margin`, `refresh_cooldown`, `http_timeout`, `default_token_lifetime`).
/// Borrowed from the server's state (`AppState::access`) or made by a test.
#[derive(Clone, Copy)]
pub struct Access<'a> {
    pub tokens: Tokens<'a>,
    pub http: &'a Outbound,
    pub metrics: &'a OauthMetrics,
    pub locks: &'a RefreshLocks,
    pub settings: &'a Settings,
}

impl Access<'_> {
    /// The refresh core's handles, with `endpoint` as the provider.
    fn with_endpoint<'a>(&'a self, endpoint: &'a HttpEndpoint<'a>) -> Refresher<'a> {
        Refresher { tokens: self.tokens, endpoint, metrics: self.metrics, locks: self.locks, settings: self.settings }
    }

    fn endpoint(&self) -> HttpEndpoint<'_> {
        HttpEndpoint { http: self.http, default_lifetime: self.settings.refresh.default_token_lifetime }
    }
}

/// A usable access token of the connection `which` names, refreshed first if it expires soon.
pub async fn fresh_token(ctx: &Access<'_>, which: Which, provider: &Provider) -> Result<FreshToken, AccessError> {
    let endpoint = ctx.endpoint();
    fresh_token_with(&ctx.with_endpoint(&endpoint), which, provider).await
}

/// [`fresh_token`] with any token endpoint (the unit tests' fake).
pub async fn fresh_token_with(
    ctx: &Refresher<'_>,
    which: Which,
    provider: &Provider,
) -> Result<FreshToken, AccessError> {
    let margin = ctx.settings.refresh.margin;
    refresh_if(ctx, which, provider, None, move |c| refresh_due(c.obtained_at, c.expires_at, margin, now())).await
}

/// The provider answered 401 to the token of `stale_version`: the token to retry with — a newer
/// one another request stored meanwhile, or one refreshed now — or `None` when the 401 must be
/// passed through: the token is still that of `stale_version` and a refresh after a 401 was
/// attempted within `refresh_cooldown` (here or in another instance).
pub async fn refresh_after_401(
    ctx: &Access<'_>,
    which: Which,
    provider: &Provider,
    stale_version: i64,
) -> Result<Option<FreshToken>, AccessError> {
    let endpoint = ctx.endpoint();
    let ctx = ctx.with_endpoint(&endpoint);
    let cooldown = ctx.settings.refresh.cooldown;
    let token = refresh_if(&ctx, which, provider, Some(cooldown), move |c| {
        c.version == stale_version && may_refresh_after_401(c.refresh_after_401_at, cooldown, now())
    })
    .await?;
    Ok((token.version != stale_version).then_some(token))
}

/// Which of a user's connections to a service a request names: `connection=<id>`,
/// `account=<provider account id>` (both: they must agree), or neither — then the only one.
#[derive(Debug, Default, Clone, Copy)]
pub struct Named<'a> {
    pub account: Option<&'a str>,
    pub connection: Option<i64>,
}

/// The connection `named` picks from `set` (the user's connections to `provider`): not
/// connected (404) when it names none of them or there are none; with several and none named,
/// 409 `ambiguous_account` listing them.
pub fn pick(set: &[Arc<Connection>], named: Named<'_>, provider: &Provider) -> Result<Arc<Connection>, AppError> {
    let matches = |c: &&Arc<Connection>| {
        named.connection.is_none_or(|id| c.id == id) && named.account.is_none_or(|a| c.account_id == a)
    };
    if named.connection.is_some() || named.account.is_some() {
        return set.iter().find(matches).cloned().ok_or_else(|| AppError::NotConnected(provider.service()));
    }
    match set {
        [] => Err(AppError::NotConnected(provider.service())),
        [only] => Ok(only.clone()),
        several => Err(AppError::AmbiguousAccount {
            service: provider.service(),
            accounts: several
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "connection_id": c.id,
                        "account_id": (!c.account_id.is_empty()).then_some(&c.account_id),
                        "account_label": c.account_label,
                        "status": c.status.as_str(),
                    })
                })
                .collect(),
        }),
    }
}

/// The scopes of `required` that connection `c` was not granted (empty: it has them all).
pub fn missing_scopes(c: &Connection, required: &[String]) -> Vec<String> {
    let granted = c.granted();
    let mut missing: Vec<String> = required.iter().filter(|s| !granted.contains(s)).cloned().collect();
    missing.dedup();
    missing
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{fresh_token, may_refresh_after_401, refresh_due, Access, AccessError, RefreshLocks};
    use crate::cache::Caches;
    use crate::config::{RawConfig, Settings};
    use crate::db::models::{connections, events, users};
    use crate::db::Db;
    use crate::oauth::http::Outbound;
    use crate::oauth::metrics::OauthMetrics;
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
        let (http, metrics) =
            (Outbound::new(&settings.http).unwrap(), OauthMetrics::register(&crate::metrics::Metrics::new()));
        let tokens = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10, webhooks: None, jobs: None };
        let ctx = Access { tokens, http: &http, metrics: &metrics, locks: &locks, settings: &settings };
        let provider = crate::oauth::providers::demo(&settings);
        // The audit log starts before the first user, as at a server's first start.
        crate::audit::open(&mut db.conn().unwrap(), &cipher).unwrap().unwrap();
        let user_id = users::for_tests(&mut db.conn().unwrap(), "ann");
        assert!(matches!(
            fresh_token(&ctx, crate::db::models::connections::Which::first(user_id), &provider).await,
            Err(AccessError::NotConnected)
        ));

        let set = |expires_at| TokenSet {
            access_token: Secret::from("AT-1"),
            refresh_token: Some(Secret::from("RT-1")),
            token_type: "Bearer".into(),
            scopes: vec!["read".into()],
            expires_at,
            obtained_at: now() - 100,
            refresh_expires_at: None,
        };
        store::save(tokens, crate::oauth::store::Destination::only(user_id, "demo"), set(Some(now() + 3600)))
            .await
            .unwrap();
        let token = fresh_token(&ctx, crate::db::models::connections::Which::first(user_id), &provider).await.unwrap();
        assert_eq!((token.access_token.expose_secret(), token.version), ("AT-1", 1));
        assert_eq!(caches.connections.len(), 1, "the row is cached for the next call");

        // Expired, and the vault holds no client credentials: the tokens and the row stay as they
        // were, the lease is released, and the user's events say why.
        store::save(tokens, crate::oauth::store::Destination::only(user_id, "demo"), set(Some(now() - 1)))
            .await
            .unwrap();
        assert!(matches!(
            fresh_token(&ctx, crate::db::models::connections::Which::first(user_id), &provider).await,
            Err(AccessError::NotConfigured)
        ));
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

//! Personal API keys: `tvk_` (or `tvs_` for a key with limits) + 256 random bits, shown once, stored as a SHA-256 hash, sent as
//! `Authorization: Bearer <key>`. A key acts for its user only, within its limits
//! ([`KeyScope`]: services, capabilities, expiry).

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};

use crate::cache::{CachedKey, CachedToken, Caches};
use crate::changes::{self, Actor, Change, Committed, KeyRevoked};
use crate::db::models::api_keys::{self, ApiKey, NewApiKey};
pub use crate::db::models::key_scope::{Capability, KeyScope};
use crate::db::{Conn, Db};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{now, random_token, sha256_hex, Secret};
use crate::vault::Cipher;

/// The prefix of a key without limits (every key made before limits existed has it).
pub const KEY_PREFIX: &str = "tvk_";
/// The prefix of a key with limits (services, capabilities or an expiry). A version of tokenvault
/// from before limits existed knows only `tvk_` and refuses such a key with a 401 — so during a
/// rolling upgrade, or after a rollback, a limited key never works as a full one.
pub const LIMITED_KEY_PREFIX: &str = "tvs_";

/// A key just created, and the keys revoked to make room for it.
pub struct Created {
    pub row: ApiKey,
    /// The key itself: shown once, never stored.
    pub key: Secret,
    /// The user's oldest keys, revoked because the new one went over `max_api_keys_per_user`.
    pub evicted: Vec<ApiKey>,
}

/// Create a key for `user_id`, keeping at most `max_keys` live keys: beyond that the oldest are
/// revoked, in the same transaction, with the audit entries (`api_key.created` by `actor`, and an
/// `api_key.revoked` with `"reason": "over_limit"` for each key evicted); with their
/// invalidations, for this process's cache (other instances learn of them from the recorded rows).
pub fn create_written(
    conn: &mut Conn,
    cipher: &Cipher,
    actor: Actor,
    user_id: i64,
    name: &str,
    scope: &KeyScope,
    max_keys: i64,
) -> AppResult<Committed<Created>> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::BadRequest("Give the key a name of 1 to 100 characters.".into()));
    }
    let kind = if *scope == KeyScope::default() { KEY_PREFIX } else { LIMITED_KEY_PREFIX };
    let key = format!("{kind}{}", random_token(32));
    let prefix: String = key.chars().take(12).collect();
    let (services, capabilities) = (scope.services_column(), scope.capabilities_column());
    let committed = changes::write_no_history(conn, cipher, |tx| {
        let new = NewApiKey {
            user_id,
            name,
            prefix: &prefix,
            key_hash: &sha256_hex(&key),
            created_at: now(),
            services: services.as_deref(),
            capabilities: capabilities.as_deref(),
            expires_at: scope.expires_at,
        };
        let row = api_keys::insert(tx.conn(), &new)?;
        let evicted = api_keys::revoke_oldest_beyond(tx.conn(), user_id, max_keys, now())?;
        tx.record(Change::ApiKeyCreated { by: actor.clone(), user_id, key_id: row.id })?;
        for old in &evicted {
            tx.record(Change::ApiKeyRevoked {
                by: actor.clone(),
                user_id,
                key_id: old.id,
                key_hash: old.key_hash.clone(),
                why: KeyRevoked::OverLimit { max_keys },
                address: None,
            })?;
        }
        Ok((row, evicted))
    })?;
    Ok(committed.map(|(row, evicted)| Created { row, key: crate::util::secret(key), evicted }))
}

/// [`create_written`] for a process that caches no keys (the CLI, with actor `cli`; tests): the
/// running servers learn of the evicted keys from the invalidations their changes recorded.
pub fn create(
    conn: &mut Conn,
    cipher: &Cipher,
    actor: Actor,
    user_id: i64,
    name: &str,
    scope: &KeyScope,
    max_keys: i64,
) -> AppResult<Created> {
    Ok(create_written(conn, cipher, actor, user_id, name, scope, max_keys)?.recorded_only())
}

/// The user an API request acts for.
#[derive(Debug, Clone)]
pub struct ApiUser {
    pub id: i64,
    pub username: String,
    /// What the request authenticated with.
    pub via: Via,
    /// What the key (or the grant) may do: check it with [`ApiUser::require`] before acting.
    pub scope: Arc<KeyScope>,
}

/// What an API request authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A personal API key (its id).
    Key(i64),
    /// An access token of tokenvault's authorization server (its grant's id).
    Grant(i64),
}

impl ApiUser {
    /// `Ok` when the key or grant may use `capability` (on `service`); else 403
    /// `forbidden_scope` — for a grant's token with the scope to ask for (step-up).
    pub fn require(&self, capability: Capability, service: Option<&str>) -> AppResult<()> {
        let refused = match self.scope.require(capability, service) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match self.via {
            Via::Key(_) => Err(refused),
            Via::Grant(_) => {
                let wanted = crate::authz::grants::GrantCapability::for_capability(capability);
                let mut scope = wanted.as_str().to_string();
                if let Some(s) = service {
                    scope.push_str(&format!(" {}{s}", crate::authz::grants::SERVICE_SCOPE));
                }
                let message = refused.user_message().replace("This API key", "This access token's grant");
                Err(AppError::OutsideGrant { message, scope })
            }
        }
    }

    /// Who the audit log says acted.
    pub fn actor(&self) -> crate::audit::Actor {
        match self.via {
            Via::Key(id) => crate::audit::Actor::Key(id),
            Via::Grant(id) => crate::audit::Actor::Grant(id),
        }
    }
}

impl From<&CachedKey> for ApiUser {
    fn from(k: &CachedKey) -> Self {
        ApiUser { id: k.user_id, username: k.username.clone(), via: Via::Key(k.key_id), scope: k.scope.clone() }
    }
}

impl From<&CachedToken> for ApiUser {
    fn from(t: &CachedToken) -> Self {
        ApiUser { id: t.user_id, username: t.username.clone(), via: Via::Grant(t.grant_id), scope: t.scope.clone() }
    }
}

/// Check an access token of tokenvault's authorization server for `/api/v1` (see
/// `authz::tokens::check_access`: cached as API keys are; a grant's end drops its tokens on every
/// instance).
async fn authenticate_grant(
    app: &AppState,
    resource: String,
    token: &str,
    ip: Option<String>,
) -> Result<Option<ApiUser>, KeyCheckUnavailable> {
    match crate::authz::tokens::check_access(&app.db, &app.caches, token, &resource, ip).await {
        Ok(Ok(holder)) => Ok(Some(ApiUser::from(&holder))),
        Ok(Err(_)) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "access token lookup failed: answering 503");
            Err(KeyCheckUnavailable)
        }
    }
}

/// The key could not be checked because the database failed (an outage: 503, not 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCheckUnavailable;

/// The user a key stands for (`None`: no such active key, or it has expired): from the cache
/// (see `crate::cache`), else from the database; `Err` when the database could not be asked.
/// A use is recorded, with the client's address `ip`, at most once a minute.
async fn authenticate(
    db: &Db,
    caches: &Caches,
    key: &str,
    ip: Option<String>,
) -> Result<Option<ApiUser>, KeyCheckUnavailable> {
    let hash = sha256_hex(key);
    let cache = &caches.api_keys;
    if let Some(k) = cache.get(&hash) {
        // A cached copy can outlive the key's expiry: the expiry is checked on every use.
        if k.scope.is_expired(now()) {
            return Ok(None);
        }
        if k.should_touch(now()) {
            // Record the use off the request's path (at most once a minute per key).
            let (db, id) = (db.clone(), k.key_id);
            rocket::tokio::spawn(async move {
                if let Err(e) = db.run(move |conn| Ok(api_keys::touch(conn, id, now(), ip.as_deref())?)).await {
                    tracing::warn!(error = %e, "could not record an API key's use");
                }
            });
        }
        return Ok(Some(ApiUser::from(&k)));
    }
    let lookup = hash.clone();
    let found = cache
        .load_missing(&hash, || async move {
            let found = db
                .run(move |conn| {
                    let Some((k, user)) = api_keys::find_active(conn, &lookup, now())? else { return Ok(None) };
                    let mut last_used = k.last_used_at.unwrap_or(0);
                    // Record the use at most once a minute: no write on the hot path.
                    if last_used < now() - 60 {
                        api_keys::touch(conn, k.id, now(), ip.as_deref())?;
                        last_used = now();
                    }
                    Ok(Some(CachedKey {
                        key_id: k.id,
                        user_id: user.id,
                        username: user.username,
                        scope: Arc::new(KeyScope::of(&k)),
                        last_used_at: Arc::new(AtomicI64::new(last_used)),
                    }))
                })
                .await?;
            Ok::<_, AppError>(found)
        })
        .await;
    match found {
        Ok(found) => Ok(found.as_ref().filter(|k| !k.scope.is_expired(now())).map(ApiUser::from)),
        Err(e) => {
            tracing::error!(error = %e, "API key lookup failed: answering 503");
            Err(KeyCheckUnavailable)
        }
    }
}

/// [`create`] for a signed-in user, with this process's cached copies of the keys it evicted
/// dropped at once (convention 3: handlers never touch the caches).
pub async fn create_for(
    app: &AppState,
    max_keys: i64,
    user_id: i64,
    name: String,
    scope: KeyScope,
) -> AppResult<Created> {
    let cipher = app.cipher.clone();
    let created = app
        .db
        .run(move |conn| create_written(conn, &cipher, Actor::User(user_id), user_id, &name, &scope, max_keys))
        .await?
        .settle(app.effects());
    for old in &created.evicted {
        tracing::info!(user_id, key_id = old.id, "API key revoked: over max_api_keys_per_user");
    }
    Ok(created)
}

/// A provider added in the app is deleted (in its unit of work): every live key limited to a list
/// naming it loses the name, and a key whose list becomes empty is revoked (an empty list is never
/// written: no list means every service), recorded with reason `provider_deleted`. So a later
/// provider of the same name inherits nothing.
pub fn forget_service(tx: &mut changes::Tx<'_>, service: &str, by: &Actor) -> AppResult<()> {
    let at = now();
    for key in api_keys::naming_service(tx.conn(), service)? {
        let rest = key.services.as_deref().unwrap_or("").split_whitespace().filter(|s| *s != service);
        let rest = rest.collect::<Vec<_>>().join(" ");
        if !rest.is_empty() {
            api_keys::set_services(tx.conn(), key.id, &rest)?;
        } else if let Some(key_hash) = api_keys::revoke(tx.conn(), key.user_id, key.id, at)? {
            let (by, user_id, key_id, why) = (by.clone(), key.user_id, key.id, KeyRevoked::ProviderDeleted);
            tx.record(Change::ApiKeyRevoked { by, user_id, key_id, key_hash, why, address: None })?;
        }
    }
    Ok(())
}

/// Revoke one of the user's keys; false when it is not theirs (or already revoked). The key stops
/// working in this process at once and in every other instance within about a second.
pub async fn revoke(app: &AppState, user_id: i64, key_id: i64) -> AppResult<bool> {
    let revoked = app
        .db
        .write(app.ledger(), move |tx| {
            let Some(key_hash) = api_keys::revoke(tx.conn(), user_id, key_id, now())? else { return Ok(false) };
            let (by, why) = (Actor::User(user_id), KeyRevoked::ByUser);
            tx.record(Change::ApiKeyRevoked { by, user_id, key_id, key_hash, why, address: None })?;
            Ok(true)
        })
        .await?;
    Ok(revoked.settle(app.effects()))
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for &'r ApiUser {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let found: &Result<Option<ApiUser>, KeyCheckUnavailable> = req
            .local_cache_async(async {
                let Some((scheme, key)) = req.headers().get_one("Authorization").and_then(|h| h.split_once(' ')) else {
                    return Ok(None);
                };
                let key = key.trim();
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Ok(None);
                }
                let Some(app) = req.rocket().state::<AppState>() else { return Ok(None) };
                let ip = req.client_ip().map(|ip| ip.to_string());
                if key.starts_with(crate::authz::ACCESS_PREFIX) && app.settings.authz.enabled {
                    let resource = crate::authz::Resource::Api.url(&app.settings);
                    return authenticate_grant(app, resource, key, ip).await;
                }
                if !(key.starts_with(KEY_PREFIX) || key.starts_with(LIMITED_KEY_PREFIX)) {
                    return Ok(None);
                }
                authenticate(&app.db, &app.caches, key, ip).await
            })
            .await;
        match found {
            Ok(Some(user)) => Outcome::Success(user),
            Ok(None) => Outcome::Error((Status::Unauthorized, ())),
            // An outage is an outage: the catcher answers 503 JSON with `Retry-After`.
            Err(KeyCheckUnavailable) => Outcome::Error((Status::ServiceUnavailable, ())),
        }
    }
}

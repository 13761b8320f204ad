//! tokenvault as an OAuth 2.1 authorization server for its own API (issue 22): clients
//! ([`clients`]: registered by an administrator, dynamically registered, or named by a Client ID
//! Metadata Document), grants and their scopes ([`grants`]), and authorization codes and tokens
//! ([`tokens`]: PKCE S256, opaque hashed tokens bound to one resource, refresh tokens rotated with
//! reuse detection). The HTTP side is `routes::authz` (endpoints, metadata documents) and
//! `routes::consent` (the consent page, Connected apps); `/api/v1` accepts the access tokens
//! through `auth::api_key`'s guard, and `/mcp` can use [`tokens::check_access`] with
//! [`Resource::Mcp`].
//!
//! A checked access token is cached like an API key (`crate::cache`, keyed by its SHA-256, never
//! past its expiry), so a check costs what a key's does. A grant's end, a token revoked by its
//! client and a retried refresh record an invalidation of the grant: its tokens stop working at
//! once on the instance that made the change and, on every other one, as soon as the commit's
//! notification is read; until then a cached token is not trusted (`cache::FeedWatch`).

pub mod clients;
pub mod grants;
pub mod metadata_doc;
pub mod tokens;

use crate::config::Settings;
use crate::db::Db;
use crate::jobs::{Job, Next};

/// Access tokens: `tvat_` + 256 random bits (stored as SHA-256).
pub const ACCESS_PREFIX: &str = "tvat_";
/// Refresh tokens: `tvrt_` + 256 random bits (stored as SHA-256).
pub const REFRESH_PREFIX: &str = "tvrt_";
/// Authorization codes: `tvac_` + 256 random bits (stored as SHA-256).
pub const CODE_PREFIX: &str = "tvac_";
/// Seconds an authorization code may be exchanged.
pub const CODE_LIFETIME: i64 = 60;
/// Seconds after its rotation during which a refresh token presented again is taken as an honest
/// retry (the client lost the answer): a new pair is issued and the pair issued for its first
/// presentation is revoked. Past this it is a replay: the whole grant is revoked.
pub const REFRESH_GRACE: i64 = 30;

/// A protected resource tokens are bound to (RFC 8707 `resource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `<public_url>/api/v1`.
    Api,
    /// `<public_url>/mcp`.
    Mcp,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Api, Resource::Mcp];

    pub fn path(self) -> &'static str {
        match self {
            Resource::Api => "/api/v1",
            Resource::Mcp => "/mcp",
        }
    }

    /// The resource's identifier, as `resource` names it and tokens are bound to it.
    pub fn url(self, settings: &Settings) -> String {
        settings.url(self.path())
    }

    /// Its RFC 9728 metadata document.
    pub fn metadata_url(self, settings: &Settings) -> String {
        settings.url(&format!("/.well-known/oauth-protected-resource{}", self.path()))
    }

    /// The resource `text` names (a trailing `/` is ignored), if it is one of ours.
    pub fn parse(settings: &Settings, text: &str) -> Option<Resource> {
        let text = text.trim_end_matches('/');
        Resource::ALL.into_iter().find(|r| r.url(settings) == text)
    }
}

/// The issuer identifier (RFC 8414 `issuer`, RFC 9207 `iss`): the public URL without a trailing `/`.
pub fn issuer(settings: &Settings) -> String {
    settings.url("")
}

/// How often [`Sweep`] runs.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The job that deletes expired codes and tokens and unused dynamic registrations (`authz_sweep`).
pub struct Sweep {
    pub db: Db,
}

#[rocket::async_trait]
impl Job for Sweep {
    fn name(&self) -> &'static str {
        "authz_sweep"
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<Next, String> {
        let at = crate::util::now();
        let removed = self.db.run(move |conn| tokens::sweep(conn, at)).await.map_err(|e| e.to_string())?;
        if removed > 0 {
            tracing::info!(removed, "expired authorization codes, tokens and unused registrations deleted");
        }
        Ok(Next::Idle)
    }
}

//! What every step of a refresh shares: its handles ([`Refresher`]), its answer ([`FreshToken`])
//! and its errors ([`AccessError`]).

use crate::config::Settings;
use crate::error::AppError;
use crate::oauth::metrics::OauthMetrics;
use crate::oauth::providers::Provider;
use crate::oauth::store::Tokens;
use crate::oauth::tokens::TokenError;
use crate::util::Secret;

use super::endpoint::TokenEndpoint;
use super::single_flight::RefreshLocks;

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

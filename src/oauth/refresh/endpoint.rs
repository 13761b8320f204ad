//! "The provider", as the refresh core sees it: its token endpoint's refresh call.

use crate::oauth::http::Outbound;
use crate::oauth::providers::Provider;
use crate::oauth::tokens::{self, TokenError, TokenSet};
use crate::util::Secret;
use crate::vault::store::ClientCredentials;

/// A provider's token endpoint, asked to renew a grant: with tokenvault's client credentials, the
/// stored refresh token and the connection's current scopes (kept when the answer names none).
/// [`HttpEndpoint`] in the server; a scripted fake in unit tests.
#[rocket::async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn refresh(
        &self,
        provider: &Provider,
        creds: &ClientCredentials,
        refresh_token: &Secret,
        current_scopes: &[String],
    ) -> Result<TokenSet, TokenError>;
}

/// The real thing: `oauth::tokens::refresh` over the outbound client (`default_token_lifetime`
/// for answers without `expires_in`).
pub struct HttpEndpoint<'a> {
    pub http: &'a Outbound,
    pub default_lifetime: i64,
}

#[rocket::async_trait]
impl TokenEndpoint for HttpEndpoint<'_> {
    async fn refresh(
        &self,
        provider: &Provider,
        creds: &ClientCredentials,
        refresh_token: &Secret,
        current_scopes: &[String],
    ) -> Result<TokenSet, TokenError> {
        tokens::refresh(self.http, provider, creds, refresh_token, self.default_lifetime, current_scopes).await
    }
}

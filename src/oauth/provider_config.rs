//! What a `[<profile>.providers.<name>]` table (and a preset in `presets.toml`) may say: plain
//! data, read by `config::RawConfig` and resolved into a `Provider` by `oauth::providers`. It
//! imports nothing of the crate, so configuration and the catalog do not depend on each other.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeStyle {
    /// RFC 7009: form `token` + `token_type_hint`, client authentication.
    Rfc7009,
    /// Dropbox: POST with the access token as Bearer, no body.
    Dropbox,
    /// GitHub: DELETE /applications/{client_id}/token, Basic auth, JSON body.
    Github,
    /// The provider offers no revocation endpoint.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountMethod {
    Get,
    /// POST with no body (Dropbox's `get_current_account`).
    Post,
}

/// One `[<profile>.providers.<name>]` table. Every field may override its preset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub preset: Option<String>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub revoke_url: Option<String>,
    pub revoke_style: Option<RevokeStyle>,
    pub account_url: Option<String>,
    pub account_method: Option<AccountMethod>,
    pub api_base_url: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub authorize_params: Option<BTreeMap<String, String>>,
    pub client_auth: Option<ClientAuth>,
    pub pkce: Option<bool>,
    pub issuer: Option<String>,
    /// Microsoft: the tenant in the endpoint URLs (`common` by default).
    pub tenant: Option<String>,
    /// Access-token lifetime assumed when the token response has no `expires_in` (seconds).
    pub token_lifetime: Option<i64>,
    /// Whether this provider's tokens expire at all (GitHub OAuth apps: no).
    pub tokens_expire: Option<bool>,
    /// JSON pointers (RFC 6901) to the user's id, name and email in the account API's answer.
    pub account_id_pointer: Option<String>,
    pub account_name_pointer: Option<String>,
    pub account_email_pointer: Option<String>,
    /// What identifies the account to a person (an email, a login) in the account API's answer;
    /// shown beside every connection. Default: the email, else the name.
    pub account_label_pointer: Option<String>,
    /// Scopes a user may add to a connection later ("Request more permissions"; an upgrade asks
    /// for the union of the granted scopes and these).
    pub optional_scopes: Option<Vec<String>>,
    /// Whether the authorization request may ask for an incremental grant that keeps what was
    /// granted before (Google's `include_granted_scopes=true`).
    pub incremental_auth: Option<bool>,
    /// OpenID Connect: the provider's JWKS (its signing keys). With it and the `openid` scope,
    /// every connect sends a `nonce` and verifies the id_token (signature, `iss`, `aud`, `exp`,
    /// `nonce`), whose `sub` is the account. Discovery fills it from `jwks_uri`.
    pub jwks_url: Option<String>,
    /// Extra authorize parameters of a "Connect another account" flow: what makes the provider
    /// show its account chooser instead of signing its current session's account in again
    /// (`prompt = "select_account"`, Dropbox's `force_reauthentication = "true"`). Default:
    /// `prompt = "select_account"` for an OpenID Connect provider (`jwks_url` and `openid`), else
    /// none. A `prompt` is merged with one in `authorize_params` (both values, space-separated).
    pub add_account_params: Option<BTreeMap<String, String>>,
    /// Whether revoking one token at this provider ends the account's whole grant to the client
    /// (Google): then tokens that a reconnect replaces or a connect throws away are not revoked,
    /// since that would end the new tokens (or another connection's) too. Default `false`: each
    /// token is revoked on its own (RFC 7009 allows either).
    pub revocation_ends_grant: Option<bool>,
}

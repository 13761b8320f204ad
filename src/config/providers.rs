//! What a `[<profile>.providers.<name>]` table (and a preset in `presets.toml`) may say: plain
//! data, read by `config::RawConfig` and resolved into a `Provider` by `oauth::providers`. It
//! imports nothing of the crate, so configuration and the catalog do not depend on each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic `client_id:client_secret` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeStyle {
    /// RFC 7009: form `token` + `token_type_hint`, client authentication.
    Rfc7009,
    /// Dropbox: POST with the access token as Bearer, no body.
    Dropbox,
    /// GitHub: DELETE /applications/{client_id}/token, Basic auth, JSON body.
    Github,
    /// The access token authenticates a call to `revoke_url` (as it does API calls: `api_token_header`),
    /// with `revoke_method` and no body (Slack's `auth.revoke`, Linear, Strava; Shopify and Zendesk
    /// with DELETE). `dropbox` is this style with POST.
    Bearer,
    /// A JSON body `{"token": …}` (the refresh token, else the access token) with client
    /// authentication: HTTP Basic, or `client_id`/`client_secret` in the JSON (Intuit, Notion).
    Json,
    /// The provider offers no revocation endpoint.
    None,
}

/// The HTTP method of a `bearer` revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RevokeMethod {
    Post,
    Delete,
}

/// How the code exchange and refresh requests are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenRequest {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    Form,
    /// The same parameters as a JSON object (Notion).
    Json,
}

/// How the account call authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStyle {
    /// The access token authenticates a call to `account_url`, as it does API calls.
    Api,
    /// RFC 7662 token introspection: POST `token=<access token>` to `account_url` with client
    /// authentication; the answer describes the token's account (HubSpot).
    Introspect,
}

/// What a URL parameter's value may be. None of them allows `/`, `@`, `?`, `#`, `%`, `\` or
/// whitespace, so a parameter never moves a URL to another host or path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParameterKind {
    /// One DNS label (`acme-store` of `acme-store.myshopify.com`): 1-63 of a-z, A-Z, 0-9 and `-`,
    /// not starting or ending with `-`.
    #[default]
    Label,
    /// A host name (labels joined by dots), optionally with `:port` (`acme.okta.com`).
    Hostname,
    /// One URL path segment (a Keycloak realm, a Microsoft tenant): 1-128 of a-z, A-Z, 0-9, `.`,
    /// `_`, `~` and `-`, not `.` or `..`.
    Segment,
}

/// A parameter a preset's URLs need (`{shop}`, `{subdomain}`, `{domain}`, `{realm}`…): the operator's
/// table gives its value in `params` (Microsoft's `tenant` also as the `tenant` key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    pub name: String,
    /// What the value is, for the operator (a form field's label on the admin page).
    pub description: String,
    /// An example value (valid for `kind`).
    pub example: String,
    #[serde(default)]
    pub kind: ParameterKind,
    /// The value when the operator gives none (else the parameter is required).
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum AccountMethod {
    Get,
    /// POST with no body (Dropbox's `get_current_account`), or with `account_body`.
    Post,
}

/// An example request of the provider's API, offered as a one-click fill on the console
/// (`/services/<service>/console`): a path under `api_base_url` (with its query, if any) and, for
/// `POST`, `PUT` and `PATCH`, a JSON body (`"null"` for Dropbox's argument-less calls).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiExample {
    /// What it does, as the link says (`Current account`).
    pub name: String,
    /// `GET` (default), `HEAD`, `POST`, `PUT`, `PATCH` or `DELETE`.
    #[serde(default = "ApiExample::get", skip_serializing_if = "ApiExample::is_get")]
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl ApiExample {
    fn get() -> String {
        "GET".into()
    }

    fn is_get(method: &str) -> bool {
        method == "GET"
    }
}

/// One `[<profile>.providers.<name>]` table. Every field may override its preset.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    /// The parameters this provider's URLs take (`{shop}`…), declared by its preset.
    pub parameters: Option<Vec<ParameterSpec>>,
    /// The values of those parameters (`params = { shop = "acme-store" }`).
    pub params: Option<BTreeMap<String, String>>,
    /// Where an application (client id and secret) is registered at the provider.
    pub register_url: Option<String>,
    /// What joins the scopes in the authorization request (default a space; Slack, Strava: `,`).
    pub scope_separator: Option<String>,
    /// The authorization request's parameter carrying the scopes (default `scope`; Slack's user
    /// tokens: `user_scope`).
    pub scope_param: Option<String>,
    /// How the token requests are encoded: `form` (default) or `json` (Notion).
    pub token_request: Option<TokenRequest>,
    /// A JSON pointer to the object holding the tokens in the token response, used when that
    /// object has an `access_token` (Slack's user token: `/authed_user`).
    pub token_response_root: Option<String>,
    /// Where refresh requests go when not to `token_url` (Figma).
    pub refresh_url: Option<String>,
    /// The HTTP method of a `bearer` revocation: `POST` (default) or `DELETE`.
    pub revoke_method: Option<RevokeMethod>,
    /// How the access token is sent to the API, the account call and a `bearer` revocation:
    /// `"<Header>: <value with {token}>"` (default `Authorization: Bearer {token}`; Shopify
    /// `X-Shopify-Access-Token: {token}`).
    pub api_token_header: Option<String>,
    /// Headers sent with every request to the provider (token endpoint, account call, revocation,
    /// API proxy), e.g. `Notion-Version`; `{client_id}` in a value is the client id (Twitch).
    pub api_headers: Option<BTreeMap<String, String>>,
    /// A JSON body for a `POST` account call (a GraphQL query: Linear, monday.com, Shopify).
    pub account_body: Option<String>,
    /// How the account call authenticates: `api` (default) or `introspect` (RFC 7662, HubSpot).
    pub account_style: Option<AccountStyle>,
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
    /// Whether `GET` and `HEAD` calls to this provider's API only read (default `true`). `false`
    /// for RPC-style APIs that act on a `GET` with a query string (Slack's Web API:
    /// `chat.postMessage`, `auth.revoke`): every proxied call then needs `proxy` (`proxy:write`),
    /// and `proxy:read` grants nothing there.
    pub read_methods_are_safe: Option<bool>,
    /// Example requests of its API shown on the console (see [`ApiExample`]).
    pub examples: Option<Vec<ApiExample>>,
}

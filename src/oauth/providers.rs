//! The provider catalog: presets for well-known providers, any OAuth 2.0 provider from
//! configuration, and the built-in demo provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use url::Url;

use crate::config::{invalid, parse_endpoint, ConfigError, Settings};

pub use crate::config::providers::{
    AccountMethod, AccountStyle, ApiExample, ClientAuth, ParameterKind, ParameterSpec, ProviderConfig, RevokeMethod,
    RevokeStyle, TokenRequest,
};
use crate::oauth::parameters;
pub use crate::oauth::parameters::Parameter;

/// Where the user's id, name and email are in the account response (JSON pointers).
#[derive(Debug, Clone, Default)]
pub struct AccountFields {
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    /// What a person recognises the account by (default: the email, else the name).
    pub label: Option<String>,
}

impl AccountFields {
    fn of(cfg: &ProviderConfig) -> AccountFields {
        AccountFields {
            id: cfg.account_id_pointer.clone(),
            name: cfg.account_name_pointer.clone(),
            email: cfg.account_email_pointer.clone(),
            label: cfg.account_label_pointer.clone(),
        }
    }
}

/// A resolved, validated provider.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub authorize_url: Url,
    pub token_url: Url,
    /// The revocation endpoint; for GitHub a template with `{client_id}`.
    pub revoke_url: Option<String>,
    pub revoke_style: RevokeStyle,
    pub account_url: Option<Url>,
    pub account_method: AccountMethod,
    pub api_base_url: Option<Url>,
    pub scopes: Vec<String>,
    /// Scopes a connection may be upgraded with later (`optional_scopes`).
    pub optional_scopes: Vec<String>,
    /// Ask for incremental grants (`include_granted_scopes=true`) when upgrading.
    pub incremental_auth: bool,
    /// OpenID Connect: where the id_token's signing keys are (`jwks_url`).
    pub jwks_url: Option<Url>,
    pub authorize_params: Vec<(String, String)>,
    /// Added to the authorize parameters of a "Connect another account" flow (see
    /// `ProviderConfig::add_account_params`).
    pub add_account_params: Vec<(String, String)>,
    /// Revoking one token ends the account's whole grant to the client (Google): replaced and
    /// discarded tokens are then left to expire rather than revoked.
    pub revocation_ends_grant: bool,
    /// `GET` and `HEAD` only read (`read_methods_are_safe`, default `true`); when `false`, every
    /// proxied call needs `proxy` and `proxy:read` grants nothing (Slack).
    pub read_methods_are_safe: bool,
    pub client_auth: ClientAuth,
    pub pkce: bool,
    /// The issuer a callback's `iss` must equal (RFC 9207): configured, or the authorize origin.
    pub issuer: String,
    /// Whether `issuer` was configured (exact match) or derived from the authorize URL (origin match).
    pub issuer_configured: bool,
    pub token_lifetime: Option<i64>,
    pub tokens_expire: bool,
    pub account_fields: AccountFields,
    /// The built-in demo provider.
    pub is_demo: bool,
    /// The parameters of its URLs (`{shop}`…), with their values: the admin page's form fields.
    pub parameters: Vec<Parameter>,
    /// Where an application is registered at the provider (`register_url`).
    pub register_url: Option<String>,
    /// What joins the scopes in the authorization request (`scope_separator`).
    pub scope_separator: String,
    /// The authorization request's parameter carrying the scopes (`scope_param`).
    pub scope_param: String,
    pub token_request: TokenRequest,
    /// Where the tokens are in the token response, when not at the top (`token_response_root`).
    pub token_response_root: Option<String>,
    /// Where refresh requests go (`refresh_url`, default `token_url`).
    pub refresh_url: Option<Url>,
    pub revoke_method: RevokeMethod,
    /// How the access token is sent to the API (`api_token_header`).
    pub token_header: TokenHeader,
    /// Headers for every request to the provider (`api_headers`; `{client_id}` filled at call time).
    pub api_headers: Vec<(String, String)>,
    /// The JSON body of a `POST` account call (`account_body`).
    pub account_body: Option<String>,
    pub account_style: AccountStyle,
    /// Its endpoints were set in the app (added or edited, `crate::oauth::managed`): every call
    /// to it connects only to addresses the egress rule allows (`Outbound::for_provider`).
    pub set_in_app: bool,
    /// Example requests of its API, for the console (`examples`).
    pub examples: Vec<ApiExample>,
}

/// How the access token travels to the API: a header whose value is a prefix, the token and a
/// suffix (`Authorization: Bearer {token}` unless `api_token_header` says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    pub name: reqwest::header::HeaderName,
    prefix: String,
    suffix: String,
}

/// Headers a provider table may not set (`api_headers`, `api_token_header`): the request's own
/// framing, credentials and cookies.
const RESERVED_HEADERS: &[&str] =
    &["authorization", "cookie", "host", "content-length", "content-type", "transfer-encoding", "connection"];

fn header_name(key: &str, name: &str) -> Result<reqwest::header::HeaderName, ConfigError> {
    reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid(key, format!("`{name}` is not a header name")))
}

impl TokenHeader {
    /// `Authorization: Bearer {token}`.
    pub fn bearer() -> TokenHeader {
        TokenHeader { name: reqwest::header::AUTHORIZATION, prefix: "Bearer ".into(), suffix: String::new() }
    }

    /// Parse `"<Header>: <value with {token}>"`.
    pub fn parse(key: &str, text: &str) -> Result<TokenHeader, ConfigError> {
        let (name, value) =
            text.split_once(':').ok_or_else(|| invalid(key, "must be `<Header>: <value with {token}>`"))?;
        let name = header_name(key, name)?;
        if name != reqwest::header::AUTHORIZATION && RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(invalid(key, format!("`{name}` cannot carry the token")));
        }
        let value = value.trim_start();
        let (prefix, suffix) =
            value.split_once("{token}").ok_or_else(|| invalid(key, "the value must contain `{token}`"))?;
        if suffix.contains("{token}") || reqwest::header::HeaderValue::from_str(&format!("{prefix}x{suffix}")).is_err()
        {
            return Err(invalid(key, "the value must contain `{token}` once, in printable characters"));
        }
        Ok(TokenHeader { name, prefix: prefix.into(), suffix: suffix.into() })
    }

    /// `builder` with the token in this header (marked sensitive, as `bearer_auth` does).
    pub fn apply(&self, builder: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
        match reqwest::header::HeaderValue::from_str(&format!("{}{token}{}", self.prefix, self.suffix)) {
            Ok(mut value) => {
                value.set_sensitive(true);
                builder.header(self.name.clone(), value)
            }
            // A token that is no header value is sent as nothing (the provider answers 401).
            Err(_) => builder,
        }
    }

    /// The header as `api_token_header` writes it.
    pub fn describe(&self) -> String {
        format!("{}: {}{{token}}{}", self.name, self.prefix, self.suffix)
    }
}

fn api_headers(
    key: &str,
    headers: &BTreeMap<String, String>,
    token: &TokenHeader,
) -> Result<Vec<(String, String)>, ConfigError> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = header_name(key, name)?;
            if RESERVED_HEADERS.contains(&name.as_str()) || name == token.name {
                return Err(invalid(key, format!("`{name}` cannot be set here")));
            }
            let filled = parameters::fill(key, value, &[], &["client_id"])?;
            if reqwest::header::HeaderValue::from_str(&filled.replace("{client_id}", "id")).is_err() {
                return Err(invalid(key, format!("the value of `{name}` is not a header value")));
            }
            Ok((name.to_string(), filled))
        })
        .collect()
}

impl Provider {
    /// This provider as errors name it (`crate::error::Service`).
    pub fn service(&self) -> crate::error::Service {
        crate::error::Service { name: self.name.clone(), display_name: self.display_name.clone() }
    }

    /// Vault path of this provider's client id.
    pub fn client_id_path(&self) -> String {
        format!("{}.client_id", self.name)
    }

    pub fn client_secret_path(&self) -> String {
        format!("{}.client_secret", self.name)
    }

    /// Whether connects verify an OpenID Connect id_token (a JWKS and the `openid` scope).
    pub fn verifies_id_token(&self) -> bool {
        self.jwks_url.is_some() && self.scopes.iter().any(|s| s == "openid")
    }

    pub fn can_revoke(&self) -> bool {
        self.revoke_style != RevokeStyle::None
            && (self.revoke_url.is_some() || self.revoke_style == RevokeStyle::Github)
    }

    /// Whether the tokens tokenvault replaces or throws away are revoked at the provider
    /// (`oauth::retire`): it can revoke, and revoking one token does not end the account's whole
    /// grant (`revocation_ends_grant`), which would end the new tokens, or another connection's, too.
    pub fn revokes_retired_tokens(&self) -> bool {
        self.can_revoke() && !self.revocation_ends_grant
    }

    /// Whether a callback's `iss` parameter names this provider (RFC 9207 mix-up defence): the
    /// configured issuer exactly, or, when none is configured, an issuer on the authorize origin.
    pub fn issuer_matches(&self, iss: &str) -> bool {
        let iss = iss.trim_end_matches('/');
        if self.issuer_configured {
            return iss == self.issuer;
        }
        Url::parse(iss).map(|u| u.origin() == self.authorize_url.origin()).unwrap_or(false)
    }

    /// Whether requests to this provider need the client id at call time (`{client_id}` in an
    /// `api_headers` value).
    pub fn needs_client_id(&self) -> bool {
        self.api_headers.iter().any(|(_, v)| v.contains("{client_id}"))
    }

    /// The `api_headers` with `{client_id}` filled in (left out when no client id is given).
    pub fn api_headers(&self, client_id: Option<&str>) -> Vec<(String, String)> {
        self.api_headers
            .iter()
            .filter_map(|(name, value)| match (value.contains("{client_id}"), client_id) {
                (false, _) => Some((name.clone(), value.clone())),
                (true, Some(id)) => Some((name.clone(), value.replace("{client_id}", id))),
                (true, None) => None,
            })
            .collect()
    }

    /// Where refresh requests go.
    pub fn refresh_url(&self) -> &Url {
        self.refresh_url.as_ref().unwrap_or(&self.token_url)
    }

    /// Origin of the authorize URL (for CSP `form-action`).
    pub fn authorize_origin(&self) -> String {
        self.authorize_url.origin().ascii_serialization()
    }
}

/// The presets, compiled in: one table per well-known provider (`src/oauth/presets.toml`).
const PRESETS_TOML: &str = include_str!("presets.toml");

/// Every preset by name, parsed once.
fn presets() -> &'static BTreeMap<String, ProviderConfig> {
    static PRESETS: std::sync::OnceLock<BTreeMap<String, ProviderConfig>> = std::sync::OnceLock::new();
    PRESETS.get_or_init(|| {
        use rocket::figment::providers::{Format, Toml};
        rocket::figment::Figment::from(Toml::string(PRESETS_TOML))
            .extract()
            .expect("src/oauth/presets.toml is valid (checked by a unit test)")
    })
}

/// The names of the presets, for error messages and documentation.
pub fn preset_names() -> Vec<&'static str> {
    presets().keys().map(String::as_str).collect()
}

/// The preset `name`, as the data file has it.
pub fn preset(name: &str) -> Option<&'static ProviderConfig> {
    presets().get(name)
}

/// OpenID Connect's standard claims, for providers resolved by discovery (their userinfo endpoint).
const OIDC_ACCOUNT_FIELDS: (&str, &str, &str) = ("/sub", "/name", "/email");

/// Overlay `over` on `base`: every field set in `over` wins.
pub(crate) fn overlay(base: ProviderConfig, over: &ProviderConfig) -> ProviderConfig {
    macro_rules! pick {
        ($($f:ident),*) => { ProviderConfig { $($f: over.$f.clone().or(base.$f),)* } };
    }
    pick!(
        preset,
        display_name,
        description,
        authorize_url,
        token_url,
        revoke_url,
        revoke_style,
        account_url,
        account_method,
        api_base_url,
        scopes,
        authorize_params,
        client_auth,
        pkce,
        issuer,
        tenant,
        token_lifetime,
        tokens_expire,
        account_id_pointer,
        account_name_pointer,
        account_email_pointer,
        account_label_pointer,
        optional_scopes,
        incremental_auth,
        jwks_url,
        parameters,
        params,
        register_url,
        scope_separator,
        scope_param,
        token_request,
        token_response_root,
        refresh_url,
        revoke_method,
        api_token_header,
        api_headers,
        account_body,
        account_style,
        add_account_params,
        revocation_ends_grant,
        read_methods_are_safe,
        examples
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Resolve one configured provider into a [`Provider`]: its preset under it, its URLs filled in
/// with its parameters and checked, its values checked, its defaults applied.
pub fn resolve(name: &str, cfg: &ProviderConfig) -> Result<Provider, ConfigError> {
    if !valid_name(name) {
        return Err(invalid(format!("providers.{name}"), "names are 1-32 characters of a-z, 0-9, - and _"));
    }
    let merged = with_preset(name, cfg)?;
    let urls = Urls { name, parameters: parameters::resolve(name, &merged)? };
    let authorize_url = urls.required(&merged.authorize_url, "authorize_url")?;
    let token_url = urls.required(&merged.token_url, "token_url")?;
    check_values(name, &merged)?;
    let token_header = match &merged.api_token_header {
        Some(h) => TokenHeader::parse(&urls.key("api_token_header"), h)?,
        None => TokenHeader::bearer(),
    };
    let api_headers =
        api_headers(&urls.key("api_headers"), &merged.api_headers.clone().unwrap_or_default(), &token_header)?;
    let display_name = merged.display_name.clone().unwrap_or_else(|| name.to_string());
    let scopes = merged.scopes.clone().unwrap_or_default();
    let jwks_url = urls.endpoint(&merged.jwks_url, "jwks_url")?;
    // An OpenID Connect provider shows its account chooser for `prompt=select_account` (§3.1.2.1).
    let openid = jwks_url.is_some() && scopes.iter().any(|s| s == "openid");
    let add_account_params = match &merged.add_account_params {
        Some(params) => params.clone().into_iter().collect(),
        None if openid => vec![("prompt".to_string(), "select_account".to_string())],
        None => Vec::new(),
    };
    Ok(Provider {
        name: name.to_string(),
        description: merged.description.clone().unwrap_or_else(|| format!("Your {display_name} account.")),
        display_name,
        issuer: urls.issuer(&merged, &authorize_url)?,
        issuer_configured: merged.issuer.is_some(),
        authorize_url,
        token_url,
        revoke_url: urls.revoke_url(&merged)?,
        revoke_style: merged.revoke_style.unwrap_or(if merged.revoke_url.is_some() {
            RevokeStyle::Rfc7009
        } else {
            RevokeStyle::None
        }),
        account_url: urls.endpoint(&merged.account_url, "account_url")?,
        account_method: merged.account_method.unwrap_or(AccountMethod::Get),
        api_base_url: urls.endpoint(&merged.api_base_url, "api_base_url")?,
        scopes,
        optional_scopes: merged.optional_scopes.clone().unwrap_or_default(),
        incremental_auth: merged.incremental_auth.unwrap_or(false),
        jwks_url,
        authorize_params: merged.authorize_params.clone().unwrap_or_default().into_iter().collect(),
        add_account_params,
        revocation_ends_grant: merged.revocation_ends_grant.unwrap_or(false),
        read_methods_are_safe: merged.read_methods_are_safe.unwrap_or(true),
        client_auth: merged.client_auth.unwrap_or(ClientAuth::Basic),
        pkce: merged.pkce.unwrap_or(true),
        token_lifetime: merged.token_lifetime,
        tokens_expire: merged.tokens_expire.unwrap_or(true),
        account_fields: AccountFields::of(&merged),
        is_demo: false,
        set_in_app: false,
        register_url: urls.filled(&merged.register_url, "register_url")?,
        refresh_url: urls.endpoint(&merged.refresh_url, "refresh_url")?,
        scope_separator: merged.scope_separator.clone().unwrap_or_else(|| " ".into()),
        scope_param: merged.scope_param.clone().unwrap_or_else(|| "scope".into()),
        token_request: merged.token_request.unwrap_or(TokenRequest::Form),
        token_response_root: merged.token_response_root.clone(),
        revoke_method: merged.revoke_method.unwrap_or(RevokeMethod::Post),
        token_header,
        api_headers,
        account_body: merged.account_body.clone(),
        account_style: merged.account_style.unwrap_or(AccountStyle::Api),
        examples: merged.examples.clone().unwrap_or_default(),
        parameters: urls.parameters,
    })
}

/// The provider's table laid over its preset's, if it names one.
fn with_preset(name: &str, cfg: &ProviderConfig) -> Result<ProviderConfig, ConfigError> {
    let Some(p) = &cfg.preset else { return Ok(cfg.clone()) };
    let base = preset(p).ok_or_else(|| {
        invalid(
            format!("providers.{name}.preset"),
            format!("unknown preset `{p}` (known: {})", preset_names().join(", ")),
        )
    })?;
    Ok(overlay(base.clone(), cfg))
}

/// The values (not URLs) a provider table can get wrong.
fn check_values(name: &str, merged: &ProviderConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    if merged.token_lifetime.is_some_and(|lifetime| lifetime <= 0) {
        return Err(invalid(key("token_lifetime"), "must be positive"));
    }
    if let Some(sep) = &merged.scope_separator {
        if sep.is_empty() || sep.chars().any(|c| c.is_alphanumeric()) {
            return Err(invalid(key("scope_separator"), "must be punctuation or a space, e.g. \",\""));
        }
    }
    if let Some(param) = &merged.scope_param {
        if param.is_empty() || !param.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid(key("scope_param"), "must be a parameter name (letters, digits and `_`)"));
        }
    }
    let pointers = [
        ("account_id_pointer", &merged.account_id_pointer),
        ("account_name_pointer", &merged.account_name_pointer),
        ("account_email_pointer", &merged.account_email_pointer),
        ("account_label_pointer", &merged.account_label_pointer),
    ];
    for (name, pointer) in pointers {
        // RFC 6901: empty (the whole document) or `/`-separated tokens.
        if pointer.as_ref().is_some_and(|p| !p.is_empty() && !p.starts_with('/')) {
            return Err(invalid(key(name), "must be a JSON pointer (starting with `/`, e.g. `/id`)"));
        }
    }
    for (i, example) in merged.examples.iter().flatten().enumerate() {
        check_example(example).map_err(|e| invalid(key(&format!("examples[{i}]")), e))?;
    }
    if merged.token_response_root.as_ref().is_some_and(|root| !root.starts_with('/')) {
        return Err(invalid(key("token_response_root"), "must be a JSON pointer (starting with `/`)"));
    }
    if let Some(body) = &merged.account_body {
        serde_json::from_str::<serde_json::Value>(body)
            .map_err(|e| invalid(key("account_body"), format!("is not JSON ({e})")))?;
        if merged.account_method != Some(AccountMethod::Post) {
            return Err(invalid(key("account_body"), "needs `account_method = \"POST\"`"));
        }
    }
    Ok(())
}

/// The methods the API proxy forwards (one route each in `routes::api`).
pub const API_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The methods that carry a request body through the proxy.
pub fn method_takes_body(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH")
}

/// An example request is one the console can send: a method the proxy forwards, a relative path
/// (its query after `?`), a JSON body only where the method carries one.
fn check_example(example: &ApiExample) -> Result<(), String> {
    if example.name.trim().is_empty() {
        return Err("needs a `name`".into());
    }
    if !API_METHODS.contains(&example.method.as_str()) {
        return Err(format!("`method` must be one of {}", API_METHODS.join(", ")));
    }
    if example.path.contains("://") || example.path.starts_with("//") || example.path.split('/').any(|s| s == "..") {
        return Err("`path` is a path under `api_base_url` (e.g. `/user`), not a URL".into());
    }
    match &example.body {
        Some(_) if !method_takes_body(&example.method) => Err(format!("a {} request has no `body`", example.method)),
        Some(body) => {
            serde_json::from_str::<serde_json::Value>(body).map(|_| ()).map_err(|e| format!("`body` is not JSON ({e})"))
        }
        None => Ok(()),
    }
}

/// A provider's URLs, filled in with its parameters and checked.
struct Urls<'a> {
    name: &'a str,
    parameters: Vec<Parameter>,
}

impl Urls<'_> {
    fn key(&self, field: &str) -> String {
        format!("providers.{}.{field}", self.name)
    }

    /// A URL with its parameters filled in (`{client_id}` is filled at call time: GitHub).
    fn filled(&self, v: &Option<String>, field: &str) -> Result<Option<String>, ConfigError> {
        v.as_deref().map(|u| parameters::fill(&self.key(field), u, &self.parameters, &["client_id"])).transpose()
    }

    fn endpoint(&self, v: &Option<String>, field: &str) -> Result<Option<Url>, ConfigError> {
        self.filled(v, field)?.map(|u| parse_endpoint(&self.key(field), &u)).transpose()
    }

    fn required(&self, v: &Option<String>, field: &str) -> Result<Url, ConfigError> {
        self.endpoint(v, field)?.ok_or_else(|| invalid(self.key(field), "is required (or set `preset`)"))
    }

    /// `{client_id}` is filled in at call time (GitHub); the rest of the URL is checked.
    fn revoke_url(&self, merged: &ProviderConfig) -> Result<Option<String>, ConfigError> {
        let Some(u) = self.filled(&merged.revoke_url, "revoke_url")? else { return Ok(None) };
        parse_endpoint(&self.key("revoke_url"), &u.replace("{client_id}", "client-id"))?;
        Ok(Some(u))
    }

    /// The configured issuer, else the authorization endpoint's origin.
    fn issuer(&self, merged: &ProviderConfig, authorize_url: &Url) -> Result<String, ConfigError> {
        match self.filled(&merged.issuer, "issuer")? {
            Some(i) => {
                Url::parse(&i).map_err(|e| invalid(self.key("issuer"), e.to_string()))?;
                Ok(i.trim_end_matches('/').to_string())
            }
            None => Ok(authorize_url.origin().ascii_serialization()),
        }
    }
}

/// The built-in demo provider, served by this same app under `/demo`.
pub fn demo(settings: &Settings) -> Provider {
    let url = |p: &str| Url::parse(&settings.url(p)).expect("public_url was validated");
    Provider {
        name: "demo".into(),
        display_name: "Demo provider".into(),
        description: "A small OAuth 2.0 server built into tokenvault, for trying the whole flow offline.".into(),
        authorize_url: url("/demo/oauth2/authorize"),
        token_url: url("/demo/oauth2/token"),
        revoke_url: Some(settings.url("/demo/oauth2/revoke")),
        revoke_style: RevokeStyle::Rfc7009,
        account_url: Some(url("/demo/api/account")),
        account_method: AccountMethod::Get,
        api_base_url: Some(url("/demo/api")),
        scopes: vec!["profile".into(), "files.read".into()],
        optional_scopes: vec!["files.write".into()],
        incremental_auth: false,
        jwks_url: None,
        authorize_params: Vec::new(),
        // Its consent page asks for the account every time; each code makes a grant of its own.
        add_account_params: Vec::new(),
        revocation_ends_grant: false,
        read_methods_are_safe: true,
        client_auth: ClientAuth::Basic,
        pkce: true,
        issuer: settings.url("/demo"),
        issuer_configured: true,
        token_lifetime: Some(settings.demo.token_lifetime),
        tokens_expire: true,
        account_fields: AccountFields {
            id: Some("/id".into()),
            name: Some("/name".into()),
            email: Some("/email".into()),
            label: Some("/email".into()),
        },
        is_demo: true,
        set_in_app: false,
        parameters: Vec::new(),
        register_url: None,
        scope_separator: " ".into(),
        scope_param: "scope".into(),
        token_request: TokenRequest::Form,
        token_response_root: None,
        refresh_url: None,
        revoke_method: RevokeMethod::Post,
        token_header: TokenHeader::bearer(),
        api_headers: Vec::new(),
        account_body: None,
        account_style: AccountStyle::Api,
        examples: vec![ApiExample {
            name: "Your demo account".into(),
            method: "GET".into(),
            path: "/account".into(),
            body: None,
        }],
    }
}

/// A provider configured only by its `issuer`: everything else comes from OpenID Connect discovery.
pub fn needs_discovery(cfg: &ProviderConfig) -> bool {
    cfg.preset.is_none() && cfg.authorize_url.is_none() && cfg.token_url.is_none() && cfg.issuer.is_some()
}

#[derive(Debug, Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    jwks_uri: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

/// Fetch `<issuer>/.well-known/openid-configuration` and resolve the provider from it. The
/// document's `issuer` must equal the configured one exactly (OpenID Connect Discovery §4.3).
pub async fn discover(
    http: &crate::oauth::http::Outbound,
    name: &str,
    cfg: &ProviderConfig,
) -> Result<Provider, String> {
    resolve(name, &discovered_config(http, name, cfg).await?).map_err(|e| e.to_string())
}

/// What OpenID Connect discovery of `cfg.issuer` says, with `cfg` laid over it: the provider table
/// to resolve (or to store, for a provider added in the app by its issuer).
pub async fn discovered_config(
    http: &crate::oauth::http::Outbound,
    name: &str,
    cfg: &ProviderConfig,
) -> Result<ProviderConfig, String> {
    let issuer = cfg.issuer.clone().ok_or("no issuer configured")?;
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let url = parse_endpoint(&format!("providers.{name}.issuer"), &url).map_err(|e| e.to_string())?;
    let (status, _, body) =
        http.send(http.client().get(url).header("Accept", "application/json")).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the discovery document answered HTTP {}", status.as_u16()));
    }
    let doc: DiscoveryDocument =
        serde_json::from_slice(&body).map_err(|e| format!("the discovery document is invalid: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!("the discovery document names issuer `{}`, not the configured `{issuer}`", doc.issuer));
    }
    let methods = &doc.token_endpoint_auth_methods_supported;
    let client_auth = if methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic") {
        ClientAuth::Basic
    } else if methods.iter().any(|m| m == "client_secret_post") {
        ClientAuth::Post
    } else {
        return Err(format!("the provider supports none of client_secret_basic/client_secret_post ({methods:?})"));
    };
    let (id, name_pointer, email) = OIDC_ACCOUNT_FIELDS;
    let discovered = ProviderConfig {
        account_id_pointer: Some(id.into()),
        account_name_pointer: Some(name_pointer.into()),
        account_email_pointer: Some(email.into()),
        authorize_url: Some(doc.authorization_endpoint),
        token_url: Some(doc.token_endpoint),
        revoke_url: doc.revocation_endpoint,
        account_url: doc.userinfo_endpoint,
        jwks_url: doc.jwks_uri,
        client_auth: Some(client_auth),
        scopes: Some(vec!["openid".into(), "email".into(), "profile".into()]),
        ..Default::default()
    };
    Ok(overlay(discovered, cfg))
}

/// Every service users can connect, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    providers: BTreeMap<String, Arc<Provider>>,
    /// Providers waiting for OpenID Connect discovery (done at ignite).
    pending: Vec<(String, ProviderConfig)>,
    /// Providers disabled in the app (`crate::oauth::managed`): hidden from users and the API,
    /// their connections kept.
    disabled: BTreeMap<String, Arc<Provider>>,
}

impl Catalog {
    pub fn build(settings: &Settings, configured: &BTreeMap<String, ProviderConfig>) -> Result<Catalog, ConfigError> {
        let mut providers = BTreeMap::new();
        let mut pending = Vec::new();
        if settings.demo_provider {
            providers.insert("demo".to_string(), Arc::new(demo(settings)));
        }
        for (name, cfg) in configured {
            if name == "demo" && settings.demo_provider {
                return Err(invalid("providers.demo", "`demo` is the built-in demo provider's name; pick another"));
            }
            if needs_discovery(cfg) {
                pending.push((name.clone(), cfg.clone()));
                continue;
            }
            providers.insert(name.clone(), Arc::new(resolve(name, cfg)?));
        }
        Ok(Catalog { providers, pending, disabled: BTreeMap::new() })
    }

    /// Resolve the providers configured by `issuer` alone. A provider whose discovery fails is
    /// left out (with a clear log line) rather than stopping the app.
    pub async fn discover(&mut self, http: &crate::oauth::http::Outbound) {
        for (name, cfg) in std::mem::take(&mut self.pending) {
            match discover(http, &name, &cfg).await {
                Ok(p) => {
                    tracing::info!(provider = %name, issuer = %p.issuer, "OpenID Connect discovery done");
                    self.providers.insert(name, Arc::new(p));
                }
                Err(e) => tracing::error!(provider = %name, "provider refused: OpenID Connect discovery failed: {e}"),
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.get(name).cloned()
    }

    /// A catalog of `providers` in effect and `disabled` ones (`crate::oauth::managed`).
    pub fn assemble(providers: BTreeMap<String, Arc<Provider>>, disabled: BTreeMap<String, Arc<Provider>>) -> Catalog {
        Catalog { providers, pending: Vec::new(), disabled }
    }

    /// Whether `name` is a provider disabled in the app.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled.contains_key(name)
    }

    /// The provider `name`, in effect or disabled: for what must go on with a disabled provider's
    /// kept connections (a user deleting one, revoking replaced tokens, naming it on a page).
    pub fn get_any(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.get(name).or_else(|| self.disabled.get(name)).cloned()
    }

    /// The providers in effect, by name.
    pub fn providers(&self) -> &BTreeMap<String, Arc<Provider>> {
        &self.providers
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.values()
    }

    /// Distinct authorize origins other than our own, for CSP `form-action`.
    pub fn authorize_origins(&self, own_origin: &str) -> Vec<String> {
        let mut origins: Vec<String> =
            self.providers.values().map(|p| p.authorize_origin()).filter(|o| o != own_origin).collect();
        origins.sort();
        origins.dedup();
        origins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(preset: &str) -> ProviderConfig {
        ProviderConfig { preset: Some(preset.into()), ..Default::default() }
    }

    #[test]
    fn presets_resolve_with_provider_facts() {
        let d = resolve("dropbox", &cfg("dropbox")).unwrap();
        assert_eq!(d.client_auth, ClientAuth::Basic);
        assert_eq!(d.authorize_params, vec![("token_access_type".to_string(), "offline".to_string())]);
        assert_eq!(d.account_method, AccountMethod::Post);
        assert_eq!(d.revoke_style, RevokeStyle::Dropbox);
        let g = resolve("google", &cfg("google")).unwrap();
        assert_eq!(g.client_auth, ClientAuth::Post);
        assert!(g.authorize_params.contains(&("access_type".into(), "offline".into())));
        assert!(g.authorize_params.contains(&("prompt".into(), "consent".into())));
        assert_eq!(g.issuer, "https://accounts.google.com");
        let m = resolve("ms", &ProviderConfig { tenant: Some("contoso".into()), ..cfg("microsoft") }).unwrap();
        assert_eq!(m.authorize_url.as_str(), "https://login.microsoftonline.com/contoso/oauth2/v2.0/authorize");
        assert_eq!(m.token_url.as_str(), "https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
        assert!(!m.can_revoke());
        assert!(m.scopes.contains(&"offline_access".to_string()));
        let gh = resolve("github", &cfg("github")).unwrap();
        assert!(gh.can_revoke());
        assert!(!gh.tokens_expire);
        // What shows each one's account chooser, and whether one revocation ends the whole grant.
        let pair = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(d.add_account_params, pair("force_reauthentication", "true"));
        assert_eq!(g.add_account_params, pair("prompt", "select_account"));
        assert_eq!(m.add_account_params, pair("prompt", "select_account"));
        assert_eq!(gh.add_account_params, pair("prompt", "select_account"));
        assert!(g.revocation_ends_grant);
        assert!(!d.revocation_ends_grant && !gh.revocation_ends_grant && !m.revocation_ends_grant);
        // Slack's Web API acts on a GET: no read-only calls there; elsewhere reads are safe.
        assert!(!resolve("slack", &cfg("slack")).unwrap().read_methods_are_safe);
        assert!(d.read_methods_are_safe && g.read_methods_are_safe && gh.read_methods_are_safe);
    }

    #[test]
    fn openid_providers_show_their_account_chooser_by_default() {
        let custom = |jwks: bool, scopes: &[&str], params: Option<&[(&str, &str)]>| ProviderConfig {
            authorize_url: Some("https://acme.example/authorize".into()),
            token_url: Some("https://acme.example/token".into()),
            jwks_url: jwks.then(|| "https://acme.example/jwks".into()),
            scopes: Some(scopes.iter().map(|s| s.to_string()).collect()),
            add_account_params: params.map(|p| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        let params = |c: ProviderConfig| resolve("acme", &c).unwrap().add_account_params;
        assert_eq!(params(custom(true, &["openid"], None)), [("prompt".to_string(), "select_account".to_string())]);
        assert!(params(custom(false, &["openid"], None)).is_empty(), "no id_token, no OpenID prompt");
        assert!(params(custom(true, &["read"], None)).is_empty());
        assert!(params(custom(true, &["openid"], Some(&[]))).is_empty(), "configured empty: none");
        assert_eq!(params(custom(false, &[], Some(&[("login", "1")]))), [("login".to_string(), "1".to_string())]);
        assert!(!resolve("acme", &custom(false, &[], None)).unwrap().revocation_ends_grant);
    }

    /// Each preset's example requests are ones the console sends: a method the proxy forwards,
    /// a path under the API base, JSON only where the method carries a body. Most presets offer
    /// their account call, and a broken example is refused with the key that names it.
    #[test]
    fn preset_examples_are_requests_under_the_api_base() {
        let mut with = 0;
        for name in preset_names() {
            let p = resolve(name, &with_examples(name)).unwrap();
            let base = p.api_base_url.clone().unwrap_or_else(|| panic!("{name} has an API base"));
            for ex in &p.examples {
                let typed = crate::oauth::proxy::typed_target(&base, &ex.path, None);
                assert!(typed.is_ok_and(|t| t.url.as_str().starts_with(base.as_str())), "{name}: {ex:?}");
                assert!(API_METHODS.contains(&ex.method.as_str()), "{name}: {ex:?}");
            }
            with += usize::from(!p.examples.is_empty());
        }
        assert!(with >= 30, "{with} presets with examples");
        let d = resolve("dropbox", &cfg("dropbox")).unwrap();
        assert_eq!(
            (d.examples[0].method.as_str(), d.examples[0].path.as_str(), d.examples[0].body.as_deref()),
            ("POST", "/2/users/get_current_account", Some("null"))
        );
        let example = |method: &str, path: &str, body: Option<&str>| ProviderConfig {
            examples: Some(vec![ApiExample {
                name: "x".into(),
                method: method.into(),
                path: path.into(),
                body: body.map(str::to_string),
            }]),
            ..cfg("github")
        };
        for (method, path, body) in [
            ("TRACE", "/user", None),
            ("GET", "https://evil.example/user", None),
            ("GET", "//evil.example/user", None),
            ("GET", "/../token", None),
            ("GET", "/user", Some("{}")),
            ("POST", "/user", Some("{not json")),
        ] {
            let err = resolve("gh", &example(method, path, body)).unwrap_err().to_string();
            assert!(err.contains("providers.gh.examples[0]"), "{method} {path}: {err}");
        }
        assert!(resolve("gh", &example("POST", "/user", Some("null"))).is_ok());
    }

    /// The preset `name` with each parameter that has no default set to its example.
    fn with_examples(name: &str) -> ProviderConfig {
        let specs = preset(name).and_then(|p| p.parameters.clone()).unwrap_or_default();
        let params: BTreeMap<String, String> =
            specs.iter().filter(|s| s.default.is_none()).map(|s| (s.name.clone(), s.example.clone())).collect();
        ProviderConfig { params: (!params.is_empty()).then_some(params), ..cfg(name) }
    }

    /// One preset's key facts, as its provider's documentation states them: name, token URL, API
    /// base URL, client authentication, revocation style, account id pointer, PKCE, whether
    /// tokens expire.
    type Facts = (&'static str, &'static str, &'static str, ClientAuth, RevokeStyle, &'static str, bool, bool);

    use ClientAuth::{Basic, Post};
    use RevokeStyle as R;

    /// Every preset, resolved with its example parameters (a new preset must be added here).
    #[rustfmt::skip]
    const CATALOG: &[Facts] = &[
        ("airtable", "https://airtable.com/oauth2/v1/token", "https://api.airtable.com/v0", Basic, R::None, "/id", true, true),
        ("asana", "https://app.asana.com/-/oauth_token", "https://app.asana.com/api/1.0", Post, R::Rfc7009, "/data/gid", true, true),
        ("atlassian", "https://auth.atlassian.com/oauth/token", "https://api.atlassian.com/", Post, R::None, "/account_id", false, true),
        ("auth0", "https://acme.us.auth0.com/oauth/token", "https://acme.us.auth0.com/", Post, R::Rfc7009, "/sub", true, true),
        ("bitbucket", "https://bitbucket.org/site/oauth2/access_token", "https://api.bitbucket.org/2.0", Basic, R::None, "/uuid", false, true),
        ("box", "https://api.box.com/oauth2/token", "https://api.box.com/2.0", Post, R::Rfc7009, "/id", false, true),
        ("calendly", "https://auth.calendly.com/oauth/token", "https://api.calendly.com/", Post, R::Rfc7009, "/resource/uri", true, true),
        ("discord", "https://discord.com/api/oauth2/token", "https://discord.com/api", Basic, R::Rfc7009, "/id", true, true),
        ("dropbox", "https://api.dropboxapi.com/oauth2/token", "https://api.dropboxapi.com/", Basic, R::Dropbox, "/account_id", true, true),
        ("figma", "https://api.figma.com/v1/oauth/token", "https://api.figma.com/", Basic, R::None, "/id", false, true),
        ("github", "https://github.com/login/oauth/access_token", "https://api.github.com/", Post, R::Github, "/id", true, false),
        ("gitlab", "https://gitlab.com/oauth/token", "https://gitlab.com/api/v4", Post, R::Rfc7009, "/id", true, true),
        ("google", "https://oauth2.googleapis.com/token", "https://www.googleapis.com/", Post, R::Rfc7009, "/sub", true, true),
        ("hubspot", "https://api.hubapi.com/oauth/v3/token", "https://api.hubapi.com/", Post, R::None, "/hub_id", true, true),
        ("keycloak", "https://sso.example.com/realms/main/protocol/openid-connect/token", "https://sso.example.com/realms/main", Basic, R::Rfc7009, "/sub", true, true),
        ("linear", "https://api.linear.app/oauth/token", "https://api.linear.app/", Post, R::Bearer, "/data/viewer/id", false, true),
        ("linkedin", "https://www.linkedin.com/oauth/v2/accessToken", "https://api.linkedin.com/", Post, R::None, "/sub", false, true),
        ("microsoft", "https://login.microsoftonline.com/common/oauth2/v2.0/token", "https://graph.microsoft.com/", Post, R::None, "/id", true, true),
        ("miro", "https://api.miro.com/v1/oauth/token", "https://api.miro.com/", Post, R::None, "/team/id", false, true),
        ("monday", "https://auth.monday.com/oauth_ms/oauth/token", "https://api.monday.com/v2", Post, R::None, "/data/me/id", true, true),
        ("notion", "https://api.notion.com/v1/oauth/token", "https://api.notion.com/", Basic, R::Json, "/id", false, false),
        ("okta", "https://acme.okta.com/oauth2/v1/token", "https://acme.okta.com/", Basic, R::Rfc7009, "/sub", true, true),
        ("pipedrive", "https://oauth.pipedrive.com/oauth/token", "https://acme.pipedrive.com/api", Basic, R::Rfc7009, "/data/id", false, true),
        ("quickbooks", "https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer", "https://quickbooks.api.intuit.com/", Basic, R::Json, "/sub", false, true),
        ("reddit", "https://www.reddit.com/api/v1/access_token", "https://oauth.reddit.com/", Basic, R::Rfc7009, "/id", false, true),
        ("salesforce", "https://acme.my.salesforce.com/services/oauth2/token", "https://acme.my.salesforce.com/", Post, R::Rfc7009, "/user_id", true, true),
        ("shopify", "https://acme-store.myshopify.com/admin/oauth/access_token", "https://acme-store.myshopify.com/admin", Post, R::Bearer, "/data/shop/id", false, false),
        ("slack", "https://slack.com/api/oauth.v2.access", "https://slack.com/api", Basic, R::Bearer, "/user_id", false, false),
        ("spotify", "https://accounts.spotify.com/api/token", "https://api.spotify.com/v1", Basic, R::None, "/id", true, true),
        ("strava", "https://www.strava.com/oauth/token", "https://www.strava.com/api/v3", Post, R::Bearer, "/id", false, true),
        ("todoist", "https://api.todoist.com/oauth/access_token", "https://api.todoist.com/api/v1", Post, R::None, "/id", false, false),
        ("twitch", "https://id.twitch.tv/oauth2/token", "https://api.twitch.tv/helix", Post, R::Rfc7009, "/data/0/id", false, true),
        ("x", "https://api.x.com/2/oauth2/token", "https://api.x.com/2", Basic, R::Rfc7009, "/data/id", true, true),
        ("xero", "https://identity.xero.com/connect/token", "https://api.xero.com/", Basic, R::Rfc7009, "/0/tenantId", true, true),
        ("zendesk", "https://acme.zendesk.com/oauth/tokens", "https://acme.zendesk.com/api/v2", Post, R::Bearer, "/user/id", true, false),
        ("zoom", "https://zoom.us/oauth/token", "https://api.zoom.us/v2", Basic, R::Rfc7009, "/id", true, true),
    ];

    #[test]
    fn every_preset_in_the_data_file_resolves() {
        let listed: Vec<&str> = CATALOG.iter().map(|f| f.0).collect();
        assert_eq!(preset_names(), listed, "every preset has a row of facts here, and every row a preset");
        assert!(preset_names().len() >= 34, "the catalog has 30 providers beyond the first four");
        for &(name, token_url, api_base_url, client_auth, revoke, account_id, pkce, tokens_expire) in CATALOG {
            let p = resolve(name, &with_examples(name)).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert_eq!(p.token_url.as_str(), token_url, "{name}");
            assert_eq!(p.api_base_url.as_ref().map(Url::as_str), Some(api_base_url), "{name}");
            assert_eq!(p.client_auth, client_auth, "{name}");
            assert_eq!(p.revoke_style, revoke, "{name}");
            assert_eq!(p.can_revoke(), revoke != RevokeStyle::None, "{name}: a revocation style has its endpoint");
            assert_eq!(p.account_fields.id.as_deref(), Some(account_id), "{name}");
            assert_eq!(p.pkce, pkce, "{name}");
            assert_eq!(p.tokens_expire, tokens_expire, "{name}");
            assert!(
                !p.tokens_expire || p.token_lifetime.is_some(),
                "{name}: expiring tokens have a lifetime to assume"
            );
            assert!(p.account_url.is_some() && crate::oauth::account::identifies(&p), "{name} identifies its accounts");
            assert!(p.register_url.as_deref().is_some_and(|u| u.starts_with("https://")), "{name}: where to register");
            assert!(p.display_name != name && !p.description.is_empty(), "{name}");
            for url in
                [&p.authorize_url, &p.token_url, p.account_url.as_ref().unwrap(), p.api_base_url.as_ref().unwrap()]
            {
                assert!(
                    !url.as_str().contains('{') && !url.as_str().contains("%7B"),
                    "{name}: a placeholder left in {url}"
                );
                assert_eq!(url.scheme(), "https", "{name}");
            }
            // Each parameter without a default is required, and named when missing.
            for spec in preset(name).unwrap().parameters.iter().flatten().filter(|s| s.default.is_none()) {
                let mut c = with_examples(name);
                c.params.as_mut().unwrap().remove(&spec.name);
                let err = resolve(name, &c).unwrap_err().to_string();
                assert!(err.contains(&format!("providers.{name}.params.{}", spec.name)), "{name}: {err}");
            }
        }
        let d = resolve("dropbox", &cfg("dropbox")).unwrap();
        assert_eq!(d.account_fields.id.as_deref(), Some("/account_id"));
        assert_eq!(d.account_fields.name.as_deref(), Some("/name/display_name"));
        assert_eq!(d.token_lifetime, Some(4 * 3600));
        assert_eq!(resolve("google", &cfg("google")).unwrap().account_fields.id.as_deref(), Some("/sub"));
    }

    /// Each table of the data file says where its facts come from, in a `# docs: https://…` line.
    #[test]
    fn every_preset_cites_its_documentation() {
        let mut comment: Vec<&str> = Vec::new();
        let mut cited = Vec::new();
        for line in PRESETS_TOML.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let docs = comment.iter().find_map(|c| c.strip_prefix("# docs: "));
                assert!(
                    docs.is_some_and(|d| d.starts_with("https://")),
                    "[{name}] has no `# docs: https://…` line above it"
                );
                assert!(comment.len() >= 2, "[{name}] says what it needs in a comment above it");
                cited.push(name);
            }
            if line.starts_with('#') {
                comment.push(line);
            } else if line.trim().is_empty() || line.starts_with('[') {
                comment.clear();
            }
        }
        assert_eq!(cited, {
            let mut names = preset_names();
            names.sort_by_key(|n| PRESETS_TOML.find(&format!("[{n}]")));
            names
        });
    }

    #[test]
    fn presets_with_parameters_fill_them_into_every_url() {
        let params = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let shop =
            resolve("shop", &ProviderConfig { params: params(&[("shop", "tea-house")]), ..cfg("shopify") }).unwrap();
        assert_eq!(shop.authorize_url.as_str(), "https://tea-house.myshopify.com/admin/oauth/authorize");
        assert_eq!(
            shop.revoke_url.as_deref(),
            Some("https://tea-house.myshopify.com/admin/api_permissions/current.json")
        );
        assert_eq!(shop.parameters.len(), 1);
        let field = &shop.parameters[0];
        assert_eq!(
            (field.name.as_str(), field.value.as_str(), field.example.as_str()),
            ("shop", "tea-house", "acme-store")
        );
        assert!(field.description.contains("myshopify.com"));
        let err = resolve("shop", &ProviderConfig { params: params(&[("shop", "evil.example/x")]), ..cfg("shopify") })
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.shop.params.shop"), "{err}");
        let err = resolve("shop", &cfg("shopify")).unwrap_err().to_string();
        assert!(err.contains("is required") && err.contains("acme-store"), "{err}");

        let kc = resolve(
            "kc",
            &ProviderConfig {
                params: params(&[("host", "id.example.org:8443"), ("realm", "staff")]),
                ..cfg("keycloak")
            },
        )
        .unwrap();
        assert_eq!(kc.issuer, "https://id.example.org:8443/realms/staff");
        assert!(kc.issuer_matches("https://id.example.org:8443/realms/staff"));
        assert!(!kc.issuer_matches("https://id.example.org:8443/realms/other"));
        assert_eq!(
            kc.revoke_url.as_deref(),
            Some("https://id.example.org:8443/realms/staff/protocol/openid-connect/revoke")
        );

        let gl = resolve("gitlab", &cfg("gitlab")).unwrap();
        assert_eq!(gl.parameters[0].value, "gitlab.com", "the default host");
        let own =
            resolve("gitlab", &ProviderConfig { params: params(&[("host", "git.example.com")]), ..cfg("gitlab") })
                .unwrap();
        assert_eq!(own.account_url.unwrap().as_str(), "https://git.example.com/api/v4/user");
        let sf = resolve(
            "sf",
            &ProviderConfig { params: params(&[("my_domain", "acme--uat.sandbox")]), ..cfg("salesforce") },
        )
        .unwrap();
        assert_eq!(sf.api_base_url.unwrap().as_str(), "https://acme--uat.sandbox.my.salesforce.com/");
        // A provider without a preset may declare parameters too.
        let custom = ProviderConfig {
            parameters: Some(vec![ParameterSpec {
                name: "region".into(),
                description: "The region.".into(),
                example: "eu".into(),
                kind: ParameterKind::Label,
                default: Some("us".into()),
            }]),
            authorize_url: Some("https://{region}.acme.example/authorize".into()),
            token_url: Some("https://{region}.acme.example/token".into()),
            ..Default::default()
        };
        assert_eq!(resolve("acme", &custom).unwrap().token_url.as_str(), "https://us.acme.example/token");
        let undeclared = ProviderConfig { token_url: Some("https://{zone}.acme.example/token".into()), ..custom };
        let err = resolve("acme", &undeclared).unwrap_err().to_string();
        assert!(err.contains("providers.acme.token_url") && err.contains("`{zone}` is not a parameter"), "{err}");
    }

    #[test]
    fn the_microsoft_tenant_key_works_as_it_always_did() {
        let m = resolve("ms", &cfg("microsoft")).unwrap();
        assert_eq!(m.authorize_url.as_str(), "https://login.microsoftonline.com/common/oauth2/v2.0/authorize");
        let m = resolve("ms", &ProviderConfig { tenant: Some("contoso.onmicrosoft.com".into()), ..cfg("microsoft") })
            .unwrap();
        assert_eq!(m.token_url.as_str(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert_eq!(m.parameters[0].value, "contoso.onmicrosoft.com");
        // Another preset ignores `tenant`, as before.
        assert!(resolve("g", &ProviderConfig { tenant: Some("x".into()), ..cfg("google") }).is_ok());
        let err = resolve("ms", &ProviderConfig { tenant: Some("a/../b".into()), ..cfg("microsoft") }).unwrap_err();
        assert!(err.to_string().contains("providers.ms.tenant"), "{err}");
    }

    #[test]
    fn options_default_to_plain_oauth_and_presets_set_what_they_need() {
        let g = resolve("google", &cfg("google")).unwrap();
        assert_eq!((g.scope_separator.as_str(), g.scope_param.as_str()), (" ", "scope"));
        assert_eq!(g.token_request, TokenRequest::Form);
        assert_eq!(g.token_header, TokenHeader::bearer());
        assert!(g.api_headers.is_empty() && g.account_body.is_none() && g.token_response_root.is_none());
        assert_eq!((g.account_style, g.revoke_method), (AccountStyle::Api, RevokeMethod::Post));
        assert_eq!(g.refresh_url(), &g.token_url);
        assert!(!g.needs_client_id());

        let slack = resolve("slack", &cfg("slack")).unwrap();
        assert_eq!((slack.scope_separator.as_str(), slack.scope_param.as_str()), (",", "user_scope"));
        assert_eq!(slack.token_response_root.as_deref(), Some("/authed_user"));
        let notion = resolve("notion", &cfg("notion")).unwrap();
        assert_eq!(notion.token_request, TokenRequest::Json);
        assert_eq!(notion.api_headers(None), vec![("notion-version".to_string(), "2025-09-03".to_string())]);
        let figma = resolve("figma", &cfg("figma")).unwrap();
        assert_eq!(figma.refresh_url().as_str(), "https://api.figma.com/v1/oauth/refresh");
        let shop = resolve("s", &with_examples("shopify")).unwrap();
        assert_eq!(shop.token_header.describe(), "x-shopify-access-token: {token}");
        assert_eq!(shop.revoke_method, RevokeMethod::Delete);
        assert_eq!(resolve("monday", &cfg("monday")).unwrap().token_header.describe(), "authorization: {token}");
        let linear = resolve("linear", &cfg("linear")).unwrap();
        let body: serde_json::Value = serde_json::from_str(linear.account_body.as_deref().unwrap()).unwrap();
        assert!(body["query"].as_str().unwrap().contains("viewer"));
        assert_eq!(linear.account_method, AccountMethod::Post);
        let twitch = resolve("twitch", &cfg("twitch")).unwrap();
        assert!(twitch.needs_client_id());
        assert_eq!(twitch.api_headers(Some("cid-1")), vec![("client-id".to_string(), "cid-1".to_string())]);
        assert!(twitch.api_headers(None).is_empty(), "a header naming the client id is left out without one");
        let xero = resolve("xero", &cfg("xero")).unwrap();
        assert!(xero.verifies_id_token(), "Xero names the user in its id_token only");
        assert_eq!(xero.issuer, "https://identity.xero.com");
        let hubspot = resolve("hubspot", &cfg("hubspot")).unwrap();
        assert_eq!(hubspot.account_style, AccountStyle::Introspect);
        assert!(!hubspot.needs_client_id(), "only its account call needs the credentials, not the proxy");
    }

    #[test]
    fn option_values_are_checked() {
        let custom = || ProviderConfig {
            authorize_url: Some("https://acme.example/authorize".into()),
            token_url: Some("https://acme.example/token".into()),
            ..Default::default()
        };
        let err = |c: ProviderConfig| resolve("acme", &c).unwrap_err().to_string();
        assert!(err(ProviderConfig { scope_separator: Some("".into()), ..custom() }).contains("scope_separator"));
        assert!(err(ProviderConfig { scope_separator: Some("a".into()), ..custom() }).contains("scope_separator"));
        assert!(err(ProviderConfig { scope_param: Some("scope&x=1".into()), ..custom() }).contains("scope_param"));
        assert!(err(ProviderConfig { token_response_root: Some("authed_user".into()), ..custom() })
            .contains("JSON pointer"));
        assert!(err(ProviderConfig { refresh_url: Some("http://acme.example/refresh".into()), ..custom() })
            .contains("https"));
        for bad in [
            "Authorization Bearer {token}",
            "X-Token: Bearer",
            "Cookie: s={token}",
            "X-Token: {token}{token}",
            "Bad Name: {token}",
        ] {
            let e = err(ProviderConfig { api_token_header: Some(bad.into()), ..custom() });
            assert!(e.contains("providers.acme.api_token_header"), "{bad}: {e}");
        }
        let header = |k: &str, v: &str| Some(BTreeMap::from([(k.to_string(), v.to_string())]));
        for (k, v) in [
            ("Authorization", "x"),
            ("Host", "evil.example"),
            ("X-Api", "{shop}"),
            (
                "X-Api", "a
b",
            ),
            ("Bad Name", "x"),
        ] {
            let e = err(ProviderConfig { api_headers: header(k, v), ..custom() });
            assert!(e.contains("providers.acme.api_headers"), "{k}: {v}: {e}");
        }
        // The token's own header cannot be set again as an API header.
        let e = err(ProviderConfig {
            api_token_header: Some("X-Token: {token}".into()),
            api_headers: header("x-token", "y"),
            ..custom()
        });
        assert!(e.contains("api_headers"), "{e}");
        assert!(err(ProviderConfig {
            account_body: Some("{not json".into()),
            account_method: Some(AccountMethod::Post),
            ..custom()
        })
        .contains("is not JSON"));
        assert!(err(ProviderConfig { account_body: Some("{}".into()), ..custom() }).contains("account_method"));
        let ok = resolve(
            "acme",
            &ProviderConfig {
                api_token_header: Some("X-Token: token={token};".into()),
                api_headers: header("X-Api-Version", "2"),
                ..custom()
            },
        )
        .unwrap();
        assert_eq!(ok.token_header.describe(), "x-token: token={token};");
    }

    #[test]
    fn the_token_header_is_sent_as_configured_and_marked_sensitive() {
        let client = reqwest::Client::new();
        let sent = |h: &TokenHeader| h.apply(client.get("https://api.example/x"), "AT-1").build().unwrap();
        let bearer = sent(&TokenHeader::bearer());
        let value = bearer.headers().get("authorization").unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer AT-1");
        assert!(value.is_sensitive());
        let shopify = sent(&TokenHeader::parse("k", "X-Shopify-Access-Token: {token}").unwrap());
        assert_eq!(shopify.headers().get("x-shopify-access-token").unwrap().to_str().unwrap(), "AT-1");
        assert!(shopify.headers().get("authorization").is_none());
        let bare = sent(&TokenHeader::parse("k", "Authorization: {token}").unwrap());
        assert_eq!(bare.headers().get("authorization").unwrap().to_str().unwrap(), "AT-1");
    }

    #[test]
    fn account_pointers_can_be_configured() {
        let c = ProviderConfig { account_email_pointer: Some("/emails/0".into()), ..cfg("github") };
        let gh = resolve("github", &c).unwrap();
        assert_eq!(gh.account_fields.email.as_deref(), Some("/emails/0"));
        assert_eq!(gh.account_fields.name.as_deref(), Some("/login"), "the rest stays the preset's");
        let custom = ProviderConfig {
            authorize_url: Some("https://acme.example/authorize".into()),
            token_url: Some("https://acme.example/token".into()),
            account_id_pointer: Some("/user/uid".into()),
            ..Default::default()
        };
        assert_eq!(resolve("acme", &custom).unwrap().account_fields.id.as_deref(), Some("/user/uid"));
    }

    #[test]
    fn config_overrides_preset_fields() {
        let c = ProviderConfig { scopes: Some(vec!["files.content.read".into()]), ..cfg("dropbox") };
        let d = resolve("dropbox", &c).unwrap();
        assert_eq!(d.scopes, vec!["files.content.read".to_string()]);
        assert_eq!(d.token_url.as_str(), "https://api.dropboxapi.com/oauth2/token");
    }

    #[test]
    fn custom_providers_need_endpoints_and_https() {
        let err = resolve("acme", &ProviderConfig::default()).unwrap_err().to_string();
        assert!(err.contains("providers.acme.authorize_url"), "{err}");
        let c = ProviderConfig {
            authorize_url: Some("http://acme.example/authorize".into()),
            token_url: Some("https://acme.example/token".into()),
            ..Default::default()
        };
        assert!(resolve("acme", &c).unwrap_err().to_string().contains("https"));
        let c = ProviderConfig {
            authorize_url: Some("http://127.0.0.1:9999/authorize".into()),
            token_url: Some("http://127.0.0.1:9999/token".into()),
            ..Default::default()
        };
        let p = resolve("acme", &c).unwrap();
        assert_eq!(p.issuer, "http://127.0.0.1:9999");
        assert!(p.pkce);
        assert!(resolve("Bad Name", &c).is_err());
        assert!(p.issuer_matches("http://127.0.0.1:9999/realms/x"), "same origin, any path");
        assert!(!p.issuer_matches("https://evil.example"));
        let g = resolve("google", &cfg("google")).unwrap();
        assert!(g.issuer_matches("https://accounts.google.com"));
        assert!(!g.issuer_matches("https://accounts.google.com/other"), "configured issuers match exactly");
        assert!(resolve("x", &cfg("nope")).unwrap_err().to_string().contains("unknown preset"));
    }
}

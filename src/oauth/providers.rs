//! The provider catalog: presets for well-known providers, any OAuth 2.0 provider from
//! configuration, and the built-in demo provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use url::Url;

use crate::config::{invalid, parse_endpoint, ConfigError, Settings};

pub use crate::oauth::provider_config::{AccountMethod, ClientAuth, ProviderConfig, RevokeStyle};

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

/// The preset `name` with `{tenant}` filled into its URLs.
fn preset(name: &str, tenant: &str) -> Option<ProviderConfig> {
    let mut p = presets().get(name)?.clone();
    for url in [&mut p.authorize_url, &mut p.token_url, &mut p.revoke_url, &mut p.account_url].into_iter().flatten() {
        *url = url.replace("{tenant}", tenant);
    }
    Some(p)
}

/// OpenID Connect's standard claims, for providers resolved by discovery (their userinfo endpoint).
const OIDC_ACCOUNT_FIELDS: (&str, &str, &str) = ("/sub", "/name", "/email");

/// Overlay `over` on `base`: every field set in `over` wins.
fn overlay(base: ProviderConfig, over: &ProviderConfig) -> ProviderConfig {
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
        add_account_params,
        revocation_ends_grant
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Resolve one configured provider into a [`Provider`].
pub fn resolve(name: &str, cfg: &ProviderConfig) -> Result<Provider, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    if !valid_name(name) {
        return Err(invalid(format!("providers.{name}"), "names are 1-32 characters of a-z, 0-9, - and _"));
    }
    let preset_name = cfg.preset.clone();
    let merged = match &preset_name {
        Some(p) => {
            let tenant = cfg.tenant.clone().unwrap_or_else(|| "common".into());
            let base = preset(p, &tenant).ok_or_else(|| {
                invalid(key("preset"), format!("unknown preset `{p}` (known: {})", preset_names().join(", ")))
            })?;
            overlay(base, cfg)
        }
        None => cfg.clone(),
    };
    let required =
        |v: &Option<String>, field: &str| v.clone().ok_or_else(|| invalid(key(field), "is required (or set `preset`)"));
    let authorize_url = parse_endpoint(&key("authorize_url"), &required(&merged.authorize_url, "authorize_url")?)?;
    let token_url = parse_endpoint(&key("token_url"), &required(&merged.token_url, "token_url")?)?;
    let revoke_style = merged.revoke_style.unwrap_or(if merged.revoke_url.is_some() {
        RevokeStyle::Rfc7009
    } else {
        RevokeStyle::None
    });
    let revoke_url = match &merged.revoke_url {
        // `{client_id}` is filled in at call time (GitHub); check the rest of the URL.
        Some(u) => {
            parse_endpoint(&key("revoke_url"), &u.replace("{client_id}", "client-id"))?;
            Some(u.clone())
        }
        None => None,
    };
    let account_url = merged.account_url.as_deref().map(|u| parse_endpoint(&key("account_url"), u)).transpose()?;
    let api_base_url = merged.api_base_url.as_deref().map(|u| parse_endpoint(&key("api_base_url"), u)).transpose()?;
    if let Some(lifetime) = merged.token_lifetime {
        if lifetime <= 0 {
            return Err(invalid(key("token_lifetime"), "must be positive"));
        }
    }
    let issuer_configured = merged.issuer.is_some();
    let issuer = match &merged.issuer {
        Some(i) => {
            Url::parse(i).map_err(|e| invalid(key("issuer"), e.to_string()))?;
            i.trim_end_matches('/').to_string()
        }
        None => authorize_url.origin().ascii_serialization(),
    };
    let display_name = merged.display_name.clone().unwrap_or_else(|| name.to_string());
    let scopes = merged.scopes.clone().unwrap_or_default();
    let jwks_url = merged.jwks_url.as_deref().map(|u| parse_endpoint(&key("jwks_url"), u)).transpose()?;
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
        authorize_url,
        token_url,
        revoke_url,
        revoke_style,
        account_url,
        account_method: merged.account_method.unwrap_or(AccountMethod::Get),
        api_base_url,
        scopes,
        optional_scopes: merged.optional_scopes.clone().unwrap_or_default(),
        incremental_auth: merged.incremental_auth.unwrap_or(false),
        jwks_url,
        authorize_params: merged.authorize_params.clone().unwrap_or_default().into_iter().collect(),
        add_account_params,
        revocation_ends_grant: merged.revocation_ends_grant.unwrap_or(false),
        client_auth: merged.client_auth.unwrap_or(ClientAuth::Basic),
        pkce: merged.pkce.unwrap_or(true),
        issuer,
        issuer_configured,
        token_lifetime: merged.token_lifetime,
        tokens_expire: merged.tokens_expire.unwrap_or(true),
        account_fields: AccountFields::of(&merged),
        is_demo: false,
    })
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
        client_auth: ClientAuth::Basic,
        pkce: true,
        issuer: settings.url("/demo"),
        issuer_configured: true,
        token_lifetime: Some(settings.demo_token_lifetime),
        tokens_expire: true,
        account_fields: AccountFields {
            id: Some("/id".into()),
            name: Some("/name".into()),
            email: Some("/email".into()),
            label: Some("/email".into()),
        },
        is_demo: true,
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
    resolve(name, &overlay(discovered, cfg)).map_err(|e| e.to_string())
}

/// Every service users can connect, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    providers: BTreeMap<String, Arc<Provider>>,
    /// Providers waiting for OpenID Connect discovery (done at ignite).
    pending: Vec<(String, ProviderConfig)>,
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
        Ok(Catalog { providers, pending })
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

    #[test]
    fn every_preset_in_the_data_file_resolves() {
        assert_eq!(preset_names(), vec!["dropbox", "github", "google", "microsoft"]);
        for name in preset_names() {
            let p = resolve(name, &cfg(name)).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert!(p.account_url.is_some() && p.api_base_url.is_some(), "{name}");
            assert!(p.account_fields.id.is_some(), "{name} names where the account id is");
            assert!(!p.authorize_url.as_str().contains('{'), "{name}: a placeholder left in a URL");
        }
        let d = resolve("dropbox", &cfg("dropbox")).unwrap();
        assert_eq!(d.account_fields.id.as_deref(), Some("/account_id"));
        assert_eq!(d.account_fields.name.as_deref(), Some("/name/display_name"));
        assert_eq!(d.token_lifetime, Some(4 * 3600));
        assert_eq!(resolve("google", &cfg("google")).unwrap().account_fields.id.as_deref(), Some("/sub"));
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

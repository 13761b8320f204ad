//! Typed settings: Rocket's figment (defaults → `Rocket.toml` → `ROCKET_*` variables), checked once
//! when the app is built. The result is managed state handed to whoever needs it — never a global.

use crate::util::ExposeSecret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocket::figment::Figment;
use serde::Deserialize;
use url::Url;

pub mod providers;

use crate::util::Secret;
use providers::ProviderConfig;

/// Login-throttle entries per map unless configured (`login_throttle_capacity`): at most a few MB each.
pub const DEFAULT_THROTTLE_CAPACITY: usize = 100_000;

/// The settings as written in `Rocket.toml` / the environment.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub public_url: String,
    pub database_url: Option<String>,
    pub vault_key: Option<Secret>,
    /// A file holding `vault_key` (e.g. a systemd credential), instead of the key itself.
    pub vault_key_file: Option<PathBuf>,
    /// A file holding Rocket's `secret_key`, instead of the key itself.
    pub secret_key_file: Option<PathBuf>,
    pub vault_old_keys: Vec<Secret>,
    pub demo_provider: Option<bool>,
    pub allow_signup: Option<bool>,
    /// Webhook URLs set on `/admin/webhooks` may name private addresses (default: `debug` only).
    pub webhook_private_urls: Option<bool>,
    /// Client ID Metadata Documents may be fetched from private addresses (and http on a
    /// loopback host) — anyone can make the server fetch one (default: `debug` only; not opened by
    /// `webhook_private_urls`).
    pub oauth_client_metadata_private_urls: Option<bool>,
    pub data_dir: PathBuf,
    /// Overrides of the embedded static files and templates (see `crate::assets`).
    pub static_dir: Option<PathBuf>,
    pub template_dir: Option<PathBuf>,
    /// Absolute lifetime of a login session, seconds.
    pub session_ttl: i64,
    /// Lifetime of an authorization request (`state`), seconds (at most 600).
    pub flow_ttl: i64,
    /// Total timeout of a call to a provider, seconds.
    pub http_timeout: u64,
    pub http_connect_timeout: u64,
    /// Largest provider response body read, bytes.
    pub max_response_bytes: usize,
    /// Access-token lifetime assumed when a provider omits `expires_in` (seconds).
    pub default_token_lifetime: i64,
    /// Lifetime of the demo provider's access tokens, seconds.
    pub demo_token_lifetime: i64,
    /// Extra redirect URIs the demo provider accepts (another tokenvault using this one as its
    /// provider from another origin).
    pub demo_redirect_uris: Vec<String>,
    /// Refresh an access token this many seconds before it expires (at most half of the token's
    /// lifetime: see `oauth::access::refresh_due`).
    pub refresh_margin: i64,
    /// A provider's 401 is answered with a refresh at most once per connection per this many
    /// seconds (across instances); within the cooldown the 401 is passed through.
    pub refresh_cooldown: i64,
    /// The keep-alive worker refreshes a connection not refreshed (or connected) for this many
    /// seconds (at least 10), so refresh tokens that die from disuse stay alive.
    pub keepalive_interval: i64,
    /// Keep-alive refreshes in flight towards one provider at a time.
    pub keepalive_concurrency: usize,
    /// Whether this instance runs the keep-alive worker (false: leave it to the others).
    pub keepalive_worker: bool,
    /// `connection.expiring` is raised this many seconds before a refresh token's expiry (when
    /// the provider says when); 0: never.
    pub expiry_warning: i64,
    /// Largest request body the API proxy forwards, bytes.
    pub proxy_max_request_bytes: usize,
    /// Largest provider answer the API proxy passes back, bytes.
    pub proxy_max_response_bytes: usize,
    /// Largest provider answer MCP `call_api` passes back, bytes (it holds the answer in memory
    /// and sends it twice: as text and as structured content).
    pub mcp_max_response_bytes: usize,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// Bearer token `/metrics` requires. Outside `debug`, `/metrics` is not served without one.
    pub metrics_token: Option<Secret>,
    /// Seconds an API key or connection row may be served from memory (`0`: always read the
    /// database). Changes made through tokenvault reach every instance within about a second
    /// regardless; this bounds changes made behind its back.
    pub cache_ttl: u64,
    /// Sign-in (and sign-up) attempts allowed per client IP per minute.
    pub login_limit_per_ip: u32,
    /// Sign-in attempts allowed per username per minute (and failures per device cookie).
    pub login_limit_per_account: u32,
    /// Pending authorization requests kept per user; starting one more drops the oldest.
    pub max_pending_flows_per_user: i64,
    /// Events kept per connection (user and service); recording one more drops the oldest.
    pub events_per_connection: i64,
    /// Live API keys per user; creating one more revokes the oldest (and says so).
    pub max_api_keys_per_user: i64,
    /// Days audit entries are kept (0: forever); pruning leaves an anchor so the chain verifies.
    pub audit_retention_days: i64,
    /// Seconds between two audit checkpoints of the server (also published at start-up and by
    /// `tokenvault audit checkpoint`).
    pub audit_checkpoint_interval: i64,
    /// A file every audit checkpoint is appended to, one line each (created with mode 0600).
    pub audit_checkpoint_file: Option<PathBuf>,
    /// Most entries in each of the login throttle's maps (addresses, accounts, devices).
    pub login_throttle_capacity: usize,
    /// Serve tokenvault's own OAuth 2.1 authorization server (`/oauth/*`, the metadata documents)
    /// and accept its access tokens at `/api/v1`.
    pub oauth_server: bool,
    /// Accept RFC 7591 dynamic client registrations at `/oauth/register`.
    pub oauth_dynamic_registration: bool,
    /// Lifetime of the authorization server's access tokens, seconds.
    pub oauth_access_token_lifetime: i64,
    /// Lifetime a grant is given unless the user picks another (the consent page's default), seconds.
    pub oauth_grant_default_lifetime: i64,
    /// Origins of browser-based MCP clients allowed to call `/mcp` across origins (CORS), e.g.
    /// `["https://inspector.example"]`. Empty (the default): only tokenvault's own origin; any
    /// other `Origin` is refused with 403 (DNS-rebinding protection).
    pub mcp_allowed_origins: Vec<String>,
    /// The log filter (`tracing` env-filter syntax); `RUST_LOG` overrides it.
    pub log: String,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[<profile>.webhooks.<name>]`: the endpoints that receive signed events (validated by
    /// `webhooks::Endpoints::build`).
    pub webhooks: BTreeMap<String, RawWebhook>,
}

/// One `[<profile>.webhooks.<name>]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    /// `whsec_` + base64 (Standard Webhooks).
    pub secret: Secret,
    /// Event names or `prefix.*` wildcards; every event when absent.
    pub events: Option<Vec<String>>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            public_url: "http://127.0.0.1:8000".into(),
            database_url: None,
            vault_key: None,
            vault_key_file: None,
            secret_key_file: None,
            vault_old_keys: Vec::new(),
            demo_provider: None,
            allow_signup: None,
            webhook_private_urls: None,
            oauth_client_metadata_private_urls: None,
            data_dir: PathBuf::from("data"),
            static_dir: None,
            template_dir: None,
            session_ttl: 12 * 3600,
            flow_ttl: 600,
            http_timeout: 15,
            http_connect_timeout: 5,
            max_response_bytes: 1024 * 1024,
            default_token_lifetime: 3600,
            demo_token_lifetime: 120,
            demo_redirect_uris: Vec::new(),
            refresh_margin: 60,
            refresh_cooldown: 30,
            keepalive_interval: 86_400,
            keepalive_concurrency: 4,
            keepalive_worker: true,
            expiry_warning: 3 * 86_400,
            proxy_max_request_bytes: 1024 * 1024,
            proxy_max_response_bytes: 10 * 1024 * 1024,
            mcp_max_response_bytes: 1024 * 1024,
            metrics: true,
            metrics_token: None,
            cache_ttl: 10,
            login_limit_per_ip: 30,
            login_limit_per_account: 10,
            max_pending_flows_per_user: 10,
            events_per_connection: 50,
            max_api_keys_per_user: 20,
            audit_retention_days: 365,
            audit_checkpoint_interval: 600,
            audit_checkpoint_file: None,
            login_throttle_capacity: DEFAULT_THROTTLE_CAPACITY,
            oauth_server: true,
            oauth_dynamic_registration: true,
            oauth_access_token_lifetime: 3600,
            oauth_grant_default_lifetime: 30 * 86_400,
            mcp_allowed_origins: Vec::new(),
            log: "info".into(),
            providers: BTreeMap::new(),
            webhooks: BTreeMap::new(),
        }
    }
}

/// The validated settings in force: what the whole app shares, and one group per concern, each
/// handed only to the code that needs it (the outbound HTTP client gets [`HttpLimits`], the
/// refresher [`RefreshSettings`]…). The keys are the flat ones of [`RawConfig`], unchanged.
pub struct Settings {
    pub profile: String,
    /// `debug` profile: conveniences on (generated keys, demo provider, sign-up).
    pub dev_mode: bool,
    pub public_url: Url,
    pub database_url: String,
    pub demo_provider: bool,
    pub allow_signup: bool,
    pub data_dir: PathBuf,
    /// The directories whose files override the embedded ones, if any.
    pub static_dir: Option<PathBuf>,
    pub template_dir: Option<PathBuf>,
    pub http: HttpLimits,
    pub login: LoginLimits,
    pub flows: FlowLimits,
    pub refresh: RefreshSettings,
    pub api: ApiLimits,
    pub webhooks: WebhookSettings,
    pub audit: AuditSettings,
    pub metrics: MetricsSettings,
    pub demo: DemoSettings,
    pub authz: AuthzSettings,
}

/// tokenvault's own authorization server (`oauth_server`, `oauth_dynamic_registration`,
/// `oauth_access_token_lifetime`, `oauth_grant_default_lifetime`,
/// `oauth_client_metadata_private_urls`).
#[derive(Debug, Clone)]
pub struct AuthzSettings {
    pub enabled: bool,
    pub dynamic_registration: bool,
    pub access_token_lifetime: i64,
    pub grant_default_lifetime: i64,
    /// Client ID Metadata Documents may be fetched from private and loopback addresses.
    pub metadata_private_urls: bool,
    /// `mcp_allowed_origins`, each as an ASCII-serialized origin (`https://host[:port]`).
    pub mcp_allowed_origins: Vec<String>,
}

impl AuthzSettings {
    fn resolve(raw: &RawConfig, dev_mode: bool) -> Result<AuthzSettings, ConfigError> {
        within(
            "oauth_access_token_lifetime",
            raw.oauth_access_token_lifetime,
            60..=86_400,
            "must be between 60 seconds and one day",
        )?;
        within(
            "oauth_grant_default_lifetime",
            raw.oauth_grant_default_lifetime,
            3600..=365 * 86_400,
            "must be between one hour and a year",
        )?;
        Ok(AuthzSettings {
            enabled: raw.oauth_server,
            dynamic_registration: raw.oauth_dynamic_registration,
            access_token_lifetime: raw.oauth_access_token_lifetime,
            grant_default_lifetime: raw.oauth_grant_default_lifetime,
            metadata_private_urls: raw.oauth_client_metadata_private_urls.unwrap_or(dev_mode),
            mcp_allowed_origins: raw.mcp_allowed_origins.iter().map(|o| allowed_origin(o)).collect::<Result<_, _>>()?,
        })
    }
}

/// One entry of `mcp_allowed_origins`: an http(s) origin, nothing after it (no `*`: each
/// origin allowed is named).
fn allowed_origin(given: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| invalid("mcp_allowed_origins", format!("{}: {why}", crate::util::capped(given, 100)));
    let url = Url::parse(given).map_err(|_| bad("not an origin such as https://app.example"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("an origin is http(s)://host[:port]"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad("an origin has no path, query or user"));
    }
    Ok(url.origin().ascii_serialization())
}

/// Calls to providers and webhook receivers (`http_timeout`, `http_connect_timeout`, `max_response_bytes`).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub timeout: u64,
    pub connect_timeout: u64,
    pub max_response_bytes: usize,
}

/// Sign-in (`login_limit_per_ip`, `login_limit_per_account`, `login_throttle_capacity`, `session_ttl`).
#[derive(Debug, Clone)]
pub struct LoginLimits {
    pub per_ip: u32,
    pub per_account: u32,
    pub throttle_capacity: usize,
    pub session_ttl: i64,
}

/// Connect flows and connection history (`flow_ttl`, `max_pending_flows_per_user`, `events_per_connection`).
#[derive(Debug, Clone)]
pub struct FlowLimits {
    pub ttl: i64,
    pub max_pending_per_user: i64,
    pub events_per_connection: i64,
}

/// Token refresh and keep-alive (`refresh_margin`, `refresh_cooldown`, `default_token_lifetime`,
/// `keepalive_*`, `expiry_warning`).
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub margin: i64,
    pub cooldown: i64,
    pub default_token_lifetime: i64,
    pub keepalive_interval: i64,
    pub keepalive_concurrency: usize,
    pub keepalive_worker: bool,
    pub expiry_warning: i64,
}

/// The JSON API (`proxy_max_request_bytes`, `proxy_max_response_bytes`, `mcp_max_response_bytes`,
/// `max_api_keys_per_user`, `cache_ttl`).
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub proxy_max_request_bytes: usize,
    pub proxy_max_response_bytes: usize,
    pub mcp_max_response_bytes: usize,
    pub max_keys_per_user: i64,
    pub cache_ttl: u64,
}

/// Webhooks (`webhook_private_urls`: URLs set on `/admin/webhooks` may name loopback and private addresses).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub private_urls: bool,
}

/// The audit log (`audit_retention_days`, `audit_checkpoint_interval`, `audit_checkpoint_file`).
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub retention_days: i64,
    pub checkpoint_interval: i64,
    pub checkpoint_file: Option<PathBuf>,
}

/// `/metrics` (`metrics`, `metrics_token`).
#[derive(Clone)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// The Bearer token of `/metrics` (see [`Settings::metrics_access`]).
    pub token: Option<Secret>,
}

/// The built-in demo provider (`demo_token_lifetime`, `demo_redirect_uris`).
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub token_lifetime: i64,
    pub redirect_uris: Vec<String>,
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    Allowed,
    /// A token is configured and the request did not carry it: 401.
    Unauthorized,
    /// Metrics are off, or this is a production profile without a `metrics_token`: 404.
    NotServed,
}

impl Settings {
    /// `public_url` without a trailing slash, joined with `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }

    /// The redirect_uri registered at a provider for `service`.
    pub fn redirect_uri(&self, service: &str) -> String {
        self.url(&format!("/services/{service}/callback"))
    }

    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// Whether a request with this `Authorization` header may read `/metrics`: with a
    /// `metrics_token`, only `Bearer <metrics_token>` (compared in constant time); without one,
    /// everyone in `debug` and nobody (not served) in every other profile.
    pub fn metrics_access(&self, authorization: Option<&str>) -> MetricsAccess {
        if !self.metrics.enabled {
            return MetricsAccess::NotServed;
        }
        let Some(token) = &self.metrics.token else {
            return if self.dev_mode { MetricsAccess::Allowed } else { MetricsAccess::NotServed };
        };
        let given = authorization
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, value)| value.trim())
            .unwrap_or_default();
        // Digests of equal length, so the comparison says nothing about the token's length either.
        if !given.is_empty()
            && crate::util::ct_eq(&crate::util::sha256_hex(given), &crate::util::sha256_hex(token.expose_secret()))
        {
            MetricsAccess::Allowed
        } else {
            MetricsAccess::Unauthorized
        }
    }

    /// `scheme://host[:port]` of the public URL, for Origin checks.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Figment's own errors, with the values of secret keys left out (see [`describe`]).
    #[error("configuration could not be read: {0}")]
    Figment(String),
    #[error("`{key}` is invalid: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{0}")]
    Missing(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), reason: reason.into() }
}

/// Whether a URL's host is a loopback host (127.0.0.0/8, ::1, localhost), where plain http is fine.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parse a URL that must be https, or http on a loopback host.
pub fn parse_endpoint(key: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| invalid(key, format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(invalid(key, "must use https (plain http is allowed only on loopback hosts)")),
        other => Err(invalid(key, format!("unsupported scheme `{other}`"))),
    }
}

impl RawConfig {
    pub fn from_figment(figment: &Figment) -> Result<RawConfig, ConfigError> {
        figment.extract::<RawConfig>().map_err(|e| ConfigError::Figment(describe(e)))
    }
}

/// Keys whose values are secrets: an error about them names the key, never the value.
const SECRET_KEYS: &[&str] = &["vault_key", "vault_old_keys", "secret_key", "database_url", "metrics_token"];

/// Figment's errors as text. Figment quotes the offending value ("invalid type: found string
/// \"…\""), which for a key such as `vault_old_keys` given as a plain string is the key itself.
pub fn describe(errors: rocket::figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let webhook_secret = path.starts_with("webhooks.") && path.ends_with(".secret");
            if webhook_secret || SECRET_KEYS.iter().any(|k| path == *k || path.starts_with(&format!("{k}."))) {
                format!("`{path}` has an invalid value (not shown: it is a secret); see the README's configuration reference")
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Without the database URL's password.
impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("profile", &self.profile)
            .field("public_url", &self.public_url.as_str())
            .field("database_url", &crate::util::redact_url(&self.database_url))
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn resolve(raw: &RawConfig, profile: &str) -> Result<Settings, ConfigError> {
        let dev_mode = profile == "debug";
        let public_url = Url::parse(&raw.public_url).map_err(|e| invalid("public_url", e.to_string()))?;
        if !matches!(public_url.scheme(), "http" | "https") {
            return Err(invalid("public_url", "must be an http or https URL"));
        }
        if public_url.query().is_some() || public_url.fragment().is_some() {
            return Err(invalid("public_url", "must not have a query or fragment"));
        }
        if public_url.scheme() == "http" && !is_loopback(&public_url) && !dev_mode {
            tracing::warn!("public_url is plain http on a non-loopback host: cookies will not be marked Secure");
        }
        let database_url = match &raw.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => raw.data_dir.join("tokenvault.sqlite").to_string_lossy().into_owned(),
        };
        Ok(Settings {
            profile: profile.to_string(),
            dev_mode,
            public_url,
            database_url,
            demo_provider: raw.demo_provider.unwrap_or(dev_mode),
            allow_signup: raw.allow_signup.unwrap_or(dev_mode),
            data_dir: raw.data_dir.clone(),
            static_dir: override_dir("static_dir", raw.static_dir.as_deref(), "static")?,
            template_dir: override_dir("template_dir", raw.template_dir.as_deref(), "templates")?,
            http: HttpLimits::resolve(raw)?,
            login: LoginLimits::resolve(raw)?,
            flows: FlowLimits::resolve(raw)?,
            refresh: RefreshSettings::resolve(raw)?,
            api: ApiLimits::resolve(raw)?,
            webhooks: WebhookSettings { private_urls: raw.webhook_private_urls.unwrap_or(dev_mode) },
            audit: AuditSettings::resolve(raw)?,
            metrics: MetricsSettings::resolve(raw)?,
            demo: DemoSettings::resolve(raw)?,
            authz: AuthzSettings::resolve(raw, dev_mode)?,
        })
    }
}

/// `value` must lie in `range`, else `key` is invalid with `reason`.
fn within<T: PartialOrd>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    reason: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, reason))
    }
}

impl HttpLimits {
    fn resolve(raw: &RawConfig) -> Result<HttpLimits, ConfigError> {
        for (key, value) in [("http_timeout", raw.http_timeout), ("http_connect_timeout", raw.http_connect_timeout)] {
            within(key, value, 1..=u64::MAX, "must be at least one second")?;
        }
        within("max_response_bytes", raw.max_response_bytes, 1024..=usize::MAX, "must be at least 1024")?;
        Ok(HttpLimits {
            timeout: raw.http_timeout,
            connect_timeout: raw.http_connect_timeout,
            max_response_bytes: raw.max_response_bytes,
        })
    }
}

impl LoginLimits {
    fn resolve(raw: &RawConfig) -> Result<LoginLimits, ConfigError> {
        within("session_ttl", raw.session_ttl, 60..=i64::MAX, "must be at least 60 seconds")?;
        for (key, value) in
            [("login_limit_per_ip", raw.login_limit_per_ip), ("login_limit_per_account", raw.login_limit_per_account)]
        {
            within(key, value, 1..=u32::MAX, "must be at least 1 per minute")?;
        }
        within("login_throttle_capacity", raw.login_throttle_capacity, 100..=usize::MAX, "must be at least 100")?;
        Ok(LoginLimits {
            per_ip: raw.login_limit_per_ip,
            per_account: raw.login_limit_per_account,
            throttle_capacity: raw.login_throttle_capacity,
            session_ttl: raw.session_ttl,
        })
    }
}

/// The per-user and per-connection bounds: between 1 and `max`.
fn bounded(key: &str, value: i64, max: i64) -> Result<i64, ConfigError> {
    within(key, value, 1..=max, &format!("must be between 1 and {max}"))?;
    Ok(value)
}

impl FlowLimits {
    fn resolve(raw: &RawConfig) -> Result<FlowLimits, ConfigError> {
        within("flow_ttl", raw.flow_ttl, 1..=600, "must be between 1 and 600 seconds")?;
        Ok(FlowLimits {
            ttl: raw.flow_ttl,
            max_pending_per_user: bounded("max_pending_flows_per_user", raw.max_pending_flows_per_user, 1000)?,
            events_per_connection: bounded("events_per_connection", raw.events_per_connection, 10_000)?,
        })
    }
}

impl RefreshSettings {
    fn resolve(raw: &RawConfig) -> Result<RefreshSettings, ConfigError> {
        let positive = "must be a positive number of seconds";
        within("default_token_lifetime", raw.default_token_lifetime, 1..=i64::MAX, positive)?;
        within("refresh_margin", raw.refresh_margin, 0..=i64::MAX, "must not be negative")?;
        within("refresh_cooldown", raw.refresh_cooldown, 1..=3600, "must be between 1 and 3600 seconds")?;
        within("keepalive_interval", raw.keepalive_interval, 10..=i64::MAX, "must be at least 10 seconds")?;
        within(
            "expiry_warning",
            raw.expiry_warning,
            0..=365 * 86_400,
            "must be between 0 (never) and 31536000 seconds (a year)",
        )?;
        within("keepalive_concurrency", raw.keepalive_concurrency, 1..=64, "must be between 1 and 64")?;
        Ok(RefreshSettings {
            margin: raw.refresh_margin,
            cooldown: raw.refresh_cooldown,
            default_token_lifetime: raw.default_token_lifetime,
            keepalive_interval: raw.keepalive_interval,
            keepalive_concurrency: raw.keepalive_concurrency,
            keepalive_worker: raw.keepalive_worker,
            expiry_warning: raw.expiry_warning,
        })
    }
}

impl ApiLimits {
    fn resolve(raw: &RawConfig) -> Result<ApiLimits, ConfigError> {
        within("cache_ttl", raw.cache_ttl, 0..=3600, "must be at most 3600 seconds (0 turns the cache off)")?;
        let mcp = "must be between 1024 bytes and 64 MiB (67108864)";
        within("mcp_max_response_bytes", raw.mcp_max_response_bytes, 1024..=64 * 1024 * 1024, mcp)?;
        Ok(ApiLimits {
            proxy_max_request_bytes: raw.proxy_max_request_bytes,
            proxy_max_response_bytes: raw.proxy_max_response_bytes,
            mcp_max_response_bytes: raw.mcp_max_response_bytes,
            max_keys_per_user: bounded("max_api_keys_per_user", raw.max_api_keys_per_user, 1000)?,
            cache_ttl: raw.cache_ttl,
        })
    }
}

impl AuditSettings {
    fn resolve(raw: &RawConfig) -> Result<AuditSettings, ConfigError> {
        let days = "must be 0 (keep forever) or between 1 and 36500 days";
        within("audit_retention_days", raw.audit_retention_days, 0..=36_500, days)?;
        let interval = "must be between 10 and 86400 seconds (a day)";
        within("audit_checkpoint_interval", raw.audit_checkpoint_interval, 10..=86_400, interval)?;
        if raw.audit_checkpoint_file.as_ref().is_some_and(|f| f.as_os_str().is_empty() || f.is_dir()) {
            return Err(invalid("audit_checkpoint_file", "must name a file (lines are appended to it)"));
        }
        Ok(AuditSettings {
            retention_days: raw.audit_retention_days,
            checkpoint_interval: raw.audit_checkpoint_interval,
            checkpoint_file: raw.audit_checkpoint_file.clone(),
        })
    }
}

impl MetricsSettings {
    fn resolve(raw: &RawConfig) -> Result<MetricsSettings, ConfigError> {
        let token = match &raw.metrics_token {
            Some(token) if token.expose_secret().trim().chars().count() < 16 => {
                return Err(invalid("metrics_token", "must be at least 16 characters (e.g. `tokenvault keygen`)"));
            }
            Some(token) => Some(crate::util::secret(token.expose_secret().trim())),
            None => None,
        };
        Ok(MetricsSettings { enabled: raw.metrics, token })
    }
}

impl DemoSettings {
    fn resolve(raw: &RawConfig) -> Result<DemoSettings, ConfigError> {
        within("demo_token_lifetime", raw.demo_token_lifetime, 1..=i64::MAX, "must be a positive number of seconds")?;
        Ok(DemoSettings { token_lifetime: raw.demo_token_lifetime, redirect_uris: raw.demo_redirect_uris.clone() })
    }
}

/// `secret_key` (cookies) and the vault keys (stored secrets) must be different keys: one leaked
/// or rotated must not give away or take down the other. The error names the keys, never a value.
/// Keys are compared as written and as the bytes they encode (`secret_key` as Rocket reads it:
/// 44 or 88 characters of base64, or 64 of hex; vault keys as base64).
pub fn check_keys_distinct(secret_key: &str, vault_key: &Secret, vault_old_keys: &[Secret]) -> Result<(), ConfigError> {
    use base64::Engine as _;
    let base64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).ok().filter(|b| !b.is_empty());
    let secret = secret_key.trim();
    let secret_bytes = if secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..64).step_by(2).map(|i| u8::from_str_radix(&secret[i..i + 2], 16).ok()).collect::<Option<Vec<u8>>>()
    } else {
        base64(secret)
    };
    let same = |vault: &Secret| {
        let vault = vault.expose_secret().trim();
        crate::util::ct_eq(secret, vault) || matches!((&secret_bytes, base64(vault)), (Some(x), Some(y)) if *x == y)
    };
    if same(vault_key) {
        return Err(invalid(
            "secret_key",
            "is the same key as `vault_key`: the cookie key and the vault key must be different keys \
             (generate a cookie key with `tokenvault keygen --secret-key`)",
        ));
    }
    if vault_old_keys.iter().any(same) {
        return Err(invalid(
            "secret_key",
            "is the same key as one of `vault_old_keys`: the cookie key and the vault keys must be different \
             keys (generate a cookie key with `tokenvault keygen --secret-key`)",
        ));
    }
    Ok(())
}

/// An override directory: the configured one (which must exist), or else, in debug builds only,
/// the working directory's `default` folder when present (the checkout under `cargo run`, whose
/// templates then reload when edited). A release build without the key uses what it embeds.
fn override_dir(key: &str, configured: Option<&Path>, default: &str) -> Result<Option<PathBuf>, ConfigError> {
    match configured {
        Some(dir) if dir.is_dir() => Ok(Some(dir.to_path_buf())),
        Some(dir) => Err(invalid(
            key,
            format!(
                "`{}` is not a directory (leave {key} unset to use the files built into tokenvault)",
                dir.display()
            ),
        )),
        None if cfg!(debug_assertions) && Path::new(default).is_dir() => Ok(Some(PathBuf::from(default))),
        None => Ok(None),
    }
}

/// A key given in the configuration or as a file (`<key>_file`), never both. A key file must not
/// be readable or writable by other users (group access is allowed, with a warning).
pub fn key_or_file(key: &str, inline: Option<Secret>, file: Option<&Path>) -> Result<Option<Secret>, ConfigError> {
    let Some(path) = file else { return Ok(inline) };
    if inline.is_some() {
        return Err(invalid(
            format!("{key}_file"),
            format!(
                "both `{key}` and `{key}_file` are set: keep one (the file keeps the key out of the configuration)"
            ),
        ));
    }
    let io = |source| ConfigError::Io { path: format!("{key}_file {}", path.display()), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(invalid(format!("{key}_file"), format!("`{}` is not a file", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(invalid(
                format!("{key}_file"),
                format!("`{}` is accessible to other users (mode {mode:o}): `chmod 600` it", path.display()),
            ));
        }
        if mode & 0o070 != 0 {
            tracing::warn!(path = %path.display(), mode = %format!("{mode:o}"), "{key}_file is readable by its group");
        }
    }
    let text = crate::util::secret(std::fs::read_to_string(path).map_err(io)?);
    let value = text.expose_secret().trim();
    if value.is_empty() {
        return Err(invalid(format!("{key}_file"), format!("`{}` is empty", path.display())));
    }
    Ok(Some(crate::util::secret(value.to_string())))
}

/// Read a key file, or (when `create` is set) write a new random key there with mode 0600.
/// Returns the key and whether it was just created.
pub fn load_or_create_key(
    path: &Path,
    create: bool,
    generate: impl Fn() -> String,
) -> Result<(Secret, bool), ConfigError> {
    let io = |source| ConfigError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((crate::util::secret(text.trim().to_string()), false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let key = generate();
            write_private(path, &key).map_err(io)?;
            Ok((crate::util::secret(key), true))
        }
        Err(e) => Err(io(e)),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_allowed_origins_are_origins() {
        assert_eq!(allowed_origin("https://inspector.example").unwrap(), "https://inspector.example");
        assert_eq!(allowed_origin("http://localhost:6274/").unwrap(), "http://localhost:6274");
        assert_eq!(allowed_origin("HTTPS://App.Example:443").unwrap(), "https://app.example");
        for bad in ["*", "null", "https://a.example/path", "ftp://a.example", "https://u@a.example", "a.example"] {
            assert!(allowed_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        assert!(parse_endpoint("x", "https://api.dropboxapi.com/oauth2/token").is_ok());
        assert!(parse_endpoint("x", "http://127.0.0.1:9000/token").is_ok());
        assert!(parse_endpoint("x", "http://127.8.0.1/token").is_ok());
        assert!(parse_endpoint("x", "http://localhost:9000/token").is_ok());
        assert!(parse_endpoint("x", "http://[::1]:9000/token").is_ok());
        assert!(parse_endpoint("x", "http://example.com/token").is_err());
        assert!(parse_endpoint("x", "http://localhost.evil.com/token").is_err());
        assert!(parse_endpoint("x", "ftp://127.0.0.1/x").is_err());
        assert!(parse_endpoint("x", "not a url").is_err());
    }

    #[test]
    fn profile_defaults() {
        let raw = RawConfig::default();
        let dev = Settings::resolve(&raw, "debug").unwrap();
        assert!(dev.demo_provider && dev.allow_signup && dev.dev_mode && dev.webhooks.private_urls);
        let prod = Settings::resolve(&raw, "release").unwrap();
        assert!(!prod.demo_provider && !prod.allow_signup && !prod.dev_mode && !prod.webhooks.private_urls);
        assert_eq!(dev.redirect_uri("dropbox"), "http://127.0.0.1:8000/services/dropbox/callback");
        assert!(dev.authz.metadata_private_urls && !prod.authz.metadata_private_urls);
        // Private webhook URLs do not open private addresses to anyone's metadata documents.
        let hooks = RawConfig { webhook_private_urls: Some(true), ..RawConfig::default() };
        assert!(!Settings::resolve(&hooks, "release").unwrap().authz.metadata_private_urls);
        let open = RawConfig { oauth_client_metadata_private_urls: Some(true), ..RawConfig::default() };
        assert!(Settings::resolve(&open, "release").unwrap().authz.metadata_private_urls);
    }

    #[test]
    fn bad_values_are_named() {
        let raw = RawConfig { flow_ttl: 3600, ..RawConfig::default() };
        let err = Settings::resolve(&raw, "debug").unwrap_err().to_string();
        assert!(err.contains("flow_ttl"), "{err}");
        let raw = RawConfig { public_url: "ftp://x".into(), ..RawConfig::default() };
        assert!(Settings::resolve(&raw, "debug").unwrap_err().to_string().contains("public_url"));
        // Each bad value is reported under its own key.
        let bad = |raw: RawConfig| Settings::resolve(&raw, "debug").err().map(|e| e.to_string()).unwrap_or_default();
        let d = RawConfig::default;
        for (key, err) in [
            ("session_ttl", bad(RawConfig { session_ttl: 59, ..d() })),
            ("http_timeout", bad(RawConfig { http_timeout: 0, ..d() })),
            ("http_connect_timeout", bad(RawConfig { http_connect_timeout: 0, ..d() })),
            ("max_response_bytes", bad(RawConfig { max_response_bytes: 10, ..d() })),
            ("default_token_lifetime", bad(RawConfig { default_token_lifetime: 0, ..d() })),
            ("demo_token_lifetime", bad(RawConfig { demo_token_lifetime: -1, ..d() })),
            ("login_limit_per_ip", bad(RawConfig { login_limit_per_ip: 0, ..d() })),
            ("login_limit_per_account", bad(RawConfig { login_limit_per_account: 0, ..d() })),
            ("refresh_margin", bad(RawConfig { refresh_margin: -1, ..d() })),
            ("refresh_cooldown", bad(RawConfig { refresh_cooldown: 0, ..d() })),
            ("refresh_cooldown", bad(RawConfig { refresh_cooldown: 3601, ..d() })),
            ("keepalive_interval", bad(RawConfig { keepalive_interval: 9, ..d() })),
            ("keepalive_concurrency", bad(RawConfig { keepalive_concurrency: 0, ..d() })),
            ("expiry_warning", bad(RawConfig { expiry_warning: -1, ..d() })),
            ("expiry_warning", bad(RawConfig { expiry_warning: 365 * 86_400 + 1, ..d() })),
            ("keepalive_concurrency", bad(RawConfig { keepalive_concurrency: 65, ..d() })),
            ("login_throttle_capacity", bad(RawConfig { login_throttle_capacity: 10, ..d() })),
            ("public_url", bad(RawConfig { public_url: "http://127.0.0.1:8000/?x=1".into(), ..d() })),
            ("max_pending_flows_per_user", bad(RawConfig { max_pending_flows_per_user: 0, ..d() })),
            ("events_per_connection", bad(RawConfig { events_per_connection: -5, ..d() })),
            ("events_per_connection", bad(RawConfig { events_per_connection: 10_001, ..d() })),
            ("max_api_keys_per_user", bad(RawConfig { max_api_keys_per_user: 0, ..d() })),
            ("audit_checkpoint_interval", bad(RawConfig { audit_checkpoint_interval: 9, ..d() })),
            ("audit_checkpoint_interval", bad(RawConfig { audit_checkpoint_interval: 86_401, ..d() })),
            ("audit_checkpoint_file", bad(RawConfig { audit_checkpoint_file: Some(std::env::temp_dir()), ..d() })),
            ("oauth_access_token_lifetime", bad(RawConfig { oauth_access_token_lifetime: 59, ..d() })),
            ("oauth_grant_default_lifetime", bad(RawConfig { oauth_grant_default_lifetime: 366 * 86_400, ..d() })),
        ] {
            assert!(err.starts_with(&format!("`{key}` is invalid")), "{key}: {err}");
        }
        let raw = RawConfig { cache_ttl: 3601, ..RawConfig::default() };
        assert!(Settings::resolve(&raw, "debug").unwrap_err().to_string().contains("cache_ttl"));
        let raw = RawConfig { database_url: Some("postgres://app:pa55word@db/tv".into()), ..RawConfig::default() };
        assert!(!format!("{:?}", Settings::resolve(&raw, "debug").unwrap()).contains("pa55word"));
        let raw = RawConfig { cache_ttl: 0, ..RawConfig::default() };
        assert_eq!(Settings::resolve(&raw, "debug").unwrap().api.cache_ttl, 0);
        let defaults = Settings::resolve(&RawConfig::default(), "release").unwrap();
        assert_eq!((defaults.audit.checkpoint_interval, defaults.audit.checkpoint_file), (600, None));
    }

    #[test]
    fn errors_about_secret_keys_never_show_the_value() {
        use rocket::figment::Figment;
        let secret = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1ub3QtYmUtcHJpbnRlZA==";
        for key in ["vault_old_keys", "vault_key", "database_url"] {
            let value: serde_json::Value =
                if key == "vault_old_keys" { secret.into() } else { serde_json::json!({ "x": secret }) };
            let figment = Figment::new().merge((key, value));
            let err = RawConfig::from_figment(&figment).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key) && !err.contains(secret), "{key}: {err}");
        }
        // Other keys keep figment's full message.
        let figment = Figment::new().merge(("flow_ttl", "soon"));
        let err = RawConfig::from_figment(&figment).unwrap_err().to_string();
        assert!(err.contains("flow_ttl") && err.contains("soon"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn keys_from_files_are_private_trimmed_and_exclusive() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let key = file("vault.key", "  S3CRET-KEY-VALUE\n", 0o400);
        assert_eq!(key_or_file("vault_key", None, Some(&key)).unwrap().unwrap().expose_secret(), "S3CRET-KEY-VALUE");
        assert_eq!(
            key_or_file("vault_key", Some(Secret::from("inline")), None).unwrap().unwrap().expose_secret(),
            "inline"
        );
        assert!(key_or_file("vault_key", None, None).unwrap().is_none());
        // A group-readable file is accepted (with a warning).
        let group = file("group.key", "K", 0o640);
        assert!(key_or_file("secret_key", None, Some(&group)).is_ok());

        let err = |r: Result<Option<Secret>, ConfigError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        let both = err(key_or_file("vault_key", Some(Secret::from("inline")), Some(&key)));
        assert!(both.starts_with("`vault_key_file` is invalid: both `vault_key` and `vault_key_file`"), "{both}");
        for mode in [0o644, 0o604, 0o602] {
            let open = file("open.key", "S3CRET-KEY-VALUE", mode);
            let e = err(key_or_file("vault_key", None, Some(&open)));
            assert!(e.contains("vault_key_file") && e.contains("other users"), "{mode:o}: {e}");
            assert!(!e.contains("S3CRET"), "{e}");
        }
        let empty = file("empty.key", " \n", 0o600);
        assert!(err(key_or_file("secret_key", None, Some(&empty))).contains("is empty"));
        let missing = err(key_or_file("secret_key", None, Some(&dir.path().join("missing.key"))));
        assert!(missing.starts_with("secret_key_file ") && missing.contains("missing.key"), "{missing}");
        assert!(err(key_or_file("secret_key", None, Some(dir.path()))).contains("not a file"));
    }

    #[test]
    fn override_directories_must_exist_when_set() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(override_dir("static_dir", Some(dir.path()), "static").unwrap().as_deref(), Some(dir.path()));
        let missing = dir.path().join("missing");
        let e = override_dir("static_dir", Some(&missing), "static").unwrap_err().to_string();
        assert!(e.starts_with("`static_dir` is invalid") && e.contains("missing"), "{e}");
        assert_eq!(override_dir("template_dir", None, "no-such-folder-here").unwrap(), None);
    }

    #[test]
    fn the_cookie_key_must_differ_from_the_vault_keys() {
        use base64::Engine as _;
        let bytes = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let vault = Secret::from(b64.clone());
        let other = Secret::from(base64::engine::general_purpose::STANDARD.encode([8u8; 32]));
        for secret_key in [b64.as_str(), &format!(" {b64}\n"), hex.as_str()] {
            let err = check_keys_distinct(secret_key, &vault, &[]).unwrap_err().to_string();
            assert!(err.contains("`secret_key`") && err.contains("`vault_key`"), "{err}");
            assert!(!err.contains(&b64) && !err.contains(&hex), "the error shows no key: {err}");
        }
        let err = check_keys_distinct(&b64, &other, std::slice::from_ref(&vault)).unwrap_err().to_string();
        assert!(err.contains("`secret_key`") && err.contains("`vault_old_keys`") && !err.contains(&b64), "{err}");
        let cookie_key = base64::engine::general_purpose::STANDARD.encode([9u8; 64]);
        assert!(check_keys_distinct(&cookie_key, &vault, std::slice::from_ref(&other)).is_ok());
    }

    #[test]
    fn metrics_need_their_token_outside_debug() {
        let token = "metrics-token-0123456789";
        let with = |profile: &str, token: Option<&str>| {
            let raw = RawConfig { metrics_token: token.map(Secret::from), ..RawConfig::default() };
            Settings::resolve(&raw, profile).unwrap()
        };
        let bearer = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        for profile in ["release", "live", "debug"] {
            let s = with(profile, Some(token));
            assert_eq!(s.metrics_access(Some(&bearer)), MetricsAccess::Allowed, "{profile}");
            assert_eq!(s.metrics_access(Some(&lower)), MetricsAccess::Allowed, "{profile}");
            for bad in [None, Some("Bearer"), Some("Bearer "), Some("Bearer metrics-token-012345678"), Some(token)] {
                assert_eq!(s.metrics_access(bad), MetricsAccess::Unauthorized, "{profile} {bad:?}");
            }
            assert_eq!(s.metrics_access(Some(&format!("Basic {token}"))), MetricsAccess::Unauthorized);
        }
        assert_eq!(with("release", None).metrics_access(None), MetricsAccess::NotServed);
        assert_eq!(with("release", None).metrics_access(Some(&bearer)), MetricsAccess::NotServed);
        assert_eq!(with("debug", None).metrics_access(None), MetricsAccess::Allowed);
        let off = RawConfig { metrics: false, metrics_token: Some(Secret::from(token)), ..RawConfig::default() };
        assert_eq!(Settings::resolve(&off, "debug").unwrap().metrics_access(Some(&bearer)), MetricsAccess::NotServed);
        let short = RawConfig { metrics_token: Some(Secret::from("short")), ..RawConfig::default() };
        let err = Settings::resolve(&short, "release").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("`metrics_token` is invalid") && !err.contains("short"), "{err}");
    }

    #[test]
    fn key_files_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.key");
        let (k1, created) = load_or_create_key(&path, true, || "KEY1".into()).unwrap();
        assert!(created);
        let (k2, created) = load_or_create_key(&path, true, || "KEY2".into()).unwrap();
        assert!(!created);
        assert_eq!(k1.expose_secret(), k2.expose_secret());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(load_or_create_key(&dir.path().join("missing"), false, || "x".into()).is_err());
    }
}

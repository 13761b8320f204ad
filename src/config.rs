//! Typed settings: Rocket's figment (defaults → `Rocket.toml` → `ROCKET_*` variables), checked once
//! when the app is built. The result is managed state handed to whoever needs it — never a global.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rocket::figment::Figment;
use serde::Deserialize;
use url::Url;

use crate::oauth::providers::ProviderConfig;
use crate::util::Secret;

/// The settings as written in `Rocket.toml` / the environment.
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub public_url: String,
    pub database_url: Option<String>,
    pub vault_key: Option<Secret>,
    pub vault_old_keys: Vec<Secret>,
    pub demo_provider: Option<bool>,
    pub allow_signup: Option<bool>,
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
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
    /// Refresh an access token this many seconds before it expires.
    pub refresh_margin: i64,
    /// Largest request body the API proxy forwards, bytes.
    pub proxy_max_request_bytes: usize,
    /// Largest provider answer the API proxy passes back, bytes.
    pub proxy_max_response_bytes: usize,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics: bool,
    /// Seconds an API key or connection row may be served from memory (`0`: always read the
    /// database). Changes made through tokenvault reach every instance within about a second
    /// regardless; this bounds changes made behind its back.
    pub cache_ttl: u64,
    /// Sign-in (and sign-up) attempts allowed per client IP per minute.
    pub login_limit_per_ip: u32,
    /// Sign-in attempts allowed per username per minute (and failures per device cookie).
    pub login_limit_per_account: u32,
    /// Most entries in each of the login throttle's maps (addresses, accounts, devices).
    pub login_throttle_capacity: usize,
    /// The log filter (`tracing` env-filter syntax); `RUST_LOG` overrides it.
    pub log: String,
    pub providers: BTreeMap<String, ProviderConfig>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            public_url: "http://127.0.0.1:8000".into(),
            database_url: None,
            vault_key: None,
            vault_old_keys: Vec::new(),
            demo_provider: None,
            allow_signup: None,
            data_dir: PathBuf::from("data"),
            static_dir: PathBuf::from("static"),
            session_ttl: 12 * 3600,
            flow_ttl: 600,
            http_timeout: 15,
            http_connect_timeout: 5,
            max_response_bytes: 1024 * 1024,
            default_token_lifetime: 3600,
            demo_token_lifetime: 120,
            demo_redirect_uris: Vec::new(),
            refresh_margin: 60,
            proxy_max_request_bytes: 1024 * 1024,
            proxy_max_response_bytes: 10 * 1024 * 1024,
            metrics: true,
            cache_ttl: 10,
            login_limit_per_ip: 30,
            login_limit_per_account: 10,
            login_throttle_capacity: crate::auth::throttle::DEFAULT_CAPACITY,
            log: "info".into(),
            providers: BTreeMap::new(),
        }
    }
}

/// The validated settings in force.
pub struct Settings {
    pub profile: String,
    /// `debug` profile: conveniences on (generated keys, demo provider, sign-up).
    pub dev_mode: bool,
    pub public_url: Url,
    pub database_url: String,
    pub demo_provider: bool,
    pub allow_signup: bool,
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
    pub session_ttl: i64,
    pub flow_ttl: i64,
    pub http_timeout: u64,
    pub http_connect_timeout: u64,
    pub max_response_bytes: usize,
    pub default_token_lifetime: i64,
    pub demo_token_lifetime: i64,
    pub demo_redirect_uris: Vec<String>,
    pub refresh_margin: i64,
    pub login_limit_per_ip: u32,
    pub login_limit_per_account: u32,
    pub login_throttle_capacity: usize,
    pub proxy_max_request_bytes: usize,
    pub proxy_max_response_bytes: usize,
    pub metrics: bool,
    pub cache_ttl: u64,
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
const SECRET_KEYS: &[&str] = &["vault_key", "vault_old_keys", "secret_key", "database_url"];

/// Figment's errors as text. Figment quotes the offending value ("invalid type: found string
/// \"…\""), which for a key such as `vault_old_keys` given as a plain string is the key itself.
pub fn describe(errors: rocket::figment::Error) -> String {
    errors
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            if SECRET_KEYS.iter().any(|k| path == *k || path.starts_with(&format!("{k}."))) {
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
            .field("database_url", &crate::db::redact_url(&self.database_url))
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
        if raw.flow_ttl <= 0 || raw.flow_ttl > 600 {
            return Err(invalid("flow_ttl", "must be between 1 and 600 seconds"));
        }
        if raw.session_ttl < 60 {
            return Err(invalid("session_ttl", "must be at least 60 seconds"));
        }
        for (key, value) in [("http_timeout", raw.http_timeout), ("http_connect_timeout", raw.http_connect_timeout)] {
            if value == 0 {
                return Err(invalid(key, "must be at least one second"));
            }
        }
        if raw.max_response_bytes < 1024 {
            return Err(invalid("max_response_bytes", "must be at least 1024"));
        }
        for (key, value) in
            [("default_token_lifetime", raw.default_token_lifetime), ("demo_token_lifetime", raw.demo_token_lifetime)]
        {
            if value <= 0 {
                return Err(invalid(key, "must be a positive number of seconds"));
            }
        }
        for (key, value) in
            [("login_limit_per_ip", raw.login_limit_per_ip), ("login_limit_per_account", raw.login_limit_per_account)]
        {
            if value == 0 {
                return Err(invalid(key, "must be at least 1 per minute"));
            }
        }
        if raw.login_throttle_capacity < 100 {
            return Err(invalid("login_throttle_capacity", "must be at least 100"));
        }
        if raw.refresh_margin < 0 {
            return Err(invalid("refresh_margin", "must not be negative"));
        }
        if raw.cache_ttl > 3600 {
            return Err(invalid("cache_ttl", "must be at most 3600 seconds (0 turns the cache off)"));
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
            static_dir: raw.static_dir.clone(),
            session_ttl: raw.session_ttl,
            flow_ttl: raw.flow_ttl,
            http_timeout: raw.http_timeout,
            http_connect_timeout: raw.http_connect_timeout,
            max_response_bytes: raw.max_response_bytes,
            default_token_lifetime: raw.default_token_lifetime,
            demo_token_lifetime: raw.demo_token_lifetime,
            demo_redirect_uris: raw.demo_redirect_uris.clone(),
            refresh_margin: raw.refresh_margin,
            login_limit_per_ip: raw.login_limit_per_ip,
            proxy_max_request_bytes: raw.proxy_max_request_bytes,
            proxy_max_response_bytes: raw.proxy_max_response_bytes,
            metrics: raw.metrics,
            cache_ttl: raw.cache_ttl,
            login_limit_per_account: raw.login_limit_per_account,
            login_throttle_capacity: raw.login_throttle_capacity,
        })
    }
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
        Ok(text) => Ok((Secret::new(text.trim().to_string()), false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let key = generate();
            write_private(path, &key).map_err(io)?;
            Ok((Secret::new(key), true))
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
        assert!(dev.demo_provider && dev.allow_signup && dev.dev_mode);
        let prod = Settings::resolve(&raw, "release").unwrap();
        assert!(!prod.demo_provider && !prod.allow_signup && !prod.dev_mode);
        assert_eq!(dev.redirect_uri("dropbox"), "http://127.0.0.1:8000/services/dropbox/callback");
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
            ("login_throttle_capacity", bad(RawConfig { login_throttle_capacity: 10, ..d() })),
            ("public_url", bad(RawConfig { public_url: "http://127.0.0.1:8000/?x=1".into(), ..d() })),
        ] {
            assert!(err.starts_with(&format!("`{key}` is invalid")), "{key}: {err}");
        }
        let raw = RawConfig { cache_ttl: 3601, ..RawConfig::default() };
        assert!(Settings::resolve(&raw, "debug").unwrap_err().to_string().contains("cache_ttl"));
        let raw = RawConfig { database_url: Some("postgres://app:pa55word@db/tv".into()), ..RawConfig::default() };
        assert!(!format!("{:?}", Settings::resolve(&raw, "debug").unwrap()).contains("pa55word"));
        let raw = RawConfig { cache_ttl: 0, ..RawConfig::default() };
        assert_eq!(Settings::resolve(&raw, "debug").unwrap().cache_ttl, 0);
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

    #[test]
    fn key_files_are_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/vault.key");
        let (k1, created) = load_or_create_key(&path, true, || "KEY1".into()).unwrap();
        assert!(created);
        let (k2, created) = load_or_create_key(&path, true, || "KEY2".into()).unwrap();
        assert!(!created);
        assert_eq!(k1.expose(), k2.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(load_or_create_key(&dir.path().join("missing"), false, || "x".into()).is_err());
    }
}

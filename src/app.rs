//! The one place the Rocket is assembled: configuration, keys, fairings, routes and catchers
//! (the state it manages is `crate::state::AppState`).

use crate::util::ExposeSecret;
use std::sync::Arc;

use rocket::fairing::AdHoc;
use rocket::figment::Figment;
use rocket::{Build, Rocket};
use rocket_dyn_templates::Template;

use crate::config::{invalid, key_or_file, load_or_create_key, ConfigError, RawConfig, Settings};
use crate::db::Db;
use crate::oauth::http::Outbound;
use crate::oauth::managed::LiveCatalog;
use crate::oauth::providers::Catalog;
use crate::state::AppState;
use crate::vault::Cipher;
use crate::web::{RequestLog, SecurityHeaders};

/// Validated configuration and keys, before any Rocket or database exists (used by the CLI too).
pub struct Prepared {
    pub figment: Figment,
    pub settings: Settings,
    pub catalog: Catalog,
    /// The configuration's provider tables, as written (the base of `oauth::managed::LiveCatalog`).
    pub providers: std::collections::BTreeMap<String, crate::oauth::providers::ProviderConfig>,
    pub cipher: Cipher,
    pub webhooks: crate::webhooks::Webhooks,
}

/// Rocket's standard figment: defaults, then `Rocket.toml` (or `ROCKET_CONFIG`), then `ROCKET_*`.
pub fn figment() -> Figment {
    rocket::Config::figment()
}

/// Read and check the configuration; create the debug profile's key files on first start.
pub fn prepare(figment: Figment) -> Result<Prepared, ConfigError> {
    let profile = figment.profile().to_string();
    let raw = RawConfig::from_figment(&figment)?;
    let settings = Settings::resolve(&raw, &profile)?;
    let catalog = Catalog::build(&settings, &raw.providers)?;
    let webhooks = crate::webhooks::Webhooks::build(&raw.webhooks)?.allow_private_urls(settings.webhooks.private_urls);

    let (vault_key, cipher) = vault_key(&raw, &settings, &profile)?;

    let mut figment = figment;
    // Rocket's defaults hold an all-zero secret key, which it replaces with a random one per start
    // in debug (every restart would sign everyone out) and refuses in release.
    let secret_key_set =
        |figment: &Figment, key: &str| match figment.extract_inner::<rocket::config::SecretKey>("secret_key") {
            Ok(key) => Ok(!key.is_zero()),
            Err(_) if figment.find_value("secret_key").is_err() => Ok(false),
            // Set but unusable: say so (without the value) instead of treating it as missing.
            Err(_) => Err(invalid(
                key,
                "is not a valid key: it must be 64 random bytes in base64 (`tokenvault keygen --secret-key`)",
            )),
        };
    let inline_secret_key = secret_key_set(&figment, "secret_key")?;
    if let Some(path) = &raw.secret_key_file {
        // (An inline key is passed only so that "both set" is refused.)
        let inline = inline_secret_key.then(|| crate::util::secret(String::new()));
        if let Some(key) = key_or_file("secret_key", inline, Some(path))? {
            figment = figment.merge(("secret_key", key.expose_secret().to_string()));
            secret_key_set(&figment, "secret_key_file")?;
        }
    } else if inline_secret_key {
        // Rocket reads it from the figment.
    } else if settings.dev_mode {
        let path = settings.data_dir.join("secret.key");
        let (key, created) = load_or_create_key(&path, true, || crate::util::random_key_b64(64))?;
        if created {
            tracing::info!(path = %path.display(), "generated a cookie secret key (debug profile only)");
        }
        figment = figment.merge(("secret_key", key.expose_secret().to_string()));
    } else {
        return Err(ConfigError::Missing(format!(
            "`secret_key` is required in the `{profile}` profile (it signs and encrypts cookies): generate one with \
             `tokenvault keygen --secret-key` and set it as ROCKET_SECRET_KEY, or put it in a file named by \
             ROCKET_SECRET_KEY_FILE (`secret_key_file`)"
        )));
    }
    if let Some(secret_key) = figment.find_value("secret_key").ok().and_then(|v| v.into_string()) {
        crate::config::check_keys_distinct(&secret_key, &vault_key, &raw.vault_old_keys)?;
    }
    // The client address (login throttling, logs) comes from the TCP peer. Rocket's own default
    // `ip_header` is `X-Real-IP`, which any client can send: a header is used only when the
    // operator names one (Rocket.toml or ROCKET_IP_HEADER), never by Rocket's default.
    figment = ip_header_only_if_named(figment);
    match figment.extract_inner::<String>("ip_header") {
        Ok(header) => tracing::info!(ip_header = %header, "client addresses are taken from a request header"),
        Err(_) => tracing::debug!("client addresses are taken from the connection"),
    }
    // tokenvault logs through `tracing` with its own request log, which never prints query strings
    // (callbacks carry codes and states there). Rocket's own logger would.
    figment = figment.merge(("log_level", "off"));
    Ok(Prepared { figment, settings, catalog, providers: raw.providers.clone(), cipher, webhooks })
}

/// The vault key (configured, in a file, or in the debug profile created on first start) and the
/// cipher it opens, with the old keys of a rotation.
fn vault_key(
    raw: &RawConfig,
    settings: &Settings,
    profile: &str,
) -> Result<(crate::util::Secret, Cipher), ConfigError> {
    let vault_key = match key_or_file("vault_key", raw.vault_key.clone(), raw.vault_key_file.as_deref())? {
        Some(key) => key,
        None if settings.dev_mode => {
            let path = settings.data_dir.join("vault.key");
            let (key, created) = load_or_create_key(&path, true, Cipher::generate_key)?;
            if created {
                tracing::warn!(path = %path.display(), "generated a new vault key (debug profile only); keep this file, it opens every stored secret");
            }
            key
        }
        None => {
            return Err(ConfigError::Missing(format!(
            "`vault_key` is required in the `{profile}` profile: generate one with `tokenvault keygen` and set it as \
                 ROCKET_VAULT_KEY, or put it in a file named by ROCKET_VAULT_KEY_FILE (`vault_key_file`)"
        )))
        }
    };
    let old: Vec<String> = raw.vault_old_keys.iter().map(|k| k.expose_secret().to_string()).collect();
    let cipher =
        Cipher::from_base64(vault_key.expose_secret(), &old).map_err(|e| invalid("vault_key", e.to_string()))?;
    Ok((vault_key, cipher))
}

/// `ip_header = false` unless the operator set `ip_header` (a file or the environment): Rocket's
/// built-in default is never used.
fn ip_header_only_if_named(figment: Figment) -> Figment {
    let named = figment.find_metadata("ip_header").is_some_and(|m| !m.name.starts_with("rocket::Config"));
    if named {
        figment
    } else {
        figment.merge(("ip_header", false))
    }
}

/// Build the Rocket from a figment (validating everything first).
pub fn build(figment: Figment) -> Result<Rocket<Build>, ConfigError> {
    rocket(prepare(figment)?)
}

pub fn rocket(prepared: Prepared) -> Result<Rocket<Build>, ConfigError> {
    let Prepared { figment, settings, catalog, providers, cipher, webhooks } = prepared;
    let webhooks = Arc::new(webhooks);
    // The embedded templates, or `template_dir` when it has them all (see `crate::assets`).
    let templates = crate::assets::template_root(settings.template_dir.as_deref())
        .map_err(|e| invalid("template_dir", format!("cannot prepare the templates: {e}")))?;
    let figment = figment.merge(("template_dir", templates.path.clone()));
    warn_of_demo_outside_debug(&settings);
    let http = Outbound::new(&settings.http).map_err(|e| invalid("http_timeout", e))?;
    let static_files = crate::assets::StaticFiles { dir: settings.static_dir.clone() };
    let demo = settings.demo_provider;
    let settings = Arc::new(settings);
    let cipher = Arc::new(cipher);

    let metrics = Arc::new(crate::state::AppMetrics::new());
    let metrics_state = metrics.clone();
    // The background jobs (`crate::jobs`): started at liftoff, stopped at shutdown.
    let jobs = Arc::new(crate::jobs::Supervisor::new(metrics.jobs.clone()));
    let jobs_state = jobs.clone();
    let database = AdHoc::try_on_ignite("Database and state", move |rocket| async move {
        let url = settings.database_url.clone();
        let c = cipher.clone();
        let hooks = webhooks.clone();
        let opened = rocket::tokio::task::spawn_blocking(move || open_database(&url, &c, &hooks, demo)).await;
        let (catalog, opened) = live_catalog(catalog, providers, &http, opened).await;
        match opened {
            Ok(Ok(db)) => {
                // Form posts may end in redirects to the providers' authorize pages (the Authorize
                // button) and, for the demo provider's consent form, to the registered redirect URIs;
                // the list follows the providers in effect.
                let headers = SecurityHeaders::live(
                    catalog.clone(),
                    settings.public_origin(),
                    form_extra_targets(&settings),
                    settings.is_https(),
                );
                tracing::info!(profile = %settings.profile, public_url = %settings.public_url, vault_key_id = %cipher.active_key_id(), "database ready");
                let state = app_state(
                    db,
                    catalog,
                    Handles { settings, cipher, http, metrics: metrics_state, webhooks, jobs: jobs_state },
                );
                Ok(rocket.attach(headers).manage(state))
            }
            Ok(Err(e)) => {
                tracing::error!("cannot start: {e}");
                Err(rocket)
            }
            Err(e) => {
                tracing::error!("cannot start: {e}");
                Err(rocket)
            }
        }
    });

    let rocket = rocket::custom(figment)
        .attach(RequestLog)
        .attach(crate::metrics::MetricsFairing(metrics.registry.clone()))
        .attach(Template::custom(|engines| engines.handlebars.set_strict_mode(true)))
        .attach(database)
        .attach(crate::schedule::Fairing { supervisor: jobs })
        .attach(AdHoc::on_liftoff("Announce", |rocket| {
            Box::pin(async move {
                let c = rocket.config();
                tracing::info!("tokenvault listening on http://{}:{}", c.address, c.port);
            })
        }))
        .attach(AdHoc::on_shutdown("Audit flush", |rocket| {
            Box::pin(async move {
                if let Some(app) = rocket.state::<AppState>() {
                    app.audit.flush().await;
                }
            })
        }))
        .manage(static_files)
        .manage(templates)
        .register("/", crate::routes::catchers());
    Ok(mount_routes(rocket, demo))
}

/// The configuration's catalog, discovered, with the providers added, edited or disabled in the
/// app (the `providers` rows of the opened database) laid over it: in effect before the first
/// request. A database whose providers cannot be read does not start.
async fn live_catalog(
    mut catalog: Catalog,
    providers: std::collections::BTreeMap<String, crate::oauth::providers::ProviderConfig>,
    http: &Outbound,
    opened: Result<Result<Db, String>, rocket::tokio::task::JoinError>,
) -> (Arc<LiveCatalog>, Result<Result<Db, String>, rocket::tokio::task::JoinError>) {
    catalog.discover(http).await;
    let catalog = Arc::new(LiveCatalog::new(providers, catalog));
    let opened = match opened {
        Ok(Ok(db)) => match catalog.reload_in(&db).await {
            Ok(_) => Ok(Ok(db)),
            Err(e) => Ok(Err(format!("cannot read the providers table: {e}"))),
        },
        other => other,
    };
    (catalog, opened)
}

/// What the server's state is made of before the database is open.
struct Handles {
    settings: Arc<Settings>,
    cipher: Arc<Cipher>,
    http: Outbound,
    metrics: Arc<crate::state::AppMetrics>,
    webhooks: Arc<crate::webhooks::Webhooks>,
    jobs: Arc<crate::jobs::Supervisor>,
}

/// The server's state, once its database is open and its providers discovered.
fn app_state(db: Db, catalog: Arc<LiveCatalog>, h: Handles) -> AppState {
    let Handles { settings, cipher, http, metrics, webhooks, jobs } = h;
    AppState {
        db,
        cipher,
        http,
        catalog,
        refresh_locks: Default::default(),
        metrics,
        caches: Arc::new(crate::cache::Caches::new(settings.api.cache_ttl)),
        hasher: Arc::new(crate::auth::password::Hasher::for_this_machine()),
        login_throttle: crate::auth::throttle::LoginThrottle::new(
            settings.login.per_ip,
            settings.login.per_account,
            settings.login.throttle_capacity,
        ),
        webhooks,
        audit: Default::default(),
        job_wake: Default::default(),
        jobs,
        settings,
    }
}

/// Every page and API route, the static files and — with the demo provider — `/demo`.
fn mount_routes(rocket: Rocket<Build>, demo: bool) -> Rocket<Build> {
    use crate::routes::*;
    use crate::web::traced;
    let pages = [
        home::routes(),
        auth::routes(),
        services::routes(),
        account::routes(),
        console::routes(),
        settings::routes(),
        password::routes(),
        admin::routes(),
        webhooks::routes(),
        providers::routes(),
        health::routes(),
        api_keys::routes(),
        sessions::routes(),
        audit::routes(),
        authz::routes(),
        apps::routes(),
    ];
    let mut rocket = pages.into_iter().fold(rocket, |rocket, routes| rocket.mount("/", traced(routes)));
    rocket = rocket.manage(crate::authz::clients::RegistrationLimiter::default());
    rocket = rocket.mount("/", traced(mcp::routes())).manage(mcp::Sessions::default());
    rocket = rocket.mount("/", traced(crate::web::cors::routes())).attach(crate::web::cors::Cors);
    rocket = rocket.mount("/api/v1", traced(api::routes())).mount("/static", crate::assets::routes());
    if demo {
        rocket = rocket.mount("/demo", traced(crate::demo::routes())).manage(crate::demo::FailureSwitch::default());
    }
    rocket
}

/// The demo provider grants tokens to anyone who clicks Allow: said loudly outside debug.
fn warn_of_demo_outside_debug(settings: &Settings) {
    if settings.demo_provider && !settings.dev_mode {
        tracing::warn!(
            profile = %settings.profile,
            "DEMO PROVIDER ENABLED OUTSIDE DEBUG: `demo_provider = true` serves a pretend OAuth 2.0 provider under \
             /demo that grants codes and tokens to anyone who clicks Allow. Never enable it on an instance that \
             holds real users' tokens; set `demo_provider = false`."
        );
    }
}

/// Open the database (migrated) and check what must hold before the first request: the vault
/// key, the audit log's head, the webhook endpoints edited on the page, the demo client.
fn open_database(url: &str, cipher: &Cipher, hooks: &crate::webhooks::Webhooks, demo: bool) -> Result<Db, String> {
    let db = Db::open(url)?;
    let mut conn = db.conn().map_err(|e| e.to_string())?;
    match crate::vault::rotation::verify_key(&mut conn, cipher)? {
        crate::vault::rotation::KeyCheck::OldKey => {
            tracing::warn!("secrets are still sealed with an old vault key: run `tokenvault vault rotate-key`")
        }
        crate::vault::rotation::KeyCheck::Created => tracing::info!("vault key check recorded"),
        crate::vault::rotation::KeyCheck::Active => {}
    }
    // The audit log: started here in a new database; elsewhere its head must verify, or nothing
    // could be recorded — and then tokenvault does not start.
    match crate::audit::open(&mut conn, cipher).map_err(|e| format!("cannot open the audit log: {e}"))? {
        Ok(head) => tracing::info!(seq = head.seq, anchor = head.anchor_id, "audit log ready"),
        Err(broken) => return Err(crate::audit::unusable(&broken)),
    }
    // The endpoints edited on /admin/webhooks, in effect before the first request.
    hooks.reload(&mut conn, cipher).map_err(|e| format!("cannot read the webhook endpoints: {e}"))?;
    for e in hooks.endpoints().iter().filter(|e| e.origin == crate::webhooks::Origin::Edited) {
        tracing::warn!(endpoint = %e.name, "webhook endpoint: the settings edited on /admin/webhooks override its Rocket.toml table (changes to that table do not apply until it is reverted on the page)");
    }
    if demo {
        crate::demo::ensure_client(&mut conn, cipher).map_err(|e| format!("demo provider setup failed: {e}"))?;
    }
    drop(conn);
    Ok(db)
}

/// Where form posts may end besides the providers' authorize pages: for the demo provider's
/// consent form, its registered redirect URIs.
fn form_extra_targets(settings: &Settings) -> Vec<String> {
    if !settings.demo_provider {
        return Vec::new();
    }
    settings
        .demo
        .redirect_uris
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .collect()
}

#[cfg(test)]
mod tests {
    use rocket::figment::Figment;

    fn header(figment: Figment) -> Option<String> {
        super::ip_header_only_if_named(figment).extract::<rocket::Config>().unwrap().ip_header.map(|h| h.to_string())
    }

    #[test]
    fn rocket_default_ip_header_is_switched_off_and_a_named_one_kept() {
        assert_eq!(header(rocket::Config::figment()), None);
        assert_eq!(header(Figment::from(rocket::Config::default())), None);
        assert_eq!(header(Figment::from(rocket::Config::debug_default())), None);
        let named = rocket::Config::figment().merge(("ip_header", "X-Forwarded-For"));
        assert_eq!(header(named).as_deref(), Some("X-Forwarded-For"));
        let off = rocket::Config::figment().merge(("ip_header", false));
        assert_eq!(header(off), None);
    }
}

//! `tokenvault provider …`: the providers of `/admin/providers`, for scripts (`oauth::managed`).
//! Each change is recorded as on the page (audit entry, `provider.changed` webhook, invalidation):
//! running servers rebuild their catalog from the rows within their invalidation poll.

use clap::Subcommand;
use serde_json::{Map, Value};

use super::{cli_error, open, read_secret};
use crate::audit::Actor;
use crate::oauth::managed::{self, Editor, Egress, LiveCatalog, NewProvider, Origin};

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// The catalog of presets, one a line: `<preset> <display name>`.
    Presets,
    /// Every provider: name, origin (config, edited, added), enabled or disabled, whether its
    /// client credentials are set, its redirect URI.
    List,
    /// One provider: where its settings come from, the keys set in the app, its endpoints (never
    /// its client secret).
    Show { name: String },
    /// Add a provider: from a preset (`--preset`), by OpenID Connect discovery (`--issuer`), or
    /// key by key (`--set key=value`, values in TOML). The client secret is read from standard
    /// input with `--client-secret -`.
    Add {
        name: String,
        #[arg(long)]
        preset: Option<String>,
        #[arg(long)]
        issuer: Option<String>,
        /// A key of the provider table with a TOML value (`--set 'scopes=["openid"]'`); repeat.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        client_id: Option<String>,
        /// `-`: read the client secret from standard input.
        #[arg(long, value_name = "-")]
        client_secret: Option<String>,
    },
    /// Set keys of a provider's table (`--set key=value`; `--set key=` removes a key set in the
    /// app), or its client credentials.
    Edit {
        name: String,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        client_id: Option<String>,
        #[arg(long, value_name = "-")]
        client_secret: Option<String>,
    },
    /// Hide a provider from users and the API (its connections and tokens are kept).
    Disable { name: String },
    /// Show a disabled provider again.
    Enable { name: String },
    /// Drop the edits made in the app to a configured provider (its Rocket.toml table applies).
    Revert { name: String },
    /// Delete a provider added in the app; refused while it has connections unless
    /// `--with-connections` (they are revoked at the provider where possible, then deleted).
    Delete {
        name: String,
        #[arg(long)]
        with_connections: bool,
    },
}

/// What a provider command works with: the configuration, one connection, the live catalog.
struct Context {
    conn: crate::db::Conn,
    settings: crate::config::Settings,
    cipher: std::sync::Arc<crate::vault::Cipher>,
    live: LiveCatalog,
    runtime: rocket::tokio::runtime::Runtime,
    http: crate::oauth::http::Outbound,
}

impl Context {
    fn open() -> Result<Context, String> {
        let (mut conn, prepared) = open()?;
        let egress = Egress::of(&prepared.settings);
        let http =
            crate::oauth::http::Outbound::with_egress(&prepared.settings.http, egress).map_err(|e| e.to_string())?;
        let runtime = rocket::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an async runtime: {e}"))?;
        let crate::app::Prepared { settings, catalog: mut base, providers, cipher, .. } = prepared;
        runtime.block_on(base.discover(&http));
        let live = LiveCatalog::new(providers, base);
        live.reload(&mut conn).map_err(cli_error)?;
        Ok(Context { conn, settings, cipher: std::sync::Arc::new(cipher), live, runtime, http })
    }

    /// `f` with an editor acting as `cli` and this context's connection.
    fn edit<T>(&mut self, f: impl FnOnce(&Editor<'_>, &mut crate::db::Conn) -> T) -> T {
        let settings = &self.settings;
        let editor = Editor {
            live: &self.live,
            cipher: &self.cipher,
            actor: Actor::Cli,
            by: "cli",
            egress: Egress::of(settings),
        };
        f(&editor, &mut self.conn)
    }

    fn credentials(&mut self, name: &str) -> Result<&'static str, String> {
        let stored = crate::vault::store::client_credentials(&mut self.conn, &self.cipher, name).map_err(cli_error)?;
        Ok(match stored {
            Some(c) if c.client_secret.is_some() => "set",
            _ => "missing",
        })
    }
}

fn secret_from(arg: Option<String>) -> Result<Option<crate::util::Secret>, String> {
    match arg.as_deref() {
        None => Ok(None),
        Some("-") => read_secret("Client secret: ").map(Some),
        Some(_) => Err("--client-secret takes `-` (the secret is read from standard input, never an argument)".into()),
    }
}

pub fn run(command: ProviderCommand) -> Result<String, String> {
    match command {
        ProviderCommand::Presets => Ok(presets()),
        ProviderCommand::List => list(),
        ProviderCommand::Show { name } => show(&name),
        ProviderCommand::Add { name, preset, issuer, set, client_id, client_secret } => {
            add(name, preset, issuer, set, client_id, secret_from(client_secret)?)
        }
        ProviderCommand::Edit { name, set, client_id, client_secret } => {
            edit(&name, set, client_id, secret_from(client_secret)?)
        }
        ProviderCommand::Disable { name } => enable(&name, false),
        ProviderCommand::Enable { name } => enable(&name, true),
        ProviderCommand::Revert { name } => {
            let mut cx = Context::open()?;
            let version = cx.live.entry(&name).map(|e| e.version).ok_or_else(|| format!("no provider named {name}"))?;
            cx.edit(|e, conn| e.revert(conn, &name, version)).map_err(cli_error)?.recorded_only();
            Ok(format!("provider {name} reverted to its configuration"))
        }
        ProviderCommand::Delete { name, with_connections } => delete(&name, with_connections),
    }
}

/// `provider presets`: `<preset> <display name>` a line.
fn presets() -> String {
    crate::oauth::providers::preset_names()
        .into_iter()
        .map(|name| {
            let display =
                crate::oauth::providers::preset(name).and_then(|p| p.display_name.clone()).unwrap_or_default();
            format!("{name} {display}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn list() -> Result<String, String> {
    let mut cx = Context::open()?;
    let mut lines = Vec::new();
    for e in cx.live.entries().iter() {
        let credentials = match &e.provider {
            Ok(p) if p.is_demo => "built-in",
            _ => cx.credentials(&e.name)?,
        };
        let state = match &e.provider {
            Err(why) => format!("unusable: {why}"),
            Ok(_) if e.enabled => "enabled".into(),
            Ok(_) => "disabled".into(),
        };
        lines.push(format!(
            "{}\t{}\t{state}\tcredentials {credentials}\t{}",
            e.name,
            e.origin.as_str(),
            cx.settings.redirect_uri(&e.name)
        ));
    }
    Ok(lines.join("\n"))
}

fn show(name: &str) -> Result<String, String> {
    let mut cx = Context::open()?;
    let e = cx.live.entry(name).ok_or_else(|| format!("no provider named {name}"))?;
    let credentials = cx.credentials(name)?;
    let mut out = vec![
        format!("name: {name}"),
        format!("origin: {}", e.origin.as_str()),
        format!("enabled: {}", e.enabled),
        format!("version: {}", e.version),
        format!("client credentials: {credentials}"),
        format!("redirect URI: {}", cx.settings.redirect_uri(name)),
    ];
    if !e.settings.is_empty() {
        out.push(format!("set in the app: {}", Value::Object(e.settings.clone())));
    }
    match &e.provider {
        Ok(p) => {
            out.push(format!("display name: {}", p.display_name));
            out.push(format!("authorize URL: {}", p.authorize_url));
            out.push(format!("token URL: {}", p.token_url));
            if let Some(api) = &p.api_base_url {
                out.push(format!("API base URL: {api}"));
            }
            out.push(format!("scopes: {}", p.scopes.join(" ")));
        }
        Err(why) => out.push(format!("unusable: {why}")),
    }
    Ok(out.join("\n"))
}

fn add(
    name: String,
    preset: Option<String>,
    issuer: Option<String>,
    set: Vec<String>,
    client_id: Option<String>,
    client_secret: Option<crate::util::Secret>,
) -> Result<String, String> {
    let mut cx = Context::open()?;
    let mut settings: Map<String, Value> = managed::parse_set(&set)?;
    if let Some(preset) = preset {
        settings.insert("preset".into(), Value::String(preset));
    }
    if let Some(issuer) = issuer {
        settings.insert("issuer".into(), Value::String(issuer));
        settings = discover(&cx, &name, settings)?;
    }
    let new = NewProvider { name: name.clone(), settings, client_id, client_secret };
    cx.edit(|e, conn| e.add(conn, &new)).map_err(cli_error)?.recorded_only();
    let credentials = cx.credentials(&name)?;
    Ok(format!(
        "provider {name} added (client credentials {credentials}); register the redirect URI {}",
        cx.settings.redirect_uri(&name)
    ))
}

/// The endpoints OpenID Connect discovery finds for `settings.issuer`, with `settings` over them.
fn discover(cx: &Context, name: &str, settings: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let cfg = managed::config_of(&settings)?;
    let found = cx
        .runtime
        .block_on(crate::oauth::providers::discovered_config(cx.http.set_in_app(), name, &cfg))
        .map_err(|e| format!("issuer: {e}"))?;
    Ok(managed::settings_of(&found))
}

fn edit(
    name: &str,
    set: Vec<String>,
    client_id: Option<String>,
    client_secret: Option<crate::util::Secret>,
) -> Result<String, String> {
    let mut cx = Context::open()?;
    let (remove, set): (Vec<String>, Vec<String>) = set.into_iter().partition(|p| p.ends_with('='));
    let mut changes = managed::parse_set(&set)?;
    for key in remove {
        changes.insert(key.trim_end_matches('=').trim().to_string(), Value::Null);
    }
    if changes.is_empty() && client_id.is_none() && client_secret.is_none() {
        return Err("nothing to change: give --set key=value, --client-id or --client-secret -".into());
    }
    let version = cx.live.entry(name).map(|e| e.version).ok_or_else(|| format!("no provider named {name}"))?;
    let secret = client_secret.as_ref();
    let committed = cx.edit(|e, conn| e.edit(conn, name, version, &changes, client_id.as_deref(), secret));
    committed.map_err(cli_error)?.recorded_only();
    let origin = cx.live.entry(name).map(|e| e.origin).unwrap_or(Origin::Added);
    Ok(format!("provider {name} edited ({})", origin.as_str()))
}

fn enable(name: &str, enabled: bool) -> Result<String, String> {
    let mut cx = Context::open()?;
    cx.edit(|e, conn| e.set_enabled(conn, name, None, enabled)).map_err(cli_error)?.recorded_only();
    Ok(format!("provider {name} {}", if enabled { "enabled" } else { "disabled (its connections are kept)" }))
}

fn delete(name: &str, with_connections: bool) -> Result<String, String> {
    let mut cx = Context::open()?;
    let count = managed::connection_count(&mut cx.conn, name).map_err(cli_error)?;
    let mut revoked = 0;
    if count > 0 {
        if !with_connections {
            return Err(format!(
                "provider {name} has {count} connection(s): add --with-connections to revoke and delete them too"
            ));
        }
        let provider = cx.live.current().get_any(name).ok_or_else(|| format!("provider {name} is not usable"))?;
        revoked = revoke_all(&cx, &provider)?;
    }
    cx.edit(|e, conn| e.delete(conn, name, None)).map_err(cli_error)?.recorded_only();
    Ok(format!("provider {name} deleted ({revoked} connection(s) revoked and deleted)"))
}

/// Revoke (where the provider can) and delete every connection of `provider`, each recorded as
/// a user's revocation is; how many.
fn revoke_all(cx: &Context, provider: &crate::oauth::providers::Provider) -> Result<usize, String> {
    use crate::db::models::connections::Which;
    let settings = &cx.settings;
    let db = crate::db::Db::open(&settings.database_url)?;
    let caches = crate::cache::Caches::new(0);
    let metrics = crate::oauth::metrics::OauthMetrics::register(&crate::metrics::Metrics::new());
    let locks = crate::oauth::access::RefreshLocks::default();
    let access = crate::oauth::access::Access {
        tokens: crate::oauth::store::Tokens {
            db: &db,
            cipher: &cx.cipher,
            caches: &caches,
            events_kept: settings.flows.events_per_connection,
            webhooks: None,
            jobs: None,
        },
        http: &cx.http,
        metrics: &metrics,
        locks: &locks,
        settings,
    };
    let name = provider.name.clone();
    let rows: Vec<(i64, i64)> = {
        use crate::db::schema::connections;
        use diesel::prelude::*;
        let mut conn = db.conn().map_err(|e| e.to_string())?;
        let conn = &mut conn;
        crate::on_conn!(conn, c => connections::table
            .filter(connections::service.eq(&name))
            .select((connections::user_id, connections::id))
            .load::<(i64, i64)>(c))
        .map_err(|e| e.to_string())?
    };
    for (user_id, id) in &rows {
        let outcome =
            cx.runtime.block_on(crate::oauth::revoke::revoke_and_delete(&access, Which::id(*user_id, *id), provider));
        match outcome {
            Ok(_) | Err(crate::error::AppError::NotFound) => {}
            Err(e) => return Err(cli_error(e)),
        }
    }
    Ok(rows.len())
}

//! Providers managed in the app (issue 21): the configuration's `[providers.<name>]` tables with
//! the rows of the `providers` table laid over them — edited (the stored keys win, key by key,
//! until reverted), added (a whole provider table), disabled (hidden from users and the API,
//! connections kept).
//!
//! [`LiveCatalog`] holds the catalog in effect in memory (the hot path never reads the database)
//! and swaps it when the rows change: at once on the instance that made the change
//! ([`Editor`]'s caller reloads after the commit), on the others when their invalidation feed
//! names `providers` (`crate::cache::InvalidationPoll`; on PostgreSQL woken at the commit).
//!
//! A change goes through [`Editor`]: validated as at start-up (`providers::resolve`: names,
//! pointers, unknown keys, https except loopback) plus the webhook URL rule for addresses set in
//! the app (public hosts only unless `webhook_private_urls`, or loopback in the `debug`
//! profile), one unit of work recording `Change::ProviderChanged` (audit entry, `provider.changed`
//! webhook, invalidation), guarded by the row's version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::{Map, Value};

use crate::audit::Actor;
use crate::changes::{self, Change, Committed, ProviderAction};
use crate::db::models::providers::{self as stored, StoredProvider};
use crate::db::{Conn, Db};
use crate::error::{AppError, AppResult};
use crate::oauth::providers::{overlay, resolve, Catalog, Provider, ProviderConfig};
use crate::util::{now, ExposeSecret, Secret};
use crate::vault::Cipher;

/// Where a provider's settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[providers.<name>]` table of the configuration (or the built-in demo provider).
    Config,
    /// A configured provider with keys edited in the app (they win until reverted).
    Edited,
    /// Added in the app.
    Added,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Edited => "edited",
            Origin::Added => "added",
        }
    }
}

/// One provider as the admin page and `tokenvault provider list` show it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub origin: Origin,
    pub enabled: bool,
    /// The stored row's version (0: no row).
    pub version: i64,
    /// The keys stored in the app (an added provider's table, an edited one's overrides).
    pub settings: Map<String, Value>,
    /// The resolved provider, or why the stored settings cannot be used (then it is left out).
    pub provider: Result<Arc<Provider>, String>,
    /// When and by whom it was last changed in the app.
    pub updated: Option<(i64, String)>,
}

#[derive(Debug, Default)]
struct Snapshot {
    catalog: Arc<Catalog>,
    entries: Arc<Vec<Entry>>,
    /// `None` until the table was first read.
    versions: Option<Vec<(String, i64, String)>>,
}

/// The catalog in effect, swapped when the `providers` rows change.
#[derive(Debug)]
pub struct LiveCatalog {
    /// The configuration's tables, as written.
    configured: BTreeMap<String, ProviderConfig>,
    /// The configuration's providers resolved (and discovered) at start-up, with the demo provider.
    base: Arc<Catalog>,
    current: RwLock<Snapshot>,
    /// One reload at a time, so a slower one never installs an older snapshot.
    reloading: Mutex<()>,
    /// Bumped with every new snapshot (the CSP's `form-action` follows it).
    generation: AtomicU64,
}

/// A JSON object of provider table keys as a `ProviderConfig` (unknown keys and wrong types refused).
pub fn config_of(settings: &Map<String, Value>) -> Result<ProviderConfig, String> {
    serde_json::from_value(Value::Object(settings.clone())).map_err(|e| e.to_string())
}

/// A `ProviderConfig` as the JSON object of the keys it sets.
pub fn settings_of(cfg: &ProviderConfig) -> Map<String, Value> {
    match serde_json::to_value(cfg) {
        Ok(Value::Object(map)) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    }
}

fn parse_settings(text: Option<&str>) -> Result<Map<String, Value>, String> {
    match text {
        None => Ok(Map::new()),
        Some(text) => match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the stored settings are not an object".into()),
            Err(e) => Err(format!("the stored settings are not JSON: {e}")),
        },
    }
}

impl LiveCatalog {
    /// The configuration's catalog (`base`, discovered already) and the tables it was built from.
    pub fn new(configured: BTreeMap<String, ProviderConfig>, base: Catalog) -> LiveCatalog {
        let base = Arc::new(base);
        let entries = base
            .iter()
            .map(|p| Entry {
                name: p.name.clone(),
                origin: Origin::Config,
                enabled: true,
                version: 0,
                settings: Map::new(),
                provider: Ok(p.clone()),
                updated: None,
            })
            .collect();
        let current = RwLock::new(Snapshot { catalog: base.clone(), entries: Arc::new(entries), versions: None });
        LiveCatalog { configured, base, current, reloading: Mutex::new(()), generation: AtomicU64::new(0) }
    }

    /// A catalog that never changes (tests, tools).
    pub fn fixed(catalog: Catalog) -> LiveCatalog {
        LiveCatalog::new(BTreeMap::new(), catalog)
    }

    fn snapshot(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The catalog in effect now (hold it for one request or one pass, not longer).
    pub fn current(&self) -> Arc<Catalog> {
        self.snapshot().catalog.clone()
    }

    /// The provider `name` in effect (not disabled).
    pub fn get(&self, name: &str) -> Option<Arc<Provider>> {
        self.snapshot().catalog.get(name)
    }

    /// Every provider with where its settings come from, by name.
    pub fn entries(&self) -> Arc<Vec<Entry>> {
        self.snapshot().entries.clone()
    }

    pub fn entry(&self, name: &str) -> Option<Entry> {
        self.entries().iter().find(|e| e.name == name).cloned()
    }

    /// Changes with every new catalog.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `name` is a provider of the configuration (or the demo provider).
    pub fn is_configured(&self, name: &str) -> bool {
        self.configured.contains_key(name) || self.base.get(name).is_some()
    }

    /// Read the stored providers again if they changed (one small query otherwise); whether the
    /// catalog was replaced.
    pub fn reload(&self, conn: &mut Conn) -> AppResult<bool> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let versions = stored::versions(conn)?;
        if self.snapshot().versions.as_ref() == Some(&versions) {
            return Ok(false);
        }
        let rows = stored::all(conn)?;
        let (catalog, entries) = self.build(&rows);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Snapshot { catalog: Arc::new(catalog), entries: Arc::new(entries), versions: Some(versions) };
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// [`LiveCatalog::reload`] on the blocking pool.
    pub async fn reload_in(self: &Arc<Self>, db: &Db) -> AppResult<bool> {
        let live = self.clone();
        db.run(move |conn| live.reload(conn)).await
    }

    /// The provider `name` from the configuration and stored `settings`.
    fn resolve_stored(&self, name: &str, settings: &Map<String, Value>) -> Result<Provider, String> {
        let stored = config_of(settings)?;
        let cfg = match self.configured.get(name) {
            Some(configured) => overlay(configured.clone(), &stored),
            None => stored,
        };
        if crate::oauth::providers::needs_discovery(&cfg) {
            return Err("a provider configured by its issuer alone cannot be edited: set authorize_url and \
                        token_url (or add it again by issuer)"
                .into());
        }
        let mut provider = resolve(name, &cfg).map_err(|e| e.to_string())?;
        // An endpoint typed in the app (not one the operator wrote in Rocket.toml) puts every
        // call to the provider under the egress rule.
        let operators = self.base.get(name).map(|c| endpoints(&c)).unwrap_or_default();
        provider.set_in_app = endpoints(&provider).iter().any(|e| !operators.contains(e));
        Ok(provider)
    }

    fn build(&self, rows: &[StoredProvider]) -> (Catalog, Vec<Entry>) {
        let by_name: BTreeMap<&str, &StoredProvider> = rows.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut names: BTreeSet<String> = self.configured.keys().cloned().collect();
        names.extend(self.base.providers().keys().cloned());
        names.extend(rows.iter().map(|r| r.name.clone()));
        let (mut in_effect, mut disabled) = (BTreeMap::new(), BTreeMap::new());
        let mut entries = Vec::new();
        for name in names {
            let row = by_name.get(name.as_str());
            let configured = self.is_configured(&name);
            let settings = row.map(|r| parse_settings(r.settings.as_deref())).unwrap_or(Ok(Map::new()));
            let edited = row.is_some_and(|r| r.settings.is_some());
            let origin = match (configured, edited) {
                (true, false) => Origin::Config,
                (true, true) => Origin::Edited,
                (false, _) => Origin::Added,
            };
            let provider = match (&settings, origin) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), Origin::Config) => self.base.get(&name).ok_or_else(|| {
                    "not in effect: its configuration was refused at start-up (see the log)".to_string()
                }),
                (Ok(_), Origin::Added) if !edited => Err("the stored row has no settings".into()),
                (Ok(s), _) => self.resolve_stored(&name, s).map(Arc::new),
            };
            if let Err(e) = &provider {
                if origin != Origin::Config {
                    tracing::error!(provider = %name, error = %e, "a provider stored in the app is unusable: left out");
                }
            }
            let enabled = row.is_none_or(|r| r.enabled);
            if let Ok(p) = &provider {
                if enabled {
                    in_effect.insert(name.clone(), p.clone());
                } else {
                    disabled.insert(name.clone(), p.clone());
                }
            }
            entries.push(Entry {
                name: name.clone(),
                origin,
                enabled,
                version: row.map_or(0, |r| r.version),
                settings: settings.unwrap_or_default(),
                provider,
                updated: row.map(|r| (r.updated_at, r.updated_by.clone())),
            });
        }
        (Catalog::assemble(in_effect, disabled), entries)
    }
}

/// Where endpoints set in the app may point.
#[derive(Debug, Clone, Copy)]
pub struct Egress {
    /// `webhook_private_urls`: any address.
    pub private_urls: bool,
    /// The `debug` profile: loopback addresses too (the demo and the tests).
    pub loopback: bool,
}

/// The endpoints of `p`, by key.
fn endpoints(p: &Provider) -> Vec<(&'static str, url::Url)> {
    let mut urls: Vec<(&str, url::Url)> =
        vec![("authorize_url", p.authorize_url.clone()), ("token_url", p.token_url.clone())];
    let optional = [
        ("account_url", p.account_url.clone()),
        ("api_base_url", p.api_base_url.clone()),
        ("jwks_url", p.jwks_url.clone()),
        ("refresh_url", p.refresh_url.clone()),
    ];
    urls.extend(optional.into_iter().filter_map(|(k, u)| u.map(|u| (k, u))));
    if let Some(revoke) = &p.revoke_url {
        if let Ok(u) = url::Url::parse(&revoke.replace("{client_id}", "id")) {
            urls.push(("revoke_url", u));
        }
    }
    urls
}

impl Egress {
    /// The rule of these settings: `webhook_private_urls`, loopback in `debug`.
    pub fn of(settings: &crate::config::Settings) -> Egress {
        Egress { private_urls: settings.webhooks.private_urls, loopback: settings.dev_mode }
    }

    /// The name resolution that enforces the rule when a call connects (`None`: any address).
    pub fn resolver(&self) -> Option<crate::webhooks::egress::PublicOnly> {
        (!self.private_urls).then_some(crate::webhooks::egress::PublicOnly { loopback: self.loopback })
    }

    /// Every endpoint of `p` set in the app names an allowed host. Those that are as the operator
    /// wrote them in Rocket.toml (`configured`: the provider as configured) are not checked: the
    /// rule is for what is typed on the page, not for the configuration it overrides.
    pub fn check(&self, p: &Provider, configured: Option<&Provider>) -> Result<(), String> {
        if self.private_urls {
            return Ok(());
        }
        let operators = configured.map(endpoints).unwrap_or_default();
        for (key, url) in endpoints(p) {
            if (self.loopback && is_loopback(&url)) || operators.contains(&(key, url.clone())) {
                continue;
            }
            crate::webhooks::egress::check_public_host(&url).map_err(|e| {
                format!("{key}: {}", e.replace("`webhook_private_urls`", "`webhook_private_urls` (providers too)"))
            })?;
        }
        Ok(())
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// What a new provider is made of.
#[derive(Debug, Default)]
pub struct NewProvider {
    pub name: String,
    /// Provider table keys (`preset`, `params`, endpoints …).
    pub settings: Map<String, Value>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
}

/// Who makes the changes, with the handles they need.
pub struct Editor<'a> {
    pub live: &'a LiveCatalog,
    pub cipher: &'a Cipher,
    /// Who, as the audit entry names them (an administrator, or `cli`).
    pub actor: Actor,
    /// Their username (or `cli`), as the row says.
    pub by: &'a str,
    pub egress: Egress,
}

/// A unit of work holding the write lock from its start: its reads (the row's version) and writes
/// see one state, and on SQLite a concurrent writer cannot make it fail half-way (a deferred
/// transaction that reads and then writes would get `SQLITE_BUSY` at once).
fn unit<T>(
    conn: &mut Conn,
    cipher: &Cipher,
    f: impl FnOnce(&mut changes::Tx<'_>) -> AppResult<T>,
) -> AppResult<Committed<T>> {
    use diesel::RunQueryDsl;
    conn.transaction(|conn| {
        // SQLite: take the write lock now (a no-op write; on PostgreSQL, row locks and the
        // version compare-and-swap order writers).
        crate::on_conn!(conn, c => diesel::sql_query("UPDATE providers SET version = version WHERE 1 = 0").execute(c))?;
        changes::write_no_history(conn, cipher, f)
    })
}

fn stale(name: &str) -> AppError {
    AppError::Conflict(format!(
        "The provider {name} was changed by someone else after this page was loaded; nothing was saved. \
         Reload the page and make the change again."
    ))
}

/// How many connections the provider `name` has (every user's).
pub fn connection_count(conn: &mut Conn, name: &str) -> AppResult<i64> {
    use crate::db::schema::connections;
    use diesel::prelude::*;
    Ok(crate::on_conn!(conn, conn => {
        connections::table.filter(connections::service.eq(name)).count().get_result::<i64>(conn)
    })?)
}

impl Editor<'_> {
    fn changed(&self, name: &str, action: ProviderAction) -> Change {
        Change::ProviderChanged { by: self.actor.clone(), name: name.to_string(), action }
    }

    /// The provider `settings` make for `name` (laid over its configured table), checked as at
    /// start-up and against the egress rule: the message names what is wrong.
    pub fn check(&self, name: &str, settings: &Map<String, Value>) -> AppResult<Provider> {
        if name == "demo" && self.live.base.get("demo").is_some_and(|p| p.is_demo) {
            return Err(AppError::Refused("`demo` is the built-in demo provider's name; pick another".into()));
        }
        let provider = self.live.resolve_stored(name, settings).map_err(AppError::Refused)?;
        let configured = self.live.base.get(name).filter(|_| self.live.is_configured(name));
        self.egress.check(&provider, configured.as_deref()).map_err(AppError::Refused)?;
        Ok(provider)
    }

    fn row(&self, name: &str, settings: Option<&Map<String, Value>>, enabled: bool, version: i64) -> StoredProvider {
        let at = now();
        StoredProvider {
            name: name.to_string(),
            settings: settings.map(|s| Value::Object(s.clone()).to_string()),
            enabled,
            version,
            revision: crate::util::random_token(12),
            created_at: at,
            updated_at: at,
            updated_by: self.by.to_string(),
        }
    }

    /// The client credentials, sealed into the project vault in the unit of work `tx`.
    fn set_credentials(
        &self,
        tx: &mut changes::Tx<'_>,
        name: &str,
        id: Option<&str>,
        secret: Option<&Secret>,
    ) -> AppResult<()> {
        let paths = [
            (format!("{name}.client_id"), id.map(str::to_string)),
            (format!("{name}.client_secret"), secret.map(|s| s.expose_secret().to_string())),
        ];
        for (path, value) in paths {
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                crate::vault::store::set(tx.conn(), self.cipher, &path, value.trim(), self.by)?;
                tx.record(Change::VaultValueSet { by: self.actor.clone(), path })?;
            }
        }
        Ok(())
    }

    /// What [`Editor::add`] would add, checked, without saving anything (the page's confirmation
    /// of the endpoints an issuer's discovery found).
    pub fn preview(&self, conn: &mut Conn, name: &str, settings: &Map<String, Value>) -> AppResult<Provider> {
        self.live.reload(conn)?;
        if self.live.entry(name).is_some() || self.live.is_configured(name) {
            return Err(AppError::Refused(format!("Name: a provider named {name} exists already")));
        }
        self.check(name, settings)
    }

    /// Add a provider (its client credentials sealed into the vault in the same unit of work).
    pub fn add(&self, conn: &mut Conn, new: &NewProvider) -> AppResult<Committed<()>> {
        let name = new.name.trim();
        self.live.reload(conn)?;
        if self.live.entry(name).is_some() || self.live.is_configured(name) {
            return Err(AppError::Refused(format!("Name: a provider named {name} exists already")));
        }
        let provider = self.check(name, &new.settings)?;
        let row = self.row(name, Some(&new.settings), true, 1);
        unit(conn, self.cipher, |tx| {
            if !stored::insert(tx.conn(), &row)? {
                return Err(AppError::Refused(format!("Name: a provider named {name} exists already")));
            }
            self.set_credentials(tx, name, new.client_id.as_deref(), new.client_secret.as_ref())?;
            let origin = provider.authorize_origin();
            tx.record(self.changed(name, ProviderAction::Added { authorize_origin: origin }))
        })
    }

    /// Set `set` (a `Null` removes a key) on `name`'s stored settings, if it is still at version
    /// `expected`; new client credentials when given.
    pub fn edit(
        &self,
        conn: &mut Conn,
        name: &str,
        expected: i64,
        set: &Map<String, Value>,
        client_id: Option<&str>,
        client_secret: Option<&Secret>,
    ) -> AppResult<Committed<()>> {
        self.live.reload(conn)?;
        let entry = self.live.entry(name).ok_or(AppError::NotFound)?;
        if entry.origin == Origin::Config && self.live.base.get(name).is_some_and(|p| p.is_demo) {
            return Err(AppError::Refused("the built-in demo provider is not edited here".into()));
        }
        if entry.version != expected {
            return Err(stale(name));
        }
        let mut settings = entry.settings.clone();
        for (k, v) in set {
            if v.is_null() {
                settings.remove(k);
            } else {
                settings.insert(k.clone(), v.clone());
            }
        }
        let provider = self.check(name, &settings)?;
        let next = expected.checked_add(1).ok_or_else(|| stale(name))?;
        let mut keys: Vec<String> = set.keys().cloned().collect();
        if client_id.is_some_and(|v| !v.trim().is_empty()) {
            keys.push("client_id".into());
        }
        if client_secret.is_some_and(|v| !v.expose_secret().trim().is_empty()) {
            keys.push("client_secret".into());
        }
        unit(conn, self.cipher, |tx| {
            let written = match stored::find(tx.conn(), name)? {
                Some(row) if row.version == expected => {
                    let new = StoredProvider {
                        created_at: row.created_at,
                        ..self.row(name, Some(&settings), row.enabled, next)
                    };
                    stored::replace(tx.conn(), expected, &new)?
                }
                None if expected == 0 => stored::insert(tx.conn(), &self.row(name, Some(&settings), true, 1))?,
                _ => false,
            };
            if !written {
                return Err(stale(name));
            }
            self.set_credentials(tx, name, client_id, client_secret)?;
            let origin = provider.authorize_origin();
            tx.record(self.changed(name, ProviderAction::Edited { keys, authorize_origin: origin }))
        })
    }

    /// Disable or enable `name` (at version `expected`, or whatever it is when `None`: the CLI).
    pub fn set_enabled(
        &self,
        conn: &mut Conn,
        name: &str,
        expected: Option<i64>,
        enabled: bool,
    ) -> AppResult<Committed<()>> {
        self.live.reload(conn)?;
        let entry = self.live.entry(name).ok_or(AppError::NotFound)?;
        let expected = expected.unwrap_or(entry.version);
        if entry.version != expected {
            return Err(stale(name));
        }
        let next = expected.checked_add(1).ok_or_else(|| stale(name))?;
        unit(conn, self.cipher, |tx| {
            let written = match stored::find(tx.conn(), name)? {
                Some(row) if row.version == expected => {
                    let new = StoredProvider {
                        enabled,
                        settings: row.settings.clone(),
                        created_at: row.created_at,
                        ..self.row(name, None, enabled, next)
                    };
                    stored::replace(tx.conn(), expected, &new)?
                }
                None if expected == 0 => stored::insert(tx.conn(), &self.row(name, None, enabled, 1))?,
                _ => false,
            };
            if !written {
                return Err(stale(name));
            }
            let action = if enabled { ProviderAction::Enabled } else { ProviderAction::Disabled };
            tx.record(self.changed(name, action))
        })
    }

    /// Drop the edits of a configured provider (its Rocket.toml table applies again).
    pub fn revert(&self, conn: &mut Conn, name: &str, expected: i64) -> AppResult<Committed<()>> {
        self.live.reload(conn)?;
        let entry = self.live.entry(name).ok_or(AppError::NotFound)?;
        if entry.origin != Origin::Edited {
            return Err(AppError::Refused(format!("{name} has no edits to revert")));
        }
        if entry.version != expected {
            return Err(stale(name));
        }
        unit(conn, self.cipher, |tx| {
            let written = match stored::find(tx.conn(), name)? {
                // Still disabled: keep a row that says so.
                Some(row) if row.version == expected && !row.enabled => {
                    let new =
                        StoredProvider { created_at: row.created_at, ..self.row(name, None, false, expected + 1) };
                    stored::replace(tx.conn(), expected, &new)?
                }
                Some(row) if row.version == expected => stored::delete(tx.conn(), name, expected)?,
                _ => false,
            };
            if !written {
                return Err(stale(name));
            }
            tx.record(self.changed(name, ProviderAction::Reverted))
        })
    }

    /// Delete a provider added in the app (its connections must be gone: see the callers) and its
    /// client credentials.
    pub fn delete(&self, conn: &mut Conn, name: &str, expected: Option<i64>) -> AppResult<Committed<()>> {
        self.live.reload(conn)?;
        let entry = self.live.entry(name).ok_or(AppError::NotFound)?;
        if entry.origin != Origin::Added {
            return Err(AppError::Refused(format!(
                "{name} comes from the configuration: remove its table there, or disable it here"
            )));
        }
        let expected = expected.unwrap_or(entry.version);
        let connections = connection_count(conn, name)?;
        if connections > 0 {
            return Err(AppError::Conflict(format!(
                "{name} has {connections} connection(s): revoke and delete them first (`--with-connections`, or \
                 tick the box)"
            )));
        }
        unit(conn, self.cipher, |tx| {
            if !stored::delete(tx.conn(), name, expected)? {
                return Err(stale(name));
            }
            for path in [format!("{name}.client_id"), format!("{name}.client_secret")] {
                if crate::vault::store::delete(tx.conn(), &path)? {
                    tx.record(Change::VaultValueDeleted { by: self.actor.clone(), path })?;
                }
            }
            // Keys and grants limited to it lose it: a later provider of this name inherits none.
            crate::auth::api_key::forget_service(tx, name, &self.actor)?;
            crate::authz::grants::forget_service(tx, name, &self.actor)?;
            tx.record(self.changed(name, ProviderAction::Deleted))
        })
    }
}

/// Connections per provider: (all, degraded, reconnect required).
pub fn connection_health(conn: &mut Conn) -> AppResult<BTreeMap<String, (i64, i64, i64)>> {
    use crate::db::models::connections::ConnectionStatus;
    use crate::db::schema::connections;
    use diesel::dsl::count_star;
    use diesel::prelude::*;
    let rows: Vec<(String, String, i64)> = crate::on_conn!(conn, c => {
        connections::table
            .group_by((connections::service, connections::status))
            .select((connections::service, connections::status, count_star()))
            .load(c)
    })?;
    let mut out: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for (service, status, n) in rows {
        let counts = out.entry(service).or_default();
        counts.0 += n;
        match status.parse::<ConnectionStatus>() {
            Ok(ConnectionStatus::Degraded) => counts.1 += n,
            Ok(ConnectionStatus::ReconnectRequired) | Err(_) => counts.2 += n,
            Ok(ConnectionStatus::Active) => {}
        }
    }
    Ok(out)
}

/// One check of the Test button.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The Test button: each endpoint of `p` answers HTTP (any status: a token endpoint answers a
/// bare GET with an error, which proves it is there), connecting as the runtime calls do
/// (`http.for_provider`: for a provider set in the app, only to addresses the egress rule allows,
/// checked by the resolver of the connection itself — no separate lookup to rebind); the client
/// credentials are set. Nothing is sent but a GET without credentials: never the client secret.
pub async fn test_endpoints(http: &crate::oauth::http::Outbound, p: &Provider, credentials_set: bool) -> Vec<Check> {
    let http = http.for_provider(p);
    let mut checks = Vec::new();
    // Not the refresh and revocation endpoints: they answer only a client's authenticated POST.
    let urls = endpoints(p).into_iter().filter(|(key, _)| !matches!(*key, "refresh_url" | "revoke_url"));
    for (what, url) in urls {
        let what = format!("{what} ({})", url.origin().ascii_serialization());
        checks.push(match http.send(http.client().get(url)).await {
            Ok((status, _, _)) => Check { what, ok: true, detail: format!("answers (HTTP {})", status.as_u16()) },
            Err(e) => Check { what, ok: false, detail: format!("does not answer: {e}") },
        });
    }
    checks.push(Check {
        what: "client credentials".into(),
        ok: credentials_set,
        detail: if credentials_set {
            "set in the vault".into()
        } else {
            format!("{} or {} is not set in the vault", p.client_id_path(), p.client_secret_path())
        },
    });
    checks
}

/// Stored settings as the lines of the edit form (`key = <TOML value>`).
pub fn toml_lines(settings: &Map<String, Value>) -> String {
    fn value(v: &Value) -> String {
        match v {
            Value::Array(items) => format!("[{}]", items.iter().map(value).collect::<Vec<_>>().join(", ")),
            Value::Object(map) => format!(
                "{{ {} }}",
                map.iter().map(|(k, v)| format!("{} = {}", key(k), value(v))).collect::<Vec<_>>().join(", ")
            ),
            // Strings (JSON escapes are TOML basic-string escapes), numbers, booleans.
            other => other.to_string(),
        }
    }
    fn key(k: &str) -> String {
        if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            k.to_string()
        } else {
            Value::String(k.to_string()).to_string()
        }
    }
    settings.iter().map(|(k, v)| format!("{k} = {}", value(v))).collect::<Vec<_>>().join("\n")
}

/// The lines of the edit and add forms (`key = value`, one a line) as provider table keys.
pub fn parse_lines(text: &str) -> Result<Map<String, Value>, String> {
    let pairs: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.replacen(" = ", "=", 1))
        .collect();
    parse_set(&pairs)
}

/// `key=value` pairs, each value in TOML (`--set 'scopes=["openid"]'`, `--set pkce=true`, a bare
/// word taken as a string), as provider table keys; an unknown key or a wrong type is refused.
pub fn parse_set(pairs: &[String]) -> Result<Map<String, Value>, String> {
    use rocket::figment::providers::{Format, Toml};
    let mut out = Map::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}`: expected key=value"))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(format!("`{key}` is not a provider table key"));
        }
        let value = value.trim();
        let parse = |v: &str| -> Result<ProviderConfig, String> {
            rocket::figment::Figment::from(Toml::string(&format!("{key} = {v}"))).extract().map_err(|e| e.to_string())
        };
        let cfg = match parse(value) {
            Ok(cfg) => cfg,
            // A bare word: a string.
            Err(_) if !value.starts_with(['"', '\'', '[', '{']) => {
                parse(&Value::String(value.to_string()).to_string()).map_err(|e| format!("{key}: {e}"))?
            }
            Err(e) => return Err(format!("{key}: {e}")),
        };
        match settings_of(&cfg).remove(key) {
            Some(v) => {
                out.insert(key.to_string(), v);
            }
            None => return Err(format!("`{key}` is not a provider table key")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_pairs_are_toml_values_of_known_keys() {
        let set = parse_set(&[
            "preset=github".into(),
            "scopes=[\"read:user\", \"repo\"]".into(),
            "pkce=false".into(),
            "params={ shop = \"tea\" }".into(),
            "token_lifetime=3600".into(),
        ])
        .unwrap();
        assert_eq!(set["preset"], "github");
        assert_eq!(set["scopes"], serde_json::json!(["read:user", "repo"]));
        assert_eq!(set["pkce"], false);
        assert_eq!(set["params"], serde_json::json!({"shop": "tea"}));
        assert_eq!(set["token_lifetime"], 3600);
        assert!(parse_set(&["colour=blue".into()]).unwrap_err().contains("colour"));
        assert!(parse_set(&["pkce=[1]".into()]).is_err());
        assert!(parse_set(&["novalue".into()]).is_err());
        // Back into a provider table.
        let cfg = config_of(&set).unwrap();
        assert_eq!(cfg.preset.as_deref(), Some("github"));
        assert!(config_of(&serde_json::from_str(r#"{"colour":"x"}"#).unwrap()).is_err());
    }

    #[test]
    fn form_lines_round_trip() {
        let set = parse_set(&[
            "scopes=[\"a b\", \"c\"]".into(),
            "params={ shop = \"tea\" }".into(),
            "pkce=false".into(),
            "display_name=\"Q \\\"x\\\"\"".into(),
        ])
        .unwrap();
        let lines = toml_lines(&set);
        assert_eq!(parse_lines(&lines).unwrap(), set, "{lines}");
        assert!(parse_lines("colour = 1").is_err());
        assert!(parse_lines("# a comment\n\npkce = true").unwrap().contains_key("pkce"));
    }

    #[test]
    fn egress_refuses_private_hosts_unless_allowed() {
        let p = |host: &str| {
            let cfg = ProviderConfig {
                authorize_url: Some(format!("https://{host}/authorize")),
                token_url: Some(format!("https://{host}/token")),
                ..Default::default()
            };
            resolve("acme", &cfg).unwrap()
        };
        let strict = Egress { private_urls: false, loopback: false };
        assert!(strict.check(&p("login.acme.example"), None).is_ok());
        let e = strict.check(&p("10.0.0.5"), None).unwrap_err();
        assert!(e.contains("authorize_url") && e.contains("public"), "{e}");
        assert!(strict.check(&p("127.0.0.1:8443"), None).is_err());
        assert!(Egress { private_urls: false, loopback: true }.check(&p("127.0.0.1:8443"), None).is_ok());
        assert!(Egress { private_urls: false, loopback: true }.check(&p("10.0.0.5"), None).is_err());
        assert!(Egress { private_urls: true, loopback: false }.check(&p("10.0.0.5"), None).is_ok());
    }

    /// Endpoints as Rocket.toml has them are the operator's: an edit on the page re-checks only
    /// the endpoints it changes.
    #[test]
    fn egress_checks_only_endpoints_set_in_the_app() {
        let p = |authorize: &str, api: &str| {
            let cfg = ProviderConfig {
                authorize_url: Some(format!("https://{authorize}/authorize")),
                token_url: Some("https://10.0.0.5/token".into()),
                api_base_url: Some(format!("https://{api}/api")),
                ..Default::default()
            };
            resolve("internal", &cfg).unwrap()
        };
        let strict = Egress { private_urls: false, loopback: false };
        let configured = p("10.0.0.5", "10.0.0.5");
        assert!(strict.check(&configured, Some(&configured)).is_ok(), "nothing set in the app");
        assert!(strict.check(&p("10.0.0.5", "api.acme.example"), Some(&configured)).is_ok(), "a public one set");
        let e = strict.check(&p("10.0.0.5", "10.0.0.6"), Some(&configured)).unwrap_err();
        assert!(e.starts_with("api_base_url") && e.contains("public"), "the private one set in the app: {e}");
        assert!(strict.check(&configured, None).is_err(), "an added provider: every endpoint");
    }

    /// The editor hands the egress rule the provider as Rocket.toml configures it: editing a
    /// configured provider whose endpoints are private (the operator's) is not refused for them.
    #[test]
    fn editing_a_configured_provider_checks_only_what_the_app_sets() {
        let cfg = ProviderConfig {
            authorize_url: Some("https://10.0.0.5/authorize".into()),
            token_url: Some("https://10.0.0.5/token".into()),
            api_base_url: Some("https://10.0.0.5/api".into()),
            ..Default::default()
        };
        let configured = BTreeMap::from([("internal".to_string(), cfg.clone())]);
        let base = Catalog::assemble(
            BTreeMap::from([("internal".to_string(), Arc::new(resolve("internal", &cfg).unwrap()))]),
            BTreeMap::new(),
        );
        let live = LiveCatalog::new(configured, base);
        let cipher = Cipher::from_base64(&Cipher::generate_key(), &[]).unwrap();
        let editor = Editor {
            live: &live,
            cipher: &cipher,
            actor: Actor::Cli,
            by: "cli",
            egress: Egress { private_urls: false, loopback: false },
        };
        let set = |json: &str| match serde_json::from_str(json).unwrap() {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        assert!(editor.check("internal", &set(r#"{"display_name":"Internal"}"#)).is_ok());
        let e = editor.check("internal", &set(r#"{"api_base_url":"https://10.0.0.6/api"}"#)).unwrap_err();
        assert!(e.user_message().contains("api_base_url"), "{e}");
        let added =
            editor.check("another", &set(r#"{"authorize_url":"https://10.0.0.5/a","token_url":"https://10.0.0.5/t"}"#));
        assert!(added.is_err(), "an added provider's endpoints are all the app's");
    }

    /// A provider set in the app whose host is a NAME that resolves to loopback (`localhost`),
    /// outside `debug`: the form check refuses it, and neither a runtime call (the token endpoint)
    /// nor the Test button connects — the resolver of the connection refuses the address. The
    /// same endpoints from the configuration (the operator's) are reached, and so are they in
    /// `debug` (loopback allowed).
    #[rocket::async_test]
    async fn a_name_resolving_to_loopback_is_refused_when_set_in_the_app() {
        use wiremock::{matchers::any, Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        let tokens = ResponseTemplate::new(200)
            .set_body_raw(r#"{"access_token":"at","token_type":"bearer","expires_in":60}"#, "application/json");
        Mock::given(any()).respond_with(tokens).mount(&server).await;
        let at = |path: &str| Some(format!("http://localhost:{}/{path}", server.address().port()));
        let cfg = ProviderConfig { authorize_url: at("authorize"), token_url: at("token"), ..Default::default() };
        let mut provider = resolve("acme", &cfg).unwrap();
        let strict = Egress { private_urls: false, loopback: false };
        assert!(strict.check(&provider, None).unwrap_err().contains("public"), "the form check");
        let settings = crate::config::Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap();
        let http = crate::oauth::http::Outbound::with_egress(&settings.http, strict).unwrap();
        let creds = crate::vault::store::ClientCredentials {
            client_id: "cid".into(),
            client_secret: Some(crate::util::secret("s")),
        };
        let rt = crate::util::secret("rt");
        provider.set_in_app = true;
        let refused = crate::oauth::tokens::refresh(&http, &provider, &creds, &rt, 3600, &[]).await;
        assert!(refused.is_err(), "the token endpoint is not called");
        let checks = test_endpoints(&http, &provider, true).await;
        assert!(checks[..2].iter().all(|c| !c.ok && c.detail.contains("no public address")), "{checks:?}");
        assert!(server.received_requests().await.unwrap().is_empty(), "nothing reached the loopback server");

        let debug = crate::oauth::http::Outbound::with_egress(&settings.http, Egress { loopback: true, ..strict });
        assert!(crate::oauth::tokens::refresh(&debug.unwrap(), &provider, &creds, &rt, 3600, &[]).await.is_ok());
        provider.set_in_app = false;
        assert!(crate::oauth::tokens::refresh(&http, &provider, &creds, &rt, 3600, &[]).await.is_ok(), "configured");
        assert!(test_endpoints(&http, &provider, true).await.iter().all(|c| c.ok));
    }

    fn rows(list: &[(&str, Option<&str>, bool)]) -> Vec<StoredProvider> {
        list.iter()
            .map(|(name, settings, enabled)| StoredProvider {
                name: name.to_string(),
                settings: settings.map(str::to_string),
                enabled: *enabled,
                version: 1,
                revision: "r".into(),
                created_at: 0,
                updated_at: 0,
                updated_by: "cli".into(),
            })
            .collect()
    }

    #[test]
    fn stored_rows_overlay_the_configuration() {
        let configured = BTreeMap::from([(
            "gh".to_string(),
            ProviderConfig { preset: Some("github".into()), ..Default::default() },
        )]);
        let base = Catalog::assemble(
            BTreeMap::from([("gh".to_string(), Arc::new(resolve("gh", &configured["gh"]).unwrap()))]),
            BTreeMap::new(),
        );
        let live = LiveCatalog::new(configured, base);
        let (catalog, entries) = live.build(&rows(&[
            ("gh", Some(r#"{"display_name":"GitHub (work)"}"#), true),
            ("slack", Some(r#"{"preset":"slack"}"#), false),
            ("broken", Some(r#"{"preset":"nope"}"#), true),
        ]));
        assert_eq!(catalog.get("gh").unwrap().display_name, "GitHub (work)");
        assert!(!catalog.get("gh").unwrap().set_in_app, "only its name edited: the operator's endpoints");
        assert!(catalog.get_any("slack").unwrap().set_in_app, "added in the app");
        assert_eq!(catalog.get("gh").unwrap().token_url.as_str(), "https://github.com/login/oauth/access_token");
        assert!(catalog.get("slack").is_none() && catalog.is_disabled("slack"));
        assert!(catalog.get_any("slack").is_some());
        assert!(catalog.get("broken").is_none() && !catalog.is_disabled("broken"));
        let origin = |n: &str| entries.iter().find(|e| e.name == n).map(|e| (e.origin, e.enabled, e.provider.is_ok()));
        assert_eq!(origin("gh"), Some((Origin::Edited, true, true)));
        assert_eq!(origin("slack"), Some((Origin::Added, false, true)));
        assert_eq!(origin("broken"), Some((Origin::Added, true, false)));
        // A row that only disables a configured provider.
        let (catalog, entries) = live.build(&rows(&[("gh", None, false)]));
        assert!(catalog.get("gh").is_none() && catalog.is_disabled("gh"));
        assert_eq!(entries[0].origin, Origin::Config);
    }
}

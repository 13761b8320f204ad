//! Signed webhooks (the Standard Webhooks specification), delivered at least once through an
//! outbox: an event is written in the transaction of the change it reports, by the outbox
//! projection of that `crate::changes::Change` (the only caller of [`outbox::record`]), and
//! [`worker`] (started with the server) fans each event out to the configured endpoints whose
//! filter matches and delivers it, retrying with backoff under the same `webhook-id`.
//!
//! Configuration: `[<profile>.webhooks.<name>]` with `url` (https, or http on a loopback host,
//! checked like provider endpoints), `secret` (`whsec_` + base64) and optional `events`. On
//! `/admin/webhooks` an administrator edits an endpoint's URL and events, rotates its secret, and
//! adds or deletes endpoints ([`edit`]); those changes live in the `webhook_endpoints` table, win
//! over the configuration until reverted, and reach every instance through [`Webhooks::reload`].

pub mod edit;
pub mod egress;
pub mod metrics;
pub mod outbox;
pub mod signature;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use url::Url;

use crate::config::{invalid, parse_endpoint, ConfigError, RawWebhook};
use crate::db::models::webhook_endpoints::{self as stored, StoredEndpoint};
pub use crate::db::models::webhooks::EventType;
use crate::db::Conn;
use crate::error::AppResult;
use crate::util::ExposeSecret;
use crate::vault::{Aad, Cipher};
use signature::SigningKey;

/// Where an endpoint's settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[webhooks.<name>]` table of the configuration, as written.
    Config,
    /// A configured endpoint whose settings were edited on `/admin/webhooks` (they win until
    /// reverted).
    Edited,
    /// Added on `/admin/webhooks`.
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

/// One endpoint, as in effect.
#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: Url,
    key: SigningKey,
    /// After a rotation: the replaced keys (newest first), signed with as well until the time
    /// given.
    previous: Option<(Vec<SigningKey>, i64)>,
    /// As configured; empty: every event.
    pub events: Vec<String>,
    pub origin: Origin,
    /// The stored row's version (0: the configuration's table, no row).
    pub version: i64,
    /// When and by whom it was last edited on the page.
    pub updated: Option<(i64, String)>,
    /// Set on the page while `webhook_private_urls` is off: delivered only to public addresses
    /// (see [`egress`]).
    pub restricted: bool,
}

impl Endpoint {
    /// Whether this endpoint wants events of type `t` (a test event goes to the endpoint it names,
    /// whatever the filter: see [`outbox::record_test`]; `audit.checkpoint` only to an endpoint
    /// whose filter names it, `audit.checkpoint` or `audit.*`).
    pub fn wants(&self, t: EventType) -> bool {
        if t == EventType::AuditCheckpoint {
            // Its `data` is not a connection's: only for receivers that ask for it by name.
            return self.events.iter().any(|f| f != "*" && filter_matches(f, t.as_str()));
        }
        self.events.is_empty() || self.events.iter().any(|f| filter_matches(f, t.as_str()))
    }

    /// The `webhook-signature` value: the current key's signature, and during a rotation's overlap
    /// the previous key's too (`v1,<new> v1,<old>`, as the specification allows), so a receiver
    /// that still has the old secret keeps verifying.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut signature = self.key.sign(id, timestamp, body);
        if let Some((old, until)) = &self.previous {
            if timestamp < *until {
                for key in old {
                    signature.push(' ');
                    signature.push_str(&key.sign(id, timestamp, body));
                }
            }
        }
        signature
    }

    /// Until when the previous secret is still signed with, after a rotation.
    pub fn previous_until(&self, at: i64) -> Option<i64> {
        self.previous.as_ref().map(|(_, until)| *until).filter(|until| at < *until)
    }

    /// The filter as shown on `/admin/webhooks`.
    pub fn filter_text(&self) -> String {
        if self.events.is_empty() {
            "all events".into()
        } else {
            self.events.join(", ")
        }
    }
}

/// `connection.created` matches itself, `connection.*` and `*`.
fn filter_matches(filter: &str, name: &str) -> bool {
    match filter.strip_suffix('*') {
        Some("") => true,
        Some(prefix) if prefix.ends_with('.') => name.starts_with(prefix),
        _ => filter == name,
    }
}

/// An endpoint name: usable in a URL path and an element id.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("the name must be 1 to 64 characters of a-z, 0-9, `-` and `_`".into())
    }
}

/// An endpoint URL: the providers' rules (https, or http on a loopback host), no credentials.
pub fn check_url(value: &str) -> Result<Url, String> {
    if value.len() > MAX_URL_LEN {
        return Err(format!("is longer than {MAX_URL_LEN} characters"));
    }
    let url = parse_endpoint("url", value.trim()).map_err(|e| match e {
        ConfigError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; the signature authenticates the sender".into());
    }
    Ok(url)
}

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Event filters: event names or `<prefix>.*`; an empty list means every event.
pub fn check_events(filters: &[String]) -> Result<(), String> {
    // More filters than events is a mistake (and a row that grows without bound).
    if filters.len() > EventType::ALL.len() {
        return Err(format!("{} filters; there are only {} events", filters.len(), EventType::ALL.len()));
    }
    for filter in filters {
        if !EventType::ALL.iter().any(|t| filter_matches(filter, t.as_str())) || filter == "webhook.test" {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).filter(|t| *t != "webhook.test").collect();
            return Err(format!("`{filter}` is not an event name or `<prefix>.*` (events: {})", known.join(", ")));
        }
    }
    Ok(())
}

/// The endpoints in effect now, and the stored versions they were built from.
#[derive(Debug, Default)]
struct Snapshot {
    endpoints: Arc<Vec<Arc<Endpoint>>>,
    /// `None` until the table was first read.
    versions: Option<Vec<(String, i64, String)>>,
    /// Stored rows that could not be used (name, version): left out, not replaced by the
    /// configured endpoint of their name — the page offers to delete them.
    broken: Arc<Vec<(String, i64)>>,
}

/// The endpoints — the configured ones, with the edits and additions of `/admin/webhooks` laid
/// over them (re-read by [`Webhooks::reload`]) — and the bell that wakes the delivery worker.
#[derive(Debug, Default)]
pub struct Webhooks {
    configured: Vec<Arc<Endpoint>>,
    current: RwLock<Snapshot>,
    /// One reload at a time, so a slower one never installs an older snapshot.
    reloading: std::sync::Mutex<()>,
    /// `webhook_private_urls`: endpoints set on the page may point at private addresses.
    private_urls: bool,
    wake: rocket::tokio::sync::Notify,
}

impl Webhooks {
    /// Validate the `webhooks` tables: names usable in a URL path and an element id, a secret in
    /// the spec's format, an endpoint URL under the providers' rules, known event names.
    pub fn build(raw: &BTreeMap<String, RawWebhook>) -> Result<Webhooks, ConfigError> {
        let mut endpoints = Vec::new();
        for (name, w) in raw {
            let key = |k: &str| format!("webhooks.{name}.{k}");
            check_name(name).map_err(|e| invalid(format!("webhooks.{name}"), e))?;
            let url = check_url(&w.url).map_err(|e| invalid(key("url"), e))?;
            let signing =
                SigningKey::parse(w.secret.expose_secret()).map_err(|e| invalid(key("secret"), e.to_string()))?;
            if w.events.as_ref().is_some_and(|e| e.is_empty()) {
                return Err(invalid(key("events"), "is empty: leave it out to receive every event"));
            }
            let events = w.events.clone().unwrap_or_default();
            check_events(&events).map_err(|e| invalid(key("events"), e))?;
            endpoints.push(Arc::new(Endpoint {
                name: name.clone(),
                url,
                key: signing,
                previous: None,
                events,
                origin: Origin::Config,
                version: 0,
                updated: None,
                restricted: false,
            }));
        }
        let current = RwLock::new(Snapshot { endpoints: Arc::new(endpoints.clone()), ..Default::default() });
        Ok(Webhooks {
            configured: endpoints,
            current,
            reloading: Default::default(),
            private_urls: false,
            wake: Default::default(),
        })
    }

    /// With `webhook_private_urls` on: URLs set on the page may name private addresses too.
    pub fn allow_private_urls(mut self, allow: bool) -> Webhooks {
        self.private_urls = allow;
        self
    }

    /// Whether URLs set on the page may name private addresses.
    pub fn private_urls(&self) -> bool {
        self.private_urls
    }

    /// Whether `url` for endpoint `name` was set on the page rather than copied from its
    /// `Rocket.toml` table (a rotation or an events-only edit keeps the configured URL, which is
    /// the operator's and keeps the providers' rules).
    pub fn url_set_on_page(&self, name: &str, url: &Url) -> bool {
        self.configured(name).is_none_or(|c| c.url != *url)
    }

    /// Stored rows left out because they could not be used (name, version).
    pub fn broken(&self) -> Arc<Vec<(String, i64)>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).broken.clone()
    }

    /// The endpoints in effect, by name.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).endpoints.clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Endpoint>> {
        self.endpoints().iter().find(|e| e.name == name).cloned()
    }

    /// The configuration's own endpoint `name`, whatever was edited since.
    pub fn configured(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.configured.iter().find(|e| e.name == name)
    }

    /// Read the stored endpoints again if they changed (one small query otherwise): called by the
    /// delivery worker every round and by the admin page, so an edit made on any instance is in
    /// effect on every instance by its worker's next round. A row that cannot be used (a secret
    /// the key ring does not open) is left out and logged — failing closed: the configured
    /// endpoint of its name, whose settings it replaced, does not come back by itself.
    pub fn reload(&self, conn: &mut Conn, cipher: &Cipher) -> AppResult<()> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let versions = stored::versions(conn)?;
        if self.current.read().unwrap_or_else(|e| e.into_inner()).versions.as_ref() == Some(&versions) {
            return Ok(());
        }
        let rows = stored::all(conn)?;
        let mut by_name: BTreeMap<String, Arc<Endpoint>> =
            self.configured.iter().map(|e| (e.name.clone(), e.clone())).collect();
        let mut broken = Vec::new();
        for row in &rows {
            match self.endpoint_of(row, cipher) {
                Ok(endpoint) => {
                    by_name.insert(row.name.clone(), Arc::new(endpoint));
                }
                Err(why) => {
                    tracing::error!(endpoint = %row.name, error = %why, "a stored webhook endpoint is unusable: left out");
                    by_name.remove(&row.name);
                    broken.push((row.name.clone(), row.version));
                }
            }
        }
        let versions = rows.iter().map(|r| (r.name.clone(), r.version, r.revision.clone())).collect();
        let endpoints = Arc::new(by_name.into_values().collect());
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            Snapshot { endpoints, versions: Some(versions), broken: Arc::new(broken) };
        Ok(())
    }

    fn endpoint_of(&self, row: &StoredEndpoint, cipher: &Cipher) -> Result<Endpoint, String> {
        let url = check_url(&row.url)?;
        let secret = cipher.open(&row.secret, Aad::WebhookSecret(&row.name)).map_err(|e| e.to_string())?;
        let key = SigningKey::parse(secret.expose_secret()).map_err(|e| e.to_string())?;
        let previous = match (&row.previous_secret, row.previous_until) {
            (Some(sealed), Some(until)) => {
                let text = cipher.open(sealed, Aad::WebhookPreviousSecret(&row.name)).map_err(|e| e.to_string())?;
                let keys = text
                    .expose_secret()
                    .lines()
                    .map(|s| SigningKey::parse(s).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                Some((keys, until))
            }
            _ => None,
        };
        let events: Vec<String> = match &row.events {
            Some(json) => serde_json::from_str(json).map_err(|e| format!("events: {e}"))?,
            None => Vec::new(),
        };
        check_events(&events)?;
        let origin = if self.configured(&row.name).is_some() { Origin::Edited } else { Origin::Added };
        let restricted = !self.private_urls && self.url_set_on_page(&row.name, &url);
        if restricted {
            egress::check_public_host(&url)?;
        }
        Ok(Endpoint {
            name: row.name.clone(),
            url,
            key,
            previous,
            events,
            origin,
            version: row.version,
            updated: Some((row.updated_at, row.updated_by.clone())),
            restricted,
        })
    }

    /// Ask the worker to look at the outbox now (after a commit that recorded an event).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether an endpoint in effect wants events of type `t` (`crate::changes::checkpoint_event`
    /// records an `audit.checkpoint` event only then).
    pub fn wants_any(&self, t: EventType) -> bool {
        self.endpoints().iter().any(|e| e.wants(t))
    }

    /// Wait for [`Webhooks::wake`] (a wake-up while nobody waits is kept for the next wait).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{EventType, Webhooks};
    use crate::config::RawWebhook;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn one(url: &str, secret: &str, events: Option<&[&str]>) -> Result<Webhooks, String> {
        let raw = RawWebhook {
            url: url.into(),
            secret: crate::util::secret(secret),
            events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
        };
        Webhooks::build(&BTreeMap::from([("ops".to_string(), raw)])).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints_are_validated_with_clear_errors() {
        assert!(one("https://hooks.example/tv", SECRET, None).is_ok());
        assert!(one("http://127.0.0.1:9/tv", SECRET, Some(&["connection.*"])).is_ok());
        let e = one("http://hooks.example/tv", SECRET, None).unwrap_err();
        assert!(e.contains("webhooks.ops.url") && e.contains("https"), "{e}");
        let e = one("ftp://hooks.example/tv", SECRET, None).unwrap_err();
        assert!(e.contains("webhooks.ops.url"), "{e}");
        let e = one("https://user:pw@hooks.example/tv", SECRET, None).unwrap_err();
        assert!(e.contains("credentials") && !e.contains("pw@"), "{e}");
        let e = one("https://hooks.example/tv", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", None).unwrap_err();
        assert!(e.contains("webhooks.ops.secret") && e.contains("whsec_") && !e.contains("MfKQ"), "{e}");
        let e = one("https://hooks.example/tv", "whsec_c2hvcnQ=", None).unwrap_err();
        assert!(e.contains("24") && !e.contains("c2hvcnQ"), "{e}");
        let e = one("https://hooks.example/tv", SECRET, Some(&["connection.creatd"])).unwrap_err();
        assert!(e.contains("webhooks.ops.events") && e.contains("connection.creatd"), "{e}");
        let e = one("https://hooks.example/tv", SECRET, Some(&["user.*"])).unwrap_err();
        assert!(e.contains("user.*"), "{e}");
        assert!(one("https://hooks.example/tv", SECRET, Some(&[])).is_err());
        let bad_name =
            RawWebhook { url: "https://h.example/".into(), secret: crate::util::secret(SECRET), events: None };
        let e = Webhooks::build(&BTreeMap::from([("Bad Name".to_string(), bad_name)])).unwrap_err().to_string();
        assert!(e.contains("webhooks.Bad Name"), "{e}");
    }

    #[test]
    fn filters_match_exact_names_and_prefix_wildcards() {
        let exact = one("https://h.example/", SECRET, Some(&["connection.deleted"])).unwrap();
        let ep = &exact.endpoints()[0];
        assert!(ep.wants(EventType::ConnectionDeleted));
        assert!(!ep.wants(EventType::ConnectionCreated));
        let wild = one("https://h.example/", SECRET, Some(&["connection.*"])).unwrap();
        let connection_events = || EventType::ALL.iter().filter(|t| t.as_str().starts_with("connection."));
        assert!(connection_events().all(|t| wild.endpoints()[0].wants(*t)));
        assert!(!wild.endpoints()[0].wants(EventType::Test));
        assert!(!wild.endpoints()[0].wants(EventType::AuditCheckpoint));
        let all = one("https://h.example/", SECRET, None).unwrap();
        assert!(all.endpoints()[0].wants(EventType::ConnectionRevoked));
        assert_eq!(all.endpoints()[0].filter_text(), "all events");
        // Audit checkpoints (another `data`) go only where they are asked for by name.
        assert!(!all.endpoints()[0].wants(EventType::AuditCheckpoint));
        let star = one("https://h.example/", SECRET, Some(&["*"])).unwrap();
        assert!(!star.endpoints()[0].wants(EventType::AuditCheckpoint));
        for filter in ["audit.checkpoint", "audit.*"] {
            let audit = one("https://h.example/", SECRET, Some(&[filter, "connection.revoked"])).unwrap();
            assert!(audit.endpoints()[0].wants(EventType::AuditCheckpoint), "{filter}");
            assert!(!audit.endpoints()[0].wants(EventType::ConnectionCreated), "{filter}");
        }
    }
}

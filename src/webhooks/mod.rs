//! Signed webhooks (the Standard Webhooks specification), delivered at least once through an
//! outbox: [`outbox::record`] writes an event in the transaction of the change it reports, and
//! [`worker`] (started with the server) fans each event out to the configured endpoints whose
//! filter matches and delivers it, retrying with backoff under the same `webhook-id`.
//!
//! Configuration: `[<profile>.webhooks.<name>]` with `url` (https, or http on a loopback host,
//! checked like provider endpoints), `secret` (`whsec_` + base64) and optional `events`.

pub mod outbox;
pub mod signature;
pub mod worker;

use std::collections::BTreeMap;

use url::Url;

use crate::config::{invalid, parse_endpoint, ConfigError, RawWebhook};
pub use crate::db::models::webhooks::EventType;
use crate::util::ExposeSecret;
use signature::SigningKey;

/// One configured endpoint.
#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: Url,
    key: SigningKey,
    /// As configured; empty: every event.
    pub events: Vec<String>,
}

impl Endpoint {
    /// Whether this endpoint wants events of type `t` (a test event goes to the endpoint it names,
    /// whatever the filter: see [`outbox::record_test`]).
    pub fn wants(&self, t: EventType) -> bool {
        self.events.is_empty() || self.events.iter().any(|f| filter_matches(f, t.as_str()))
    }

    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        self.key.sign(id, timestamp, body)
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

/// The configured endpoints, and the bell that wakes the delivery worker.
#[derive(Debug, Default)]
pub struct Webhooks {
    endpoints: Vec<Endpoint>,
    wake: rocket::tokio::sync::Notify,
}

impl Webhooks {
    /// Validate the `webhooks` tables: names usable in a URL path and an element id, a secret in
    /// the spec's format, an endpoint URL under the providers' rules, known event names.
    pub fn build(raw: &BTreeMap<String, RawWebhook>) -> Result<Webhooks, ConfigError> {
        let mut endpoints = Vec::new();
        for (name, w) in raw {
            let key = |k: &str| format!("webhooks.{name}.{k}");
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid(
                    format!("webhooks.{name}"),
                    "the name must be 1 to 64 characters of a-z, 0-9, `-` and `_`",
                ));
            }
            let url = parse_endpoint(&key("url"), &w.url)?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(key("url"), "must not carry credentials; the signature authenticates the sender"));
            }
            let signing =
                SigningKey::parse(w.secret.expose_secret()).map_err(|e| invalid(key("secret"), e.to_string()))?;
            let events = w.events.clone().unwrap_or_default();
            if w.events.as_ref().is_some_and(|e| e.is_empty()) {
                return Err(invalid(key("events"), "is empty: leave it out to receive every event"));
            }
            for filter in &events {
                if !EventType::ALL.iter().any(|t| filter_matches(filter, t.as_str())) || filter == "webhook.test" {
                    let known: Vec<&str> =
                        EventType::ALL.iter().map(|t| t.as_str()).filter(|t| *t != "webhook.test").collect();
                    return Err(invalid(
                        key("events"),
                        format!("`{filter}` is not an event name or `<prefix>.*` (events: {})", known.join(", ")),
                    ));
                }
            }
            endpoints.push(Endpoint { name: name.clone(), url, key: signing, events });
        }
        Ok(Webhooks { endpoints, wake: Default::default() })
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn get(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// Ask the worker to look at the outbox now (after a commit that recorded an event).
    pub fn wake(&self) {
        self.wake.notify_one();
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
        assert!(EventType::ALL.iter().filter(|t| **t != EventType::Test).all(|t| wild.endpoints()[0].wants(*t)));
        assert!(!wild.endpoints()[0].wants(EventType::Test));
        let all = one("https://h.example/", SECRET, None).unwrap();
        assert!(all.endpoints()[0].wants(EventType::ConnectionRevoked));
        assert_eq!(all.endpoints()[0].filter_text(), "all events");
    }
}

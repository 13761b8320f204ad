//! Changes made on `/admin/webhooks`: add an endpoint, edit its URL and events, rotate its secret,
//! revert an edited configured endpoint or delete an added one. Each change is one transaction
//! with its `webhook.changed` audit entry, guarded by the row's version (an edit from a page
//! loaded before another edit is refused), and is in effect on this instance when the call
//! returns ([`Webhooks::reload`]; other instances follow within their worker's poll interval).
//!
//! A secret is shown once, to the administrator who made it, and otherwise only stored sealed.
//! After a rotation deliveries are signed with the new and the old secret for
//! [`ROTATION_OVERLAP`] seconds, so receivers switch over without rejecting a delivery.

use super::signature::SigningKey;
use super::{check_events, check_name, check_url, Endpoint, Origin, Webhooks};
use crate::changes::{self, Change, Committed, EndpointChange};
use crate::db::models::webhook_endpoints::{self as stored, StoredEndpoint};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::{now, ExposeSecret, Secret};
use crate::vault::{Aad, Cipher};

/// Seconds after a rotation during which the previous secret still signs (one day).
pub const ROTATION_OVERLAP: i64 = 86_400;
/// Previous secrets that sign during an overlap, at most (rotations in quick succession).
pub const MAX_PREVIOUS: usize = 2;

/// Who makes the changes, with the handles they need.
pub struct Editor<'a> {
    pub hooks: &'a Webhooks,
    pub cipher: &'a Cipher,
    /// The administrator's user id and username.
    pub user_id: i64,
    pub username: &'a str,
}

/// The events field of the forms: names or `prefix.*`, separated by commas or spaces; empty:
/// every event.
pub fn parse_events(text: &str) -> Vec<String> {
    let mut events: Vec<String> = Vec::new();
    for filter in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        if !events.iter().any(|e| e == filter) {
            events.push(filter.to_string());
        }
    }
    events
}

fn events_json(events: &[String]) -> Option<String> {
    (!events.is_empty()).then(|| serde_json::to_string(events).expect("strings serialize"))
}

/// The URL and events of a form for endpoint `name`, checked; the message names the field. Unless
/// `webhook_private_urls` is on, a URL set on the page must name a public host
/// ([`super::egress`]); a configured endpoint's own URL is the operator's.
fn checked(hooks: &Webhooks, name: &str, url: &str, events: &str) -> AppResult<(url::Url, Vec<String>)> {
    let url = check_url(url).map_err(|e| AppError::BadRequest(format!("URL: {e}")))?;
    if !hooks.private_urls() && hooks.url_set_on_page(name, &url) {
        super::egress::check_public_host(&url).map_err(|e| AppError::BadRequest(format!("URL: {e}")))?;
    }
    let events = parse_events(events);
    check_events(&events).map_err(|e| AppError::BadRequest(format!("Events: {e}")))?;
    Ok((url, events))
}

fn stale(name: &str) -> AppError {
    AppError::Conflict(format!(
        "The endpoint {name} was changed by someone else after this page was loaded; nothing was saved. \
         Reload the page and make the change again."
    ))
}

impl Editor<'_> {
    /// The change to record: `change` of endpoint `name` by this editor.
    fn changed(&self, name: &str, change: EndpointChange) -> Change {
        Change::WebhookEndpointChanged { user_id: self.user_id, endpoint: name.to_string(), change }
    }

    /// A change of URL or events.
    fn described(url: &url::Url, events: &[String]) -> (String, Vec<String>) {
        (url.origin().ascii_serialization(), events.to_vec())
    }

    fn row(&self, name: &str, url: &url::Url, events: &[String], secret: Vec<u8>, version: i64) -> StoredEndpoint {
        StoredEndpoint {
            name: name.to_string(),
            url: url.to_string(),
            events: events_json(events),
            secret,
            previous_secret: None,
            previous_until: None,
            version,
            revision: crate::util::random_token(12),
            updated_at: now(),
            updated_by: self.username.to_string(),
        }
    }

    /// The endpoint `name` in effect, or 404.
    fn current(&self, name: &str) -> AppResult<std::sync::Arc<Endpoint>> {
        self.hooks.get(name).ok_or(AppError::NotFound)
    }

    /// Add an endpoint; its new secret, to show once.
    pub fn add(&self, conn: &mut Conn, name: &str, url: &str, events: &str) -> AppResult<Committed<Secret>> {
        let name = name.trim();
        check_name(name).map_err(|e| AppError::BadRequest(format!("Name: {e}")))?;
        let (url, events) = checked(self.hooks, name, url, events)?;
        self.hooks.reload(conn, self.cipher)?;
        if self.hooks.get(name).is_some() || self.hooks.broken().iter().any(|(n, _)| n == name) {
            return Err(AppError::BadRequest(format!("Name: an endpoint named {name} exists already")));
        }
        let secret = SigningKey::generate();
        let row =
            self.row(name, &url, &events, self.cipher.seal_str(secret.expose_secret(), Aad::WebhookSecret(name)), 1);
        let committed = changes::write_no_history(conn, self.cipher, |tx| {
            let conn = tx.conn();
            if !stored::insert(conn, &row)? {
                return Err(AppError::BadRequest(format!("Name: an endpoint named {name} exists already")));
            }
            let (url_origin, events) = Self::described(&url, &events);
            tx.record(self.changed(name, EndpointChange::Added { url_origin, events }))
        })?;
        self.hooks.reload(conn, self.cipher)?;
        Ok(committed.map(|()| secret))
    }

    /// Set the URL and events of `name`, if it is still at version `expected`.
    pub fn update(
        &self,
        conn: &mut Conn,
        name: &str,
        expected: i64,
        url: &str,
        events: &str,
    ) -> AppResult<Committed<()>> {
        let (url, events) = checked(self.hooks, name, url, events)?;
        self.hooks.reload(conn, self.cipher)?;
        let endpoint = self.current(name)?;
        // No row is at a version after which there is none: such a form is not from the page.
        let next = expected.checked_add(1).ok_or_else(|| stale(name))?;
        let committed = changes::write_no_history(conn, self.cipher, |tx| {
            let conn = tx.conn();
            let written = match stored::find(conn, name)? {
                Some(mut row) => {
                    row.url = url.to_string();
                    row.events = events_json(&events);
                    row.version = next;
                    row.revision = crate::util::random_token(12);
                    row.updated_at = now();
                    row.updated_by = self.username.to_string();
                    stored::replace(conn, expected, &row)?
                }
                // A configured endpoint edited for the first time: its secret is sealed into the
                // row, so the row alone says how to sign.
                None if expected == 0 && endpoint.origin == Origin::Config => {
                    let sealed =
                        self.cipher.seal_str(endpoint.key.to_secret().expose_secret(), Aad::WebhookSecret(name));
                    stored::insert(conn, &self.row(name, &url, &events, sealed, 1))?
                }
                None => false,
            };
            if !written {
                return Err(stale(name));
            }
            let (url_origin, events) = Self::described(&url, &events);
            tx.record(self.changed(name, EndpointChange::Updated { url_origin, events }))
        })?;
        self.hooks.reload(conn, self.cipher)?;
        Ok(committed)
    }

    /// Give `name` a new secret, if it is still at version `expected`; the new secret, to show
    /// once. The replaced one keeps signing for [`ROTATION_OVERLAP`] seconds — and so does the
    /// one before it when a rotation follows another within that time (a receiver may still
    /// have either): at most [`MAX_PREVIOUS`] previous secrets sign.
    pub fn rotate(&self, conn: &mut Conn, name: &str, expected: i64) -> AppResult<Committed<Secret>> {
        self.hooks.reload(conn, self.cipher)?;
        let endpoint = self.current(name)?;
        let next = expected.checked_add(1).ok_or_else(|| stale(name))?;
        let secret = SigningKey::generate();
        let sealed = self.cipher.seal_str(secret.expose_secret(), Aad::WebhookSecret(name));
        let at = now();
        let mut previous: Vec<Secret> = vec![endpoint.key.to_secret()];
        if let Some((keys, until)) = &endpoint.previous {
            if at < *until {
                previous.extend(keys.iter().map(SigningKey::to_secret));
            }
        }
        previous.truncate(MAX_PREVIOUS);
        let joined: Vec<&str> = previous.iter().map(|s| s.expose_secret()).collect();
        let previous = self.cipher.seal_str(&joined.join("\n"), Aad::WebhookPreviousSecret(name));
        let until = at + ROTATION_OVERLAP;
        let committed = changes::write_no_history(conn, self.cipher, |tx| {
            let conn = tx.conn();
            let written = match stored::find(conn, name)? {
                Some(mut row) if row.version == expected && expected == endpoint.version => {
                    row.secret = sealed;
                    row.previous_secret = Some(previous);
                    row.previous_until = Some(until);
                    row.version = next;
                    row.revision = crate::util::random_token(12);
                    row.updated_at = now();
                    row.updated_by = self.username.to_string();
                    stored::replace(conn, expected, &row)?
                }
                None if expected == 0 && endpoint.origin == Origin::Config => {
                    let mut row = self.row(name, &endpoint.url, &endpoint.events, sealed, 1);
                    row.previous_secret = Some(previous);
                    row.previous_until = Some(until);
                    stored::insert(conn, &row)?
                }
                _ => false,
            };
            if !written {
                return Err(stale(name));
            }
            tx.record(self.changed(name, EndpointChange::SecretRotated { previous_valid_until: until }))
        })?;
        self.hooks.reload(conn, self.cipher)?;
        Ok(committed.map(|()| secret))
    }

    /// Revert an edited configured endpoint to its configuration, or delete an added one (its
    /// pending deliveries end `failed`), if it is still at version `expected`. A stored row that
    /// could not be used (see [`Webhooks::reload`]) can be removed the same way.
    pub fn remove(&self, conn: &mut Conn, name: &str, expected: i64) -> AppResult<Committed<Origin>> {
        self.hooks.reload(conn, self.cipher)?;
        let origin = match self.hooks.get(name) {
            Some(endpoint) => endpoint.origin,
            None if self.hooks.broken().iter().any(|(n, _)| n == name) => {
                if self.hooks.configured(name).is_some() {
                    Origin::Edited
                } else {
                    Origin::Added
                }
            }
            None => return Err(AppError::NotFound),
        };
        if origin == Origin::Config {
            return Err(AppError::BadRequest(format!(
                "{name} is configured in Rocket.toml and has no changes to revert; remove its table there to delete it"
            )));
        }
        let committed = changes::write_no_history(conn, self.cipher, |tx| {
            let conn = tx.conn();
            if !stored::delete(conn, name, expected)? {
                return Err(stale(name));
            }
            let change = if origin == Origin::Added {
                stored::fail_pending(conn, name, "the endpoint was deleted", now())?;
                EndpointChange::Deleted
            } else {
                EndpointChange::Reverted
            };
            tx.record(self.changed(name, change))
        })?;
        self.hooks.reload(conn, self.cipher)?;
        Ok(committed.map(|()| origin))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{parse_events, Editor, ROTATION_OVERLAP};
    use crate::config::RawWebhook;
    use crate::db::Db;
    use crate::error::AppError;
    use crate::util::{now, ExposeSecret};
    use crate::vault::Cipher;
    use crate::webhooks::signature::SigningKey;
    use crate::webhooks::{EventType, Origin, Webhooks};

    const CONFIGURED: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn configured() -> Webhooks {
        let raw = RawWebhook {
            url: "https://ops.example/hook".into(),
            secret: crate::util::secret(CONFIGURED),
            events: Some(vec!["connection.*".into()]),
        };
        Webhooks::build(&BTreeMap::from([("ops".to_string(), raw)])).unwrap()
    }

    fn database() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        (dir, db)
    }

    /// A database and two instances' endpoints (the configured `ops`) over it.
    fn two_instances() -> (tempfile::TempDir, Db, Cipher, Webhooks, Webhooks) {
        let (dir, db) = database();
        (dir, db, Cipher::for_tests(1), configured(), configured())
    }

    fn verifies(signature: &str, secret: &str, id: &str, ts: i64, body: &str) -> bool {
        let expected = SigningKey::parse(secret).unwrap().sign(id, ts, body);
        signature.split(' ').any(|s| s == expected)
    }

    #[test]
    fn the_events_field_takes_commas_or_spaces() {
        assert_eq!(parse_events(" connection.*, connection.deleted  x"), ["connection.*", "connection.deleted", "x"]);
        assert_eq!(parse_events("a, b, a"), ["a", "b"], "repeats dropped, order kept");
        assert!(parse_events(" , ").is_empty());
    }

    #[test]
    fn edits_reach_another_instance_and_stale_ones_are_refused() {
        let (_dir, db, cipher, a, b) = two_instances();
        let mut conn = db.conn().unwrap();
        let editor = Editor { hooks: &a, cipher: &cipher, user_id: 1, username: "root" };

        // Add an endpoint: its secret signs what it gets, on both instances.
        let secret = editor
            .add(&mut conn, "billing", "https://billing.example/in", "connection.deleted")
            .unwrap()
            .recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        let added = b.get("billing").expect("the other instance sees it");
        assert_eq!((added.origin, added.version), (Origin::Added, 1));
        assert!(added.wants(EventType::ConnectionDeleted) && !added.wants(EventType::ConnectionCreated));
        assert!(verifies(&added.sign("msg_1", 100, "{}"), secret.expose_secret(), "msg_1", 100, "{}"));
        let e = editor.add(&mut conn, "billing", "https://x.example/", "").unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.contains("exists")), "{e:?}");
        let e = editor.add(&mut conn, "Bad Name", "https://x.example/", "").unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.starts_with("Name:")), "{e:?}");
        let e = editor.add(&mut conn, "plain", "http://x.example/", "").unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.starts_with("URL:") && m.contains("https")), "{e:?}");
        let e = editor.add(&mut conn, "typo", "https://x.example/", "connection.creatd").unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.starts_with("Events:")), "{e:?}");
        let long = format!("https://x.example/{}", "a".repeat(2048));
        let e = editor.add(&mut conn, "long", &long, "").unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.contains("longer than 2048")), "{e:?}");
        let e = editor
            .add(&mut conn, "many", "https://x.example/", &(0..20).map(|i| format!("x{i} ")).collect::<String>())
            .unwrap_err();
        assert!(matches!(&e, AppError::BadRequest(m) if m.contains("20 filters")), "{e:?}");

        // Edit the configured endpoint: the edit wins, its secret is still the configured one.
        editor.update(&mut conn, "ops", 0, "https://ops2.example/hook", "").unwrap().recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        let ops = b.get("ops").unwrap();
        assert_eq!((ops.origin, ops.version, ops.url.as_str()), (Origin::Edited, 1, "https://ops2.example/hook"));
        assert!(ops.events.is_empty() && ops.wants(EventType::ConnectionCreated), "empty: every event");
        assert!(verifies(&ops.sign("m", 5, "b"), CONFIGURED, "m", 5, "b"));
        // A page loaded before that edit (version 0) saves nothing.
        let e = editor.update(&mut conn, "ops", 0, "https://stale.example/", "").unwrap_err();
        assert!(matches!(e, AppError::Conflict(_)), "{e:?}");
        assert_eq!(a.get("ops").unwrap().url.as_str(), "https://ops2.example/hook");

        // Rotate: both secrets sign during the overlap, only the new one after it.
        let new = editor.rotate(&mut conn, "ops", 1).unwrap().recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        let ops = b.get("ops").unwrap();
        let t = now();
        let both = ops.sign("m", t, "b");
        assert!(
            verifies(&both, new.expose_secret(), "m", t, "b") && verifies(&both, CONFIGURED, "m", t, "b"),
            "{both}"
        );
        assert_eq!(both.split(' ').count(), 2);
        let later = t + ROTATION_OVERLAP + 1;
        let after = ops.sign("m", later, "b");
        assert!(
            verifies(&after, new.expose_secret(), "m", later, "b") && !verifies(&after, CONFIGURED, "m", later, "b")
        );
        assert!(editor.rotate(&mut conn, "ops", 1).map(|c| c.recorded_only()).is_err(), "stale rotation refused");

        // Revert the configured one, delete the added one; configured-only cannot be removed.
        assert_eq!(editor.remove(&mut conn, "ops", 2).unwrap().recorded_only(), Origin::Edited);
        assert_eq!(editor.remove(&mut conn, "billing", 1).unwrap().recorded_only(), Origin::Added);
        b.reload(&mut conn, &cipher).unwrap();
        let ops = b.get("ops").unwrap();
        assert_eq!((ops.origin, ops.url.as_str()), (Origin::Config, "https://ops.example/hook"));
        assert!(b.get("billing").is_none());
        assert!(matches!(editor.remove(&mut conn, "ops", 0).map(|c| c.recorded_only()), Err(AppError::BadRequest(_))));
        assert!(matches!(
            editor.update(&mut conn, "nope", 0, "https://x.example/", "").map(|c| c.recorded_only()),
            Err(AppError::NotFound)
        ));

        // Every change is in the audit log, and no secret is.
        let entries = crate::db::models::audit::after(&mut conn, 0, 1000).unwrap();
        let changes: Vec<String> = entries
            .iter()
            .filter(|e| e.kind == "webhook.changed")
            .map(|e| format!("{}", serde_json::from_str::<serde_json::Value>(&e.detail).unwrap()["change"]))
            .collect();
        assert_eq!(changes, ["\"added\"", "\"updated\"", "\"secret_rotated\"", "\"reverted\"", "\"deleted\""]);
        for e in &entries {
            for s in [secret.expose_secret(), new.expose_secret(), CONFIGURED] {
                assert!(!e.detail.contains(&s[6..]), "{}", e.detail);
            }
        }
    }

    /// `vault rotate-key` re-seals the stored secrets (current and previous): after it, a key
    /// ring without the old key still signs with both, and the edit versions are unchanged.
    #[test]
    fn a_vault_key_rotation_reseals_the_stored_secrets() {
        let (_dir, db) = database();
        let mut conn = db.conn().unwrap();
        let (old_key, new_key) = (Cipher::generate_key(), Cipher::generate_key());
        let old = Cipher::from_base64(&old_key, &[]).unwrap();
        crate::vault::rotation::verify_key(&mut conn, &old).unwrap();
        let hooks = configured();
        let editor = Editor { hooks: &hooks, cipher: &old, user_id: 1, username: "root" };
        let first = editor.add(&mut conn, "billing", "https://billing.example/in", "").unwrap().recorded_only();
        let second = editor.rotate(&mut conn, "billing", 1).unwrap().recorded_only();

        let ring = Cipher::from_base64(&new_key, std::slice::from_ref(&old_key)).unwrap();
        let done = crate::vault::rotation::rotate(&mut conn, &ring, |_, _| Ok(()), |_, _| {}).unwrap();
        assert_eq!(done.webhook_secrets, 2);
        let only_new = Cipher::from_base64(&new_key, &[]).unwrap();
        let fresh = configured();
        fresh.reload(&mut conn, &only_new).unwrap();
        let billing = fresh.get("billing").expect("opens with the new key alone");
        assert_eq!(billing.version, 2);
        let t = now();
        let sig = billing.sign("m", t, "b");
        assert!(verifies(&sig, first.expose_secret(), "m", t, "b"));
        assert!(verifies(&sig, second.expose_secret(), "m", t, "b"));
        assert_eq!(
            crate::vault::rotation::rotate(&mut conn, &ring, |_, _| Ok(()), |_, _| {}).unwrap().webhook_secrets,
            0
        );
    }

    /// Review findings: a row deleted and made again under the same name and version is seen as
    /// changed; rotations in quick succession keep the earlier secrets signing; page URLs must be
    /// public unless allowed; an unusable row fails closed and can be deleted.
    #[test]
    fn reuse_quick_rotations_private_urls_and_broken_rows() {
        let (_dir, db, cipher, a, b) = two_instances();
        let mut conn = db.conn().unwrap();
        let editor = Editor { hooks: &a, cipher: &cipher, user_id: 1, username: "root" };

        let first = editor.add(&mut conn, "billing", "https://one.example/in", "").unwrap().recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        editor.remove(&mut conn, "billing", 1).unwrap().recorded_only();
        let again = editor.add(&mut conn, "billing", "https://two.example/in", "").unwrap().recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        let seen = b.get("billing").unwrap();
        assert_eq!((seen.version, seen.url.as_str()), (1, "https://two.example/in"), "same version, new row");
        let t = now();
        assert!(verifies(&seen.sign("m", t, "b"), again.expose_secret(), "m", t, "b"));
        assert!(!verifies(&seen.sign("m", t, "b"), first.expose_secret(), "m", t, "b"));

        // Two rotations within the overlap: all three secrets sign; a third drops the oldest.
        let r1 = editor.rotate(&mut conn, "billing", 1).unwrap().recorded_only();
        let r2 = editor.rotate(&mut conn, "billing", 2).unwrap().recorded_only();
        let sig = a.get("billing").unwrap().sign("m", t, "b");
        for s in [&again, &r1, &r2] {
            assert!(verifies(&sig, s.expose_secret(), "m", t, "b"), "{sig}");
        }
        let r3 = editor.rotate(&mut conn, "billing", 3).unwrap().recorded_only();
        let sig = a.get("billing").unwrap().sign("m", t, "b");
        assert_eq!(sig.split(' ').count(), 1 + super::MAX_PREVIOUS);
        assert!(verifies(&sig, r3.expose_secret(), "m", t, "b") && !verifies(&sig, again.expose_secret(), "m", t, "b"));

        // Private addresses: refused from the page unless webhook_private_urls is on.
        for url in ["http://127.0.0.1:9/hook", "https://10.0.0.7/hook", "https://localhost/x"] {
            let e = editor.add(&mut conn, "internal", url, "").unwrap_err();
            assert!(matches!(&e, AppError::BadRequest(m) if m.contains("public host")), "{url}: {e:?}");
        }
        let open = configured().allow_private_urls(true);
        let permissive = Editor { hooks: &open, cipher: &cipher, user_id: 1, username: "root" };
        permissive.add(&mut conn, "internal", "http://127.0.0.1:9/hook", "").unwrap().recorded_only();
        assert!(!open.get("internal").unwrap().restricted);
        // …and an instance without the setting leaves such a row out.
        a.reload(&mut conn, &cipher).unwrap();
        assert!(a.get("internal").is_none());
        assert_eq!(a.broken().as_slice(), [("internal".to_string(), 1)]);
        assert!(a.get("billing").unwrap().restricted);

        // An edited configured endpoint whose row cannot be opened: left out, not the configured
        // settings it replaced; it can be deleted (reverted).
        editor.update(&mut conn, "ops", 0, "https://elsewhere.example/", "").unwrap().recorded_only();
        {
            use diesel::RunQueryDsl;
            crate::on_conn!(&mut conn, c => diesel::sql_query("UPDATE webhook_endpoints SET secret = X'00', revision = 'x' WHERE name = 'ops'").execute(c)).unwrap();
        }
        a.reload(&mut conn, &cipher).unwrap();
        assert!(a.get("ops").is_none(), "fails closed");
        assert!(a.broken().iter().any(|(n, v)| n == "ops" && *v == 1));
        assert_eq!(editor.remove(&mut conn, "ops", 1).unwrap().recorded_only(), Origin::Edited);
        assert_eq!(a.get("ops").unwrap().origin, Origin::Config);
    }

    /// An instance that has not reloaded since another deleted an added endpoint fans nothing
    /// out to it (the deletion gave up its deliveries; none may follow).
    #[test]
    fn fan_out_skips_an_added_endpoint_deleted_on_another_instance() {
        use crate::webhooks::outbox::{self, EventData};
        let (_dir, db, cipher, a, b) = two_instances();
        let mut conn = db.conn().unwrap();
        let editor = Editor { hooks: &a, cipher: &cipher, user_id: 1, username: "root" };
        editor.add(&mut conn, "billing", "https://billing.example/in", "").unwrap().recorded_only();
        b.reload(&mut conn, &cipher).unwrap();
        editor.remove(&mut conn, "billing", 1).unwrap().recorded_only();
        let data = EventData {
            connection_id: 1,
            user: "ann".into(),
            service: "fake".into(),
            account: None,
            status: "active".into(),
            reason: None,
        };
        outbox::record(&mut conn, EventType::ConnectionCreated, &data).unwrap();
        assert!(b.get("billing").is_some(), "b has not reloaded");
        assert_eq!(outbox::fan_out(&mut conn, &b, 100).unwrap(), 1);
        let to = |name: &str| crate::db::models::webhooks::recent(&mut db.conn().unwrap(), name, 10).unwrap().len();
        assert_eq!((to("billing"), to("ops")), (0, 1), "the configured endpoint gets it, the deleted one not");
    }
}

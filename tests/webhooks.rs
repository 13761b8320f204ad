//! Webhooks end to end: real connects, revocations and deletions through the pages, delivered
//! to a real HTTP receiver on a random loopback port and verified there with test-side code
//! (`common::webhook_receiver`), independent of the app's signer.

mod common;

use std::time::{Duration, Instant};

use common::webhook_receiver::{secret, Received, Receiver};
use common::{builder, TestApp};
use rocket::figment::value::{Dict, Value};
use rocket::http::Status;
use serde_json::json;
use wiremock::ResponseTemplate;

/// `[webhooks.<name>]` tables for the builder: (name, url, secret, events).
fn webhooks(endpoints: &[(&str, &str, &str, Option<&[&str]>)]) -> Value {
    let mut all = Dict::new();
    for (name, url, secret, events) in endpoints {
        let mut t = Dict::new();
        t.insert("url".into(), (*url).into());
        t.insert("secret".into(), (*secret).into());
        if let Some(events) = events {
            t.insert("events".into(), events.to_vec().into());
        }
        all.insert(name.to_string(), t.into());
    }
    all.into()
}

async fn app_with(endpoints: &[(&str, &str, &str, Option<&[&str]>)]) -> TestApp {
    builder().set("webhooks", webhooks(endpoints)).start().await
}

/// The checks every delivered event passes: signed, the body's shape, nothing secret in it.
fn check(r: &Received, secret: &str, event: &str, status: &str, secrets: &[&str]) {
    assert!(r.verifies(secret), "signature must verify: {:?}", r.headers);
    assert!(!r.verifies(&common::webhook_receiver::secret()), "and not with another secret");
    assert!(r.id().starts_with("msg_"), "{}", r.id());
    assert_eq!(r.header("content-type"), "application/json");
    let body = r.json();
    assert_eq!(body["type"], event, "{}", r.body);
    assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let data = &body["data"];
    assert_eq!(data["user"], "ann");
    assert_eq!(data["service"], "fake");
    assert_eq!(data["status"], status);
    assert!(data["connection_id"].as_i64().is_some_and(|id| id > 0));
    assert!(data["account"].is_null());
    let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["account", "connection_id", "reason", "service", "status", "user"]);
    for s in secrets {
        assert!(!r.body.contains(s), "a token or secret in the body");
        assert!(!r.headers.values().any(|v| v.contains(s)), "a token or secret in a header");
    }
}

#[tokio::test]
async fn connect_reconnect_revoke_and_delete_each_deliver_one_signed_event() {
    let (rx, deletes) = (Receiver::start().await, Receiver::start().await);
    let (s1, s2) = (secret(), secret());
    let app = app_with(&[
        ("all", &rx.url(), &s1, None),
        ("deletes", &deletes.url(), &s2, Some(&["connection.deleted", "connection.revoked"])),
    ])
    .await;
    let ann = app.user("ann").await;

    let started = Instant::now();
    ann.connect("fake").await;
    let got = rx.wait_for(1, Duration::from_secs(5)).await;
    let latency = started.elapsed();
    let (access, refresh) = app.stored_tokens("ann", "fake").unwrap();
    let mut secrets = vec![access.clone(), refresh.clone().unwrap(), common::CLIENT_SECRET.to_string(), s1.clone()];
    check(&got[0], &s1, "connection.created", "active", &secrets.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(got[0].json()["data"]["reason"].is_null());
    println!("connection.created delivered {latency:?} after the connect began");
    assert!(latency < Duration::from_secs(3), "{latency:?}");

    ann.connect("fake").await;
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    let (access2, refresh2) = app.stored_tokens("ann", "fake").unwrap();
    secrets.extend([access2, refresh2.unwrap()]);
    let s: Vec<&str> = secrets.iter().map(String::as_str).collect();
    check(&got[1], &s1, "connection.reconnected", "active", &s);
    assert_eq!(got[0].json()["data"]["connection_id"], got[1].json()["data"]["connection_id"]);

    let csrf = ann.csrf("/settings/oauth2").await;
    let r = ann.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let got = rx.wait_for(3, Duration::from_secs(5)).await;
    check(&got[2], &s1, "connection.revoked", "revoked", &s);

    ann.connect("fake").await;
    let got = rx.wait_for(4, Duration::from_secs(5)).await;
    check(&got[3], &s1, "connection.created", "active", &s);
    let (access3, refresh3) = app.stored_tokens("ann", "fake").unwrap();
    secrets.extend([access3, refresh3.unwrap()]);
    let s: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let csrf = ann.csrf("/settings/oauth2").await;
    let r = ann.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let got = rx.wait_for(5, Duration::from_secs(5)).await;
    check(&got[4], &s1, "connection.deleted", "deleted", &s);

    // The filtered endpoint got exactly the revocation and the deletion, signed with its secret.
    let filtered = deletes.wait_for(2, Duration::from_secs(5)).await;
    let types: Vec<_> = filtered.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["connection.revoked", "connection.deleted"]);
    assert!(filtered.iter().all(|r| r.verifies(&s2) && !r.verifies(&s1)));
    assert_eq!(filtered[1].id(), got[4].id(), "one event, one webhook-id, whichever endpoint");

    // Nothing more arrives: one request per event.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((rx.received().len(), deletes.received().len()), (5, 2));
    let ids: std::collections::BTreeSet<String> = rx.received().iter().map(|r| r.id().to_string()).collect();
    assert_eq!(ids.len(), 5, "every event its own id");
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_id_until_it_accepts() {
    let rx = Receiver::start().await;
    rx.answer(&[500, 500]);
    let s = secret();
    let app = app_with(&[("flaky", &rx.url(), &s, None)]).await;
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    let started = Instant::now();
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    println!("three attempts (500, 500, 200) took {:?}", started.elapsed());
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 500, 200]);
    assert!(got.iter().all(|r| r.id() == got[0].id()), "the same webhook-id on every attempt");
    assert!(got.iter().all(|r| r.body == got[0].body), "the same body");
    assert!(got.iter().all(|r| r.verifies(&s)), "each attempt signed for its own timestamp");
    assert!(got[1].at - got[0].at <= 10, "the first retry within 10 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = app.text("SELECT status || ' ' || attempts || ' ' || last_status_code AS t FROM webhook_deliveries");
    assert_eq!(row, "delivered 3 200");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 3, "delivered: not sent again");
}

#[tokio::test]
async fn a_dead_grant_raises_reconnect_required_and_routine_refreshes_send_nothing() {
    let rx = Receiver::start().await;
    let s = secret();
    let app = builder().set("webhooks", webhooks(&[("all", &rx.url(), &s, None)])).start().await;
    app.fake.with_state(|st| st.expires_in = Some(json!(5)));
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    rx.wait_for(1, Duration::from_secs(5)).await;

    // A routine refresh: nothing is sent.
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");
    assert_eq!(ann.fetch("/services/fake/account").await.status, Status::Ok);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM connection_events WHERE kind = 'refresh' AND outcome = 'ok'"), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 1, "a successful refresh sends nothing");

    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");
    app.fake.script(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})));
    let page = ann.fetch("/services/fake/account").await;
    assert!(page.text.contains(r#"id="reconnect""#));
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    check(&got[1], &s, "connection.reconnect_required", "reconnect_required", &[common::CLIENT_SECRET]);
    assert_eq!(got[1].json()["data"]["reason"], "invalid_grant");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 2, "raised once");
}

#[tokio::test]
async fn bad_webhook_configuration_stops_the_start_with_a_clear_error() {
    let s = secret();
    for (url, secret, events, expect) in [
        ("http://hooks.example/x", s.as_str(), None, "webhooks.ops.url"),
        ("https://hooks.example/x", "not-a-whsec-secret-at-all-000000", None, "webhooks.ops.secret"),
        ("https://hooks.example/x", s.as_str(), Some(&["connection.nope"][..]), "webhooks.ops.events"),
    ] {
        let figment = rocket::figment::Figment::from(rocket::Config::debug_default())
            .merge(("vault_key", common::VAULT_KEY))
            .merge(("secret_key", common::SECRET_KEY))
            .merge(("webhooks", webhooks(&[("ops", url, secret, events)])));
        let e = tokenvault::app::prepare(figment).err().expect("refused").to_string();
        assert!(e.contains(expect), "{e}");
        assert!(!e.contains(&s[6..]) && !e.contains("not-a-whsec"), "the secret is never shown: {e}");
    }
}

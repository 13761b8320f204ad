//! Webhooks end to end: real connects, revocations and deletions through the pages, delivered
//! to a real HTTP receiver on a random loopback port and verified there with test-side code
//! (`common::webhook_receiver`), independent of the app's signer.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::webhook_receiver::{secret, Received, Receiver};
use crate::common::{builder, TestApp};
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
    // A 5xx, then a redirect (not followed, not a success).
    rx.answer(&[500, 302]);
    let s = secret();
    let app = app_with(&[("flaky", &rx.url(), &s, None)]).await;
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    let started = Instant::now();
    let got = rx.wait_for(3, Duration::from_secs(30)).await;
    println!("three attempts (500, 302, 200) took {:?}", started.elapsed());
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [500, 302, 200]);
    assert!(got.iter().all(|r| r.id() == got[0].id()), "the same webhook-id on every attempt");
    assert!(got.iter().all(|r| r.body == got[0].body), "the same body");
    assert!(got.iter().all(|r| r.verifies(&s)), "each attempt signed for its own timestamp");
    assert!(got[1].at - got[0].at <= 10, "the first retry within 10 s");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = app.text("SELECT status || ' ' || attempts || ' ' || last_status_code AS t FROM webhook_deliveries");
    assert_eq!(row, "delivered 3 200");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 3, "delivered: not sent again");
    // The metrics count the attempts by endpoint and result, and the deliveries kept.
    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    for line in [
        "tokenvault_webhook_attempts_total{endpoint=\"flaky\",result=\"retry\"} 2",
        "tokenvault_webhook_attempts_total{endpoint=\"flaky\",result=\"delivered\"} 1",
        "tokenvault_webhook_attempt_duration_seconds_count{endpoint=\"flaky\"} 3",
        "tokenvault_webhook_deliveries{status=\"delivered\"} 1",
        "tokenvault_webhook_deliveries{status=\"pending\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
}

/// A receiver that never answers is cut off by `http_timeout` (3 s in tests) and tried again under
/// the same id; one that answers 200 with an endless body counts as delivered, its body unread.
#[tokio::test]
async fn a_stalling_receiver_times_out_and_an_endless_answer_is_not_read() {
    use crate::common::webhook_receiver::{ENDLESS, STALL};
    let rx = Receiver::start().await;
    rx.answer(&[STALL, ENDLESS]);
    let s = secret();
    let app = app_with(&[("slow", &rx.url(), &s, None)]).await;
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    let got = rx.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[0].id(), got[1].id());
    let gap = got[1].at - got[0].at;
    assert!((3..=8).contains(&gap), "timed out after http_timeout, retried 2 s later: {gap} s");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = app.text("SELECT status || ' ' || attempts AS t FROM webhook_deliveries");
        if row == "delivered 2" {
            break;
        }
        assert!(Instant::now() < deadline, "the endless answer must not hold the delivery: {row}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(got[1].at - got[0].at < 10);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 2);
}

/// `n` `connection.created` events recorded at once (one transaction), as a burst of changes
/// would; the worker is woken.
fn record_events(app: &TestApp, n: usize) {
    let mut conn = app.db.conn().unwrap();
    conn.transaction(|conn| {
        for i in 0..n {
            let data = tokenvault::webhooks::outbox::EventData {
                connection_id: i as i64 + 1,
                user: "ann".into(),
                service: "fake".into(),
                account: None,
                status: "active".into(),
                reason: None,
            };
            tokenvault::webhooks::outbox::record(conn, tokenvault::webhooks::EventType::ConnectionCreated, &data)?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
    app.state().webhooks.wake();
}

/// Issue 19: an endpoint that accepts the connection and never answers made a healthy endpoint
/// wait for it (a round of 16 claimed deliveries waited for its slowest). With a 30 s
/// `http_timeout`, a worker that waits on the tarpit cannot deliver the healthy endpoint's 20
/// events before the tarpit's first attempts time out; delivering per endpoint, they all arrive
/// while every tarpit attempt is still hanging.
#[tokio::test]
async fn a_tarpit_endpoint_does_not_hold_up_a_healthy_one() {
    use crate::common::webhook_receiver::Tarpit;
    const EVENTS: usize = 20;
    let (tarpit, healthy) = (Tarpit::start().await, Receiver::start().await);
    let (s1, s2) = (secret(), secret());
    let app = builder()
        .set("webhooks", webhooks(&[("tarpit", &tarpit.url(), &s1, None), ("healthy", &healthy.url(), &s2, None)]))
        .set("http_timeout", 30)
        .start()
        .await;
    let started = Instant::now();
    record_events(&app, EVENTS);
    let got = healthy.wait_for(EVENTS, Duration::from_secs(20)).await;
    let took = started.elapsed();
    println!("{EVENTS} deliveries to the healthy endpoint in {took:?} beside a tarpit");
    // Still before the first tarpit attempt could time out: none has ended yet.
    assert!(took < Duration::from_secs(30));
    let ended = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'tarpit' AND attempts > 0";
    assert_eq!(app.count(ended), 0, "every tarpit attempt is still hanging");
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), EVENTS, "each event once");
    assert!(got.iter().all(|r| r.verifies(&s2) && r.answered == 200));
    // The tarpit holds no more than its own share of attempts.
    let hanging = tarpit.connections().len();
    assert!((1..=tokenvault::webhooks::worker::PER_ENDPOINT).contains(&hanging), "{hanging} tarpit connections");
    let delivered = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'healthy' AND status = 'delivered'";
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.count(delivered) < EVENTS as i64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.count(delivered), EVENTS as i64);
}

/// An endpoint that times out is paused, then tried one delivery at a time — retries under the
/// same webhook-id — while another endpoint gets everything at once; each delivery keeps its
/// retry schedule.
#[tokio::test]
async fn an_endpoint_that_times_out_is_backed_off_alone() {
    use crate::common::webhook_receiver::Tarpit;
    use tokenvault::webhooks::worker::{FIRST_PAUSE, PER_ENDPOINT};
    // As many as the tarpit's room: each later attempt is a retry.
    const EVENTS: usize = PER_ENDPOINT;
    let (tarpit, healthy) = (Tarpit::start().await, Receiver::start().await);
    let (s1, s2) = (secret(), secret());
    let app = builder()
        .set("webhooks", webhooks(&[("tarpit", &tarpit.url(), &s1, None), ("healthy", &healthy.url(), &s2, None)]))
        .set("http_timeout", 2)
        .start()
        .await;
    let started = Instant::now();
    record_events(&app, EVENTS);
    healthy.wait_for(EVENTS, Duration::from_secs(10)).await;
    // The first wave: the tarpit's full room; it times out after 2 s, then the endpoint is paused
    // (2 s), probed once (times out after 2 s), paused 4 s, probed once, … Without the pause, its
    // deliveries would be retried 2 s after each timeout, 16 at a time.
    tokio::time::sleep(Duration::from_secs(14).saturating_sub(started.elapsed())).await;
    let seen = tarpit.connections();
    let first_wave = seen.iter().filter(|(at, _)| at.duration_since(seen[0].0) < Duration::from_secs(1)).count();
    assert_eq!(first_wave, PER_ENDPOINT, "the tarpit's full room at first: {seen:?}");
    let probes = &seen[first_wave..];
    assert!((1..=3).contains(&probes.len()), "one attempt at a time after the pause: {} probes", probes.len());
    let first_timeout = seen[0].0 + Duration::from_secs(2);
    assert!(probes[0].0 >= first_timeout + FIRST_PAUSE - Duration::from_millis(600), "probed after the pause");
    for pair in probes.windows(2) {
        assert!(pair[1].0.duration_since(pair[0].0) >= Duration::from_millis(2 * 2000 + 1500), "{probes:?}");
    }
    // A probe is a retry of a delivery that timed out, under the same webhook-id.
    let wave_ids: Vec<&str> = seen[..first_wave].iter().filter_map(|(_, id)| id.as_deref()).collect();
    assert_eq!(wave_ids.len(), PER_ENDPOINT, "every request was read");
    let probe_id = probes[0].1.as_deref().expect("the probe's request was read");
    assert!(wave_ids.contains(&probe_id), "a retry of a timed-out delivery: {probe_id}");
    let timed_out = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'tarpit' \
                     AND status = 'pending' AND last_error = 'the request timed out'";
    assert!(app.count(timed_out) >= PER_ENDPOINT as i64, "timed out, pending, to be retried");
    // The healthy endpoint had everything long before, once each.
    assert_eq!(healthy.received().len(), EVENTS);
}

/// A delivery to an endpoint no longer configured (its table removed, the server restarted) is
/// attempted apart from the configured endpoints' — it fails at once and follows the schedule —
/// while they keep being delivered.
#[tokio::test]
async fn deliveries_to_an_endpoint_no_longer_configured_fail_without_holding_up_the_others() {
    let (rx, s) = (Receiver::start().await, secret());
    let app = app_with(&[("ops", &rx.url(), &s, None)]).await;
    record_events(&app, 1);
    rx.wait_for(1, Duration::from_secs(5)).await;
    let now = tokenvault::util::now();
    app.exec(&format!(
        "INSERT INTO webhook_deliveries (event_id, endpoint, status, attempts, next_attempt_at, updated_at) \
         SELECT id, 'gone', 'pending', 0, {now}, {now} FROM webhook_events"
    ));
    record_events(&app, 3);
    rx.wait_for(4, Duration::from_secs(5)).await;
    let gone = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'gone' AND attempts = 1 \
                AND status = 'pending' AND last_error = 'the endpoint is no longer configured'";
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.count(gone) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.count(gone), 1, "attempted once, to be retried on the schedule");
    assert_eq!(rx.received().len(), 4);
}

/// Issue 19: a posted `version` of i64::MAX overflowed `version + 1` (a panic in debug builds):
/// it is a stale form (409), and nothing is saved.
#[tokio::test]
async fn a_version_past_the_last_is_a_stale_form_not_a_panic() {
    let rx = Receiver::start().await;
    let app = app_with(&[("ops", &rx.url(), &secret(), None)]).await;
    let root = app.user("root").await;
    let csrf = root.csrf("/admin/webhooks").await;
    let r = root
        .post_form("/admin/webhooks", &[("csrf_token", &csrf), ("name", "billing"), ("url", &rx.url()), ("events", "")])
        .await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let max = i64::MAX.to_string();
    for name in ["billing", "ops"] {
        let r = root
            .post_form(
                &format!("/admin/webhooks/{name}"),
                &[("csrf_token", &csrf), ("version", &max), ("url", &rx.url()), ("events", "connection.*")],
            )
            .await;
        assert_eq!(r.status, Status::Conflict, "{name}: {}", r.text);
        let r = root
            .post_form(&format!("/admin/webhooks/{name}/rotate"), &[("csrf_token", &csrf), ("version", &max)])
            .await;
        assert_eq!(r.status, Status::Conflict, "{name}: {}", r.text);
    }
    let page = root.fetch("/admin/webhooks").await.text;
    assert_eq!(version_of(&page, "billing"), "1");
    assert_eq!(version_of(&page, "ops"), "0");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints"), 1, "billing only, unchanged");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints WHERE events IS NULL"), 1);
}

/// Issue 19: `::ffff:0:a.b.c.d` (IPv4-translated) passed as public; every IPv6 form that carries a
/// private IPv4 address is refused on the page, as are the forms refused whatever they carry.
#[tokio::test]
async fn ipv6_forms_of_private_ipv4_addresses_are_refused_on_the_page() {
    let rx = Receiver::start().await;
    let app = builder()
        .set("webhook_private_urls", false)
        .set("webhooks", webhooks(&[("ops", &rx.url(), &secret(), None)]))
        .start()
        .await;
    let root = app.user("root").await;
    let csrf = root.csrf("/admin/webhooks").await;
    for url in [
        "https://[::ffff:0:7f00:1]/hook",
        "https://[::ffff:0:127.0.0.1]:8443/hook",
        "https://[::ffff:0:169.254.169.254]/latest/meta-data/",
        "https://[::ffff:0:10.0.0.1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://[64:ff9b::192.168.1.1]/",
        "https://[64:ff9b:1::808:808]/",
        "https://[2002:a9fe:a9fe::1]/",
        "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        "https://[::127.0.0.1]/",
    ] {
        let r = root
            .post_form("/admin/webhooks", &[("csrf_token", &csrf), ("name", "internal"), ("url", url), ("events", "")])
            .await;
        assert_eq!(r.status, Status::UnprocessableEntity, "{url}");
        assert!(r.text.contains("public host"), "{url}: {}", r.text);
        let r = root
            .post_form("/admin/webhooks/ops", &[("csrf_token", &csrf), ("version", "0"), ("url", url), ("events", "")])
            .await;
        assert_eq!(r.status, Status::UnprocessableEntity, "{url}");
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints"), 0);
}

/// A receiver, its secret, and an app sending it every event, whose fake provider issues 5 s
/// tokens (so each page load past a shifted `obtained_at` refreshes).
async fn short_token_app() -> (Receiver, String, TestApp) {
    let (rx, s) = (Receiver::start().await, secret());
    let app = builder().set("webhooks", webhooks(&[("all", &rx.url(), &s, None)])).start().await;
    app.fake.with_state(|st| st.expires_in = Some(json!(5)));
    (rx, s, app)
}

/// Ann, signed up and connected to the fake provider, once `connection.created` has arrived.
async fn connected<'a>(app: &'a TestApp, rx: &Receiver) -> common::Agent<'a> {
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    rx.wait_for(1, Duration::from_secs(5)).await;
    ann
}

#[tokio::test]
async fn a_dead_grant_raises_reconnect_required_and_routine_refreshes_send_nothing() {
    let (rx, s, app) = short_token_app().await;
    let ann = connected(&app, &rx).await;

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
async fn entering_degraded_raises_refresh_failed_once_and_the_next_success_recovered() {
    let (rx, s, app) = short_token_app().await;
    let ann = connected(&app, &rx).await;

    // A provider outage: the connection enters `degraded`, and says so once.
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");
    app.fake.script(ResponseTemplate::new(503));
    ann.fetch("/services/fake/account").await;
    assert_eq!(app.text("SELECT status AS t FROM connections"), "degraded");
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    check(&got[1], &s, "connection.refresh_failed", "degraded", &[common::CLIENT_SECRET]);
    assert!(got[1].json()["data"]["reason"].is_string(), "{}", got[1].body);

    // Failing again while degraded (the backoff step passed): no second event.
    app.exec("UPDATE connections SET next_attempt_at = 0");
    app.fake.script(ResponseTemplate::new(503));
    ann.fetch("/services/fake/account").await;
    assert_eq!(app.count("SELECT attempts AS n FROM connections"), 2, "the second attempt was made");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 2, "refresh_failed is raised on entering degraded, not on each retry");

    // The next success: active again, and `connection.recovered`.
    app.exec("UPDATE connections SET next_attempt_at = 0");
    assert_eq!(ann.fetch("/services/fake/account").await.status, Status::Ok);
    assert_eq!(app.text("SELECT status AS t FROM connections"), "active");
    let got = rx.wait_for(3, Duration::from_secs(5)).await;
    check(&got[2], &s, "connection.recovered", "active", &[common::CLIENT_SECRET]);
    assert!(got[2].json()["data"]["reason"].is_null());
}

#[tokio::test]
async fn a_refresh_token_about_to_expire_raises_expiring_once_per_expiry() {
    let rx = Receiver::start().await;
    let s = secret();
    let app = builder()
        .set("webhooks", webhooks(&[("all", &rx.url(), &s, None)]))
        .set("keepalive_worker", false)
        .set("expiry_warning", 7200)
        .start()
        .await;
    let pass = || async { app.state().keepalive().pass(&Default::default(), &|| false).await.unwrap() };
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    rx.wait_for(1, Duration::from_secs(5)).await;
    let now = tokenvault::util::now();

    // Expiring beyond the warning window: nothing yet.
    app.exec(&format!("UPDATE connections SET refresh_token_expires_at = {}", now + 7300));
    assert_eq!(pass().await.warned, 0);
    // Within it: one warning, delivered, and not again on the next pass.
    app.exec(&format!("UPDATE connections SET refresh_token_expires_at = {}", now + 3600));
    assert_eq!(pass().await.warned, 1);
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    check(&got[1], &s, "connection.expiring", "active", &[common::CLIENT_SECRET]);
    assert_eq!(got[1].json()["data"]["reason"], "refresh_token_expiring");
    assert_eq!(pass().await.warned, 0, "once per expiry");
    // A new refresh token with its own expiry is warned about again.
    app.exec(&format!("UPDATE connections SET refresh_token_expires_at = {}", now + 3000));
    assert_eq!(pass().await.warned, 1);
    rx.wait_for(3, Duration::from_secs(5)).await;
    // An expired one is not "expiring" (it is reconnect_required: the health part's business).
    app.exec(&format!("UPDATE connections SET refresh_token_expires_at = {}, expiry_warned_for = NULL", now - 1));
    let report = pass().await;
    assert_eq!(report.warned, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expiring = rx.received().iter().filter(|r| r.json()["type"] == "connection.expiring").count();
    assert_eq!(expiring, 2);
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

#[tokio::test]
async fn the_admin_page_lists_deliveries_and_sends_a_test_event_to_one_endpoint() {
    let (rx, other) = (Receiver::start().await, Receiver::start().await);
    let (s1, s2) = (secret(), secret());
    let app = app_with(&[("ops", &rx.url(), &s1, Some(&["connection.*"])), ("audit", &other.url(), &s2, None)]).await;
    let root = app.user("root").await; // the first user is the administrator
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    let created = rx.wait_for(1, Duration::from_secs(5)).await.remove(0);
    other.wait_for(1, Duration::from_secs(5)).await;

    let page = root.fetch("/admin/webhooks").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="webhook-ops""#) && page.text.contains(&rx.url()));
    assert!(page.text.contains("connection.*"));
    assert!(page.text.contains(r#"id="send-test-ops""#) && page.text.contains(r#"id="send-test-audit""#));
    let row = format!(r#"data-webhook-id="{}" data-status="delivered""#, created.id());
    assert!(page.text.contains(&row), "{}", page.text);
    assert!(page.text.contains("connection.created"));
    for s in [&s1, &s2] {
        assert!(!page.text.contains(&s[6..]) && !page.text.contains(s.as_str()), "no secret on the page");
    }

    // The test button: one webhook.test, to that endpoint only (whatever its filter).
    let csrf = root.csrf("/admin/webhooks").await;
    let r = root.post_form("/admin/webhooks/ops/test", &[("csrf_token", &csrf)]).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::SeeOther, Some("/admin/webhooks")));
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].json()["type"], "webhook.test");
    assert!(got[1].verifies(&s1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(other.received().len(), 1, "the other endpoint got no test event");
    let page = root.fetch("/admin/webhooks").await.text;
    assert!(page.contains(&format!(r#"data-webhook-id="{}" data-status="delivered""#, got[1].id())), "{page}");

    // CSRF on the POST; unknown endpoints are 404.
    let r = root.post_form("/admin/webhooks/ops/test", &[("csrf_token", "wrong")]).await;
    assert_eq!(r.status, Status::Forbidden);
    let r = root.post_form("/admin/webhooks/nope/test", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::NotFound);

    // Not for users, nor for the signed-out.
    assert_eq!(ann.fetch("/admin/webhooks").await.status, Status::Forbidden);
    let csrf = ann.csrf("/settings/oauth2").await;
    assert_eq!(ann.post_form("/admin/webhooks/ops/test", &[("csrf_token", &csrf)]).await.status, Status::Forbidden);
    let anonymous = app.agent().fetch("/admin/webhooks").await;
    assert_eq!(anonymous.status, Status::SeeOther);
    assert!(anonymous.location.unwrap().starts_with("/login"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(rx.received().len(), 2, "refused requests queued nothing");
}

/// The secret a page shows once (`#new-webhook-secret`), unescaped.
fn shown_secret(html: &str) -> String {
    let re = regex::Regex::new(r#"<code id="new-webhook-secret">([^<]+)</code>"#).unwrap();
    re.captures(html).expect("the new secret is shown once")[1].replace("&#x3D;", "=")
}

fn version_of(html: &str, name: &str) -> String {
    let re =
        regex::Regex::new(&format!(r#"data-endpoint="{name}" data-origin="[a-z]+" data-version="(\d+)""#)).unwrap();
    re.captures(html).unwrap_or_else(|| panic!("{name} on the page: {html}"))[1].to_string()
}

/// Issue 12's `/admin/webhooks` editing: add an endpoint (its secret shown once), edit a configured
/// one's URL and events (its configured secret still signs; a stale page saves nothing), rotate a
/// secret (both sign during the overlap), refuse bad input keeping what was typed, delete (pending
/// deliveries given up) and revert; each change audited as `webhook.changed`, no secret stored or
/// shown anywhere else.
#[tokio::test]
async fn the_admin_page_adds_edits_rotates_reverts_and_deletes_endpoints() {
    let (rx, moved, added) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    let configured = secret();
    let app = app_with(&[("ops", &rx.url(), &configured, Some(&["connection.created"]))]).await;
    let root = app.user("root").await;
    let ann = app.user("ann").await;

    // Add "billing": the secret is on this response only.
    let csrf = root.csrf("/admin/webhooks").await;
    let r = root
        .post_form(
            "/admin/webhooks",
            &[("csrf_token", &csrf), ("name", "billing"), ("url", &added.url()), ("events", "connection.*")],
        )
        .await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let billing_secret = shown_secret(&r.text);
    assert!(billing_secret.starts_with("whsec_") && billing_secret.len() >= 46, "{billing_secret}");
    let page = root.fetch("/admin/webhooks").await.text;
    assert!(page.contains(r#"id="webhook-billing""#) && page.contains(r#"data-origin="added""#), "{page}");
    assert!(!page.contains(r#"id="new-webhook-secret""#) && !page.contains(&billing_secret[6..20]), "shown once");
    assert_eq!(version_of(&page, "ops"), "0");

    ann.connect("fake").await;
    let first = rx.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert!(first.verifies(&configured));
    let to_billing = added.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(to_billing.json()["type"], "connection.created");
    assert!(to_billing.verifies(&billing_secret) && !to_billing.verifies(&configured));
    assert_eq!(to_billing.id(), first.id());

    // Bad input: 422, the message, what was typed kept, nothing stored.
    let bad = root
        .post_form(
            "/admin/webhooks",
            &[("csrf_token", &csrf), ("name", "plain"), ("url", "http://hooks.example/x"), ("events", "connection.*")],
        )
        .await;
    assert_eq!(bad.status, Status::UnprocessableEntity);
    assert!(bad.text.contains(r#"id="add-webhook-error""#) && bad.text.contains("https"), "{}", bad.text);
    assert!(bad.text.contains(r#"value="plain""#) && bad.text.contains("http://hooks.example/x"));
    let r = root
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf), ("version", "0"), ("url", &moved.url()), ("events", "connection.creatd")],
        )
        .await;
    assert_eq!(r.status, Status::UnprocessableEntity);
    assert!(r.text.contains(r#"id="webhook-error-ops""#) && r.text.contains("connection.creatd"), "{}", r.text);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints"), 1, "only billing is stored");

    // Edit the configured endpoint: a new URL, every event; its configured secret still signs.
    let r = root
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf), ("version", "0"), ("url", &moved.url()), ("events", "")],
        )
        .await;
    assert_eq!((r.status, r.location.as_deref()), (Status::SeeOther, Some("/admin/webhooks")), "{}", r.text);
    let stale = root
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf), ("version", "0"), ("url", &rx.url()), ("events", "")],
        )
        .await;
    assert_eq!(stale.status, Status::Conflict, "an edit from a page loaded before the last one is refused");
    let page = root.fetch("/admin/webhooks").await.text;
    assert!(page.contains(r#"data-endpoint="ops" data-origin="edited" data-version="1""#), "{page}");
    assert!(page.contains(&moved.url()) && page.contains(r#"id="revert-webhook-ops""#));
    let csrf_ann = ann.csrf("/settings/oauth2").await;
    let r = ann.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf_ann)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let revoked = moved.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(revoked.json()["type"], "connection.revoked", "the new filter: every event");
    assert!(revoked.verifies(&configured));

    // Rotate billing's secret: during the overlap every delivery carries both signatures.
    let r = root.post_form("/admin/webhooks/billing/rotate", &[("csrf_token", &csrf), ("version", "1")]).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let rotated = shown_secret(&r.text);
    assert_ne!(rotated, billing_secret);
    assert!(r.text.contains("both the new and the previous secret"));
    let r = root.post_form("/admin/webhooks/billing/rotate", &[("csrf_token", &csrf), ("version", "1")]).await;
    assert_eq!(r.status, Status::Conflict, "a stale rotation is refused");
    ann.connect("fake").await;
    let got = added.wait_for(3, Duration::from_secs(5)).await;
    let after = got.last().unwrap();
    assert_eq!(after.json()["type"], "connection.created");
    assert!(after.verifies(&rotated) && after.verifies(&billing_secret), "{:?}", after.headers);
    assert_eq!(after.header("webhook-signature").split(' ').count(), 2);

    // Delete billing while a delivery to it is pending: the delivery is given up at once.
    added.answer(&[503]);
    let csrf_ann = ann.csrf("/settings/oauth2").await;
    ann.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf_ann)]).await;
    added.wait_for(4, Duration::from_secs(5)).await;
    let pending = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'billing' AND status = 'pending'";
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.count(pending) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.count(pending), 1);
    let r = root.post_form("/admin/webhooks/billing/delete", &[("csrf_token", &csrf), ("version", "2")]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(app.count(pending), 0);
    let failed = "SELECT COUNT(*) AS n FROM webhook_deliveries WHERE endpoint = 'billing' AND status = 'failed'";
    assert_eq!(app.count(failed), 1);
    assert!(!root.fetch("/admin/webhooks").await.text.contains(r#"id="webhook-billing""#));

    // Revert ops: its configured URL and filter again; a configured endpoint cannot be deleted.
    let r = root.post_form("/admin/webhooks/ops/delete", &[("csrf_token", &csrf), ("version", "1")]).await;
    assert_eq!(r.status, Status::SeeOther);
    let page = root.fetch("/admin/webhooks").await.text;
    assert!(page.contains(r#"data-endpoint="ops" data-origin="config" data-version="0""#), "{page}");
    assert!(!page.contains(r#"id="revert-webhook-ops""#));
    let r = root.post_form("/admin/webhooks/ops/delete", &[("csrf_token", &csrf), ("version", "0")]).await;
    assert_eq!(r.status, Status::SeeOther, "refused with a message");
    assert!(root.fetch("/admin/webhooks").await.text.contains("Rocket.toml and has no changes to revert"));
    ann.connect("fake").await;
    let back = rx.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(back[1].json()["type"], "connection.created");
    assert!(back[1].verifies(&configured));

    // The audit log has every change, and no secret; the database has none in the clear.
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'webhook.changed'"), 5);
    let dump = String::from_utf8_lossy(&app.database_bytes()).to_string();
    for s in [&billing_secret, &rotated, &configured] {
        assert!(!dump.contains(&s[6..]), "a webhook secret in the clear in the database");
    }

    // Only administrators, with CSRF.
    let csrf_ann = ann.csrf("/settings/oauth2").await;
    let r = ann
        .post_form("/admin/webhooks", &[("csrf_token", &csrf_ann), ("name", "x"), ("url", &rx.url()), ("events", "")])
        .await;
    assert_eq!(r.status, Status::Forbidden);
    for path in ["/admin/webhooks/ops/rotate", "/admin/webhooks/ops/delete"] {
        let r = ann.post_form(path, &[("csrf_token", &csrf_ann), ("version", "0")]).await;
        assert_eq!(r.status, Status::Forbidden, "{path}");
    }
    let r = ann
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf_ann), ("version", "0"), ("url", &rx.url()), ("events", "")],
        )
        .await;
    assert_eq!(r.status, Status::Forbidden);
    let r = root.post_form("/admin/webhooks/ops/rotate", &[("csrf_token", "wrong"), ("version", "0")]).await;
    assert_eq!(r.status, Status::Forbidden);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints"), 0);
}

/// Outside `debug` (`webhook_private_urls` off), a URL set on the page must name a public host: the
/// page cannot be used to reach the server's own network. `Rocket.toml` endpoints may.
#[tokio::test]
async fn page_urls_must_be_public_unless_the_operator_allows_private_ones() {
    let rx = Receiver::start().await;
    let app = builder()
        .set("webhook_private_urls", false)
        .set("webhooks", webhooks(&[("ops", &rx.url(), &secret(), None)]))
        .start()
        .await;
    let root = app.user("root").await;
    let csrf = root.csrf("/admin/webhooks").await;
    for url in ["http://127.0.0.1:9/hook", "https://192.168.1.10/hook", "https://[::1]/x", "https://localhost/x"] {
        let r = root
            .post_form("/admin/webhooks", &[("csrf_token", &csrf), ("name", "internal"), ("url", url), ("events", "")])
            .await;
        assert_eq!(r.status, Status::UnprocessableEntity, "{url}");
        assert!(r.text.contains("public host"), "{url}: {}", r.text);
    }
    let r = root
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf), ("version", "0"), ("url", "https://10.1.1.1/"), ("events", "")],
        )
        .await;
    assert_eq!(r.status, Status::UnprocessableEntity);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_endpoints"), 0);
    // The configured loopback endpoint still gets its events — also after its events were edited
    // and its secret rotated on the page (its URL stays the operator's).
    let ann = app.user("ann").await;
    ann.connect("fake").await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(5)).await[0].json()["type"], "connection.created");
    let r = root
        .post_form(
            "/admin/webhooks/ops",
            &[("csrf_token", &csrf), ("version", "0"), ("url", &rx.url()), ("events", "connection.*")],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "an events-only edit keeps the configured URL: {}", r.text);
    let r = root.post_form("/admin/webhooks/ops/rotate", &[("csrf_token", &csrf), ("version", "1")]).await;
    assert_eq!(r.status, Status::Ok);
    let rotated = shown_secret(&r.text);
    ann.connect("fake").await;
    let got = rx.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].json()["type"], "connection.reconnected");
    assert!(got[1].verifies(&rotated), "delivered to the configured loopback URL after the rotation");
    assert!(!root.fetch("/admin/webhooks").await.text.contains("broken-webhook-"));
}

/// `ROCKET_WEBHOOKS` for one endpoint `rx` at `url`.
fn webhooks_env(url: &str, secret: &str) -> (String, String) {
    ("ROCKET_WEBHOOKS".into(), format!(r#"{{rx={{url="{url}",secret="{secret}"}}}}"#))
}

/// The fake provider's client credentials in the vault of the database at `url` (created and
/// migrated if new).
fn seed_credentials(url: &str) {
    let db = tokenvault::db::Db::open_sized(url, 1).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
}

/// Sign up `username` on `base` and connect the fake provider (a browser's cookie jar).
async fn signup_and_connect(base: &str, fake: &common::FakeProvider, username: &str) -> reqwest::Client {
    let http = common::server::browser();
    common::server::sign_up(&http, base, username).await;
    common::server::connect(&http, base, base, fake).await;
    http
}

/// The connection is committed with its event, then the process is SIGKILLed before any
/// delivery could succeed (nothing listens on the endpoint's port yet); after a restart on the
/// same database the event is delivered.
#[tokio::test]
async fn an_event_committed_before_a_sigkill_is_delivered_after_the_restart() {
    let fake = common::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    seed_credentials(&database.url);
    let (port, s, fake_uri) = (common::binary::free_port(), secret(), fake.uri());
    // Short timeouts: a kill that lands mid-attempt leaves a lease of 2 + 1 + 5 s.
    let options = || common::server::Options {
        env: vec![
            webhooks_env(&common::webhook_receiver::url(port), &s),
            ("ROCKET_HTTP_TIMEOUT".into(), "2".into()),
            ("ROCKET_HTTP_CONNECT_TIMEOUT".into(), "1".into()),
        ],
        ..common::server::Options::new(&database.url, &fake_uri, dir.path())
    };
    let mut first = common::server::start(options()).await;
    signup_and_connect(&first.base, &fake, "ann").await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    assert!(!std::fs::read_to_string(&first.log).unwrap().contains(&s[6..]), "the secret is never logged");
    let count = |sql: &str| -> i64 {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
        let mut conn = db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(sql).get_result::<N>(c)).unwrap().n
    };
    assert_eq!(count("SELECT COUNT(*) AS n FROM connections"), 1, "the change was committed");
    assert_eq!(count("SELECT COUNT(*) AS n FROM webhook_events"), 1, "with its event");
    assert_eq!(count("SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'delivered'"), 0);

    let rx = Receiver::start_on(port).await;
    let second = common::server::start(options()).await;
    // At most the lease plus the 10 s retry step.
    let got = rx.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].json()["type"], "connection.created");
    assert!(got[0].verifies(&s));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.received().len(), 1);
    assert_eq!(count("SELECT COUNT(*) AS n FROM webhook_deliveries WHERE status = 'delivered'"), 1);
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert!(log.contains("webhook attempt") && log.contains(got[0].id()), "the attempt is logged with its id");
    assert!(!log.contains(&s[6..]), "the secret is never logged");
}

/// Two instances on one PostgreSQL database, both delivering: every event succeeds at the
/// receiver exactly once (one failed first attempt included), whichever instance claims it.
#[tokio::test]
async fn two_instances_on_postgresql_deliver_each_event_once() {
    if std::env::var("TOKENVAULT_TEST_POSTGRES_URL").map(|v| v.is_empty()).unwrap_or(true) {
        eprintln!("skipped: set TOKENVAULT_TEST_POSTGRES_URL to run two instances on PostgreSQL");
        return;
    }
    const EVENTS: usize = 60;
    let fake = common::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    seed_credentials(&database.url);
    let (rx, s) = (Receiver::start().await, secret());
    rx.answer(&[500]);
    let (fake_uri, dir_a, dir_b) = (fake.uri(), dir.path().join("a"), dir.path().join("b"));
    let env = webhooks_env(&rx.url(), &s);
    let options = |sub| common::server::Options {
        env: vec![env.clone()],
        log_filter: "warn,tokenvault::webhooks=info",
        ..common::server::Options::new(&database.url, &fake_uri, sub)
    };
    let (a, b) = tokio::join!(common::server::start(options(&dir_a)), common::server::start(options(&dir_b)));
    // Events recorded by "a third instance" all at once, so both race for them…
    {
        let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
        let mut conn = db.conn().unwrap();
        for i in 0..EVENTS {
            let data = tokenvault::webhooks::outbox::EventData {
                connection_id: i as i64 + 1000,
                user: format!("user{i}"),
                service: "fake".into(),
                account: None,
                status: "reconnect_required".into(),
                reason: Some("invalid_grant".into()),
            };
            tokenvault::webhooks::outbox::record(&mut conn, tokenvault::webhooks::EventType::ConnectionExpiring, &data)
                .unwrap();
        }
    }
    // …and real connections made on each instance.
    signup_and_connect(&a.base, &fake, "ann").await;
    signup_and_connect(&b.base, &fake, "bob").await;
    let total = EVENTS + 2;
    rx.wait_for(total + 1, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = rx.received();
    let mut successes: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &got {
        assert!(r.verifies(&s));
        if r.answered == 200 {
            *successes.entry(r.id().to_string()).or_default() += 1;
        }
    }
    assert_eq!(successes.len(), total, "every event delivered");
    assert!(successes.values().all(|n| *n == 1), "each id succeeded once: {successes:?}");
    assert_eq!(got.len(), total + 1, "one failed attempt retried, nothing else sent twice");
    let attempts = |log: &std::path::Path| std::fs::read_to_string(log).unwrap().matches("webhook attempt").count();
    let (by_a, by_b) = (attempts(&a.log), attempts(&b.log));
    println!("{total} events, {} requests: {by_a} attempts by instance A, {by_b} by B", got.len());
    assert_eq!(by_a + by_b, got.len(), "every request was one instance's recorded attempt");
    drop((a, b));
}

//! Connection health and the keep-alive worker, over real HTTP to the fake provider: idle
//! connections are refreshed without traffic, a provider failure shows as `degraded` (API,
//! My Settings, metrics) and recovers to `active`, a dead grant becomes `reconnect_required`, a
//! provider's 429 is honoured; the spawned worker really runs in the server binary, and two
//! instances on one PostgreSQL database refresh each connection exactly once.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{builder, TestApp};
use rocket::http::{Header, Status};
use serde_json::{json, Value};
use tokenvault::oauth::keepalive::{Pace, PassReport};
use wiremock::ResponseTemplate;

/// A keep-alive pass of the app's worker, run here rather than on its timer (the apps of these
/// tests run no worker of their own: `keepalive_worker = false`, so no pass races this one).
async fn pass(app: &TestApp) -> PassReport {
    app.state().keepalive().pass(&Pace::default(), &|| false).await.expect("the pass runs")
}

async fn keepalive_app() -> TestApp {
    builder().set("keepalive_interval", 10).set("keepalive_worker", false).start().await
}

/// [`keepalive_app`] with one more setting.
async fn keepalive_app_with(key: &str, value: usize) -> TestApp {
    builder().set("keepalive_interval", 10).set("keepalive_worker", false).set(key, value).start().await
}

/// Alice's and Bob's connections, both idle; one keep-alive refresh at a time.
async fn two_idle_connections_one_refresh_at_a_time() -> TestApp {
    let app = keepalive_app_with("keepalive_concurrency", 1).await;
    for name in ["alice", "bob"] {
        app.user(name).await.connect("fake").await;
        idle_for(&app, name, 11);
    }
    app
}

fn user_id(app: &TestApp, name: &str) -> i64 {
    app.count(&format!("SELECT id AS n FROM users WHERE username = '{name}'"))
}

/// The user's connection as if last refreshed `secs` seconds ago (caches cleared).
fn idle_for(app: &TestApp, name: &str, secs: i64) {
    let id = user_id(app, name);
    app.exec(&format!("UPDATE connections SET obtained_at = obtained_at - {secs} WHERE user_id = {id}"));
}

async fn api(app: &TestApp, uri: &str, key: &str) -> (Status, String, Option<String>) {
    let res =
        app.client.get(uri.to_string()).header(Header::new("Authorization", format!("Bearer {key}"))).dispatch().await;
    let status = res.status();
    let retry_after = res.headers().get_one("Retry-After").map(String::from);
    (status, res.into_string().await.unwrap_or_default(), retry_after)
}

/// The first connection `/api/v1/connections` lists.
async fn listed(app: &TestApp, key: &str) -> Value {
    let (status, body, _) = api(app, "/api/v1/connections", key).await;
    assert_eq!(status, Status::Ok, "{body}");
    assert!(!body.contains("CANARY"), "no token in the listing: {body}");
    serde_json::from_str::<Value>(&body).unwrap()[0].clone()
}

/// The `data-status` of the service's row on My Settings.
async fn settings_status(agent: &common::Agent<'_>) -> String {
    let page = agent.fetch("/settings/oauth2").await.text;
    assert!(!page.contains("CANARY"), "no token on the page");
    let re = regex::Regex::new(r#"<tr data-service="fake" data-status="([a-z_]+)""#).unwrap();
    re.captures(&page).unwrap_or_else(|| panic!("a row for fake:\n{page}"))[1].to_string()
}

#[tokio::test]
async fn keep_alive_refreshes_an_idle_connection_and_leaves_a_recent_one_alone() {
    let app = keepalive_app().await;
    let (alice, bob) = (app.user("alice").await, app.user("bob").await);
    alice.connect("fake").await;
    bob.connect("fake").await;
    let (alice_before, bob_before) =
        (app.stored_tokens("alice", "fake").unwrap(), app.stored_tokens("bob", "fake").unwrap());
    idle_for(&app, "alice", 11);

    let report = pass(&app).await;
    assert_eq!((report.candidates, report.ok, report.failed), (1, 1, 0), "{report:?}");
    assert_eq!(app.fake.refresh_calls().await, 1, "only the idle connection");
    let alice_after = app.stored_tokens("alice", "fake").unwrap();
    assert_ne!(alice_after, alice_before, "alice's tokens were renewed");
    assert!(app.fake.refresh_token_valid(alice_after.1.as_deref().unwrap()), "the rotated refresh token is stored");
    assert_eq!(app.stored_tokens("bob", "fake").unwrap(), bob_before, "bob's recent connection left alone");
    let id = user_id(&app, "alice");
    assert_eq!(app.text(&format!("SELECT status AS t FROM connections WHERE user_id = {id}")), "active");

    // Refreshed just now: the next pass has nothing to do.
    assert_eq!(pass(&app).await.candidates, 0);
    assert_eq!(app.fake.refresh_calls().await, 1);
}

#[tokio::test]
async fn a_provider_failure_degrades_the_connection_visibly_and_the_next_success_recovers_it() {
    let app = keepalive_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("health").await;
    let before = app.stored_tokens("alice", "fake").unwrap();
    idle_for(&app, "alice", 11);
    app.fake.script(ResponseTemplate::new(500).set_body_json(json!({"error": "server_error"})));

    let report = pass(&app).await;
    assert_eq!((report.ok, report.failed), (0, 1), "{report:?}");
    let c = listed(&app, &key).await;
    assert_eq!(
        (c["status"].as_str(), c["status_reason"].as_str(), c["attempts"].as_i64()),
        (Some("degraded"), Some("server_error"), Some(1))
    );
    let next = time::OffsetDateTime::parse(
        c["next_attempt_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let wait = next.unix_timestamp() - tokenvault::util::now();
    assert!((28..=33).contains(&wait), "the first backoff step (30 s, up to a tenth more): {wait}");
    assert_eq!(settings_status(&alice).await, "degraded");
    assert!(alice
        .fetch("/settings/oauth2")
        .await
        .text
        .contains("<code>server_error</code>, next attempt in a few seconds"));
    assert!(alice.fetch("/").await.text.contains(r#"data-status="degraded""#), "the dashboard says so too");
    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    assert!(metrics.contains("tokenvault_connections{status=\"degraded\"} 1"), "{metrics}");
    assert_eq!(app.stored_tokens("alice", "fake").unwrap(), before, "the tokens are kept");

    // Degraded is not unusable: its valid access token is still handed out, and neither that
    // nor another pass asks the provider before the next attempt.
    let (status, body, _) = api(&app, "/api/v1/services/fake/token", &key).await;
    assert_eq!(status, Status::Ok, "{body}");
    assert!(body.contains(&before.0));
    assert_eq!(pass(&app).await.candidates, 0);
    assert_eq!(app.fake.refresh_calls().await, 1);

    // Expired and not due: the existing transient error, 503 with Retry-After = the wait.
    app.exec("UPDATE connections SET expires_at = 1");
    let (status, body, retry_after) = api(&app, "/api/v1/services/fake/token", &key).await;
    assert_eq!(status, Status::ServiceUnavailable, "{body}");
    let retry_after: i64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((27..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(app.fake.refresh_calls().await, 1, "no provider call during the backoff");

    // The step has passed: the next pass refreshes, and the connection is active again.
    app.exec("UPDATE connections SET next_attempt_at = 1");
    assert_eq!(pass(&app).await.ok, 1);
    let c = listed(&app, &key).await;
    assert_eq!((c["status"].as_str(), c["attempts"].as_i64()), (Some("active"), Some(0)));
    assert!(c["status_reason"].is_null() && c["next_attempt_at"].is_null(), "{c}");
    assert_eq!(settings_status(&alice).await, "active");
    assert_ne!(app.stored_tokens("alice", "fake").unwrap(), before);
}

#[tokio::test]
async fn invalid_grant_found_by_the_keep_alive_needs_a_reconnect() {
    let app = keepalive_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("health").await;
    idle_for(&app, "alice", 11);
    app.fake.script(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})));

    assert_eq!(pass(&app).await.failed, 1);
    let c = listed(&app, &key).await;
    assert_eq!(
        (c["status"].as_str(), c["status_reason"].as_str()),
        (Some("reconnect_required"), Some("invalid_grant"))
    );
    assert_eq!(settings_status(&alice).await, "reconnect_required");
    // Dead: no further keep-alive refresh is tried.
    app.exec("UPDATE connections SET obtained_at = obtained_at - 100");
    assert_eq!(pass(&app).await.candidates, 0);
    assert_eq!(app.fake.refresh_calls().await, 1);
}

#[tokio::test]
async fn a_grant_the_user_revoked_at_the_provider_needs_a_reconnect_with_reason_revoked() {
    let app = keepalive_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("health").await;
    idle_for(&app, "alice", 11);
    // Google's words for a grant the user removed in their account settings.
    let body = json!({"error": "invalid_grant", "error_description": "Token has been expired or revoked."});
    app.fake.script(ResponseTemplate::new(400).set_body_json(body));
    assert_eq!(pass(&app).await.failed, 1);
    let c = listed(&app, &key).await;
    assert_eq!((c["status"].as_str(), c["status_reason"].as_str()), (Some("reconnect_required"), Some("revoked")));
    let event: Value = serde_json::from_str(&app.text(
        "SELECT body AS t FROM webhook_events WHERE event_type = 'connection.reconnect_required' ORDER BY id DESC LIMIT 1",
    ))
    .unwrap();
    assert_eq!(event["data"]["reason"], "revoked");
    assert!(!event.to_string().contains("Token has been"), "the provider's words are not passed on");
}

#[tokio::test]
async fn a_429_sets_the_next_attempt_and_pauses_the_worker_for_that_provider() {
    let app = two_idle_connections_one_refresh_at_a_time().await;
    app.fake.script(ResponseTemplate::new(429).insert_header("Retry-After", "300").set_body_string("slow down"));

    let report = pass(&app).await;
    assert_eq!((report.candidates, report.failed, report.skipped), (2, 1, 1), "the second waits: {report:?}");
    assert_eq!(app.fake.refresh_calls().await, 1);
    let reason = app.text("SELECT COALESCE(status_reason, '') AS t FROM connections WHERE status = 'degraded'");
    assert_eq!(reason, "rate_limited");
    let wait =
        app.count("SELECT next_attempt_at AS n FROM connections WHERE status = 'degraded'") - tokenvault::util::now();
    assert!((298..=300).contains(&wait), "Retry-After, not the 30 s step: {wait}");
}

#[tokio::test]
async fn keep_alive_refreshes_towards_one_provider_are_bounded_by_keepalive_concurrency() {
    let app = keepalive_app_with("keepalive_concurrency", 2).await;
    let users = ["user0", "user1", "user2", "user3", "user4", "user5"];
    for name in users {
        app.user(name).await.connect("fake").await;
        idle_for(&app, name, 11);
    }
    // Each refresh answer is held 400 ms by the provider: 6 of them all at once would be done in
    // about 0.4 s, one at a time in about 2.2 s (measured); 2 at a time need three rounds.
    app.fake.with_state(|s| s.refresh_delay = Some(Duration::from_millis(400)));
    let started = Instant::now();
    let report = pass(&app).await;
    let took = started.elapsed();
    assert_eq!((report.candidates, report.ok), (6, 6), "{report:?}");
    assert_eq!(app.fake.refresh_calls().await, 6);
    assert!(took >= Duration::from_millis(800), "at most 2 in flight: {took:?}");
    assert!(took < Duration::from_millis(1800), "but 2 at a time, not 1: {took:?}");
}

#[tokio::test]
async fn refused_client_credentials_pause_the_provider_instead_of_failing_every_pass() {
    let app = two_idle_connections_one_refresh_at_a_time().await;
    app.fake.script(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})));
    let (worker, pace) = (app.state().keepalive(), Pace::default());
    let first = worker.pass(&pace, &|| false).await.unwrap();
    assert_eq!((first.candidates, first.failed, first.skipped), (2, 1, 1), "{first:?}");
    let events = app.count("SELECT COUNT(*) AS n FROM connection_events");
    // The next passes (the worker's Pace is kept across them) leave the provider alone.
    for _ in 0..3 {
        let next = worker.pass(&pace, &|| false).await.unwrap();
        assert_eq!((next.candidates, next.skipped), (2, 2), "{next:?}");
    }
    assert_eq!(app.fake.refresh_calls().await, 1, "one provider call, not one per connection and pass");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM connection_events"), events, "no event per pass");
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM connections WHERE status = 'active'"),
        2,
        "the users' tokens are kept"
    );
}

#[tokio::test]
async fn a_refresh_token_expiry_is_stored_shown_and_ends_the_connection_without_a_provider_call() {
    let app = keepalive_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    idle_for(&app, "alice", 11);
    app.fake.script(ResponseTemplate::new(200).set_body_json(json!({
        "access_token": "AT-CANARY-expiring", "token_type": "bearer", "expires_in": 3600,
        "refresh_token": "RT-CANARY-expiring", "refresh_token_expires_in": 6 * 86_400,
    })));
    assert_eq!(pass(&app).await.ok, 1);
    let expires = app.count("SELECT refresh_token_expires_at AS n FROM connections");
    assert!((expires - tokenvault::util::now() - 6 * 86_400).abs() <= 2, "stored as an absolute time");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("refresh token expires in 6 days"));

    app.exec("UPDATE connections SET refresh_token_expires_at = 5");
    assert_eq!(pass(&app).await.failed, 1);
    assert_eq!(app.text("SELECT status_reason AS t FROM connections"), "refresh_token_expired");
    assert_eq!(settings_status(&alice).await, "reconnect_required");
    assert_eq!(app.fake.refresh_calls().await, 1, "marked without asking the provider");
}

#[tokio::test]
async fn keepalive_worker_false_leaves_the_keep_alive_to_other_instances() {
    let (on, off) = tokio::join!(
        builder().set("keepalive_interval", 10).start(),
        builder().set("keepalive_interval", 10).set("keepalive_worker", false).start()
    );
    for app in [&on, &off] {
        app.user("alice").await.connect("fake").await;
        idle_for(app, "alice", 11);
    }
    // The worker looks every second (a tenth of the interval).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(on.fake.refresh_calls().await, 1, "the app's own worker refreshed it");
    assert_eq!(off.fake.refresh_calls().await, 0, "no worker in this instance");
}

// ---- the real binary: the spawned worker, and two instances on one PostgreSQL database ----

fn seed_credentials(database: &common::TestDatabase) -> tokenvault::db::Db {
    let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
    tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
    drop(conn);
    db
}

fn sql(db: &tokenvault::db::Db, statement: &str) {
    use diesel::RunQueryDsl;
    let mut conn = db.conn().unwrap();
    tokenvault::on_conn!(&mut conn, c => diesel::sql_query(statement).execute(c)).unwrap();
}

fn versions(db: &tokenvault::db::Db) -> Vec<i64> {
    use diesel::prelude::*;
    use tokenvault::db::schema::connections::dsl::*;
    let mut conn = db.conn().unwrap();
    tokenvault::on_conn!(&mut conn, c => connections.order(id).select(version).load::<i64>(c)).unwrap()
}

async fn start(database_url: &str, fake: &str, dir: &std::path::Path) -> common::server::Server {
    let mut o = common::server::Options::new(database_url, fake, dir);
    o.env.push(("ROCKET_KEEPALIVE_INTERVAL".into(), "10".into()));
    common::server::start(o).await
}

/// Wait until the fake has seen `n` refreshes (or 15 s passed); the count then.
async fn refreshes_reach(fake: &common::FakeProvider, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    while fake.refresh_calls().await < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fake.refresh_calls().await
}

/// SIGTERM, then the exit status within 20 s.
fn terminate(server: &mut common::server::Server) -> std::process::ExitStatus {
    let kill = std::process::Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still running 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn the_server_runs_the_keep_alive_worker_and_stops_it_cleanly() {
    let fake = common::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db = seed_credentials(&database);
    let mut server = start(&database.url, &fake.uri(), dir.path()).await;
    common::server::sign_up_and_connect(&server.base, &fake, "alice").await;
    sql(&db, "UPDATE connections SET obtained_at = obtained_at - 20");
    assert_eq!(refreshes_reach(&fake, 1).await, 1, "the worker refreshed the idle connection on its own");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fake.refresh_calls().await, 1, "once: it is not idle any more");
    assert_eq!(versions(&db), [2]);
    let status = terminate(&mut server);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("keep-alive worker started") && log.contains("keep-alive pass"), "{log}");
    assert!(!log.contains("panicked") && !log.contains("CANARY"), "{log}");

    // A CLI command on the same database runs no worker: nothing is refreshed, nothing started.
    sql(&db, "UPDATE connections SET obtained_at = obtained_at - 20");
    let providers = common::server::fake_provider_env(&fake.uri());
    let env = [
        ("ROCKET_DATABASE_URL", database.url.as_str()),
        ("ROCKET_VAULT_KEY", common::VAULT_KEY),
        ("ROCKET_KEEPALIVE_INTERVAL", "10"),
        ("ROCKET_PROVIDERS", providers.as_str()),
        ("RUST_LOG", "info"),
    ];
    let out = common::cli::tokenvault(dir.path(), &["vault", "list"], &env, None);
    let text = common::cli::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fake.client_id") && !text.contains("keep-alive"), "{text}");
    assert_eq!(fake.refresh_calls().await, 1);
}

#[tokio::test]
async fn two_instances_on_postgres_refresh_each_connection_exactly_once() {
    if std::env::var("TOKENVAULT_TEST_POSTGRES_URL").map(|v| v.is_empty()).unwrap_or(true) {
        eprintln!("skipped: set TOKENVAULT_TEST_POSTGRES_URL to run two instances on PostgreSQL");
        return;
    }
    let fake = common::FakeProvider::start().await;
    // Slow answers: both instances' passes overlap on every connection.
    fake.with_state(|s| s.refresh_delay = Some(Duration::from_millis(300)));
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db = seed_credentials(&database);
    let (uri, dir_a, dir_b) = (fake.uri(), dir.path().join("a"), dir.path().join("b"));
    let (a, b) = tokio::join!(start(&database.url, &uri, &dir_a), start(&database.url, &uri, &dir_b));
    const N: usize = 6;
    for i in 0..N {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        common::server::sign_up_and_connect(base, &fake, &format!("user{i}")).await;
    }
    sql(&db, "UPDATE connections SET obtained_at = obtained_at - 20");
    assert_eq!(refreshes_reach(&fake, N).await, N);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(fake.refresh_calls().await, N, "each connection refreshed once, by one of the instances");
    assert_eq!(versions(&db), [2; N]);
    // A rotated refresh token replayed would have revoked the family: every stored one is valid.
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    for i in 0..N {
        let user = tokenvault::db::models::users::find_by_username(&mut conn, &format!("user{i}")).unwrap().unwrap();
        let c = tokenvault::db::models::connections::find(&mut conn, user.id, "fake").unwrap().unwrap();
        let (_, refresh) = tokenvault::oauth::store::open_tokens(&cipher, &c).unwrap();
        use tokenvault::util::ExposeSecret;
        assert!(fake.refresh_token_valid(refresh.unwrap().expose_secret()), "user{i}");
    }
    let logs = [&a.log, &b.log].map(|l| std::fs::read_to_string(l).unwrap());
    assert!(logs.iter().all(|l| l.contains("keep-alive worker started")));
}

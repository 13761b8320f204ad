//! The account-info page and the one refresh mechanism behind it.

use crate::common;

use crate::common::{builder, TestApp};
use rocket::http::Status;
use serde_json::json;
use tokenvault::util::ExposeSecret;
use wiremock::ResponseTemplate;

async fn account_calls(app: &TestApp) -> usize {
    app.fake.requests_to("/account").await.len()
}

fn status_of(app: &TestApp) -> String {
    app.text("SELECT status AS t FROM connections")
}

/// The stored token as if obtained an hour ago, with the same expiry: a short-lived one is then
/// due for a refresh (past half its lifetime and within `refresh_margin`); just issued, it would
/// be used as it is.
fn obtained_an_hour_ago(app: &TestApp) {
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");
}

#[tokio::test]
async fn account_page_renders_the_provider_answer_with_a_fresh_token() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert!(page.text.contains(r#"<pre id="account-json">"#));
    assert!(
        page.text.contains("{\n  &quot;account_id&quot;: &quot;dbid:fake-1&quot;,\n  &quot;email&quot;"),
        "the JSON keeps its own indentation: {}",
        page.text
    );
    assert!(page.text.contains("fake-user-1") && page.text.contains("fake@example.com"));
    assert!(!page.text.contains("CANARY"));
    assert_eq!(account_calls(&app).await, 1);
    assert_eq!(app.fake.refresh_calls().await, 0);
    let call = &app.fake.requests_to("/account").await[0];
    let auth = call.headers.get("authorization").unwrap().to_str().unwrap();
    let (stored, _) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(auth, format!("Bearer {stored}"));
    assert_eq!(call.method.as_str(), "GET");
}

#[tokio::test]
async fn not_connected_offers_to_connect() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="connect""#) && page.text.contains("/services/fake/authorize"));
    assert_eq!(account_calls(&app).await, 0);
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_the_call() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(30))); // inside the 60 s margin
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (old_access, old_refresh) = app.stored_tokens("alice", "fake").unwrap();
    // Just issued, it is used as it is: the margin is at most half its lifetime (15 s).
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    assert_eq!((app.fake.refresh_calls().await, account_calls(&app).await), (0, 1));
    // 20 s later (10 s left, past half its life): refreshed before the call.
    app.exec("UPDATE connections SET obtained_at = obtained_at - 20, expires_at = expires_at - 20");
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert_eq!(app.fake.refresh_calls().await, 1);
    assert_eq!(account_calls(&app).await, 2, "no wasted call with the old token");
    let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert_ne!(access, old_access);
    assert_ne!(refresh, old_refresh, "the rotated refresh token replaced the old one");
    let settings = alice.fetch("/settings/oauth2").await;
    assert!(settings.text.contains("refresh <strong>ok</strong>"));
}

#[tokio::test]
async fn a_401_causes_exactly_one_refresh_and_one_retry() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.invalidate_access_tokens(); // the stored expiry still says the token is fine
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert_eq!(app.fake.refresh_calls().await, 1);
    assert_eq!(account_calls(&app).await, 2);
}

#[tokio::test]
async fn a_second_401_is_a_clear_failure_not_a_loop() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.with_state(|s| s.account_always_401 = true);
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway, "{}", page.text);
    assert!(page.text.contains("even after renewing"));
    assert_eq!(app.fake.refresh_calls().await, 1);
    assert_eq!(account_calls(&app).await, 2);
    assert_eq!(status_of(&app), "active", "a 401 alone does not kill the connection");
}

#[tokio::test]
async fn a_refresh_without_a_refresh_token_keeps_the_old_one() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(10)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    app.fake.with_state(|s| s.omit_refresh_token = true);
    let (_, old_refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(refresh, old_refresh);
    assert!(alice.fetch("/settings/oauth2").await.text.contains("refresh token kept"));
}

#[tokio::test]
async fn missing_expires_in_uses_the_default_lifetime_and_strings_parse() {
    let app = builder().set("default_token_lifetime", 7200).start().await;
    app.fake.with_state(|s| s.expires_in = None);
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let expires = app.count("SELECT expires_at - obtained_at AS n FROM connections");
    assert_eq!(expires, 7200);

    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!("5400")));
    let bob = app.user("bob").await;
    bob.connect("fake").await;
    assert_eq!(app.count("SELECT expires_at - obtained_at AS n FROM connections"), 5400);
}

#[tokio::test]
async fn fifty_concurrent_requests_on_an_expired_token_share_one_refresh() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| {
        s.expires_in = Some(json!(1));
        s.refresh_delay = Some(std::time::Duration::from_millis(300));
    });
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.with_state(|s| s.expires_in = Some(json!(3600)));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let pages = futures_util::future::join_all((0..50).map(|_| alice.fetch("/services/fake/account"))).await;
    let ok = pages.iter().filter(|p| p.status == Status::Ok).count();
    assert_eq!(ok, 50, "{:?}", pages.iter().map(|p| p.status).collect::<Vec<_>>());
    assert_eq!(app.fake.refresh_calls().await, 1, "exactly one refresh");
    // The newest refresh token is stored: it works, and the provider did not revoke the family.
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    let valid = app.fake.with_state(|s| s.access_tokens.len());
    assert!(valid >= 1, "the family is intact");
    assert!(refresh.unwrap().starts_with("RT-CANARY-2"));
    assert_eq!(status_of(&app), "active");
}

#[tokio::test]
async fn invalid_grant_asks_the_user_to_reconnect_and_stops_calling() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    app.fake.script(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})));
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="reconnect""#) && page.text.contains("/services/fake/authorize"));
    assert_eq!(status_of(&app), "reconnect_required");
    let calls = (app.fake.token_calls().await, account_calls(&app).await);
    let again = alice.fetch("/services/fake/account").await;
    assert!(again.text.contains(r#"id="reconnect""#));
    assert_eq!((app.fake.token_calls().await, account_calls(&app).await), calls, "no further provider calls");
    let settings = alice.fetch("/settings/oauth2").await;
    assert!(settings.text.contains("Reconnect required"));
    assert!(alice.fetch("/").await.text.contains("Reconnect required"));
    // Connecting again repairs it.
    alice.connect("fake").await;
    assert_eq!(status_of(&app), "active");
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
}

#[tokio::test]
async fn an_expired_token_without_a_refresh_token_asks_to_reconnect_without_calling() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.exec("UPDATE connections SET refresh_token = NULL, expires_at = 0");
    let calls = (app.fake.token_calls().await, account_calls(&app).await);
    let page = alice.fetch("/services/fake/account").await;
    assert!(page.text.contains(r#"id="reconnect""#), "{}", page.text);
    assert_eq!(status_of(&app), "reconnect_required");
    assert_eq!((app.fake.token_calls().await, account_calls(&app).await), calls, "nothing to send the provider");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("no refresh token to renew access"));
}

#[tokio::test]
async fn a_refresh_without_client_credentials_says_so_and_keeps_the_tokens() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    let before = app.stored_tokens("alice", "fake");
    app.exec("DELETE FROM vault_entries WHERE path LIKE 'fake.%'");
    let calls = app.fake.token_calls().await;
    let page = alice.fetch("/services/fake/account").await;
    // The API's documented 503 `not_configured` (README, openapi.json): the same on pages.
    assert_eq!(page.status, Status::ServiceUnavailable, "{}", page.text);
    assert!(page.text.contains("an administrator must set fake.client_id"), "{}", page.text);
    assert!(!page.text.contains("rejected"), "not reported as the provider rejecting the client");
    assert_eq!(app.fake.token_calls().await, calls, "nothing was sent to the provider");
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(status_of(&app), "active");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("no client credentials"));
}

#[tokio::test]
async fn a_503_during_refresh_keeps_the_tokens_and_is_retryable() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    let before = app.stored_tokens("alice", "fake");
    app.fake.script(ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"})));
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway);
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(status_of(&app), "degraded", "a transient failure degrades the connection (issue 12)");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("failed (retryable)"));
    // Once the backoff step has passed, the next try works and the connection is active again.
    app.exec("UPDATE connections SET next_attempt_at = 1");
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    assert_eq!(status_of(&app), "active");
    assert_eq!(app.fake.refresh_calls().await, 2);
}

#[tokio::test]
async fn a_stalled_refresh_is_a_504_and_keeps_the_tokens() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    let before = app.stored_tokens("alice", "fake");
    app.fake.script(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(5)));
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::GatewayTimeout);
    assert_eq!(app.stored_tokens("alice", "fake"), before);
}

#[tokio::test]
async fn invalid_client_is_an_admin_problem_and_keeps_user_tokens() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    obtained_an_hour_ago(&app);
    let before = app.stored_tokens("alice", "fake");
    app.fake.script(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})));
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway);
    assert!(page.text.contains("administrator"));
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(status_of(&app), "active");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("failed (admin)"));
}

#[tokio::test]
async fn the_provider_being_down_is_a_friendly_page() {
    // Point the account call at a port where nothing listens.
    let app2 = builder().provider("account_url", "http://127.0.0.1:9/account").start().await;
    let bob = app2.user("bob").await;
    bob.connect("fake").await;
    let page = bob.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway);
    assert!(page.text.contains("could not be reached"));
    assert!(app2.stored_tokens("bob", "fake").is_some());
}

/// The token API's status and access token for API key `key`.
async fn token_api(app: &TestApp, key: &str) -> (Status, String) {
    let res = app
        .client
        .get("/api/v1/services/fake/token")
        .header(rocket::http::Header::new("Authorization", format!("Bearer {key}")))
        .dispatch()
        .await;
    let status = res.status();
    let body: serde_json::Value = res.into_json().await.unwrap_or_default();
    (status, body["access_token"].as_str().unwrap_or_default().to_string())
}

/// 20 concurrent account-page loads and 20 concurrent token API calls; the tokens handed out.
async fn burst(app: &TestApp, alice: &common::Agent<'_>, key: &str) -> std::collections::BTreeSet<String> {
    let pages = futures_util::future::join_all((0..20).map(|_| alice.fetch("/services/fake/account")));
    let tokens = futures_util::future::join_all((0..20).map(|_| token_api(app, key)));
    let (pages, tokens) = futures_util::future::join(pages, tokens).await;
    assert!(pages.iter().all(|p| p.status == Status::Ok), "{:?}", pages.iter().map(|p| p.status).collect::<Vec<_>>());
    assert!(tokens.iter().all(|(s, _)| *s == Status::Ok));
    tokens.into_iter().map(|(_, t)| t).collect()
}

/// Issue 10, item 7: with 20 s tokens and the default 60 s `refresh_margin`, every use used to
/// refresh a token issued a second before. The margin is at most half the lifetime.
#[tokio::test]
async fn a_fresh_short_lived_token_is_used_not_refreshed() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(20)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = {
        let mut conn = app.db.conn().unwrap();
        tokenvault::auth::api_key::create(
            &mut conn,
            &app.cipher,
            tokenvault::audit::Actor::Cli,
            1,
            "script",
            &Default::default(),
            20,
        )
        .unwrap()
        .key
    };
    let key = key.expose_secret();
    let (issued, _) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(burst(&app, &alice, key).await, [issued].into(), "the token just issued is handed out");
    assert_eq!(burst(&app, &alice, key).await.len(), 1);
    assert_eq!(app.fake.refresh_calls().await, 0, "no refresh while the token is fresh");
    // 11 s later (9 s left, past half its life): one refresh for all of them, then the new token
    // is fresh in turn.
    app.exec("UPDATE connections SET obtained_at = obtained_at - 11, expires_at = expires_at - 11");
    let (aged, _) = app.stored_tokens("alice", "fake").unwrap();
    let handed = burst(&app, &alice, key).await;
    assert_eq!(app.fake.refresh_calls().await, 1, "exactly one refresh past half-life");
    let (refreshed, _) = app.stored_tokens("alice", "fake").unwrap();
    assert_ne!(refreshed, aged);
    assert_eq!(handed, [refreshed.clone()].into(), "every call got the refreshed token");
    assert_eq!(burst(&app, &alice, key).await, [refreshed].into());
    assert_eq!(app.fake.refresh_calls().await, 1);
}

/// Issue 10, item 6, on the account page: a provider that answers 401 to every call (Dropbox does
/// for a missing scope) costs one refresh per `refresh_cooldown`, for sequential and concurrent
/// page loads alike; each shows the error page, and the connection stays.
#[tokio::test]
async fn an_api_that_always_answers_401_costs_one_refresh_per_cooldown() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.with_state(|s| s.account_always_401 = true);
    for i in 0..5 {
        let page = alice.fetch("/services/fake/account").await;
        assert_eq!(page.status, Status::BadGateway, "load {i}: {}", page.text);
        assert!(page.text.contains("even after renewing"), "{}", page.text);
    }
    let pages = futures_util::future::join_all((0..20).map(|_| alice.fetch("/services/fake/account"))).await;
    assert!(pages.iter().all(|p| p.status == Status::BadGateway));
    assert_eq!(app.fake.refresh_calls().await, 1, "one refresh for 25 page loads");
    assert_eq!(account_calls(&app).await, 26, "the first load's call and retry, then one call each");
    assert_eq!(status_of(&app), "active");
    // The cooldown is read from the stored row, so a refresh attempted by another instance holds
    // this one back as well: one attempted 20 s ago…
    let attempted =
        |ago: i64| format!("UPDATE connections SET refresh_after_401_at = {}", tokenvault::util::now() - ago);
    app.exec(&attempted(20));
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::BadGateway);
    assert_eq!(app.fake.refresh_calls().await, 1, "inside the 30 s default cooldown");
    // …and, past the cooldown, one more, for any number of page loads.
    app.exec(&attempted(31));
    let pages = futures_util::future::join_all((0..10).map(|_| alice.fetch("/services/fake/account"))).await;
    assert!(pages.iter().all(|p| p.status == Status::BadGateway));
    assert_eq!(app.fake.refresh_calls().await, 2, "past the cooldown: one more");
    // A stale cached row does not get round it: the lease's compare-and-swap checks the stored
    // time. The row is cached while its last attempt is long past; then another instance's attempt
    // is recorded (unannounced, so the cache still holds the old row) and the provider says 401.
    app.fake.with_state(|s| s.account_always_401 = false);
    app.exec(&attempted(31));
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    app.exec_unannounced(&attempted(0));
    app.fake.invalidate_access_tokens();
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway, "the 401 is passed through: {}", page.text);
    assert_eq!(app.fake.refresh_calls().await, 2);
}

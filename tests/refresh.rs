//! The account-info page and the one refresh mechanism behind it.

mod common;

use common::{builder, TestApp};
use rocket::http::Status;
use serde_json::json;
use wiremock::ResponseTemplate;

async fn account_calls(app: &TestApp) -> usize {
    app.fake.requests_to("/account").await.len()
}

fn status_of(app: &TestApp) -> String {
    app.text("SELECT status AS t FROM connections")
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
        page.text.contains("{\n  &quot;email&quot;: &quot;fake@example.com&quot;,\n  &quot;id&quot;"),
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
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert_eq!(app.fake.refresh_calls().await, 1);
    assert_eq!(account_calls(&app).await, 1, "no wasted call with the old token");
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
    let before = app.stored_tokens("alice", "fake");
    app.exec("DELETE FROM vault_entries WHERE path LIKE 'fake.%'");
    let calls = app.fake.token_calls().await;
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadRequest, "{}", page.text);
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
    let before = app.stored_tokens("alice", "fake");
    app.fake.script(ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"})));
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::BadGateway);
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(status_of(&app), "active");
    assert!(alice.fetch("/settings/oauth2").await.text.contains("failed (retryable)"));
    // The next try works.
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
}

#[tokio::test]
async fn a_stalled_refresh_is_a_504_and_keeps_the_tokens() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
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

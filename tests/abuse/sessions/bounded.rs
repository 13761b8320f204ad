//! Issue 10, "bounded tables": pending flows per user, events per connection and API keys per
//! user have limits, and the oldest go first.

use rocket::http::Status;

use super::shown_key;
use crate::common::{self, flow_params, TestApp};

#[rocket::async_test]
async fn starting_many_flows_keeps_only_the_newest_pending() {
    let app = TestApp::start().await;
    let limit = app.state().settings.flows.max_pending_per_user;
    assert_eq!(limit, 10, "the documented default");
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let bobs = bob.start_flow("fake").await;

    let oldest = alice.start_flow("fake").await;
    // Started a while ago (flows started in the same second have no order among themselves).
    app.exec("UPDATE oauth_flows SET created_at = created_at - 100");
    let mut newest = oldest.clone();
    for _ in 1..50 {
        newest = alice.start_flow("fake").await;
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM oauth_flows WHERE user_id = 1"), limit);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM oauth_flows WHERE user_id = 2"), 1, "other users keep theirs");

    // The oldest no longer completes (its state is gone); the newest does.
    let (state, challenge) = flow_params(&oldest);
    let code = app.fake.issue_code(&challenge);
    let r = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(r.status, Status::BadRequest, "{}", r.text);
    assert_eq!(app.connection_count(), 0);
    let (state, challenge) = flow_params(&newest);
    let code = app.fake.issue_code(&challenge);
    let r = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    assert!(app.stored_tokens("alice", "fake").is_some());
    let (state, challenge) = flow_params(&bobs);
    let code = app.fake.issue_code(&challenge);
    let r = bob.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(r.status, Status::SeeOther, "bob's flow was not evicted by alice's: {}", r.text);
}

#[rocket::async_test]
async fn events_beyond_the_limit_are_pruned_oldest_first() {
    let app = common::builder().set("events_per_connection", 5).start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    bob.connect("fake").await;
    alice.connect("fake").await;
    let first = app.count("SELECT MIN(id) AS n FROM connection_events WHERE user_id = 1");
    for _ in 0..7 {
        alice.connect("fake").await;
    }
    let events = |user: i64| app.count(&format!("SELECT COUNT(*) AS n FROM connection_events WHERE user_id = {user}"));
    assert_eq!(events(1), 5, "8 events recorded, the newest 5 kept");
    assert_eq!(events(2), 1, "another user's connection keeps its own");
    let newest = app.count("SELECT MAX(id) AS n FROM connection_events WHERE user_id = 1");
    assert_eq!(app.count("SELECT MIN(id) AS n FROM connection_events WHERE user_id = 1"), newest - 4);
    assert!(newest - 4 > first + 2, "the three oldest went");
    // The settings page still shows the history.
    let page = alice.fetch("/settings/oauth2").await;
    assert_eq!(page.status, Status::Ok);
}

#[rocket::async_test]
async fn api_keys_beyond_the_limit_revoke_the_oldest_and_say_so() {
    let app = common::builder().set("max_api_keys_per_user", 3).start().await;
    let alice = app.user("alice").await;
    let status = |key: String| {
        let app = &app;
        async move {
            app.agent().fetch_with("/api/v1/connections", &[("Authorization", &format!("Bearer {key}"))]).await.status
        }
    };
    let page = alice.fetch("/settings/api-keys").await;
    assert!(page.text.contains("You can have up to 3 keys; creating one more revokes your oldest."), "{}", page.text);
    let mut keys = Vec::new();
    for name in ["first", "second", "third"] {
        let csrf = alice.csrf("/settings/api-keys").await;
        let r = alice.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", name)]).await;
        assert_eq!(r.status, Status::Ok);
        assert!(!r.text.contains("evicted-api-keys"), "nothing revoked within the limit");
        keys.push(shown_key(&r.text));
    }
    for key in &keys {
        assert_eq!(status(key.clone()).await, Status::Ok);
    }
    let csrf = alice.csrf("/settings/api-keys").await;
    let r = alice.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", "fourth")]).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let fourth = shown_key(&r.text);
    assert!(r.text.contains(r#"id="evicted-api-keys""#), "the page says a key was revoked: {}", r.text);
    assert!(r.text.contains("“first”") && r.text.contains(&format!("{}…", &keys[0][..12])), "{}", r.text);
    assert_eq!(status(keys[0].clone()).await, Status::Unauthorized, "the oldest key was revoked");
    for key in [&keys[1], &keys[2], &fourth] {
        assert_eq!(status(key.clone()).await, Status::Ok);
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL"), 3);
    let listed = alice.fetch("/settings/api-keys").await;
    assert!(!listed.text.contains(&keys[0][..12]), "the revoked key is no longer listed");
}

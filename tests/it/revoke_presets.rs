//! Revocation per provider style, and each preset's request shapes against recorded requests.

use crate::common;

use std::collections::BTreeMap;

use crate::common::{builder, flow_params, TestApp, CLIENT_ID, CLIENT_SECRET};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rocket::http::Status;
use wiremock::ResponseTemplate;

fn form_of(req: &wiremock::Request) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(&req.body).into_owned().collect()
}

fn basic() -> String {
    format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")))
}

async fn revoke(agent: &common::Agent<'_>) -> common::Reply {
    let csrf = agent.csrf("/settings/oauth2").await;
    let r = agent.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    agent.fetch("/settings/oauth2").await
}

#[tokio::test]
async fn rfc7009_revocation_sends_the_refresh_token_with_client_auth_then_deletes() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert!(alice.fetch("/settings/oauth2").await.text.contains(r#"id="revoke-fake""#));
    let page = revoke(&alice).await;
    assert!(page.text.contains("access was revoked"), "{}", page.text);
    let calls = app.fake.requests_to("/revoke").await;
    assert_eq!(calls.len(), 1);
    let form = form_of(&calls[0]);
    assert_eq!(form["token"], refresh.unwrap());
    assert_eq!(form["token_type_hint"], "refresh_token");
    assert_eq!(calls[0].headers.get("authorization").unwrap().to_str().unwrap(), basic());
    assert_eq!(app.connection_count(), 0);
    // After deletion, nothing reaches the provider on the user's behalf.
    let before = (app.fake.token_calls().await, app.fake.requests_to("/account").await.len());
    alice.fetch("/services/fake/account").await;
    assert_eq!((app.fake.token_calls().await, app.fake.requests_to("/account").await.len()), before);
}

#[tokio::test]
async fn a_failing_provider_still_means_local_deletion_and_says_so() {
    let app = builder().provider("revoke_url", "http://127.0.0.1:9/revoke").start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let page = revoke(&alice).await;
    assert!(page.text.contains("could not confirm the revocation"), "{}", page.text);
    assert!(page.text.contains("flash-error"));
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn another_users_revoke_is_a_404_without_a_provider_call() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    alice.connect("fake").await;
    let csrf = bob.csrf("/settings/oauth2").await;
    let r = bob.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::NotFound);
    assert!(app.fake.requests_to("/revoke").await.is_empty());
    assert_eq!(app.connection_count(), 1);
}

/// Connect with a preset whose endpoints point at the fake; returns the authorize URL's query.
async fn connect_preset(_app: &TestApp, agent: &common::Agent<'_>) -> BTreeMap<String, String> {
    let url = agent.start_flow("fake").await;
    let r = agent.finish_flow("fake", &url).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    url.query_pairs().into_owned().collect()
}

/// The authorize query of a "Connect another account" flow (started, not finished).
async fn add_account_query(agent: &common::Agent<'_>) -> BTreeMap<String, String> {
    agent.start_flow_with("fake", &[("add_account", "true")]).await.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn dropbox_preset_request_shapes() {
    let app = builder().preset("dropbox").start().await;
    let alice = app.user("alice").await;
    let q = connect_preset(&app, &alice).await;
    assert_eq!(q["token_access_type"], "offline");
    assert!(!q.contains_key("force_reauthentication"), "only to add another account");
    let added = add_account_query(&alice).await;
    assert_eq!((added["force_reauthentication"].as_str(), added["token_access_type"].as_str()), ("true", "offline"));
    let token = &app.fake.requests_to("/token").await[0];
    assert_eq!(token.headers.get("authorization").unwrap().to_str().unwrap(), basic(), "Dropbox: HTTP Basic");
    assert!(!form_of(token).contains_key("client_secret"));

    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok);
    let account = &app.fake.requests_to("/account").await[0];
    assert_eq!(account.method.as_str(), "POST");
    assert!(account.body.is_empty(), "get_current_account takes no body");
    assert!(account.headers.get("content-type").is_none());

    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    revoke(&alice).await;
    let calls = app.fake.requests_to("/dropbox-revoke").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].headers.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {access}"));
    assert!(calls[0].body.is_empty());
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn google_preset_request_shapes() {
    let app = builder().preset("google").start().await;
    let alice = app.user("alice").await;
    let q = connect_preset(&app, &alice).await;
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["scope"], "openid email profile");
    // Another account: Google's chooser, and still a refresh token (`consent`), in one `prompt`.
    assert_eq!(add_account_query(&alice).await["prompt"], "consent select_account");
    let token = &app.fake.requests_to("/token").await[0];
    let form = form_of(token);
    assert_eq!(form["client_id"], CLIENT_ID, "Google: credentials in the form body");
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert!(token.headers.get("authorization").is_none());
    alice.fetch("/services/fake/account").await;
    assert_eq!(app.fake.requests_to("/account").await[0].method.as_str(), "GET");
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    revoke(&alice).await;
    let calls = app.fake.requests_to("/revoke").await;
    let form = form_of(&calls[0]);
    assert_eq!(form["token"], refresh.unwrap());
    assert_eq!(form["client_id"], CLIENT_ID);
}

#[tokio::test]
async fn github_preset_request_shapes() {
    let app = builder().preset("github").start().await;
    let alice = app.user("alice").await;
    let q = connect_preset(&app, &alice).await;
    assert!(!q.contains_key("prompt"));
    assert_eq!(add_account_query(&alice).await["prompt"], "select_account", "GitHub's account picker");
    let token = &app.fake.requests_to("/token").await[0];
    assert_eq!(token.headers.get("accept").unwrap().to_str().unwrap(), "application/json");
    assert_eq!(form_of(token)["client_secret"], CLIENT_SECRET);
    alice.fetch("/services/fake/account").await;
    let account = &app.fake.requests_to("/account").await[0];
    assert!(account.headers.get("user-agent").unwrap().to_str().unwrap().starts_with("tokenvault/"));
    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    revoke(&alice).await;
    let calls = app.fake.requests_to(&format!("/applications/{CLIENT_ID}/token")).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].method.as_str(), "DELETE");
    assert_eq!(calls[0].headers.get("authorization").unwrap().to_str().unwrap(), basic());
    let body: serde_json::Value = serde_json::from_slice(&calls[0].body).unwrap();
    assert_eq!(body["access_token"], access);
}

#[tokio::test]
async fn github_errors_in_a_200_body_are_errors() {
    let app = builder().preset("github").start().await;
    let alice = app.user("alice").await;
    app.fake.script(
        ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})),
    );
    let url = alice.start_flow("fake").await;
    let (state, challenge) = flow_params(&url);
    let code = app.fake.issue_code(&challenge);
    let r = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(r.status, Status::BadGateway);
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn microsoft_preset_has_no_revocation_and_says_so() {
    let app = builder().preset("microsoft").start().await;
    let alice = app.user("alice").await;
    let q = connect_preset(&app, &alice).await;
    assert!(q["scope"].split(' ').any(|s| s == "offline_access"));
    assert_eq!(add_account_query(&alice).await["prompt"], "select_account", "Microsoft's account chooser");
    let settings = alice.fetch("/settings/oauth2").await;
    assert!(!settings.text.contains(r#"id="revoke-fake""#));
    assert!(settings.text.contains(r#"id="delete-fake""#));
    let csrf = alice.csrf("/settings/oauth2").await;
    let r = alice.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let page = alice.fetch("/settings/oauth2").await;
    assert!(page.text.contains("offers no revocation"));
    assert!(app.fake.requests_to("/revoke").await.is_empty());
    assert_eq!(app.connection_count(), 0);
}

/// The ids of the connections, first connected first.
fn connection_ids(app: &TestApp) -> Vec<i64> {
    let n = app.connection_count();
    (0..n).map(|i| app.count(&format!("SELECT id AS n FROM connections ORDER BY id LIMIT 1 OFFSET {i}"))).collect()
}

/// Run a flow with these Redirector fields; the callback's reply.
async fn flow(agent: &common::Agent<'_>, fields: &[(&str, &str)]) -> common::Reply {
    let url = agent.start_flow_with("fake", fields).await;
    agent.finish_flow("fake", &url).await
}

/// Against a provider that revokes one refresh token at a time: whatever tokenvault replaces or
/// throws away is revoked (in the background, once the new tokens are stored), so the provider
/// never holds a live refresh token that tokenvault does not store.
#[tokio::test]
async fn tokens_tokenvault_replaces_or_throws_away_are_revoked_at_the_provider() {
    let app = builder()
        .provider("account_id_pointer", "/id")
        .provider("account_label_pointer", "/email")
        .provider("optional_scopes", vec!["admin"])
        .start()
        .await;
    let alice = app.user("alice").await;
    let settled = || async {
        app.revocations_done().await;
        app.fake.live_refresh_tokens()
    };
    alice.connect("fake").await;
    assert_eq!(settled().await, app.stored_refresh_tokens());
    let first = connection_ids(&app)[0].to_string();

    // A reconnect (the plain button with one connection).
    let (_, before) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(flow(&alice, &[]).await.status, Status::SeeOther);
    assert_eq!(settled().await, app.stored_refresh_tokens(), "after a reconnect");
    assert!(!app.fake.refresh_token_valid(&before.unwrap()), "the replaced refresh token is revoked");

    // Another account, then "Connect another account" answered by the one connected already.
    app.fake.with_state(|s| s.sign_in_as(2));
    assert_eq!(flow(&alice, &[("add_account", "true")]).await.status, Status::SeeOther);
    assert_eq!(app.connection_count(), 2);
    app.fake.with_state(|s| s.sign_in_as(1));
    assert_eq!(flow(&alice, &[("add_account", "true")]).await.status, Status::SeeOther);
    assert_eq!(app.connection_count(), 2);
    assert_eq!(settled().await, app.stored_refresh_tokens(), "after an add-account renewing a connection");

    // An upgrade of the first connection.
    assert_eq!(flow(&alice, &[("connection", &first), ("scopes", "admin")]).await.status, Status::SeeOther);
    assert_eq!(settled().await, app.stored_refresh_tokens(), "after an upgrade");

    // A pinned reconnect answered by the other account: nothing stored, the tokens thrown away
    // revoked — and only those (the other account's stored ones stay live).
    app.fake.with_state(|s| s.sign_in_as(2));
    let stored = app.stored_refresh_tokens();
    assert_eq!(flow(&alice, &[("connection", &first)]).await.status, Status::Conflict);
    assert_eq!(app.stored_refresh_tokens(), stored);
    assert_eq!(settled().await, stored, "after a mismatched reconnect");
    assert_eq!(stored.len(), 2);

    // Revoke both: nothing is left live.
    for id in connection_ids(&app) {
        let csrf = alice.csrf("/settings/oauth2").await;
        let r = alice
            .post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf), ("connection", &id.to_string())])
            .await;
        assert_eq!(r.status, Status::SeeOther);
    }
    assert_eq!(settled().await, Vec::<String>::new(), "after Revoke");
    // The old tokens travelled to the revocation endpoint, with client authentication.
    for call in app.fake.requests_to("/revoke").await {
        assert_eq!(call.headers.get("authorization").unwrap().to_str().unwrap(), basic());
        assert_eq!(form_of(&call)["token_type_hint"], "refresh_token");
    }
}

/// The unit of work that queued a replaced token wakes the revocation worker when it is settled:
/// the token is revoked at once, not at the worker's next poll (every 10 s). Nothing here rings
/// the worker by hand.
#[tokio::test]
async fn a_replaced_token_is_revoked_at_once_not_at_the_next_poll() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (_, before) = app.stored_tokens("alice", "fake").unwrap();
    let before = before.unwrap();
    // Let the worker's first rounds (at start) pass, so that only a wake-up can bring the next.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(flow(&alice, &[]).await.status, Status::SeeOther);
    let started = std::time::Instant::now();
    while app.fake.refresh_token_valid(&before) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the replaced refresh token was not revoked before the worker's next poll: nothing woke it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Dropbox revokes with an access token: a replaced refresh token is first exchanged for one.
#[tokio::test]
async fn dropbox_replaced_tokens_are_revoked_with_a_fresh_access_token() {
    let app = builder().preset("dropbox").start().await;
    let alice = app.user("alice").await;
    connect_preset(&app, &alice).await;
    let (_, before) = app.stored_tokens("alice", "fake").unwrap();
    connect_preset(&app, &alice).await;
    app.revocations_done().await;
    assert!(!app.fake.refresh_token_valid(&before.unwrap()));
    assert_eq!(app.fake.live_refresh_tokens(), app.stored_refresh_tokens());
    assert_eq!(app.fake.requests_to("/dropbox-revoke").await.len(), 1);
}

/// GitHub's tokens have no refresh token: the replaced access token is the one revoked.
#[tokio::test]
async fn github_replaced_access_tokens_are_revoked() {
    let app = builder().preset("github").start().await;
    app.fake.with_state(|s| s.omit_refresh_token = true);
    let alice = app.user("alice").await;
    connect_preset(&app, &alice).await;
    let (before, _) = app.stored_tokens("alice", "fake").unwrap();
    connect_preset(&app, &alice).await;
    app.revocations_done().await;
    let (after, _) = app.stored_tokens("alice", "fake").unwrap();
    assert!(!app.fake.access_token_valid(&before), "the replaced token is revoked");
    assert!(app.fake.access_token_valid(&after), "the stored one is not");
}

/// Google: revoking one token ends the account's whole grant, which would end the new tokens
/// too. Replaced tokens are left alone there (`revocation_ends_grant`).
#[tokio::test]
async fn a_provider_whose_revocation_ends_the_grant_is_not_asked_to_revoke_replaced_tokens() {
    let app = builder().preset("google").start().await;
    let alice = app.user("alice").await;
    connect_preset(&app, &alice).await;
    connect_preset(&app, &alice).await;
    app.fake.with_state(|s| s.sign_in_as(2));
    let id = connection_ids(&app)[0].to_string();
    assert_eq!(flow(&alice, &[("connection", &id)]).await.status, Status::Conflict);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM jobs"), 0, "nothing queued");
    app.state().job_wake.wake();
    assert!(app.fake.requests_to("/revoke").await.is_empty());
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert!(app.fake.refresh_token_valid(&refresh.unwrap()));
}

/// A revocation the provider cannot take now is retried later (with backoff), and given up after
/// its attempts with an error in the log — never leaving the row forever.
#[tokio::test]
async fn a_failing_revocation_is_retried_with_backoff_then_given_up() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    // Reconnect while the provider's revocation endpoint is down: the first attempt fails.
    let reconnect_while_down = || async {
        let (_, before) = app.stored_tokens("alice", "fake").unwrap();
        app.fake.with_state(|s| s.revoke_unavailable = true);
        alice.connect("fake").await;
        for _ in 0..200 {
            if app.count("SELECT COALESCE(MAX(attempts), 0) AS n FROM jobs WHERE locked_by IS NULL AND dead_at IS NULL")
                == 1
            {
                return before.unwrap();
            }
            app.state().job_wake.wake();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no attempt within 10 s");
    };
    alice.connect("fake").await;
    let before = reconnect_while_down().await;
    let wait = app.count("SELECT run_at - created_at AS n FROM jobs");
    assert!((60..=70).contains(&wait), "the next attempt a minute later: {wait}");
    assert!(app.fake.refresh_token_valid(&before), "not revoked yet");
    // The job's figures on /metrics: its runs, and the row waiting in its queue.
    app.exec("UPDATE jobs SET created_at = created_at - 100");
    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    let figure = |name: &str| -> f64 {
        let line = format!("{name}{{job=\"token_revocations\"}} ");
        let at = metrics.find(&line).unwrap_or_else(|| panic!("{line} in {metrics}"));
        metrics[at + line.len()..].lines().next().unwrap().trim().parse().unwrap()
    };
    assert!(figure("tokenvault_job_runs_total") >= 1.0, "{metrics}");
    assert_eq!(figure("tokenvault_job_failures_total"), 0.0, "a failed revocation is not a failed run");
    assert_eq!(figure("tokenvault_job_queue_depth"), 1.0);
    assert!((100.0..=110.0).contains(&figure("tokenvault_job_oldest_pending_seconds")), "{metrics}");
    assert!(metrics.contains("tokenvault_job_queue_depth{job=\"webhook_deliveries\"} 0"), "{metrics}");
    // Due again, and the provider back up: revoked.
    app.exec("UPDATE jobs SET run_at = 0");
    app.fake.with_state(|s| s.revoke_unavailable = false);
    app.revocations_done().await;
    assert!(!app.fake.refresh_token_valid(&before));
    // The last attempt failing too: given up (the token is left to expire), the row gone.
    let before = reconnect_while_down().await;
    let last = tokenvault::oauth::retire::MAX_ATTEMPTS - 1;
    app.exec(&format!("UPDATE jobs SET attempts = {last}, run_at = 0"));
    app.revocations_done().await;
    assert!(app.fake.refresh_token_valid(&before), "given up: still live, and logged as such");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM jobs WHERE dead_at IS NOT NULL"), 1, "kept as a dead job");
    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    assert!(metrics.contains("tokenvault_job_dead{job=\"token_revocations\"} 1"), "{metrics}");
    assert!(metrics.contains("tokenvault_job_queue_depth{job=\"token_revocations\"} 0"), "{metrics}");
}

//! The Redirector → provider → Callback flow against a real HTTP fake provider.

use crate::common;

use std::collections::{BTreeMap, HashSet};

use crate::common::{builder, flow_params, TestApp, CLIENT_ID, CLIENT_SECRET, PUBLIC_URL};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rocket::http::Status;
use sha2::{Digest, Sha256};
use wiremock::ResponseTemplate;

#[tokio::test]
async fn authorize_redirects_to_the_provider_with_pkce_and_state() {
    let app = builder().provider("authorize_params", BTreeMap::from([("token_access_type", "offline")])).start().await;
    let alice = app.user("alice").await;
    let page = alice.fetch("/services/fake/authorize").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="authorize""#));
    assert!(page.text.contains("<code>read</code>") && page.text.contains("<code>write</code>"));

    let url = alice.start_flow("fake").await;
    assert!(url.as_str().starts_with(&format!("{}/authorize?", app.fake.uri())));
    let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["redirect_uri"], format!("{PUBLIC_URL}/services/fake/callback"));
    assert_eq!(q["scope"], "read write");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["token_access_type"], "offline");
    assert!(q["state"].len() >= 43, "state must carry at least 256 bits");
    assert!(q["code_challenge"].len() >= 43);
    assert!(!q.contains_key("code_verifier"));
    assert!(!url.as_str().contains(CLIENT_SECRET));
}

#[tokio::test]
async fn every_flow_gets_a_fresh_state_and_challenge() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let mut states = HashSet::new();
    let mut challenges = HashSet::new();
    for _ in 0..100 {
        let (state, challenge) = flow_params(&alice.start_flow("fake").await);
        states.insert(state);
        challenges.insert(challenge);
    }
    assert_eq!(states.len(), 100);
    assert_eq!(challenges.len(), 100);
}

#[tokio::test]
async fn happy_path_stores_tokens_and_greets_on_a_clean_url() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let authorize = alice.start_flow("fake").await;
    let (state, challenge) = flow_params(&authorize);
    let code = app.fake.issue_code(&challenge);
    let reply = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(reply.status, Status::SeeOther);
    let location = reply.location.clone().unwrap();
    assert!(location.starts_with("/services/fake/connected"), "{location}");
    assert!(!location.contains("code=") && !location.contains(&state));
    assert_eq!(reply.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));

    // One token request, shaped as the provider wants it.
    let calls = app.fake.requests_to("/token").await;
    assert_eq!(calls.len(), 1);
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&calls[0].body).into_owned().collect();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["code"], code);
    assert_eq!(form["redirect_uri"], format!("{PUBLIC_URL}/services/fake/callback"));
    assert_eq!(URL_SAFE_NO_PAD.encode(Sha256::digest(form["code_verifier"].as_bytes())), challenge);
    assert!(!form.contains_key("client_secret"), "basic auth keeps the secret out of the body");
    assert!(calls[0].headers.get("authorization").unwrap().to_str().unwrap().starts_with("Basic "));

    let page = alice.fetch(&location).await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="connected""#));
    assert!(page.text.contains("alice"));
    assert!(!page.text.contains("CANARY"), "no token on the greeting page");

    let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert!(access.starts_with("AT-CANARY-1"));
    assert!(refresh.unwrap().starts_with("RT-CANARY-1"));

    let settings = alice.fetch("/settings/oauth2").await;
    assert!(settings.text.contains(r#"<tr data-service="fake" data-status="active""#));
    assert!(settings.text.contains("Fake Provider"));
    assert!(!settings.text.contains("CANARY"));
}

#[tokio::test]
async fn post_client_auth_sends_credentials_in_the_body() {
    let app = builder().provider("client_auth", "post").start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let calls = app.fake.requests_to("/token").await;
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&calls[0].body).into_owned().collect();
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert!(calls[0].headers.get("authorization").is_none());
}

/// Run a callback that must be rejected: 400, zero token calls, nothing stored.
async fn assert_rejected(app: &TestApp, agent: &common::Agent<'_>, query: &str) {
    let before_calls = app.fake.token_calls().await;
    let before = app.stored_tokens("alice", "fake");
    let reply = agent.fetch(&format!("/services/fake/callback?{query}")).await;
    assert_eq!(reply.status, Status::BadRequest, "query {query} → {}", reply.text);
    assert!(reply.text.contains("Nothing was changed"), "friendly page expected: {}", reply.text);
    assert_eq!(app.fake.token_calls().await, before_calls, "no token call for {query}");
    assert_eq!(app.stored_tokens("alice", "fake"), before, "nothing stored for {query}");
}

#[tokio::test]
async fn a_valid_state_without_code_or_error_is_rejected_and_spends_the_state() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let authorize = alice.start_flow("fake").await;
    let (state, challenge) = common::flow_params(&authorize);
    assert_rejected(&app, &alice, &format!("state={state}")).await;
    // The state is spent: the real answer afterwards is refused too.
    let code = app.fake.issue_code(&challenge);
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
}

#[tokio::test]
async fn forged_missing_and_replayed_states_are_rejected_before_any_token_call() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let code = app.fake.issue_code("x");
    assert_rejected(&app, &alice, &format!("code={code}")).await;
    assert_rejected(&app, &alice, &format!("code={code}&state=")).await;
    assert_rejected(&app, &alice, &format!("code={code}&state=forged-state-value")).await;

    // A real flow, then the same callback twice.
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let first = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(first.status, Status::SeeOther);
    assert_eq!(app.fake.token_calls().await, 1);
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
}

#[tokio::test]
async fn duplicate_state_parameters_are_rejected_and_consumed() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (a, challenge) = flow_params(&alice.start_flow("fake").await);
    let (b, _) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    assert_rejected(&app, &alice, &format!("code={code}&state={a}&state={b}")).await;
    // Both states were consumed.
    assert_rejected(&app, &alice, &format!("code={code}&state={a}")).await;
    assert_rejected(&app, &alice, &format!("code={code}&state={b}")).await;
}

#[tokio::test]
async fn another_users_state_is_rejected_and_burnt() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let (state, challenge) = flow_params(&bob.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
    // The state is gone for Bob too.
    let reply = bob.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(reply.status, Status::BadRequest);
    assert_eq!(app.fake.token_calls().await, 0);
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn a_state_from_before_logout_does_not_work_after_logging_in_again() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let csrf = alice.csrf("/settings/oauth2").await;
    assert_eq!(alice.post_form("/logout", &[("csrf_token", &csrf)]).await.status, Status::SeeOther);
    let login_csrf = alice.csrf("/login").await;
    let res = alice
        .post_form("/login", &[("csrf_token", &login_csrf), ("username", "alice"), ("password", common::PASSWORD)])
        .await;
    assert_eq!(res.status, Status::SeeOther);
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
}

#[tokio::test]
async fn a_state_for_another_service_is_rejected() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let reply = alice.fetch(&format!("/services/demo/callback?code={code}&state={state}")).await;
    assert_eq!(reply.status, Status::BadRequest);
    assert!(reply.text.contains("another service"));
    assert_eq!(app.fake.token_calls().await, 0);
    // And it was consumed: it cannot be used at the right service any more.
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
}

#[tokio::test]
async fn an_expired_state_is_rejected() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    app.exec("UPDATE oauth_flows SET expires_at = 0");
    assert_rejected(&app, &alice, &format!("code={code}&state={state}")).await;
}

#[tokio::test]
async fn a_foreign_issuer_is_a_mix_up_and_rejected() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    assert_rejected(&app, &alice, &format!("code={code}&state={state}&iss=https%3A%2F%2Fevil.example")).await;

    // The right issuer is accepted.
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let iss = url::form_urlencoded::byte_serialize(app.fake.uri().as_bytes()).collect::<String>();
    let ok = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}&iss={iss}")).await;
    assert_eq!(ok.status, Status::SeeOther);
}

#[tokio::test]
async fn a_signed_out_callback_is_rejected_without_a_token_call() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let stranger = app.agent();
    let reply = stranger.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert_eq!(reply.status, Status::BadRequest);
    assert!(reply.location.is_none(), "never carry the code into a login redirect");
    assert_eq!(app.fake.token_calls().await, 0);
}

#[tokio::test]
async fn access_denied_is_a_friendly_cancel_and_keeps_the_existing_connection() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let before = app.stored_tokens("alice", "fake");
    let (state, _) = flow_params(&alice.start_flow("fake").await);
    let reply = alice.fetch(&format!("/services/fake/callback?error=access_denied&state={state}")).await;
    assert_eq!(reply.status, Status::Ok);
    assert!(reply.text.contains(r#"id="cancelled""#));
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(app.fake.token_calls().await, 1);
    // The state was consumed by the error callback.
    let again = alice.fetch(&format!("/services/fake/callback?error=access_denied&state={state}")).await;
    assert_eq!(again.status, Status::BadRequest);
}

#[tokio::test]
async fn provider_errors_are_escaped_truncated_and_win_over_a_code() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let description = format!("<script>alert(1)</script>{}", "x".repeat(400));
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("error", "server_error")
        .append_pair("error_description", &description)
        .append_pair("error_uri", "https://evil.example/phish")
        .append_pair("code", &code)
        .append_pair("state", &state)
        .finish();
    let reply = alice.fetch(&format!("/services/fake/callback?{q}")).await;
    assert_eq!(reply.status, Status::BadGateway);
    assert!(!reply.text.contains("<script>alert"));
    assert!(reply.text.contains("&lt;script&gt;"));
    assert!(!reply.text.contains(&"x".repeat(300)));
    assert!(!reply.text.contains("evil.example"), "error_uri is never a link");
    assert_eq!(app.fake.token_calls().await, 0);
    assert_eq!(app.connection_count(), 0);
}

/// A failing token endpoint: the answer, the status, nothing stored, the old tokens kept.
async fn assert_exchange_fails(response: ResponseTemplate, expected: Status) {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let before = app.stored_tokens("alice", "fake").unwrap();
    app.fake.script(response);
    let (state, challenge) = flow_params(&alice.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    let started = std::time::Instant::now();
    let reply = alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3 + 2), "answered within the timeout + 2 s");
    assert_eq!(reply.status, expected, "{}", reply.text);
    assert!(reply.text.contains("Fake Provider"), "the page names the provider: {}", reply.text);
    assert!(!reply.text.contains("CANARY") && !reply.text.contains("<html><body>garbage"));
    assert_eq!(app.stored_tokens("alice", "fake").unwrap(), before, "a failure never overwrites good tokens");
}

#[tokio::test]
async fn token_endpoint_500_is_a_502() {
    assert_exchange_fails(ResponseTemplate::new(500), Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_503_with_json_error_is_a_502() {
    let body = serde_json::json!({"error": "temporarily_unavailable"});
    assert_exchange_fails(ResponseTemplate::new(503).set_body_json(body), Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_html_with_200_is_a_502() {
    let r = ResponseTemplate::new(200).set_body_raw("<html><body>garbage</body></html>", "text/html");
    assert_exchange_fails(r, Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_truncated_json_is_a_502() {
    let r = ResponseTemplate::new(200).set_body_raw(r#"{"access_token":"AT-CANARY-x","tok"#, "application/json");
    assert_exchange_fails(r, Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_numeric_access_token_is_a_502() {
    let r = ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": 123, "token_type": "bearer"}));
    assert_exchange_fails(r, Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_error_inside_a_200_body_is_an_error() {
    let r = ResponseTemplate::new(200).set_body_json(serde_json::json!({"error": "bad_verification_code"}));
    assert_exchange_fails(r, Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_stall_past_the_timeout_is_a_504() {
    let r = ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"access_token": "AT-CANARY-late", "token_type": "bearer"}))
        .set_delay(std::time::Duration::from_secs(4));
    assert_exchange_fails(r, Status::GatewayTimeout).await;
}

#[tokio::test]
async fn token_endpoint_endless_body_is_capped() {
    let huge = format!(r#"{{"access_token":"{}"}}"#, "A".repeat(2 * 1024 * 1024));
    let r = ResponseTemplate::new(200).set_body_raw(huge, "application/json");
    assert_exchange_fails(r, Status::BadGateway).await;
}

#[tokio::test]
async fn token_endpoint_redirects_are_not_followed() {
    let canary = wiremock::MockServer::start().await;
    let r = ResponseTemplate::new(302).insert_header("Location", format!("{}/steal", canary.uri()).as_str());
    assert_exchange_fails(r, Status::BadGateway).await;
    assert!(canary.received_requests().await.unwrap().is_empty(), "the canary listener got no hit");
}

#[tokio::test]
async fn a_dead_code_is_a_friendly_502_and_stores_nothing() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let (state, _) = flow_params(&alice.start_flow("fake").await);
    let reply = alice.fetch(&format!("/services/fake/callback?code=never-issued&state={state}")).await;
    assert_eq!(reply.status, Status::BadGateway);
    assert!(reply.text.contains("connect again"));
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn a_service_without_credentials_says_so() {
    let app = builder().without_credentials().start().await;
    let alice = app.user("alice").await; // first user: an admin
    let page = alice.fetch("/services/fake/authorize").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="not-configured""#));
    assert!(page.text.contains("fake.client_id") && page.text.contains("/admin/vault"));
    assert!(!page.text.contains(r#"id="authorize""#));
    let bob = app.user("bob").await;
    let page = bob.fetch("/services/fake/authorize").await;
    assert!(page.text.contains("ask an administrator"));
    let csrf = bob.csrf("/settings/oauth2").await;
    let res = bob.post_form("/services/fake/authorize", &[("csrf_token", &csrf)]).await;
    assert_eq!(res.status, Status::BadRequest);
    assert!(res.location.is_none());
}

#[tokio::test]
async fn unknown_services_are_404_pages() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    for uri in ["/services/nope/authorize", "/services/nope/callback?state=x&code=y", "/services/nope/connected"] {
        let reply = alice.fetch(uri).await;
        assert_eq!(reply.status, Status::NotFound, "{uri}");
        assert!(reply.text.contains("Not found"));
    }
}

#[tokio::test]
async fn pages_need_a_login_and_come_back_after_it() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let anon = app.agent();
    let reply = anon.fetch("/services/fake/authorize").await;
    assert_eq!(reply.status, Status::SeeOther);
    assert_eq!(reply.location.as_deref(), Some("/login?next=%2Fservices%2Ffake%2Fauthorize"));
    let csrf = anon.csrf("/login?next=%2Fservices%2Ffake%2Fauthorize").await;
    let res = anon
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("username", "alice"),
                ("password", common::PASSWORD),
                ("next", "/services/fake/authorize"),
            ],
        )
        .await;
    assert_eq!(res.location.as_deref(), Some("/services/fake/authorize"));
}

#[tokio::test]
async fn redirect_uri_comes_from_public_url_never_from_host_headers() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let csrf = alice.csrf("/services/fake/authorize").await;
    let r = alice
        .post_with(
            "/services/fake/authorize",
            &[("csrf_token", &csrf)],
            &[("Host", "evil.example"), ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther);
    let url = url::Url::parse(r.location.as_deref().unwrap()).unwrap();
    let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["redirect_uri"], format!("{PUBLIC_URL}/services/fake/callback"));
    assert!(!url.as_str().contains("evil.example"));
}

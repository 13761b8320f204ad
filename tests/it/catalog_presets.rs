//! The catalog's provider quirks against the fake provider, each through a preset that needs it:
//! token responses of their own shape (Slack's user token in `authed_user`, Twitch's `scope`
//! array), JSON token requests (Notion), a separate refresh endpoint (Figma), account calls by
//! GraphQL (Linear) or introspection (HubSpot), the token in a header of its own (Shopify),
//! headers for every request (Notion-Version, Twitch's Client-Id) and the revocation styles
//! `bearer` and `json`.

use crate::common;

use std::collections::BTreeMap;

use crate::common::fake_provider::form;
use crate::common::{builder, Builder, TestApp, CLIENT_ID, CLIENT_SECRET};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rocket::http::{Header, Status};
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

fn basic() -> String {
    format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")))
}

fn header<'a>(req: &'a wiremock::Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|h| h.to_str().ok())
}

fn query(url: &url::Url) -> BTreeMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Start `b`, with the fake checking PKCE or not (presets of providers without PKCE send none).
async fn start(b: Builder, pkce: bool) -> TestApp {
    let app = b.start().await;
    app.fake.with_state(|s| s.enforce_pkce = pkce);
    app
}

/// A proxied GET through `/api/v1/services/fake/proxy/…`: the fake's echo of what it received.
async fn proxy_echo(app: &TestApp, key: &str, rest: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = app
        .client
        .get(format!("/api/v1/services/fake/proxy/{rest}"))
        .header(Header::new("Authorization", format!("Bearer {key}")));
    for (k, v) in headers {
        req = req.header(Header::new(k.to_string(), v.to_string()));
    }
    let res = req.dispatch().await;
    assert_eq!(res.status().code, 201, "the fake's API answered");
    serde_json::from_str(&res.into_string().await.unwrap()).unwrap()
}

async fn revoke(agent: &common::Agent<'_>) -> common::Reply {
    let csrf = agent.csrf("/settings/oauth2").await;
    let r = agent.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    agent.fetch("/settings/oauth2").await
}

/// Slack's `oauth.v2.access`: a bot token at the top (a decoy here: the fake's API refuses it),
/// the user's token in `authed_user` with its comma-separated scopes.
fn slack_shape(user: Value) -> Value {
    let mut user = user;
    user["token_type"] = json!("user");
    user["scope"] = json!("users.profile:read,chat:write");
    user["id"] = json!("U0001");
    json!({
        "ok": true,
        "app_id": "A0001",
        "access_token": "xoxb-BOT-DECOY",
        "token_type": "bot",
        "scope": "commands",
        "team": {"id": "T0001", "name": "Acme"},
        "authed_user": user,
    })
}

#[tokio::test]
async fn slack_connects_with_the_user_token_of_authed_user() {
    let b = builder()
        .preset("slack")
        .provider_with_fake_url("revoke_url", "/auth.revoke")
        .provider("account_id_pointer", "/id")
        .provider("account_label_pointer", "/email");
    let app = start(b, false).await;
    app.fake.with_state(|s| s.reshape_tokens = Some(slack_shape));
    app.fake
        .mount(
            Mock::given(method("POST"))
                .and(path("/auth.revoke"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "revoked": true}))),
        )
        .await;
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    let q = query(&url);
    assert_eq!(q.get("user_scope").map(String::as_str), Some("users.profile:read"), "user scopes: a user token");
    assert!(!q.contains_key("scope"), "no bot scopes");
    assert!(!q.contains_key("code_challenge"));
    let r = alice.finish_flow("fake", &url).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);

    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    assert!(access.starts_with("AT-CANARY-"), "the user token, not the bot's: {access}");
    assert_eq!(app.text("SELECT scopes AS t FROM connections"), "users.profile:read chat:write");
    assert_eq!(app.text("SELECT token_type AS t FROM connections"), "user");
    assert_eq!(app.text("SELECT account_id AS t FROM connections"), "fake-user-1");
    let token = &app.fake.requests_to("/token").await[0];
    assert_eq!(header(token, "authorization"), Some(basic().as_str()));
    assert!(!form(token).contains_key("code_verifier"));

    let page = revoke(&alice).await;
    assert!(page.text.contains("access was revoked"), "{}", page.text);
    let calls = app.fake.requests_to("/auth.revoke").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(header(&calls[0], "authorization"), Some(format!("Bearer {access}").as_str()));
    assert!(calls[0].body.is_empty());
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn an_ok_false_answer_to_a_revocation_is_a_failure() {
    let b = builder().preset("slack").provider_with_fake_url("revoke_url", "/auth.revoke");
    let app = start(b.provider("account_id_pointer", "/id"), false).await;
    app.fake.with_state(|s| s.reshape_tokens = Some(slack_shape));
    app.fake
        .mount(
            Mock::given(method("POST"))
                .and(path("/auth.revoke"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": "invalid_auth"}))),
        )
        .await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let page = revoke(&alice).await;
    assert!(page.text.contains("could not confirm the revocation"), "{}", page.text);
    assert!(page.text.contains("invalid_auth"), "{}", page.text);
    assert_eq!(app.connection_count(), 0, "deleted locally all the same");
}

#[tokio::test]
async fn linear_identifies_the_account_by_graphql_and_revokes_with_the_token() {
    let b = builder()
        .preset("linear")
        .provider("scopes", vec!["read", "write"])
        .provider_with_fake_url("account_url", "/graphql")
        .provider_with_fake_url("revoke_url", "/oauth/revoke");
    let app = start(b, false).await;
    app.fake
        .mount(Mock::given(method("POST")).and(path("/oauth/revoke")).respond_with(ResponseTemplate::new(200)))
        .await;
    app.fake.with_state(|s| s.sign_in_as(2));
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    assert_eq!(query(&url)["scope"], "read,write", "Linear's scopes are comma-separated");
    let r = alice.finish_flow("fake", &url).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    assert_eq!(app.text("SELECT account_id AS t FROM connections"), "fake-user-2");
    assert_eq!(app.text("SELECT account_label AS t FROM connections"), "user2@fake.example");
    let call = &app.fake.requests_to("/graphql").await[0];
    assert_eq!(call.method.as_str(), "POST");
    assert_eq!(header(call, "content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body, json!({"query": "{ viewer { id name email } }"}));

    // The account page makes the same call.
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains("Fake User 2"), "{}", page.text);
    assert_eq!(app.fake.requests_to("/graphql").await.len(), 2);

    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    assert!(revoke(&alice).await.text.contains("access was revoked"));
    let calls = app.fake.requests_to("/oauth/revoke").await;
    assert_eq!(header(&calls[0], "authorization"), Some(format!("Bearer {access}").as_str()));
}

#[tokio::test]
async fn notion_sends_json_token_requests_and_its_version_header_everywhere() {
    let b = builder().preset("notion").provider_with_fake_url("revoke_url", "/v1/oauth/revoke");
    let app = start(b.provider("account_id_pointer", "/id").provider("account_label_pointer", "/email"), false).await;
    app.fake
        .mount(
            Mock::given(method("POST"))
                .and(path("/v1/oauth/revoke"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"request_id": "r-1"}))),
        )
        .await;
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    assert_eq!(query(&url)["owner"], "user");
    let r = alice.finish_flow("fake", &url).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);

    let token = &app.fake.requests_to("/token").await[0];
    assert_eq!(header(token, "content-type"), Some("application/json"));
    assert_eq!(header(token, "authorization"), Some(basic().as_str()));
    assert_eq!(header(token, "notion-version"), Some("2025-09-03"));
    let body: Value = serde_json::from_slice(&token.body).unwrap();
    assert_eq!(body["grant_type"], "authorization_code");
    assert!(body["code"].as_str().unwrap().starts_with("CODE-CANARY-"));
    assert_eq!(body["redirect_uri"], "http://localhost:8000/services/fake/callback");
    assert!(body.get("client_secret").is_none());
    let account = &app.fake.requests_to("/account").await[0];
    assert_eq!(header(account, "notion-version"), Some("2025-09-03"));

    // Refreshes are JSON too.
    app.exec("UPDATE connections SET expires_at = 0");
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    let refresh = app.fake.requests_to("/token").await.pop().unwrap();
    let body: Value = serde_json::from_slice(&refresh.body).unwrap();
    assert_eq!(body["grant_type"], "refresh_token");
    assert_eq!(header(&refresh, "notion-version"), Some("2025-09-03"));

    // The proxy sends the preset's version, unless the caller names its own.
    let key = alice.api_key("script").await;
    let echo = proxy_echo(&app, &key, "v1/users", &[]).await;
    assert_eq!(echo["headers"]["notion-version"], "2025-09-03");
    let echo = proxy_echo(&app, &key, "v1/users", &[("Notion-Version", "2026-03-11")]).await;
    assert_eq!(echo["headers"]["notion-version"], "2026-03-11");

    let (_, refresh_token) = app.stored_tokens("alice", "fake").unwrap();
    assert!(revoke(&alice).await.text.contains("access was revoked"));
    let call = &app.fake.requests_to("/v1/oauth/revoke").await[0];
    assert_eq!(header(call, "authorization"), Some(basic().as_str()));
    assert_eq!(header(call, "content-type"), Some("application/json"));
    assert_eq!(header(call, "notion-version"), Some("2025-09-03"));
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body, json!({"token": refresh_token.unwrap()}));
}

#[tokio::test]
async fn a_json_revocation_of_a_post_client_carries_its_credentials_in_the_json() {
    let app = builder().provider("revoke_style", "json").provider("client_auth", "post").start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (_, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert!(revoke(&alice).await.text.contains("access was revoked"));
    let call = &app.fake.requests_to("/revoke").await[0];
    assert!(header(call, "authorization").is_none());
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body, json!({"token": refresh.unwrap(), "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}));
}

#[tokio::test]
async fn shopify_sends_the_token_in_its_own_header_and_revokes_with_delete() {
    let shop: BTreeMap<&str, &str> = BTreeMap::from([("shop", "acme-store")]);
    let b = builder()
        .preset("shopify")
        .provider("params", shop)
        .provider_with_fake_url("account_url", "/graphql")
        .provider_with_fake_url("revoke_url", "/admin/api_permissions/current.json");
    let app = start(b, false).await;
    app.fake
        .mount(
            Mock::given(method("DELETE"))
                .and(path("/admin/api_permissions/current.json"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({}))),
        )
        .await;
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    assert_eq!(query(&url)["scope"], "read_products");
    assert_eq!(alice.finish_flow("fake", &url).await.status, Status::SeeOther);
    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    let call = &app.fake.requests_to("/graphql").await[0];
    assert_eq!(header(call, "x-shopify-access-token"), Some(access.as_str()));
    assert!(header(call, "authorization").is_none());
    assert!(String::from_utf8_lossy(&call.body).contains("myshopifyDomain"));
    assert_eq!(app.text("SELECT account_id AS t FROM connections"), "fake-user-1");

    let key = alice.api_key("script").await;
    let echo = proxy_echo(&app, &key, "products.json", &[]).await;
    assert_eq!(echo["headers"]["x-shopify-access-token"], access.as_str());
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");

    assert!(revoke(&alice).await.text.contains("access was revoked"));
    let calls = app.fake.requests_to("/admin/api_permissions/current.json").await;
    assert_eq!(calls[0].method.as_str(), "DELETE");
    assert_eq!(header(&calls[0], "x-shopify-access-token"), Some(access.as_str()));
}

#[tokio::test]
async fn hubspot_identifies_the_account_by_introspection() {
    let b = builder().preset("hubspot").provider_with_fake_url("account_url", "/introspect");
    let app = start(b, true).await;
    app.fake.with_state(|s| s.sign_in_as(3));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    assert_eq!(app.text("SELECT account_id AS t FROM connections"), "fake-user-3");
    assert_eq!(app.text("SELECT account_label AS t FROM connections"), "fake3.hubspot.example");
    let (access, _) = app.stored_tokens("alice", "fake").unwrap();
    let call = &app.fake.requests_to("/introspect").await[0];
    let f = form(call);
    assert_eq!(f["token"], access);
    assert_eq!((f["client_id"].as_str(), f["client_secret"].as_str()), (CLIENT_ID, CLIENT_SECRET));
    assert!(header(call, "authorization").is_none(), "the token is in the form, not a header");
    // The account page introspects too (with the credentials read from the vault).
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert!(page.text.contains("user3@fake.example"), "{}", page.text);
    // The introspection answer names the token: shown without it (issue 22).
    let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
    assert!(page.text.contains("hub_domain") && page.text.contains("oauth"), "{}", page.text);
    assert!(!page.text.contains(&access) && !page.text.contains("signed_access_token"), "{}", page.text);
    assert!(refresh.is_none_or(|r| !page.text.contains(&r)));
}

#[tokio::test]
async fn twitch_sends_its_client_id_and_its_scope_arrays_are_read() {
    fn scope_array(mut body: Value) -> Value {
        body["scope"] = json!(["user:read:email", "chat:read"]);
        body
    }
    let b = builder()
        .preset("twitch")
        .provider("account_id_pointer", "/id")
        .provider("account_label_pointer", "/login")
        .provider("optional_scopes", vec!["chat:read"]);
    let app = start(b, false).await;
    app.fake.with_state(|s| s.reshape_tokens = Some(scope_array));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    assert_eq!(app.text("SELECT scopes AS t FROM connections"), "user:read:email chat:read");
    let account = &app.fake.requests_to("/account").await[0];
    assert_eq!(header(account, "client-id"), Some(CLIENT_ID));
    assert_eq!(header(&app.fake.requests_to("/token").await[0], "client-id"), Some(CLIENT_ID));
    let key = alice.api_key("script").await;
    let echo = proxy_echo(&app, &key, "users", &[]).await;
    assert_eq!(echo["headers"]["client-id"], CLIENT_ID);
    assert!(echo["headers"]["authorization"].as_str().unwrap().starts_with("Bearer AT-CANARY-"));
}

#[tokio::test]
async fn figma_refreshes_at_its_own_refresh_endpoint() {
    let b = builder().preset("figma").provider_with_fake_url("refresh_url", "/refresh");
    let app = start(b, false).await;
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    assert_eq!(query(&url)["scope"], "current_user:read");
    assert_eq!(alice.finish_flow("fake", &url).await.status, Status::SeeOther);
    app.exec("UPDATE connections SET expires_at = 0");
    assert_eq!(alice.fetch("/services/fake/account").await.status, Status::Ok);
    assert_eq!(app.fake.refresh_calls_to("/refresh").await, 1);
    assert_eq!(app.fake.refresh_calls().await, 0, "nothing refreshed at the token endpoint");
    let refresh = &app.fake.requests_to("/refresh").await[0];
    assert_eq!(header(refresh, "authorization"), Some(basic().as_str()));
}

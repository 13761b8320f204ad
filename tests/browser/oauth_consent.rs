//! tokenvault's own authorization server in a real browser (issue 22): an app asks, the user
//! signs in, sees who asks (name and redirect host) and what, allows with the defaults, and the
//! browser is sent to the app's redirect URI on another origin (which the consent page's CSP
//! `form-action` must allow after the POST); the app's code works; Connected apps revokes it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::harness::{Browser, PASSWORD};

#[tokio::test]
async fn an_app_asks_the_user_allows_and_revokes() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let Some(browser) = Browser::start().await else { return };
    browser.signup("grace").await;
    browser.logout().await;
    // The app: its redirect URI is a page on another origin (a loopback port of its own).
    let app_site = MockServer::start().await;
    let page = "<!doctype html><title>agent</title><p id=\"agent-callback\">back at the agent</p>";
    Mock::given(method("GET"))
        .and(path("/callback"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(page, "text/html"))
        .mount(&app_site)
        .await;
    let redirect = format!("{}/callback", app_site.uri());
    let http = reqwest::Client::new();
    let registered: Value = http
        .post(browser.app.url("/oauth/register"))
        .json(&json!({"client_name": "Research Agent", "redirect_uris": [redirect]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_string();
    let verifier = format!("v{}", "k".repeat(50));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("state", "xyz")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("scope", "connections:read proxy:read token:read")
        .finish();

    // Signed out: sign in first, then the consent page.
    browser.goto(&format!("/oauth/authorize?{query}")).await;
    browser.wait_for("#login-form").await;
    browser.submit_login("grace", PASSWORD, "#grant-form").await;
    let who = browser.text("#grant-client").await;
    assert!(who.contains("Research Agent") && who.contains("127.0.0.1"), "name and redirect host: {who}");
    assert!(browser.exists("input[value=\"connections:read\"]:checked").await);
    assert!(browser.exists("input[value=\"proxy:read\"]:checked").await);
    assert!(!browser.exists("input[value=\"token:read\"]:checked").await, "token:read only when ticked");
    assert!(browser.exists("#grant-services-all:checked").await, "no service named: every service");
    assert!(browser.exists("#grant-services").await && browser.exists("#grant-deny").await);
    browser.screenshot("20-oauth-consent").await;

    browser.click_to("#grant-allow", "#agent-callback").await;
    let back = browser.c.current_url().await.unwrap();
    assert_eq!(back.origin(), url::Url::parse(&app_site.uri()).unwrap().origin(), "at the app's redirect URI");
    let q: std::collections::BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!((q["state"].as_str(), q["iss"].as_str()), ("xyz", browser.app.base.as_str()));
    let tokens: Value = http
        .post(browser.app.url("/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &q["code"]),
            ("redirect_uri", &redirect),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tokens["scope"], "connections:read proxy:read", "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_string();
    let status = || {
        let (http, url, access) = (http.clone(), browser.app.url("/api/v1/connections"), access.clone());
        async move { http.get(url).bearer_auth(access).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status().await, 200);

    browser.goto("/settings/apps").await;
    browser.wait_for("#connected-apps").await;
    assert!(browser.exists("#settings-apps").await);
    let row = browser.text(&format!("tr[data-client=\"{client_id}\"]")).await;
    assert!(row.contains("Research Agent") && row.contains("proxy:read"), "{row}");
    let id = browser.attr("tr[data-grant]", "data-grant").await;
    browser.screenshot("21-connected-apps").await;
    browser.click_to(&format!("#revoke-grant-{id}"), "#flash").await;
    assert!(browser.exists("#no-connected-apps").await);
    assert_eq!(status().await, 401, "the app's token stopped working");
    browser.finish().await;
}

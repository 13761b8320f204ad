//! Launch Test, the console of a connection (`/services/<service>/console`, issue 21 §3): a call
//! goes through the API proxy's code (refresh on 401, allowlists, caps, a `proxy.call` audit
//! entry), the page shows the provider's status and body safely, and never a token; the form
//! carries CSRF; another user's connection, a path out of the API base and a disabled provider
//! are refused before anything is sent.

use rocket::http::Status;
use serde_json::json;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::common::{builder, csrf_from, Agent, TestApp};

/// The connection id the console's picker selects.
fn selected_connection(page: &str) -> String {
    let re = regex::Regex::new(r#"<option value="(\d+)" selected>"#).unwrap();
    re.captures(page).unwrap_or_else(|| panic!("no connection selected:\n{page}"))[1].to_string()
}

/// Send the console's form for `service` with these fields (besides the CSRF token).
async fn send(agent: &Agent<'_>, service: &str, fields: &[(&str, &str)]) -> crate::common::Reply {
    let csrf = agent.csrf(&format!("/services/{service}/console")).await;
    let mut all = vec![("csrf_token", csrf.as_str())];
    all.extend_from_slice(fields);
    agent.post_form(&format!("/services/{service}/console"), &all).await
}

/// A page's text with the template's escapes undone (`=` too: Handlebars escapes it).
fn unescape(html: &str) -> String {
    [("&lt;", "<"), ("&gt;", ">"), ("&quot;", "\""), ("&#x27;", "'"), ("&#x3D;", "="), ("&#x60;", "`"), ("&amp;", "&")]
        .iter()
        .fold(html.to_string(), |text, (from, to)| text.replace(from, to))
}

fn result_status(page: &str) -> Option<String> {
    let re = regex::Regex::new(r#"id="console-result" data-status="(\d+)""#).unwrap();
    re.captures(page).map(|c| c[1].to_string())
}

#[tokio::test]
async fn a_call_refreshes_after_a_401_shows_the_answer_and_never_a_token() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let page = alice.fetch("/services/fake/console").await;
    assert_eq!(page.status, Status::Ok);
    for id in ["console-form", "console-connection", "console-method", "console-path", "console-body", "console-send"] {
        assert!(page.text.contains(&format!(r#"id="{id}""#)), "{id}");
    }
    assert!(page.text.contains(r#"id="console-curl""#));
    let connection = selected_connection(&page.text);
    let before = app.stored_tokens("alice", "fake").unwrap();
    // The provider answers the stored token 401 once: refreshed, the call is sent again.
    app.fake.invalidate_access_tokens();
    let reply = send(
        &alice,
        "fake",
        &[
            ("connection", &connection),
            ("method", "POST"),
            ("path", "/files/list all"),
            ("query", "limit=2"),
            ("body", r#"{"hello": "provider"}"#),
        ],
    )
    .await;
    assert_eq!(reply.status, Status::Ok, "{}", reply.text);
    assert_eq!(result_status(&reply.text).as_deref(), Some("201"), "the refreshed call's status");
    assert_eq!(app.fake.refresh_calls().await, 1, "refreshed once");
    let sent = app.fake.requests_to("/api/files/list%20all").await;
    assert_eq!(sent.len(), 2, "the 401, then the retry");
    assert_eq!(sent[1].url.query(), Some("limit=2"));
    assert_eq!(String::from_utf8_lossy(&sent[1].body), r#"{"hello": "provider"}"#);
    assert_eq!(sent[1].headers.get("content-type").unwrap(), "application/json");
    // The echo (pretty JSON) names the Authorization header the provider got, hidden.
    let text = unescape(&reply.text);
    assert!(text.contains(r#""method": "POST""#), "{text}");
    assert!(text.contains(r#""authorization": "Bearer [token hidden]""#), "{text}");
    let after = app.stored_tokens("alice", "fake").unwrap();
    assert_ne!(before.0, after.0, "refreshed");
    for token in [Some(before.0), before.1, Some(after.0), after.1].into_iter().flatten() {
        assert!(!reply.text.contains(&token), "a token on the page");
        assert!(!page.text.contains(&token), "a token on the page");
    }
    // Copy as curl: the same call through the API proxy, with a placeholder for the key.
    let curl = format!(
        "curl -X POST 'http://localhost:8000/api/v1/services/fake/proxy/files/list%20all?limit=2&connection={connection}' \\\n  \
         -H \"Authorization: Bearer $TOKENVAULT_API_KEY\" \\\n  -H 'Content-Type: application/json' \\\n  \
         --data-raw '{{\"hello\": \"provider\"}}'"
    );
    assert!(text.contains(&curl), "{text}");
    // Audited as a proxy call, by the user, from the console.
    app.state().audit.flush().await;
    let audited = app.text(
        "SELECT detail AS t FROM audit_log WHERE kind = 'proxy.call' AND actor LIKE 'user:%' AND detail LIKE '%console%'",
    );
    assert!(audited.contains("\"status\":201") && audited.contains("\"method\":\"POST\""), "{audited}");
}

#[tokio::test]
async fn the_form_needs_its_csrf_token_and_the_users_own_connection() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let alices = selected_connection(&alice.fetch("/services/fake/console").await.text);
    let form = [("connection", alices.as_str()), ("method", "GET"), ("path", "/me")];
    let refused = alice.post_form("/services/fake/console", &form).await;
    assert_eq!(refused.status, Status::Forbidden, "no CSRF token");
    let mut wrong = vec![("csrf_token", "not-the-token")];
    wrong.extend_from_slice(&form);
    assert_eq!(alice.post_form("/services/fake/console", &wrong).await.status, Status::Forbidden);
    // Bob (connected too) names alice's connection: not his, nothing sent.
    let bob = app.user("bob").await;
    bob.connect("fake").await;
    let before = app.fake.all_requests().await.len();
    let reply = send(&bob, "fake", &form).await;
    assert_eq!(reply.status, Status::NotFound, "{}", reply.text);
    assert_eq!(bob.fetch(&format!("/services/fake/console?connection={alices}")).await.status, Status::NotFound);
    assert_eq!(app.fake.all_requests().await.len(), before, "nothing reached the provider");
    assert_eq!(result_status(&reply.text), None);
}

#[tokio::test]
async fn paths_out_of_the_api_base_are_refused_as_the_proxy_refuses_them() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let before = app.fake.all_requests().await.len();
    for bad in [
        "../token",
        "/a/../../token",
        "%2e%2e/token",
        "..%2F..%2Ftoken",
        "https://evil.example/api/me",
        "//evil.example/api/me",
        "/a//b",
        "a;b",
    ] {
        let reply = send(&alice, "fake", &[("method", "GET"), ("path", bad)]).await;
        assert_eq!(reply.status, Status::BadRequest, "{bad}: {}", reply.text);
        assert!(reply.text.contains(r#"data-code="bad_path""#), "{bad}");
    }
    // tokenvault's own proxy parameters are chosen with the picker, not typed in the query.
    let reply = send(&alice, "fake", &[("method", "GET"), ("path", "/me"), ("query", "connection=9")]).await;
    assert_eq!(reply.status, Status::BadRequest);
    // A body only where the method carries one, and only JSON.
    let reply = send(&alice, "fake", &[("method", "GET"), ("path", "/me"), ("body", "{}")]).await;
    assert_eq!(reply.status, Status::BadRequest);
    let reply = send(&alice, "fake", &[("method", "POST"), ("path", "/me"), ("body", "{not json")]).await;
    assert_eq!(reply.status, Status::BadRequest);
    assert!(reply.text.contains("value=\"/me\""), "the form keeps what was typed");
    assert_eq!(app.fake.all_requests().await.len(), before, "nothing reached the provider");
}

#[tokio::test]
async fn other_bodies_are_shown_safely_and_the_caps_hold() {
    let app = builder().set("proxy_max_request_bytes", 1024).set("proxy_max_response_bytes", 16 * 1024).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let html = "<script>alert('x')</script><b>hi</b>";
    let long: Vec<u32> = (0..200).collect();
    let mocks = [
        ("/api/page", ResponseTemplate::new(200).set_body_raw(html, "text/html")),
        ("/api/long", ResponseTemplate::new(200).set_body_json(long)),
        ("/api/image", ResponseTemplate::new(200).set_body_raw(vec![0x89, b'P', b'N', b'G', 0, 1], "image/png")),
    ];
    for (p, answer) in mocks {
        app.fake.mount(Mock::given(path(p)).respond_with(answer).with_priority(1)).await;
    }
    let page = send(&alice, "fake", &[("method", "GET"), ("path", "/page")]).await;
    assert_eq!(result_status(&page.text).as_deref(), Some("200"));
    assert!(page.text.contains("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"), "{}", page.text);
    assert!(!page.text.contains(html));
    let folded = send(&alice, "fake", &[("method", "GET"), ("path", "/long")]).await;
    assert!(folded.text.contains("202 lines of JSON"), "long JSON is folded: {}", folded.text);
    let image = send(&alice, "fake", &[("method", "GET"), ("path", "/image")]).await;
    assert!(image.text.contains("6 bytes of <code>image/png</code>"), "{}", image.text);
    // Over the response cap (the fake's /api/big is 64 KiB, and says so): refused as the API does.
    let big = send(&alice, "fake", &[("method", "GET"), ("path", "/big")]).await;
    assert_eq!(big.status, Status::BadGateway);
    assert!(big.text.contains(r#"data-code="provider_response_too_large""#), "{}", big.text);
    // Over the request cap: 413, nothing sent.
    let body = format!("\"{}\"", "x".repeat(2000));
    let reply = send(&alice, "fake", &[("method", "POST"), ("path", "/upload"), ("body", &body)]).await;
    assert_eq!(reply.status, Status::PayloadTooLarge);
    assert!(app.fake.requests_to("/api/upload").await.is_empty());
}

#[tokio::test]
async fn examples_fill_the_form_and_the_pages_link_the_console() {
    let app = builder()
        .provider(
            "examples",
            vec![rocket::figment::value::Value::from(
                [("name", "Who am I"), ("method", "POST"), ("path", "/whoami?full=1"), ("body", "null")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), rocket::figment::value::Value::from(v)))
                    .collect::<rocket::figment::value::Dict>(),
            )],
        )
        .start()
        .await;
    let alice = app.user("alice").await;
    let page = alice.fetch("/services/fake/console").await;
    assert!(page.text.contains(r#"id="not-connected""#), "not connected yet: no form");
    alice.connect("fake").await;
    let settings = alice.fetch("/settings/oauth2").await.text;
    let re = regex::Regex::new(r#"href="(/services/fake/console\?connection=\d+)" id="open-console-fake""#).unwrap();
    let link = re.captures(&settings).expect("My Settings links the console")[1].to_string();
    let account = alice.fetch("/services/fake/account").await.text;
    assert!(account.contains(r#"id="account-console""#));
    let page = unescape(&alice.fetch(&unescape(&link)).await.text);
    let connection = selected_connection(&page);
    let example = format!("/services/fake/console?example=0&connection={connection}");
    assert!(page.contains(&format!(r#"href="{example}" id="console-example-0""#)), "{page}");
    let filled = unescape(&alice.fetch(&example).await.text);
    assert!(filled.contains(r#"<option value="POST" selected>"#));
    assert!(filled.contains(r#"value="/whoami""#) && filled.contains(r#"value="full=1""#));
    assert!(filled.contains(">null</textarea>"));
    assert!(filled.contains("--data-raw 'null'"), "{filled}");
    assert_eq!(alice.fetch("/services/fake/console?example=7").await.status, Status::NotFound);
    assert!(!page.contains("<script"), "no script on the page (the CSP forbids inline script)");
}

#[tokio::test]
async fn a_disabled_provider_answers_409_and_its_connections_can_still_be_removed() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("script").await;
    let token = crate::mcp::mcp_token(&app, &alice, "connections:read proxy:read").await;
    let sid = crate::mcp::session(&app, &token).await;
    disable(&app, "fake").await;
    // /mcp answers as the API does: service_disabled, and no connection of it listed.
    for (tool, args) in
        [("call_api", json!({"service": "fake", "path": "me"})), ("get_account", json!({"service": "fake"}))]
    {
        let answer = crate::mcp::call(&app, &token, &sid, tool, args).await;
        assert_eq!(answer["structuredContent"]["error"], "service_disabled", "{tool}: {answer}");
    }
    let listed = crate::mcp::call(&app, &token, &sid, "list_connections", json!({})).await;
    assert_eq!(listed["structuredContent"]["connections"], json!([]), "{listed}");
    let page = alice.fetch("/services/fake/console").await;
    assert_eq!(page.status, Status::Conflict);
    assert!(page.text.contains("service_disabled") || page.text.contains("disabled"), "{}", page.text);
    let reply = send_without_page(&alice, "fake", &[("method", "GET"), ("path", "/me")]).await;
    assert_eq!(reply.status, Status::Conflict);
    // The API leaves the disabled provider's connections out of its listing.
    let listed = alice.fetch_with("/api/v1/connections", &[("Authorization", &format!("Bearer {key}"))]).await;
    assert_eq!(listed.status, Status::Ok);
    assert_eq!(listed.text, "[]");
    // My Settings: revoke still works — at the provider, with the stored settings — and deletes.
    let settings = alice.fetch("/settings/oauth2").await.text;
    assert!(settings.contains(r#"id="revoke-fake""#), "{settings}");
    assert!(!settings.contains(r#"id="open-console-fake""#) && !settings.contains(r#"id="reconnect-fake""#));
    let csrf = csrf_from(&settings);
    let revoked = alice.post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf)]).await;
    assert_eq!(revoked.status, Status::SeeOther, "{}", revoked.text);
    assert_eq!(app.fake.requests_to("/revoke").await.len(), 1, "revoked at the provider");
    assert_eq!(app.connection_count(), 0);
    // Delete (local only) works too.
    set_enabled(&app, "fake", true).await;
    alice.connect("fake").await;
    assert_eq!(app.connection_count(), 1);
    disable(&app, "fake").await;
    let csrf = alice.csrf("/settings/oauth2").await;
    let deleted = alice.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await;
    assert_eq!(deleted.status, Status::SeeOther, "{}", deleted.text);
    assert_eq!(app.connection_count(), 0);
}

/// POST the console's form with the CSRF token of another page (the console itself answers 409).
async fn send_without_page(agent: &Agent<'_>, service: &str, fields: &[(&str, &str)]) -> crate::common::Reply {
    let csrf = agent.csrf("/settings/oauth2").await;
    let mut all = vec![("csrf_token", csrf.as_str())];
    all.extend_from_slice(fields);
    agent.post_form(&format!("/services/{service}/console"), &all).await
}

/// Disable (or enable) `name` as the admin page does, and wait for this instance to follow.
async fn set_enabled(app: &TestApp, name: &str, enabled: bool) {
    use tokenvault::oauth::managed::{Editor, Egress};
    let state = app.state();
    let editor = Editor {
        live: &state.catalog,
        cipher: &state.cipher,
        actor: tokenvault::audit::Actor::Cli,
        by: "cli",
        egress: Egress { private_urls: true, loopback: true },
    };
    let mut conn = app.db.conn().unwrap();
    editor.set_enabled(&mut conn, name, None, enabled).unwrap().recorded_only();
    state.catalog.reload_in(&state.db).await.unwrap();
}

async fn disable(app: &TestApp, name: &str) {
    set_enabled(app, name, false).await;
}

/// The demo provider over real HTTP (the binary calls its own `/demo` API): an example filled in
/// with one click, sent, and its answer shown — without the token.
#[tokio::test]
async fn the_console_calls_the_demo_providers_api() {
    let live = crate::demo_provider::launch().await;
    live.signup().await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    assert_eq!(live.get(&callback).await.status(), reqwest::StatusCode::SEE_OTHER);
    let page = live.get("/services/demo/console?example=0").await.text().await.unwrap();
    let mut form = crate::demo_provider::hidden_fields(&page);
    form.insert("connection".into(), selected_connection(&page));
    form.insert("method".into(), "GET".into());
    assert!(page.contains(r#"value="/account""#), "the example's path: {page}");
    form.insert("path".into(), "/account".into());
    let res = live.post("/services/demo/console", &form).await;
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    let text = res.text().await.unwrap();
    assert_eq!(result_status(&text).as_deref(), Some("200"), "{text}");
    assert!(unescape(&text).contains(r#""email": "alice@demo.example""#), "{text}");
    let (access, refresh) = live.tokens().unwrap();
    assert!(!text.contains(&access) && !refresh.is_some_and(|r| text.contains(&r)), "no token on the page");
}

//! Scoped API keys: limited to services, to capabilities (`connections:read`, `token:read`,
//! `proxy`) and given an expiry; outside its limits a key gets 403 `forbidden_scope`. Keys made
//! without limits (and every key made before limits existed) keep full access.

use crate::common;

use crate::common::{builder, Agent, TestApp};
use rocket::http::{Header, Status};
use serde_json::{json, Value};

/// Create a key on the settings page with these extra form fields; the page's answer.
async fn create(agent: &Agent<'_>, name: &str, limits: &[(&str, &str)]) -> common::Reply {
    let csrf = agent.csrf("/settings/api-keys").await;
    let mut fields = vec![("csrf_token", csrf.as_str()), ("name", name)];
    fields.extend_from_slice(limits);
    agent.post_form("/settings/api-keys", &fields).await
}

async fn key(agent: &Agent<'_>, name: &str, limits: &[(&str, &str)]) -> String {
    let r = create(agent, name, limits).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let re = regex::Regex::new(r#"<code id="new-api-key">(tv[ks]_[A-Za-z0-9_-]+)</code>"#).unwrap();
    re.captures(&r.text).expect("the new key is shown once")[1].to_string()
}

async fn get(app: &TestApp, uri: &str, key: &str, from: &str) -> (Status, Value) {
    let res = app
        .client
        .get(uri.to_string())
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .remote(format!("{from}:40000").parse().unwrap())
        .dispatch()
        .await;
    let status = res.status();
    let body = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// The `<tr>` of the key whose name is `name` on the settings page.
fn row<'a>(page: &'a str, name: &str) -> &'a str {
    let at = page.find(&format!("<td>{name}</td>")).unwrap_or_else(|| panic!("no key named {name}:\n{page}"));
    let start = page[..at].rfind("<tr").unwrap();
    let end = at + page[at..].find("</tr>").unwrap();
    &page[start..end]
}

#[tokio::test]
async fn a_scoped_key_does_only_what_it_was_given_and_a_full_key_keeps_everything() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let tokens_only = key(&alice, "tokens only", &[("services", "fake"), ("capabilities", "token:read")]).await;
    let list_demo = key(&alice, "list demo", &[("services", "demo"), ("capabilities", "connections:read")]).await;
    let proxy_two =
        key(&alice, "proxy two", &[("services", "fake"), ("services", "demo"), ("capabilities", "proxy")]).await;
    let full = key(&alice, "full", &[]).await;

    // token:read on fake: the token, and nothing else.
    let (status, body) = get(&app, "/api/v1/services/fake/token", &tokens_only, "127.0.0.1").await;
    assert_eq!(status, Status::Ok, "{body}");
    assert!(tokens_only.starts_with("tvs_") && full.starts_with("tvk_"), "a limited key says so in its prefix");
    let forbidden = [
        ("/api/v1/connections", &tokens_only, "connections:read"),
        ("/api/v1/services/fake/proxy/files", &tokens_only, "proxy"),
        ("/api/v1/services/demo/token", &tokens_only, "demo"),
        ("/api/v1/services/fake/token", &proxy_two, "token:read"),
        ("/api/v1/services/fake/token", &list_demo, "token:read"),
    ];
    for (uri, key, named) in forbidden {
        let (status, body) = get(&app, uri, key, "127.0.0.1").await;
        assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("forbidden_scope")), "{uri}: {body}");
        assert!(body["message"].as_str().unwrap().contains(named), "{uri}: the message names {named}: {body}");
        assert!(!body.to_string().contains(key.as_str()), "the key is not echoed");
    }

    // connections:read limited to demo: the list holds only demo's connections (none).
    let (status, body) = get(&app, "/api/v1/connections", &list_demo, "127.0.0.1").await;
    assert_eq!((status, body), (Status::Ok, json!([])));
    // proxy on fake and demo: the proxy works.
    let (status, body) = get(&app, "/api/v1/services/fake/proxy/files", &proxy_two, "127.0.0.1").await;
    assert_eq!((status, body["path"].as_str()), (Status::Created, Some("/api/files")), "the provider's answer");

    // A key without limits may do everything, as keys always could.
    let (status, body) = get(&app, "/api/v1/connections", &full, "127.0.0.1").await;
    assert_eq!((status, body[0]["service"].as_str()), (Status::Ok, Some("fake")));
    assert_eq!(get(&app, "/api/v1/services/fake/token", &full, "127.0.0.1").await.0, Status::Ok);
    assert_eq!(get(&app, "/api/v1/services/fake/proxy/files", &full, "127.0.0.1").await.0, Status::Created);

    // The settings page says what each key may do.
    let page = alice.fetch("/settings/api-keys").await.text;
    assert!(row(&page, "tokens only").contains(r#"data-limited="true""#));
    assert!(row(&page, "tokens only").contains("fake</span>") && row(&page, "tokens only").contains("token:read"));
    assert!(row(&page, "proxy two").contains("fake, demo"));
    assert!(row(&page, "full").contains(r#"data-limited="false""#));
    assert!(row(&page, "full").contains("all services") && row(&page, "full").contains("full access"));
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM api_keys WHERE services IS NULL AND capabilities IS NULL"), 1);
}

#[tokio::test]
async fn bad_limits_are_refused_with_a_message_and_create_nothing() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    for (limits, says) in [
        (vec![("services", "nope")], "no service named &quot;nope&quot;"),
        (vec![("capabilities", "admin")], "&quot;admin&quot; is not a capability"),
        (vec![("expires", "5y")], "is not a lifetime"),
        (vec![("expires", "0d")], "between one minute and ten years"),
    ] {
        let r = create(&alice, "bad", &limits).await;
        assert_eq!(r.status, Status::UnprocessableEntity, "{limits:?}");
        assert!(r.text.contains(says), "{limits:?}: the page says {says:?}");
        assert!(!r.text.contains("new-api-key"), "no key is shown");
    }
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM api_keys"), 0, "nothing was created");
}

#[tokio::test]
async fn a_key_stops_at_its_expiry_even_while_cached_and_shows_when() {
    let app = builder().set("cache_ttl", 3600).start().await;
    let alice = app.user("alice").await;
    let month = key(&alice, "a month", &[("expires", "30d")]).await;
    let page = alice.fetch("/settings/api-keys").await.text;
    assert!(row(&page, "a month").contains("in 30 days") || row(&page, "a month").contains("in 4 weeks"), "{page}");
    assert!(row(&page, "a month").contains(r#"data-limited="true""#));

    // A key that expires in three seconds, made as the CLI makes keys.
    let user_id = app.count("SELECT id AS n FROM users WHERE username = 'alice'");
    let scope =
        tokenvault::auth::api_key::KeyScope { expires_at: Some(tokenvault::util::now() + 2), ..Default::default() };
    let mut conn = app.db.conn().unwrap();
    let short = tokenvault::auth::api_key::create(
        &mut conn,
        &app.cipher,
        tokenvault::audit::Actor::Cli,
        user_id,
        "short",
        &scope,
        20,
    )
    .unwrap();
    let short = tokenvault::util::ExposeSecret::expose_secret(&short.key).to_string();
    assert_eq!(get(&app, "/api/v1/connections", &short, "127.0.0.1").await.0, Status::Ok);
    assert!(!app.state().caches.api_keys.is_empty(), "the key is now cached for an hour");
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    let (status, body) = get(&app, "/api/v1/connections", &short, "127.0.0.1").await;
    assert_eq!((status, body["error"].as_str()), (Status::Unauthorized, Some("unauthorized")));
    // And from the database: a key past its expiry is not found.
    app.exec(&format!("UPDATE api_keys SET expires_at = {} WHERE name = 'a month'", tokenvault::util::now() - 1));
    assert_eq!(get(&app, "/api/v1/connections", &month, "127.0.0.1").await.0, Status::Unauthorized);
}

#[tokio::test]
async fn the_page_shows_when_and_from_where_a_key_was_last_used() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let k = key(&alice, "laptop", &[]).await;
    assert!(row(&alice.fetch("/settings/api-keys").await.text, "laptop").contains("never"));
    assert_eq!(get(&app, "/api/v1/connections", &k, "127.0.0.7").await.0, Status::Ok);
    let page = alice.fetch("/settings/api-keys").await.text;
    let laptop = row(&page, "laptop");
    assert!(laptop.contains("just now from <code>127.0.0.7</code>"), "{laptop}");
}

/// Every route under /api/v1 but the OpenAPI document checks the key's capability, for every
/// method (HEAD and the proxy's POST/PUT/PATCH/DELETE included): a route added without the check
/// fails here.
#[tokio::test]
async fn every_api_route_refuses_a_key_without_its_capability() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let mut keys = Vec::new();
    for cap in ["connections:read", "token:read", "proxy"] {
        keys.push((cap, key(&alice, cap, &[("capabilities", cap)]).await));
    }
    let routes: Vec<_> = app
        .client
        .rocket()
        .routes()
        .filter(|r| r.uri.base() == "/api/v1")
        .map(|r| (r.method, r.uri.unmounted_origin.path().to_string()))
        .filter(|(_, path)| path != "/openapi.json")
        .collect();
    assert_eq!(routes.len(), 8, "connections, token and six proxy methods: {routes:?}");
    for (method, path) in routes {
        let needs = match path.as_str() {
            "/connections" => "connections:read",
            p if p.ends_with("/token") => "token:read",
            _ => "proxy",
        };
        let uri = format!("/api/v1{}", path.replace("<service>", "fake").replace("<path..>", "files"));
        for (cap, key) in &keys {
            let res = app
                .client
                .req(method, uri.clone())
                .header(Header::new("Authorization", format!("Bearer {key}")))
                .dispatch()
                .await;
            if *cap == needs {
                assert_ne!(res.status(), Status::Forbidden, "{method} {uri} with {cap}");
            } else {
                assert_eq!(res.status(), Status::Forbidden, "{method} {uri} needs {needs}, the key has {cap}");
            }
        }
    }
}

/// On a provider whose API acts on a GET (`read_methods_are_safe = false`, Slack's preset) a
/// `proxy:read` key calls nothing: a GET needs `proxy` too (issue 22). Elsewhere it reads.
#[tokio::test]
async fn proxy_read_allows_nothing_on_a_provider_whose_reads_are_not_safe() {
    let uri = "/api/v1/services/fake/proxy/files";
    let app = builder().provider("read_methods_are_safe", false).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let reader = key(&alice, "reader", &[("capabilities", "proxy:read")]).await;
    let writer = key(&alice, "writer", &[("capabilities", "proxy")]).await;
    let before = app.fake.all_requests().await.len();
    let (status, body) = get(&app, uri, &reader, "127.0.0.1").await;
    assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("forbidden_scope")), "{body}");
    assert_eq!(app.fake.all_requests().await.len(), before, "nothing reached the provider");
    let (status, body) = get(&app, uri, &writer, "127.0.0.1").await;
    assert!(status.class().is_success(), "{status} {body}");

    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let reader = key(&alice, "reader", &[("capabilities", "proxy:read")]).await;
    let (status, body) = get(&app, uri, &reader, "127.0.0.1").await;
    assert!(status.class().is_success(), "read_methods_are_safe defaults to true: {status} {body}");
}

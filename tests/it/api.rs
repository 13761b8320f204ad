//! The JSON API: API keys, connections, fresh tokens, the authenticated proxy, and operations
//! endpoints.

use crate::common::{builder, TestApp};
use rocket::http::{ContentType, Header, Status};
use serde_json::{json, Value};
use wiremock::ResponseTemplate;

async fn api(app: &TestApp, method: &str, uri: &str, key: Option<&str>) -> (Status, Value, Vec<(String, String)>) {
    let mut req = match method {
        "POST" => app.client.post(uri.to_string()),
        _ => app.client.get(uri.to_string()),
    };
    if let Some(k) = key {
        req = req.header(Header::new("Authorization", format!("Bearer {k}")));
    }
    let res = req.dispatch().await;
    let status = res.status();
    let headers = res.headers().iter().map(|h| (h.name().to_string(), h.value().to_string())).collect();
    let body = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)), headers)
}

#[tokio::test]
async fn keys_are_shown_once_stored_hashed_and_revocable() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let key = alice.api_key("backup script").await;
    assert!(key.starts_with("tvk_") && key.len() >= 40);
    let page = alice.fetch("/settings/api-keys").await;
    assert!(page.text.contains("backup script") && page.text.contains(&key[..12]));
    assert!(!page.text.contains(&key), "the key is never shown again");
    assert!(!String::from_utf8_lossy(&app.database_bytes()).contains(&key), "only a hash is stored");

    let (status, body, _) = api(&app, "GET", "/api/v1/connections", Some(&key)).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(body, json!([]));
    assert!(alice.fetch("/settings/api-keys").await.text.contains("just now"), "last use is recorded");

    let id = regex::Regex::new(r#"data-key="(\d+)""#).unwrap().captures(&page.text).unwrap()[1].to_string();
    let csrf = alice.csrf("/settings/api-keys").await;
    let r = alice.post_form(&format!("/settings/api-keys/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let (status, body, _) = api(&app, "GET", "/api/v1/connections", Some(&key)).await;
    assert_eq!(status, Status::Unauthorized);
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn bad_keys_and_cookies_do_not_authenticate() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    for key in [None, Some("tvk_not-a-real-key"), Some("garbage")] {
        let (status, body, _) = api(&app, "GET", "/api/v1/connections", key).await;
        assert_eq!(status, Status::Unauthorized, "{key:?}");
        assert_eq!(body["error"], "unauthorized");
        assert!(body["request_id"].is_string());
    }
    // A signed-in browser session is not an API credential.
    let cookie = alice.cookie("tv_session").unwrap();
    let res =
        app.client.get("/api/v1/connections").cookie(rocket::http::Cookie::new("tv_session", cookie)).dispatch().await;
    assert_eq!(res.status(), Status::Unauthorized);
    // Someone else's revoke is a 404.
    let bob = app.user("bob").await;
    alice.api_key("a").await;
    let csrf = bob.csrf("/settings/api-keys").await;
    assert_eq!(bob.post_form("/settings/api-keys/1/revoke", &[("csrf_token", &csrf)]).await.status, Status::NotFound);
}

#[tokio::test]
async fn connections_and_fresh_tokens_for_the_keys_user_only() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    alice.connect("fake").await;
    let alice_key = alice.api_key("a").await;
    let bob_key = bob.api_key("b").await;

    let (status, body, _) = api(&app, "GET", "/api/v1/connections", Some(&alice_key)).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(body[0]["service"], "fake");
    assert_eq!(body[0]["status"], "active");
    assert_eq!(body[0]["scopes"], json!(["read", "write"]));
    assert!(!body.to_string().contains("CANARY"), "no tokens in the list");

    let (status, body, headers) = api(&app, "GET", "/api/v1/services/fake/token", Some(&alice_key)).await;
    assert_eq!(status, Status::Ok);
    let (stored, _) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(body["access_token"], stored);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_i64().unwrap() > 3000);
    assert!(headers.iter().any(|(k, v)| k == "Cache-Control" && v == "no-store"));

    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&bob_key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::NotFound, Some("not_connected")));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/nope/token", Some(&alice_key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::NotFound, Some("unknown_service")));
}

#[tokio::test]
async fn the_token_endpoint_refreshes_and_reports_failures_with_stable_codes() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(10)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    let (old, _) = app.stored_tokens("alice", "fake").unwrap();
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, &body["access_token"]), (Status::Ok, &json!(old)), "a 10 s token just issued is used");
    // Obtained an hour ago, it expires within the margin (and past half its lifetime).
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!(status, Status::Ok);
    assert_ne!(body["access_token"], old, "refreshed first");
    assert_eq!(app.fake.refresh_calls().await, 1);
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");

    app.fake.script(ResponseTemplate::new(503).set_body_json(json!({"error": "temporarily_unavailable"})));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadGateway, Some("provider_error")));
    // Degraded now (issue 12): its still valid token is handed out without another provider call
    // until the backoff step has passed.
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!(status, Status::Ok, "{body}");
    assert_eq!(app.fake.refresh_calls().await, 2);
    app.exec("UPDATE connections SET next_attempt_at = 1");
    app.fake.script(ResponseTemplate::new(200).set_delay(std::time::Duration::from_secs(5)));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::GatewayTimeout, Some("provider_timeout")));
    app.exec("UPDATE connections SET next_attempt_at = 1");
    app.fake.script(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_grant"})));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::Conflict, Some("reconnect_required")));
    let (status, _, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!(status, Status::Conflict, "and it stays so without provider calls");
}

/// The token API's status and access token.
async fn token(app: &TestApp, key: &str) -> (Status, String) {
    let (status, body, _) = api(app, "GET", "/api/v1/services/fake/token", Some(key)).await;
    (status, body["access_token"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn missing_client_credentials_and_rejected_ones_have_their_own_codes() {
    let app = TestApp::start().await;
    app.fake.with_state(|s| s.expires_in = Some(json!(5)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600"); // due for a refresh
    app.fake.script(ResponseTemplate::new(401).set_body_json(json!({"error": "invalid_client"})));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadGateway, Some("provider_rejected_client")));
    app.exec("DELETE FROM vault_entries WHERE path LIKE 'fake.%'");
    let calls = app.fake.token_calls().await;
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::ServiceUnavailable, Some("not_configured")));
    assert!(body["message"].as_str().unwrap_or_default().contains("an administrator must set fake.client_id"));
    // The same case on a page: the same status, as HTML, or as the same JSON when asked for.
    let page = alice.fetch("/services/fake/account").await;
    assert_eq!(page.status, Status::ServiceUnavailable, "{}", page.text);
    assert!(page.text.contains(r#"id="error""#) && page.text.contains("an administrator must set fake.client_id"));
    let json = alice.fetch_with("/services/fake/account", &[("Accept", "application/json")]).await;
    let body: Value = serde_json::from_str(&json.text).unwrap();
    assert_eq!((json.status, body["error"].as_str()), (Status::ServiceUnavailable, Some("not_configured")));
    assert_eq!(app.fake.token_calls().await, calls);
}

/// One error type: JSON for everything under `/api/` (whatever the `Accept`), HTML for pages,
/// and JSON for a page when the client prefers it.
#[tokio::test]
async fn errors_are_json_under_api_and_for_json_clients_html_otherwise() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let key = alice.api_key("a").await;
    let bearer = format!("Bearer {key}");
    for accept in [None, Some("text/html"), Some("*/*")] {
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(accept.map(|a| ("Accept", a)));
        let r = alice.fetch_with("/api/v1/services/nope/token", &headers).await;
        assert_eq!(r.status, Status::NotFound, "{accept:?}");
        assert_eq!(r.header("Content-Type"), Some("application/json"), "{accept:?}");
        let body: Value = serde_json::from_str(&r.text).expect("a JSON error");
        assert_eq!(body["error"], "unknown_service", "{accept:?}");
        assert_eq!(body["message"], "No such service.");
        assert_eq!(body["request_id"].as_str(), r.header("X-Request-Id"), "the id the log line carries");
    }
    let page = alice.fetch("/services/nope/account").await;
    assert_eq!(page.status, Status::NotFound);
    assert!(page.header("Content-Type").is_some_and(|t| t.starts_with("text/html")), "{:?}", page.headers);
    assert!(page.text.contains(r#"data-status="404""#) && page.text.contains("We could not find"), "{}", page.text);
    let json = alice.fetch_with("/services/nope/account", &[("Accept", "application/json")]).await;
    assert_eq!((json.status, json.header("Content-Type")), (Status::NotFound, Some("application/json")));
    let body: Value = serde_json::from_str(&json.text).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["message"].as_str()),
        (Some("not_found"), Some("We could not find what you asked for."))
    );
    // A catcher's error (no such route) speaks the same way, from the same table.
    let r = alice.fetch_with("/api/v1/nothing-here", &[("Authorization", &bearer)]).await;
    assert_eq!((r.status, r.header("Content-Type")), (Status::NotFound, Some("application/json")));
    assert_eq!(serde_json::from_str::<Value>(&r.text).unwrap()["error"], "not_found");
}

#[tokio::test]
async fn the_cache_never_serves_a_deleted_or_replaced_connection_or_a_revoked_key() {
    let app = builder().set("cache_ttl", 3600).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    let (status, first) = token(&app, &key).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(app.state().caches.connections.len(), 1, "the row is cached");
    // Reconnecting replaces the tokens: the next answer has the new one.
    alice.connect("fake").await;
    let (status, second) = token(&app, &key).await;
    assert_eq!(status, Status::Ok);
    assert_ne!(first, second);
    assert_eq!(second, app.stored_tokens("alice", "fake").unwrap().0);
    // A refresh (the provider said 401 to the proxy) leaves the new row in the cache.
    app.fake.invalidate_access_tokens();
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/proxy/me", Some(&key)).await;
    assert_eq!(status, Status::Created, "{body}");
    assert_eq!(app.fake.refresh_calls().await, 1);
    let cached =
        app.state().caches.connections.get(&(1, "fake".to_string())).expect("the refresher cached its row")[0].clone();
    assert_eq!(cached.version, app.count("SELECT version AS n FROM connections"));
    let (_, third) = token(&app, &key).await;
    assert_ne!(third, second);
    assert_eq!(third, app.stored_tokens("alice", "fake").unwrap().0);
    // Deleted in the web UI: gone at once.
    let csrf = alice.csrf("/settings/oauth2").await;
    assert_eq!(
        alice.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await.status,
        Status::SeeOther
    );
    assert_eq!(token(&app, &key).await.0, Status::NotFound);
    // Revoked: refused at once.
    let page = alice.fetch("/settings/api-keys").await;
    let id = regex::Regex::new(r#"data-key="(\d+)""#).unwrap().captures(&page.text).unwrap()[1].to_string();
    let csrf = alice.csrf("/settings/api-keys").await;
    alice.post_form(&format!("/settings/api-keys/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(token(&app, &key).await.0, Status::Unauthorized);
}

#[tokio::test]
async fn changes_from_elsewhere_arrive_by_invalidation_or_after_cache_ttl() {
    // A write by another instance (the model functions record an invalidation): applied within
    // about a second although the entry would live for an hour.
    let app = builder().set("cache_ttl", 3600).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    assert_eq!(api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0, Status::Ok);
    {
        let mut conn = app.db.conn().unwrap();
        use tokenvault::db::models::events::{EventKind, EventOutcome};
        let (kind, outcome) = (EventKind::Delete, EventOutcome::Ok);
        // Another instance's writes: this process learns of them from the recorded invalidations.
        tokenvault::oauth::store::delete_with_event(
            &mut conn,
            &tokenvault::changes::Ledger { cipher: app.state().cipher.clone(), events_kept: 50 },
            tokenvault::db::models::connections::Which::first(1),
            "fake",
            kind,
            outcome,
            "elsewhere",
        )
        .unwrap()
        .recorded_only();
        let (k, _) = tokenvault::db::models::api_keys::find_active(
            &mut conn,
            &tokenvault::util::sha256_hex(&key),
            tokenvault::util::now(),
        )
        .unwrap()
        .unwrap();
        tokenvault::changes::write_no_history(&mut conn, &app.state().cipher, |tx| {
            let key_hash = tokenvault::db::models::api_keys::revoke(tx.conn(), 1, k.id, 0)?.unwrap();
            let (by, why) = (tokenvault::changes::Actor::User(1), tokenvault::changes::KeyRevoked::ByUser);
            tx.record(tokenvault::changes::Change::ApiKeyRevoked {
                by,
                user_id: 1,
                key_id: k.id,
                key_hash,
                why,
                address: None,
            })
        })
        .unwrap()
        .recorded_only();
    }
    let started = std::time::Instant::now();
    while api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0 != Status::Unauthorized {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the invalidation was not applied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A change behind tokenvault's back (no invalidation): served from memory until `cache_ttl`.
    let app = builder().set("cache_ttl", 3).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    assert_eq!(api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0, Status::Ok);
    app.exec_unannounced("DELETE FROM connections");
    let (status, _, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!(status, Status::Ok, "still the cached row");
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await;
    assert_eq!((status, body["error"].as_str()), (Status::NotFound, Some("not_connected")));

    // `cache_ttl = 0`: every request reads the database.
    let app = builder().set("cache_ttl", 0).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    assert_eq!(api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0, Status::Ok);
    app.exec_unannounced("DELETE FROM connections");
    assert_eq!(api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0, Status::NotFound);
    assert!(app.state().caches.connections.is_empty());
}

#[tokio::test]
async fn the_proxy_forwards_with_the_token_and_strips_what_it_must() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    let res = app
        .client
        .post("/api/v1/services/fake/proxy/files/list%20all?recursive=true&x=%2F")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .header(Header::new("Cookie", "tv_session=should-not-leak"))
        .header(Header::new("Dropbox-API-Arg", "{\"path\":\"/\"}"))
        .header(Header::new("X-Custom-Arg", "not on the allowlist"))
        .header(Header::new("Accept-Language", "named in Connection"))
        .header(Header::new("Connection", "keep-alive, Accept-Language"))
        .header(ContentType::JSON)
        .body(r#"{"hello":"provider"}"#)
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Created, "the provider's status comes back");
    assert_eq!(res.headers().get_one("Content-Type"), Some("application/json"));
    assert!(res.headers().get_one("X-Provider-Header").is_none(), "not on the response allowlist");
    assert!(res.headers().get_one("Set-Cookie").is_none(), "provider cookies are dropped");
    let body: Value = res.into_json().await.unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/api/files/list%20all");
    assert_eq!(body["query"], "recursive=true&x=%2F");
    assert_eq!(body["body"], r#"{"hello":"provider"}"#);
    let (stored, _) = app.stored_tokens("alice", "fake").unwrap();
    let h = &body["headers"];
    assert_eq!(h["authorization"], format!("Bearer {stored}"), "the provider sees the user's token, not the API key");
    assert!(h.get("cookie").is_none());
    assert_eq!(h["dropbox-api-arg"], "{\"path\":\"/\"}");
    assert!(h.get("x-custom-arg").is_none(), "not on the request allowlist");
    assert!(h.get("accept-language").is_none(), "headers named in Connection are hop-by-hop");
    assert_eq!(h["content-type"], "application/json");
    assert!(!body.to_string().contains(&key));
}

#[tokio::test]
async fn the_proxy_refreshes_once_on_401_and_retries() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    app.fake.invalidate_access_tokens();
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/proxy/me", Some(&key)).await;
    assert_eq!(status, Status::Created, "{body}");
    assert_eq!(app.fake.refresh_calls().await, 1);
    assert_eq!(app.fake.requests_to("/api/me").await.len(), 2);
}

#[tokio::test]
async fn the_proxy_reaches_nothing_outside_the_configured_base() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    for path in [
        "/api/v1/services/fake/proxy/..%2F..%2Ftoken",
        "/api/v1/services/fake/proxy/%2e%2e/token",
        "/api/v1/services/fake/proxy/a/%2F%2Fevil.example",
        "/api/v1/services/fake/proxy/..",
    ] {
        let (status, body, _) = api(&app, "GET", path, Some(&key)).await;
        assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("bad_path")), "{path}");
    }
    // Encoded characters are passed on encoded once, and dot-files are ordinary segments.
    for (path, seen) in [
        ("/api/v1/services/fake/proxy/files/100%25", "/api/files/100%25"),
        ("/api/v1/services/fake/proxy/.well-known/x", "/api/.well-known/x"),
        ("/api/v1/services/fake/proxy/a%2541", "/api/a%2541"),
    ] {
        let (status, body, _) = api(&app, "GET", path, Some(&key)).await;
        assert_eq!((status, body["path"].as_str()), (Status::Created, Some(seen)), "{path}");
    }
    let paths: Vec<String> = app.fake.all_requests().await.iter().map(|r| r.url.path().to_string()).collect();
    assert_eq!(
        paths,
        ["/token", "/api/files/100%25", "/api/.well-known/x", "/api/a%2541"],
        "the connect exchange and the three legitimate calls, nothing else"
    );
}

#[tokio::test]
async fn proxy_size_caps() {
    let app = builder().set("proxy_max_request_bytes", 1024).set("proxy_max_response_bytes", 16 * 1024).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("a").await;
    let res = app
        .client
        .post("/api/v1/services/fake/proxy/upload")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .body(vec![b'x'; 4096])
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::PayloadTooLarge);
    assert!(app.fake.requests_to("/api/upload").await.is_empty());
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/proxy/big", Some(&key)).await;
    assert_eq!(status, Status::BadGateway, "{body}");
    assert_eq!(body["error"], "provider_response_too_large");
}

#[tokio::test]
async fn openapi_readyz_and_metrics() {
    let app = TestApp::start().await;
    let (status, doc, _) = api(&app, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(doc["openapi"], "3.0.3");
    // Every mounted API route, with its method, is in the document.
    let api_routes: Vec<_> = app.client.rocket().routes().filter(|r| r.uri.base() == "/api/v1").collect();
    assert_eq!(api_routes.len(), 9, "openapi, connections, token and six proxy methods");
    for route in api_routes {
        let path = route
            .uri
            .unmounted_origin
            .path()
            .to_string()
            .replace("<service>", "{service}")
            .replace("<path..>", "{path}");
        let method = route.method.as_str().to_ascii_lowercase();
        assert!(doc["paths"][&path][&method].is_object(), "{method} {path} is not in openapi.json");
        if path != "/openapi.json" {
            let forbidden = &doc["paths"][&path][&method]["responses"]["403"];
            assert!(forbidden.is_object(), "{method} {path} documents 403 forbidden_scope");
        }
    }
    let (status, body, _) = api(&app, "GET", "/api/v1/nope", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (Status::NotFound, Some("not_found")),
        "catchers answer JSON under /api"
    );
    let (status, body, _) = api(&app, "GET", "/readyz", None).await;
    assert_eq!((status, body["status"].as_str()), (Status::Ok, Some("ready")));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let res = app.client.get("/metrics").dispatch().await;
    assert_eq!(res.status(), Status::Ok);
    let text = res.into_string().await.unwrap();
    assert!(text.contains("tokenvault_http_requests_total{method=\"GET\",route=\"/services/<service>/authorize?<next>&<connection>&<scopes>\",status=\"200\"}"), "{text}");
    assert!(text.contains("tokenvault_connections{status=\"active\"} 1"));
    assert!(text.contains(
        "tokenvault_token_endpoint_duration_seconds_count{grant=\"authorization_code\",provider=\"fake\"} 1"
    ));
    assert!(!text.contains("CANARY"));
    // The caches' figures: the token API misses once, then hits (two lookups a call: picking the
    // account, then the token).
    let key = alice.api_key("a").await;
    for _ in 0..3 {
        assert_eq!(api(&app, "GET", "/api/v1/services/fake/token", Some(&key)).await.0, Status::Ok);
    }
    let text = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    assert!(text.contains("tokenvault_cache_lookups_total{cache=\"connections\",result=\"hit\"} 5"), "{text}");
    assert!(text.contains("tokenvault_cache_lookups_total{cache=\"connections\",result=\"miss\"} 1"), "{text}");
    assert!(text.contains("tokenvault_cache_lookups_total{cache=\"api_keys\",result=\"hit\"} 2"), "{text}");
    assert!(text.contains("tokenvault_cache_entries{cache=\"connections\"} 1"), "{text}");
    let off = builder().set("metrics", false).start().await;
    assert_eq!(off.client.get("/metrics").dispatch().await.status(), Status::NotFound);
}

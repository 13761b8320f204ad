//! Issue 10, items 5 and 6, through the API proxy: a hostile or odd provider API cannot set
//! cookies, CORS or other policies on tokenvault's origin, nor redirect a client that carries its
//! tokenvault key; ambiguous paths are refused before anything is sent; `HEAD` stays `HEAD`;
//! request headers pass by allowlist; and a provider that answers 401 to every call costs one
//! refresh per `refresh_cooldown`, however many calls arrive.
//!
//! The provider's API here is a wiremock server of the test's own (`api_base_url` points at it),
//! so each test decides exactly what it answers and sees exactly what it received; the fake
//! provider still issues and refreshes the tokens.

use rocket::http::{Header, Method, Status};
use serde_json::{json, Value};
use tokenvault::util::ExposeSecret;
use wiremock::matchers::{any, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{builder, Builder, TestApp};

/// A provider API at `<api>/v1`, a connected user `alice` and her API key.
async fn app_with_api(b: Builder, api: &MockServer) -> (TestApp, String) {
    let app = b.provider("api_base_url", format!("{}/v1", api.uri())).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = {
        let mut conn = app.db.conn().unwrap();
        let user = tokenvault::db::models::users::find_by_username(&mut conn, "alice").unwrap().unwrap();
        tokenvault::auth::api_key::create(
            &mut conn,
            &app.cipher,
            tokenvault::audit::Actor::Cli,
            user.id,
            "script",
            &Default::default(),
            20,
        )
        .unwrap()
        .key
    };
    (app, key.expose_secret().to_string())
}

struct Answer {
    status: Status,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn call(app: &TestApp, key: &str, method: Method, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = app.client.req(method, uri.to_string()).header(Header::new("Authorization", format!("Bearer {key}")));
    for (k, v) in headers {
        req = req.header(Header::new(k.to_string(), v.to_string()));
    }
    let res = req.dispatch().await;
    let status = res.status();
    let headers = res.headers().iter().map(|h| (h.name().to_string(), h.value().to_string())).collect();
    Answer { status, headers, body: res.into_string().await.unwrap_or_default() }
}

async fn get(app: &TestApp, key: &str, uri: &str) -> Answer {
    call(app, key, Method::Get, uri, &[]).await
}

#[tokio::test]
async fn only_allowlisted_response_headers_come_back() {
    let api = MockServer::start().await;
    Mock::given(path("/v1/files"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Set-Cookie", "provider_session=abc; Path=/")
                .insert_header("Access-Control-Allow-Origin", "*")
                .insert_header("Access-Control-Allow-Credentials", "true")
                .insert_header("Access-Control-Expose-Headers", "*")
                .insert_header("Clear-Site-Data", "\"*\"")
                .insert_header("Refresh", "0; url=https://evil.example/")
                .insert_header("Content-Location", "https://evil.example/")
                .insert_header("X-Provider-Debug", "internal")
                .insert_header("ETag", "\"v42\"")
                .insert_header("X-RateLimit-Remaining", "41")
                .insert_header("Dropbox-API-Result", "{\"name\":\"a.txt\"}")
                .set_body_json(json!({"files": ["a.txt"]})),
        )
        .mount(&api)
        .await;
    let (app, key) = app_with_api(builder(), &api).await;
    let res = get(&app, &key, "/api/v1/services/fake/proxy/files").await;
    assert_eq!(res.status, Status::Ok, "{}", res.body);
    assert_eq!(res.json(), json!({"files": ["a.txt"]}));
    assert_eq!(res.header("ETag"), Some("\"v42\""));
    assert_eq!(res.header("X-RateLimit-Remaining"), Some("41"));
    assert_eq!(res.header("Dropbox-API-Result"), Some("{\"name\":\"a.txt\"}"));
    assert_eq!(res.header("Content-Type"), Some("application/json"));
    for name in ["Set-Cookie", "Clear-Site-Data", "Refresh", "Content-Location", "X-Provider-Debug", "Location"] {
        assert_eq!(res.header(name), None, "{name} came back: {:?}", res.headers);
    }
    assert!(
        !res.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-")),
        "CORS headers came back: {:?}",
        res.headers
    );
    assert!(!res.headers.iter().any(|(_, v)| v.contains("evil.example") || v.contains("provider_session")));
}

#[tokio::test]
async fn a_provider_redirect_is_not_a_location_the_client_would_follow() {
    let api = MockServer::start().await;
    let redirect = |status: u16, to: &str| ResponseTemplate::new(status).insert_header("Location", to);
    Mock::given(path("/v1/moved")).respond_with(redirect(302, "/v1/files/elsewhere?x=1")).mount(&api).await;
    Mock::given(path("/v1/relative")).respond_with(redirect(307, "other")).mount(&api).await;
    Mock::given(path("/v1/away")).respond_with(redirect(302, "https://evil.example/steal")).mount(&api).await;
    Mock::given(path("/v1/up")).respond_with(redirect(301, "../token")).mount(&api).await;
    Mock::given(path("/v1/created"))
        .respond_with(ResponseTemplate::new(201).insert_header("Location", "/v1/files/new"))
        .mount(&api)
        .await;
    let (app, key) = app_with_api(builder(), &api).await;
    let base = format!("{}/v1", api.uri());
    for (uri, status, upstream) in [
        ("moved", 302, Some(format!("{base}/files/elsewhere?x=1"))),
        ("relative", 307, Some(format!("{base}/other"))),
        ("away", 302, None),
        ("up", 301, None),
        ("created", 201, Some(format!("{base}/files/new"))),
    ] {
        let res = get(&app, &key, &format!("/api/v1/services/fake/proxy/{uri}")).await;
        assert_eq!(res.status.code, status, "{uri}: the provider's status is kept");
        assert_eq!(res.header("Location"), None, "{uri}: no Location to follow with the tokenvault key");
        assert_eq!(res.header("X-Upstream-Location"), upstream.as_deref(), "{uri}");
    }
}

#[tokio::test]
async fn ambiguous_paths_are_refused_with_bad_path_and_nothing_is_sent() {
    let api = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200)).mount(&api).await;
    let (app, key) = app_with_api(builder(), &api).await;
    for p in [
        "files;jsessionid=1",
        "files/a;b/c",
        "%2e%2e/token",
        "%2E%2E/token",
        "files/%2e%2e",
        "files/.%2e/x",
        "files/%2E",
        "files/%2ewell-known",
        "files%5c..%5ctoken",
        "files%5C..",
    ] {
        let res = get(&app, &key, &format!("/api/v1/services/fake/proxy/{p}")).await;
        assert_eq!((res.status, res.json()["error"].as_str()), (Status::BadRequest, Some("bad_path")), "{p}");
    }
    // A raw backslash is no URI character at all: Rocket's parser refuses the request (400
    // `bad_request`) before any route runs (and the proxy would refuse it as `bad_path` too).
    let raw = "/api/v1/services/fake/proxy/files\\..\\token";
    let res = get(&app, &key, raw).await;
    assert_eq!((res.status, res.json()["error"].as_str()), (Status::BadRequest, Some("bad_request")), "{raw}");
    assert!(api.received_requests().await.unwrap().is_empty(), "nothing reached the provider");
    // Dots in names, a literal `%` and dot-files are fine.
    for p in ["v1.2/file.tar.gz", "files/100%25", ".well-known/x"] {
        assert_eq!(get(&app, &key, &format!("/api/v1/services/fake/proxy/{p}")).await.status, Status::Ok, "{p}");
    }
    assert_eq!(api.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn head_goes_upstream_as_head() {
    let api = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200).insert_header("ETag", "\"h\"")).mount(&api).await;
    let (app, key) = app_with_api(builder(), &api).await;
    let res = call(&app, &key, Method::Head, "/api/v1/services/fake/proxy/files/a.txt", &[]).await;
    assert_eq!(res.status, Status::Ok);
    assert_eq!(res.header("ETag"), Some("\"h\""));
    assert!(res.body.is_empty());
    let seen = api.received_requests().await.unwrap();
    let methods: Vec<_> = seen.iter().map(|r| (r.method.as_str().to_string(), r.url.path().to_string())).collect();
    assert_eq!(methods, [("HEAD".to_string(), "/v1/files/a.txt".to_string())]);
}

#[tokio::test]
async fn request_headers_off_the_allowlist_are_not_forwarded() {
    let api = MockServer::start().await;
    Mock::given(any()).respond_with(ResponseTemplate::new(200)).mount(&api).await;
    let (app, key) = app_with_api(builder(), &api).await;
    let sent = [
        ("Cookie", "tv_session=should-not-leak"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Real-IP", "203.0.113.7"),
        ("Forwarded", "for=203.0.113.7"),
        ("Origin", "https://evil.example"),
        ("Referer", "https://evil.example/page"),
        ("User-Agent", "caller-agent/1"),
        ("X-Custom-Debug", "caller-internal"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("Accept", "application/json"),
        ("If-None-Match", "\"v1\""),
        ("Dropbox-API-Arg", "{\"path\":\"/a\"}"),
    ];
    let res = call(&app, &key, Method::Get, "/api/v1/services/fake/proxy/files", &sent).await;
    assert_eq!(res.status, Status::Ok);
    let seen = api.received_requests().await.unwrap();
    let h = &seen[0].headers;
    let (stored, _) = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(h.get("authorization").unwrap().to_str().unwrap(), format!("Bearer {stored}"));
    for (name, value) in
        [("accept", "application/json"), ("if-none-match", "\"v1\""), ("dropbox-api-arg", "{\"path\":\"/a\"}")]
    {
        assert_eq!(h.get(name).and_then(|v| v.to_str().ok()), Some(value), "{name} is forwarded");
    }
    for name in [
        "cookie",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "origin",
        "referer",
        "x-custom-debug",
        "x-http-method-override",
    ] {
        assert!(h.get(name).is_none(), "{name} was forwarded");
    }
    assert_ne!(h.get("user-agent").and_then(|v| v.to_str().ok()), Some("caller-agent/1"));
    let everything = format!("{h:?}");
    assert!(!everything.contains("203.0.113.7") && !everything.contains(&key) && !everything.contains("tv_session"));
}

/// When the connection's last refresh was attempted.
fn refresh_after_401_at(app: &TestApp) -> i64 {
    app.count("SELECT refresh_after_401_at AS n FROM connections")
}

#[tokio::test]
async fn a_provider_answering_401_to_everything_costs_one_refresh_per_cooldown() {
    let api = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "missing_scope"})))
        .mount(&api)
        .await;
    let (app, key) = app_with_api(builder().set("refresh_cooldown", 3), &api).await;
    // No refresh attempted since the connection was made: the first 401 is answered with one.
    let uri = "/api/v1/services/fake/proxy/files";
    for i in 0..10 {
        let res = get(&app, &key, uri).await;
        assert_eq!(res.status, Status::Unauthorized, "call {i}: the provider's 401 is passed through");
        assert_eq!(res.json(), json!({"error": "missing_scope"}), "call {i}: with the provider's body");
    }
    let answers = futures_util::future::join_all((0..20).map(|_| get(&app, &key, uri))).await;
    assert!(answers.iter().all(|a| a.status == Status::Unauthorized));
    assert_eq!(app.fake.refresh_calls().await, 1, "one refresh for 30 calls");
    // The first call and its one retry, then one call each.
    assert_eq!(api.received_requests().await.unwrap().len(), 31);
    assert_eq!(app.text("SELECT status AS t FROM connections"), "active", "a 401 alone does not kill it");

    // Once the token is older than the cooldown, one more refresh — one, for any number of calls.
    let refreshed_at = refresh_after_401_at(&app);
    while tokenvault::util::now() < refreshed_at + 3 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let answers = futures_util::future::join_all((0..20).map(|_| get(&app, &key, uri))).await;
    assert!(answers.iter().all(|a| a.status == Status::Unauthorized));
    assert_eq!(get(&app, &key, uri).await.status, Status::Unauthorized);
    assert_eq!(app.fake.refresh_calls().await, 2);
}

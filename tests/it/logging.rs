//! The server's log: every line written while a request is handled carries its request id, the
//! same id the client gets as `X-Request-Id`.

use crate::common;

/// The server's log once it has the request line of request `id` (the child writes it
/// asynchronously).
async fn log_after(server: &common::server::Server, id: &str) -> String {
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains(&format!("request_id={id} method=")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    log
}

#[tokio::test]
async fn log_lines_inside_a_request_carry_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server =
        common::server::start(common::server::Options::new(&database.url, "http://127.0.0.1:9", dir.path())).await;
    let http =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(format!("{}/login", server.base)).send().await.unwrap().text().await.unwrap();
    let csrf =
        regex::Regex::new(r#"name="csrf_token" value="([^"]+)""#).unwrap().captures(&page).unwrap()[1].to_string();
    let res = http
        .post(format!("{}/login", server.base))
        .form(&[("csrf_token", csrf.as_str()), ("username", "nobody"), ("password", "not the password")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let log = log_after(&server, &id).await;
    let inside = format!("request{{request_id={id}}}: failed sign-in attempt");
    assert!(log.contains(&inside), "no `{inside}` in:\n{log}");
    assert!(log.contains(&format!("request_id={id} method=POST path=/login status=401")), "{log}");
    assert!(!log.contains("not the password") && !log.contains(&csrf), "no secrets in the log");
}

/// An API failure is one error logged once (besides the request line), with its status and code and
/// without the caller's key; the old API error type logged a 4xx not at all and a 5xx twice.
#[tokio::test]
async fn a_failure_is_logged_in_exactly_one_line() {
    use crate::common::cli::{text, tokenvault};
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let env = [("ROCKET_VAULT_KEY", common::VAULT_KEY), ("ROCKET_DATABASE_URL", database.url.as_str())];
    let added = tokenvault(dir.path(), &["user", "add", "erin"], &env, Some("a long cli password\n"));
    assert!(added.status.success(), "{}", text(&added));
    let created = tokenvault(dir.path(), &["api-key", "create", "erin", "logging test"], &env, None);
    assert!(created.status.success(), "{}", text(&created));
    let key = String::from_utf8(created.stdout).unwrap().trim().to_string();
    let server =
        common::server::start(common::server::Options::new(&database.url, "http://127.0.0.1:9", dir.path())).await;
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/api/v1/services/nope/token?canary=QUERY-CANARY", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let log = log_after(&server, &id).await;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
    let (request_line, failure): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| l.contains("method=GET"));
    assert_eq!(request_line.len(), 1, "{lines:#?}");
    assert_eq!(failure.len(), 1, "exactly one line for the failure: {lines:#?}");
    let line = failure[0];
    assert!(line.contains("request refused") && line.contains("404") && line.contains("unknown_service"), "{line}");
    assert!(!line.contains("QUERY-CANARY") && !request_line[0].contains("QUERY-CANARY"), "never the query");
    assert!(!log.contains(&key), "never the API key");
}

/// The server's log once it has the request lines of every request in `ids`.
async fn log_after_all(server: &common::server::Server, ids: &[String]) -> String {
    let mut log = String::new();
    for _ in 0..200 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if ids.iter().all(|id| log.contains(&format!("request_id={id} method="))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    log
}

/// Issue 19, item 4 (the log part): the path and every other value a client chooses are capped in
/// the log. A 60 KB path once made two 60 KB lines (the request line and the error's line).
#[tokio::test]
async fn a_60_kb_path_makes_no_long_log_line() {
    use crate::common::cli::{text, tokenvault};
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let providers = common::server::fake_provider_env("http://127.0.0.1:9");
    let env = [
        ("ROCKET_VAULT_KEY", common::VAULT_KEY),
        ("ROCKET_DATABASE_URL", database.url.as_str()),
        ("ROCKET_PROVIDERS", providers.as_str()),
    ];
    let added = tokenvault(dir.path(), &["user", "add", "erin"], &env, Some("a long cli password\n"));
    assert!(added.status.success(), "{}", text(&added));
    // A key for `fake` only: another service named in the path is refused with that name in the error.
    let created = tokenvault(dir.path(), &["api-key", "create", "erin", "limited", "--service", "fake"], &env, None);
    assert!(created.status.success(), "{}", text(&created));
    let key = String::from_utf8(created.stdout).unwrap().trim().to_string();
    let server =
        common::server::start(common::server::Options::new(&database.url, "http://127.0.0.1:9", dir.path())).await;
    let before = std::fs::read_to_string(&server.log).unwrap_or_default().len();

    let long = "a".repeat(60 * 1024);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (url, bearer) in [
        (format!("{}/{long}", server.base), false),
        (format!("{}/api/v1/services/{long}/token", server.base), true),
        (format!("{}/api/v1/services/fake/proxy/{}", server.base, vec![&long[..1024]; 59].join("/")), true),
    ] {
        let mut req = http.get(&url);
        if bearer {
            req = req.bearer_auth(&key);
        }
        let res = req.send().await.unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
        ids.push(res.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    let log = log_after_all(&server, &ids).await;
    let lines: Vec<&str> = log.lines().filter(|l| ids.iter().any(|id| l.contains(id.as_str()))).collect();
    assert!(lines.len() >= 4, "a request line each and the refusal's line: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("forbidden_scope")), "the error's line is there too: {lines:#?}");
    for line in &lines {
        assert!(line.len() <= 1024, "a {} byte log line: {}…", line.len(), &line[..200]);
    }
    assert!(lines.iter().any(|l| l.contains(&format!("{}…", &long[..200]))), "the path is cut, and says so");
    let grown = log.len() - before;
    assert!(grown < 8 * 1024, "three 60 KB requests grew the log by {grown} bytes");
}

/// Issue 19, "also seen": each API request on a degraded connection whose token has expired wrote
/// an ERROR line (299 for 300 polls). The state change is logged once; a refusal that repeats it
/// is not an error.
#[tokio::test]
async fn polling_a_degraded_connection_logs_the_state_change_once_not_each_refusal() {
    let fake = common::FakeProvider::start().await;
    fake.with_state(|s| s.expires_in = Some(serde_json::json!(1)));
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
    {
        let mut conn = db.conn().unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
    }
    let fake_url = fake.uri();
    let mut options = common::server::Options::new(&database.url, &fake_url, dir.path());
    options.env.push(("ROCKET_KEEPALIVE_WORKER".into(), "false".into()));
    let server = common::server::start(options).await;
    common::server::sign_up_and_connect(&server.base, &fake, "alice").await;
    let key = {
        let mut conn = db.conn().unwrap();
        let user = tokenvault::db::models::users::find_by_username(&mut conn, "alice").unwrap().unwrap();
        let cli = tokenvault::audit::Actor::Cli;
        tokenvault::auth::api_key::create(&mut conn, &cipher, cli, user.id, "poller", &Default::default(), 20).unwrap()
    };
    use tokenvault::util::ExposeSecret;
    let bearer = format!("Bearer {}", key.key.expose_secret());
    // The token expires; the provider is down for its refresh.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    fake.script(
        wiremock::ResponseTemplate::new(503).set_body_json(serde_json::json!({"error": "temporarily_unavailable"})),
    );
    let http = reqwest::Client::new();
    let poll = || async {
        let res = http
            .get(format!("{}/api/v1/services/fake/token", server.base))
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.headers()["x-request-id"].to_str().unwrap().to_string())
    };
    let (first, first_id) = poll().await;
    assert_eq!(first, 502, "the refresh failed: the connection is degraded");
    let mut ids = vec![first_id.clone()];
    for _ in 0..30 {
        let (status, id) = poll().await;
        assert_eq!(status, 503, "backing off: no provider call");
        ids.push(id);
    }
    assert_eq!(fake.refresh_calls().await, 1);
    let log = log_after_all(&server, &ids).await;
    let degraded: Vec<&str> = log.lines().filter(|l| l.contains("connection degraded")).collect();
    assert_eq!(degraded.len(), 1, "{degraded:#?}");
    assert!(degraded[0].contains("WARN"), "{}", degraded[0]);
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.iter().all(|l| l.contains(&first_id)),
        "no ERROR line for a refusal that repeats the state: {errors:#?}"
    );
    for id in &ids[1..] {
        let refused = log.lines().filter(|l| l.contains(id.as_str()) && l.contains("request refused")).count();
        assert_eq!(refused, 1, "each refusal is still one line, at info: {id}");
    }
}

//! The server's log: every line written while a request is handled carries its request id, the
//! same id the client gets as `X-Request-Id`.

mod common;

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
    use common::cli::{text, tokenvault};
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

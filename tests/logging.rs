//! The server's log: every line written while a request is handled carries its request id, the
//! same id the client gets as `X-Request-Id`.

mod common;

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
    // The log is written asynchronously by the child: wait for the request line.
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains(&format!("request_id={id} method=POST")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let inside = format!("request{{request_id={id}}}: failed sign-in attempt");
    assert!(log.contains(&inside), "no `{inside}` in:\n{log}");
    assert!(log.contains(&format!("request_id={id} method=POST path=/login status=401")), "{log}");
    assert!(!log.contains("not the password") && !log.contains(&csrf), "no secrets in the log");
}

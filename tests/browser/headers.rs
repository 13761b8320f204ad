//! Security headers on ordinary pages, error pages and the OAuth callback (no browser needed).

use crate::harness::App;

#[tokio::test]
async fn security_headers_on_pages_errors_and_callback() {
    let app = App::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    for (path, status) in
        [("/", Some(200)), ("/nope", Some(404)), ("/services/demo/callback?state=x", None), ("/login", Some(200))]
    {
        let res = http.get(app.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if let Some(status) = status {
            assert_eq!(res.status().as_u16(), status, "GET {path}");
        }
        let h = res.headers();
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let csp = header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "GET {path}: CSP without frame-ancestors 'none': {csp:?}");
        assert!(csp.contains("default-src 'none'"), "GET {path}: CSP without default-src 'none': {csp:?}");
        assert_eq!(header("x-content-type-options"), "nosniff", "GET {path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "GET {path}");
    }
}

//! CORS for browser-based OAuth and MCP clients (issue 22): the metadata documents and the
//! token, registration and revocation endpoints answer any origin without credentials; `/mcp`
//! answers its own origin and those of `mcp_allowed_origins` only (others stay 403 against DNS
//! rebinding); cookie-authenticated pages and forms never carry a CORS header.

use rocket::http::{Header, Method, Status};
use serde_json::json;

use crate::common::{builder, TestApp, PUBLIC_URL};
use crate::oauth_server::{authorize_url, consent, exchange, pkce, register, REDIRECT};

const BROWSER: &str = "https://agent.example";

struct Answer {
    status: Status,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// No CORS header at all, and never credentials.
    fn no_cors(&self) -> bool {
        !self.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
    }
}

async fn send(app: &TestApp, method: Method, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut req = app.client.req(method, uri.to_string());
    for (k, v) in headers {
        req = req.header(Header::new(k.to_string(), v.to_string()));
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let res = req.dispatch().await;
    let headers = res.headers().iter().map(|h| (h.name().to_string(), h.value().to_string())).collect();
    Answer { status: res.status(), headers }
}

async fn preflight(app: &TestApp, uri: &str, origin: &str, method: &str, headers: &str) -> Answer {
    let h =
        [("Origin", origin), ("Access-Control-Request-Method", method), ("Access-Control-Request-Headers", headers)];
    send(app, Method::Options, uri, &h, None).await
}

#[tokio::test]
async fn oauth_endpoints_and_metadata_answer_any_origin_without_credentials() {
    let app = builder().start().await;
    for (uri, method) in [
        ("/.well-known/oauth-authorization-server", "GET"),
        ("/.well-known/openid-configuration", "GET"),
        ("/.well-known/oauth-protected-resource", "GET"),
        ("/.well-known/oauth-protected-resource/mcp", "GET"),
        ("/.well-known/oauth-protected-resource/api/v1", "GET"),
        ("/oauth/token", "POST"),
        ("/oauth/register", "POST"),
        ("/oauth/revoke", "POST"),
    ] {
        let p = preflight(&app, uri, BROWSER, method, "content-type").await;
        assert_eq!(p.status, Status::NoContent, "{uri}");
        assert_eq!(p.get("Access-Control-Allow-Origin"), Some("*"), "{uri}");
        assert!(p.get("Access-Control-Allow-Methods").is_some_and(|m| m.contains(method)), "{uri}");
        let wanted = if method == "GET" { "MCP-Protocol-Version" } else { "Content-Type" };
        assert!(p.get("Access-Control-Allow-Headers").is_some_and(|h| h.contains(wanted)), "{uri}");
        assert_eq!(p.get("Access-Control-Allow-Credentials"), None, "{uri}: bearer tokens only");
        if method == "GET" {
            let a = send(&app, Method::Get, uri, &[("Origin", BROWSER)], None).await;
            assert_eq!(a.status, Status::Ok, "{uri}");
            assert_eq!(a.get("Access-Control-Allow-Origin"), Some("*"), "{uri}");
            assert_eq!(a.get("Access-Control-Allow-Credentials"), None);
        }
    }
    // The actual requests of a browser client: registration, then a refused token request whose
    // answer it must be able to read.
    let body = json!({"client_name": "SPA", "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
    let h = [("Origin", BROWSER), ("Content-Type", "application/json")];
    let a = send(&app, Method::Post, "/oauth/register", &h, Some(&body.to_string())).await;
    assert_eq!(a.status, Status::Created);
    assert_eq!(a.get("Access-Control-Allow-Origin"), Some("*"));
    let h = [("Origin", BROWSER), ("Content-Type", "application/x-www-form-urlencoded")];
    let a = send(&app, Method::Post, "/oauth/token", &h, Some("grant_type=authorization_code&code=x")).await;
    assert_eq!(a.status, Status::Unauthorized, "no client: invalid_client");
    assert_eq!(a.get("Access-Control-Allow-Origin"), Some("*"));
    let a = send(&app, Method::Post, "/oauth/revoke", &h, Some("token=x&client_id=nope")).await;
    assert_eq!(a.get("Access-Control-Allow-Origin"), Some("*"), "{:?}", a.status);
    // Cookie-authenticated pages and forms, and introspection (confidential clients): no CORS.
    for uri in ["/oauth/authorize", "/oauth/introspect", "/settings/apps", "/admin/oauth-clients", "/login", "/"] {
        let p = preflight(&app, uri, BROWSER, "POST", "content-type").await;
        assert!(p.no_cors(), "{uri}: {:?}", p.headers);
        assert_ne!(p.status, Status::NoContent, "{uri}");
        let a = send(&app, Method::Get, uri, &[("Origin", BROWSER)], None).await;
        assert!(a.no_cors(), "{uri}: {:?}", a.headers);
    }
    let a = send(&app, Method::Get, "/api/v1/connections", &[("Origin", BROWSER)], None).await;
    assert!(a.no_cors(), "{:?}", a.headers);
}

async fn mcp_token(app: &TestApp) -> String {
    let alice = app.user("alice").await;
    let client_id = register(app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let mcp = format!("{PUBLIC_URL}/mcp");
    let url =
        authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "connections:read"), ("resource", &mcp)]);
    let (code, _) = consent(&alice, &url, |_| {}).await;
    let (_, tokens) = exchange(app, &client_id, &code, &verifier, &[("resource", &mcp)]).await;
    tokens["access_token"].as_str().unwrap().to_string()
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "spa", "version": "1"}}})
    .to_string()
}

async fn mcp_post(app: &TestApp, origin: &str, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![
        ("Origin", origin),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(b) = bearer.as_deref() {
        h.push(("Authorization", b));
    }
    send(app, Method::Post, "/mcp", &h, Some(&initialize())).await
}

#[tokio::test]
async fn mcp_answers_only_the_origins_it_accepts() {
    let allowed = "http://localhost:6274";
    let app = builder().set("mcp_allowed_origins", vec![allowed, "https://inspector.example"]).start().await;
    let token = mcp_token(&app).await;
    // An allowed browser origin: its preflight, and every answer readable (the 401 challenge too).
    let p = preflight(&app, "/mcp", allowed, "POST", "authorization,content-type,mcp-protocol-version").await;
    assert_eq!(p.status, Status::NoContent);
    assert_eq!(p.get("Access-Control-Allow-Origin"), Some(allowed));
    assert_eq!(p.get("Access-Control-Allow-Credentials"), None);
    let allow = p.get("Access-Control-Allow-Headers").unwrap();
    for h in ["Authorization", "Content-Type", "Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID"] {
        assert!(allow.contains(h), "{h} in {allow}");
    }
    let methods = p.get("Access-Control-Allow-Methods").unwrap();
    assert!(["GET", "POST", "DELETE"].iter().all(|m| methods.contains(m)), "{methods}");
    let a = mcp_post(&app, allowed, None).await;
    assert_eq!(a.status, Status::Unauthorized);
    assert_eq!(a.get("Access-Control-Allow-Origin"), Some(allowed));
    assert!(a.get("Access-Control-Expose-Headers").is_some_and(|e| e.contains("WWW-Authenticate")));
    let a = mcp_post(&app, allowed, Some(&token)).await;
    assert_eq!(a.status, Status::Ok);
    assert_eq!(a.get("Access-Control-Allow-Origin"), Some(allowed));
    assert!(a.get("Access-Control-Expose-Headers").is_some_and(|e| e.contains("Mcp-Session-Id")));
    assert!(a.get("Vary").is_some_and(|v| v.contains("Origin")), "{:?}", a.headers);
    assert!(a.get("Mcp-Session-Id").is_some());
    assert_eq!(a.get("Access-Control-Allow-Credentials"), None);
    // The app's own origin is accepted as before.
    assert_eq!(mcp_post(&app, PUBLIC_URL, Some(&token)).await.status, Status::Ok);
    // Any other origin: the preflight refused, the request 403 (DNS rebinding), no CORS header.
    for origin in ["https://evil.example", "http://localhost:6275", "null", "https://inspector.example.evil"] {
        let p = preflight(&app, "/mcp", origin, "POST", "authorization").await;
        assert_eq!(p.status, Status::Forbidden, "{origin}");
        assert!(p.no_cors(), "{origin}: {:?}", p.headers);
        let a = mcp_post(&app, origin, Some(&token)).await;
        assert_eq!(a.status, Status::Forbidden, "{origin}");
        assert!(a.no_cors() && a.get("Mcp-Session-Id").is_none(), "{origin}: {:?}", a.headers);
    }
}

#[tokio::test]
async fn by_default_mcp_accepts_no_other_origin() {
    let app = builder().start().await;
    let token = mcp_token(&app).await;
    let p = preflight(&app, "/mcp", "http://localhost:6274", "POST", "authorization").await;
    assert_eq!(p.status, Status::Forbidden);
    assert!(p.no_cors());
    let a = mcp_post(&app, "http://localhost:6274", Some(&token)).await;
    assert_eq!(a.status, Status::Forbidden);
    assert!(a.no_cors());
}

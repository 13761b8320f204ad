//! Generic OpenID Connect providers configured by `issuer` alone.

use crate::common::builder;
use rocket::figment::value::{Dict, Value};
use rocket::http::Status;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn discovery_server(issuer_override: Option<&str>) -> MockServer {
    let server = MockServer::start().await;
    let uri = server.uri();
    let doc = serde_json::json!({
        "issuer": issuer_override.unwrap_or(&uri),
        "authorization_endpoint": format!("{uri}/oidc/authorize"),
        "token_endpoint": format!("{uri}/oidc/token"),
        "revocation_endpoint": format!("{uri}/oidc/revoke"),
        "userinfo_endpoint": format!("{uri}/oidc/userinfo"),
        "token_endpoint_auth_methods_supported": ["client_secret_post"],
    });
    Mock::given(path("/.well-known/openid-configuration"))
        .respond_with(ResponseTemplate::new(200).set_body_json(doc))
        .mount(&server)
        .await;
    server
}

fn oidc_provider(name: &str, issuer: &str) -> Value {
    let mut cfg = Dict::new();
    cfg.insert("issuer".into(), issuer.into());
    cfg.insert("display_name".into(), "Acme ID".into());
    let mut providers = Dict::new();
    providers.insert(name.into(), cfg.into());
    providers.into()
}

#[tokio::test]
async fn discovery_with_a_matching_issuer_configures_the_provider() {
    let server = discovery_server(None).await;
    let app = builder().set("providers", oidc_provider("acme", &server.uri())).start().await;
    let alice = app.user("alice").await;
    let mut conn = app.db.conn().unwrap();
    tokenvault::vault::store::set(&mut conn, &app.cipher, "acme.client_id", "acme-client", "test").unwrap();
    let page = alice.fetch("/services/acme/authorize").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains("Acme ID") && page.text.contains("<code>openid</code>"));
    let url = alice.start_flow("acme").await;
    assert!(url.as_str().starts_with(&format!("{}/oidc/authorize?", server.uri())));
    // The fake provider configured beside it is still there.
    assert_eq!(alice.fetch("/services/fake/authorize").await.status, Status::Ok);
    // And the CSP lets the Authorize form reach the discovered origin.
    let csp = page.header("Content-Security-Policy").unwrap();
    assert!(csp.contains(&server.uri()), "{csp}");
}

#[tokio::test]
async fn discovery_with_a_mismatching_issuer_refuses_the_provider() {
    let server = discovery_server(Some("https://evil.example")).await;
    let app = builder().set("providers", oidc_provider("acme", &server.uri())).start().await;
    let alice = app.user("alice").await;
    assert_eq!(alice.fetch("/services/acme/authorize").await.status, Status::NotFound);
    assert!(!alice.fetch("/").await.text.contains("Acme ID"));
    assert_eq!(alice.fetch("/services/fake/authorize").await.status, Status::Ok, "the app still runs");
}

#[tokio::test]
async fn an_unreachable_discovery_document_refuses_the_provider() {
    let app = builder().set("providers", oidc_provider("acme", "http://127.0.0.1:9")).start().await;
    let alice = app.user("alice").await;
    assert_eq!(alice.fetch("/services/acme/authorize").await.status, Status::NotFound);
}

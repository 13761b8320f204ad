//! The provider on another site, as in a real deployment: app A (127.0.0.1) connects the demo
//! provider served by a second tokenvault, B (127.0.0.2). The browser crosses sites twice — A's
//! Authorize form redirects to B, B's consent redirects back to A's callback — so this checks that
//! A's session cookie (SameSite=Lax) comes back along with the top-level redirect, and that the
//! Content-Security-Policies (`form-action`) let both form submissions redirect where they must.

use std::time::{Duration, Instant};
use tokenvault::util::ExposeSecret;

use tokenvault::db::Db;
use tokenvault::vault::{store, Cipher};

use crate::harness::{free_port_on, random_vault_key, AppConfig, Browser, WAIT};

const A_IP: &str = "127.0.0.1";
const B_IP: &str = "127.0.0.2";

/// Copy the demo client's credentials that B created on its first start into A's vault.
fn share_client_credentials(vault_key: &str, from_db: &str, to_db: &str) {
    let cipher = Cipher::from_base64(vault_key, &[]).expect("the vault key opens");
    let from = Db::open_sized(from_db, 1).expect("open the provider's database");
    let mut conn = from.conn().expect("a connection to the provider's database");
    let mut read = |path: &str| {
        store::get(&mut conn, &cipher, path)
            .expect("read the provider's vault")
            .unwrap_or_else(|| panic!("the provider has no {path}"))
            .expose_secret()
            .to_string()
    };
    let (id, secret) = (read("demo.client_id"), read("demo.client_secret"));
    drop(conn);
    let to = Db::open_sized(to_db, 1).expect("open the app's database");
    let mut conn = to.conn().expect("a connection to the app's database");
    for (path, value) in [("demo.client_id", &id), ("demo.client_secret", &secret)] {
        store::set(&mut conn, &cipher, path, value, "browser-test").expect("write the app's vault");
    }
}

#[tokio::test]
async fn connect_a_provider_on_another_site() {
    let vault_key = random_vault_key();
    let (port_a, port_b) = (free_port_on(A_IP), free_port_on(B_IP));
    let b_base = format!("http://{B_IP}:{port_b}");
    let provider = AppConfig::new()
        .ip(B_IP)
        .port(port_b)
        .vault_key(&vault_key)
        .env("ROCKET_DEMO_REDIRECT_URIS", format!("[\"http://{A_IP}:{port_a}/services/demo/callback\"]"));
    let providers = format!(
        "{{demo={{display_name=\"Remote demo\",authorize_url=\"{b_base}/demo/oauth2/authorize\",\
         token_url=\"{b_base}/demo/oauth2/token\",revoke_url=\"{b_base}/demo/oauth2/revoke\",\
         account_url=\"{b_base}/demo/api/account\",issuer=\"{b_base}/demo\",scopes=[\"profile\",\"files.read\"],\
         client_auth=\"basic\"}}}}"
    );
    let app = AppConfig::new()
        .ip(A_IP)
        .port(port_a)
        .vault_key(&vault_key)
        .env("ROCKET_DEMO_PROVIDER", "false")
        .env("ROCKET_PROVIDERS", providers);
    let Some((b, provider)) = Browser::start_with_second_app(app, provider).await else { return };
    assert_eq!(provider.base, b_base);
    share_client_credentials(&vault_key, &provider.database_url(), &b.app.database_url());

    b.signup("remy").await;
    assert!(!b.exists("#demo-console").await, "A serves no demo provider of its own");
    let card = b.text(".service-card[data-service=\"demo\"]").await;
    assert!(card.contains("Remote demo"), "the configured provider is on the dashboard: {card}");

    b.click_to("#connect-demo", "#authorize").await;
    assert_eq!(b.path().await, "/services/demo/authorize");
    assert!(!b.exists("#not-configured").await, "A has the client credentials");
    b.click_to("#authorize", "#consent").await;
    let consent = b.c.current_url().await.expect("current URL");
    assert_eq!(consent.origin().ascii_serialization(), b_base, "the consent page is B's");
    assert_eq!(consent.path(), "/demo/oauth2/authorize");
    assert!(!b.exists("#logout").await, "nobody is signed in at B");

    // Allow: B answers 303 to A's callback. Watch the console while waiting, to name a blocked
    // redirect at once rather than time out on it.
    let mut console = Vec::new();
    let old = b.find("html").await;
    b.find("#allow").await.click().await.expect("click Allow");
    let deadline = Instant::now() + WAIT;
    loop {
        console.extend(b.console_log().await);
        let blocked: Vec<&String> = console.iter().filter(|m| m.contains("Content Security Policy")).collect();
        assert!(blocked.is_empty(), "a Content-Security-Policy blocked the way back to A: {blocked:#?}");
        if old.tag_name().await.is_err() && b.exists("#connected[data-service=\"demo\"]").await {
            break;
        }
        assert!(Instant::now() < deadline, "Allow did not lead back to A's #connected; {}", b.context().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = b.c.current_url().await.expect("current URL");
    assert_eq!(back.origin().ascii_serialization(), b.app.base, "back on A");
    assert_eq!(back.path(), "/services/demo/connected");
    assert!(b.text("#connected").await.contains("Remote demo"));
    assert!(b.text("#logout").await.contains("remy"), "still signed in at A after the round trip");

    // A calls B's account API with the stored token.
    b.goto("/services/demo/account").await;
    b.wait_for("#account[data-state=\"ok\"]").await;
    let json = b.text("#account-json").await;
    assert!(json.contains("alice@demo.example"), "B's account API answered A: {json}");

    console.extend(b.console_log().await);
    let csp_messages: Vec<&String> = console.iter().filter(|m| m.contains("Content Security Policy")).collect();
    assert!(csp_messages.is_empty(), "a Content-Security-Policy blocked something: {csp_messages:#?}");

    b.finish().await;
}

//! `/admin/providers` (issue 21): an administrator adds a provider on the page — the built-in demo
//! provider's endpoints under another name, its client credentials typed into the same form — and
//! a user connects it at once, without a restart; disabled, its card and the API are gone (409
//! `service_disabled`); enabled, back; deleted with its connections.

use crate::harness::{random_vault_key, AppConfig, Browser};
use tokenvault::util::ExposeSecret;

async fn api_status(base: &str, key: &str, service: &str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/services/{service}/token"))
        .header("Authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_provider_added_on_the_page_is_connected_disabled_enabled_and_deleted_without_a_restart() {
    let port = crate::binary::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let vault_key = random_vault_key();
    // The demo provider accepts the new provider's redirect URI too.
    let config = AppConfig::new()
        .port(port)
        .vault_key(&vault_key)
        .env("ROCKET_DEMO_REDIRECT_URIS", format!("[\"{base}/services/mydemo/callback\"]"));
    let Some(b) = Browser::start_with(config).await else { return };
    b.signup("admin").await;
    assert!(b.exists("#nav-providers").await && b.exists("#nav-audit").await);
    // The demo client's credentials, as an administrator would copy them from the provider.
    let (client_id, client_secret) = {
        let db = tokenvault::db::Db::open_sized(&b.app.database_url(), 1).unwrap();
        let cipher = tokenvault::vault::Cipher::from_base64(&vault_key, &[]).unwrap();
        let mut conn = db.conn().unwrap();
        let get = |conn: &mut tokenvault::db::Conn, path: &str| {
            tokenvault::vault::store::get(conn, &cipher, path).unwrap().unwrap().expose_secret().to_string()
        };
        (get(&mut conn, "demo.client_id"), get(&mut conn, "demo.client_secret"))
    };

    b.goto("/admin/providers").await;
    b.wait_for("#providers").await;
    assert!(b.exists("tr[data-provider=\"demo\"][data-origin=\"config\"]").await);
    b.fill("#new-provider-name", "mydemo").await;
    b.fill("#new-provider-client-id", &client_id).await;
    b.fill("#new-provider-client-secret", &client_secret).await;
    let settings = [
        "display_name = \"My Demo\"".to_string(),
        format!("authorize_url = \"{base}/demo/oauth2/authorize\""),
        format!("token_url = \"{base}/demo/oauth2/token\""),
        format!("revoke_url = \"{base}/demo/oauth2/revoke\""),
        format!("account_url = \"{base}/demo/api/account\""),
        format!("api_base_url = \"{base}/demo/api\""),
        format!("issuer = \"{base}/demo\""),
        "scopes = [\"profile\", \"files.read\"]".to_string(),
        "account_id_pointer = \"/id\"".to_string(),
        "account_label_pointer = \"/email\"".to_string(),
        "client_auth = \"basic\"".to_string(),
    ];
    b.fill("#new-provider-settings", &settings.join("\n")).await;
    b.click_to("#add-provider-submit", "#flash").await;
    let row = "tr[data-provider=\"mydemo\"][data-origin=\"added\"][data-enabled=\"true\"][data-credentials=\"set\"]";
    assert!(b.exists(row).await, "{}", b.source().await);
    let redirect = b.find("#redirect-uri-mydemo").await.prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(redirect, format!("{base}/services/mydemo/callback"));
    assert!(!b.source().await.contains(&client_secret), "the secret is never shown");

    // A user connects it at once (no restart).
    b.goto("/").await;
    b.click_to("#connect-mydemo", "#authorize").await;
    b.click_to("#authorize", "#consent").await;
    b.click_to("#allow", "#connected").await;
    assert_eq!(b.path().await, "/services/mydemo/connected");
    b.goto("/settings/api-keys").await;
    b.fill("#api-key-name", "script").await;
    b.click_to("#api-key-create", "#new-api-key").await;
    let key = b.text("#new-api-key").await;
    assert_eq!(api_status(&base, &key, "mydemo").await.0, 200);

    // Disabled: the card and the Connect button are gone, the API refuses with a clear code.
    b.goto("/admin/providers").await;
    b.click_to("#disable-provider-mydemo", "#flash").await;
    assert!(b.exists("tr[data-provider=\"mydemo\"][data-enabled=\"false\"]").await);
    b.goto("/").await;
    b.wait_for("main").await;
    assert!(!b.exists("[data-service=\"mydemo\"]").await);
    assert!(!b.exists("#connect-mydemo").await);
    let (status, body) = api_status(&base, &key, "mydemo").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("service_disabled")), "{body}");

    // Enabled: everything is back, the connection kept.
    b.goto("/admin/providers").await;
    b.click_to("#enable-provider-mydemo", "#flash").await;
    b.goto("/").await;
    b.wait_for("[data-service=\"mydemo\"]").await;
    assert_eq!(api_status(&base, &key, "mydemo").await.0, 200);

    // Deleted with its connection (the box ticked): revoked at the provider, then gone.
    b.goto("/admin/providers").await;
    b.find("#delete-connections-mydemo").await.click().await.unwrap();
    b.click_to("#delete-provider-mydemo", "#flash").await;
    assert!(b.text("#flash").await.contains("1 connection(s) revoked and deleted"), "{}", b.text("#flash").await);
    assert!(!b.exists("tr[data-provider=\"mydemo\"]").await);
    assert_eq!(api_status(&base, &key, "mydemo").await.0, 404);
    b.goto("/").await;
    b.wait_for("main").await;
    assert!(!b.exists("[data-service=\"mydemo\"]").await);
    assert!(!b.app.stderr().contains(&client_secret), "the log never holds the secret");
    b.finish().await;
}

/// A real OpenID Connect provider (`oidc-provider`, installed by .ci/run under target/oidc) run by
/// node on `port`, with one client; `None` (the test skipped) when node or the package is missing,
/// unless TOKENVAULT_REQUIRE_BROWSER is set (CI), where that is a failure.
struct OidcProvider(std::process::Child);

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the provider on a free port (another one when the port was taken between `free_port` and
/// node's `listen`: a race with the other tests); the provider and its port.
fn start_oidc_provider(client_id: &str, client_secret: &str, redirect_uri: &str) -> Option<(OidcProvider, u16)> {
    for _ in 0..5 {
        let port = crate::binary::free_port();
        match start_oidc_provider_on(port, client_id, client_secret, redirect_uri)? {
            Some(provider) => return Some((provider, port)),
            None => continue,
        }
    }
    panic!("the OpenID provider did not start on any of five free ports");
}

/// `None`: node and the package are missing (skipped); `Some(None)`: it did not start on `port`.
fn start_oidc_provider_on(
    port: u16,
    client_id: &str,
    client_secret: &str,
    redirect_uri: &str,
) -> Option<Option<OidcProvider>> {
    use std::io::BufRead;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/oidc/node_modules");
    let required = std::env::var("TOKENVAULT_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let node_ok = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok || !modules.join("oidc-provider").is_dir() {
        let why =
            "node and the oidc-provider package (npm install --prefix target/oidc oidc-provider@9, as .ci/run does)";
        assert!(!required, "TOKENVAULT_REQUIRE_BROWSER=1 but {why} are missing");
        eprintln!("skipped: needs {why}");
        return None;
    }
    // ES modules resolve packages from the script's folder: run a copy beside node_modules.
    let script = root.join("target/oidc/provider.mjs");
    std::fs::copy(root.join("tests/browser/oidc/provider.mjs"), &script).expect("copy the provider script");
    let mut child = std::process::Command::new("node")
        .arg(&script)
        .args([&port.to_string(), client_id, client_secret, redirect_uri])
        .current_dir(root.join("target/oidc"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if !line.starts_with("listening") {
        let _ = child.kill();
        let _ = child.wait();
        return Some(None);
    }
    // Keep reading what it prints (a closed pipe would end it at its next line).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Some(Some(OidcProvider(child)))
}

/// The browser test: an administrator adds a provider by its issuer URL only, against a
/// real OpenID Connect provider, with its credentials on the same form; a user connects it (the
/// provider's own sign-in and consent pages, the id_token verified) without a restart; then it is
/// disabled (card gone, API 409), enabled, and deleted with its connection.
#[tokio::test]
async fn a_provider_added_by_issuer_url_alone_is_connected_against_a_real_openid_provider() {
    let app_port = crate::binary::free_port();
    let base = format!("http://127.0.0.1:{app_port}");
    let (client_id, client_secret) = ("tokenvault-browser", format!("CS-CANARY-{}", crate::harness::random_suffix()));
    let redirect = format!("{base}/services/oidc/callback");
    let Some((_provider, oidc_port)) = start_oidc_provider(client_id, &client_secret, &redirect) else { return };
    let issuer = format!("http://localhost:{oidc_port}");
    let Some(b) = Browser::start_with(AppConfig::new().port(app_port)).await else { return };
    b.signup("admin").await;

    b.goto("/admin/providers").await;
    b.fill("#new-provider-issuer", &issuer).await;
    b.fill("#new-provider-name", "oidc").await;
    b.fill("#new-provider-client-id", client_id).await;
    b.fill("#new-provider-client-secret", &client_secret).await;
    // Discovery runs when the form is sent; its endpoints are shown before anything is saved.
    b.click_to("#add-provider-submit", "#discovered-endpoints").await;
    assert!(b.text("#discovered-endpoints").await.contains(&format!("{issuer}/token")));
    assert!(!b.exists("tr[data-provider=\"oidc\"]").await, "nothing saved yet");
    assert!(!b.source().await.contains(&client_secret), "the secret is not sent back");
    b.fill("#new-provider-client-secret", &client_secret).await;
    b.click_to("#add-provider-submit", "#flash").await;
    assert!(
        b.exists("tr[data-provider=\"oidc\"][data-origin=\"added\"][data-credentials=\"set\"]").await,
        "{}",
        b.source().await
    );

    // Connect: the Authorize form's redirect reaches the provider (the CSP's form-action learnt
    // its origin without a restart), its sign-in and consent pages, back with a verified id_token.
    b.goto("/").await;
    b.click_to("#connect-oidc", "#authorize").await;
    b.click_to("#authorize", "input[name=\"login\"]").await;
    b.fill("input[name=\"login\"]", "ann").await;
    b.fill("input[name=\"password\"]", "any").await;
    b.click_to("button[type=\"submit\"]", "button[type=\"submit\"]").await;
    b.click_to("button[type=\"submit\"]", "#connected").await;
    assert_eq!(b.path().await, "/services/oidc/connected");
    assert!(b.text("main").await.contains("ann"), "the account (its sub) is named: {}", b.text("main").await);

    b.goto("/settings/api-keys").await;
    b.fill("#api-key-name", "script").await;
    b.click_to("#api-key-create", "#new-api-key").await;
    let key = b.text("#new-api-key").await;
    assert_eq!(api_status(&base, &key, "oidc").await.0, 200);

    b.goto("/admin/providers").await;
    b.click_to("#disable-provider-oidc", "#flash").await;
    b.goto("/").await;
    b.wait_for("main").await;
    assert!(!b.exists("#connect-oidc").await);
    assert_eq!(api_status(&base, &key, "oidc").await.1["error"], "service_disabled");
    b.goto("/admin/providers").await;
    b.click_to("#enable-provider-oidc", "#flash").await;
    assert_eq!(api_status(&base, &key, "oidc").await.0, 200);
    b.find("#delete-connections-oidc").await.click().await.unwrap();
    b.click_to("#delete-provider-oidc", "#flash").await;
    assert!(!b.exists("tr[data-provider=\"oidc\"]").await);
    assert_eq!(api_status(&base, &key, "oidc").await.0, 404);
    assert!(!b.app.stderr().contains(&client_secret), "the log never holds the secret");
    b.finish().await;
}

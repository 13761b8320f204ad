//! A real MCP client authorizes itself (issue 22): the official MCP TypeScript SDK, with its own
//! OAuth client provider (`mcp_sdk_oauth.mjs` beside this file), meets `/mcp`'s 401, discovers
//! the protected resource from its `WWW-Authenticate` and then the authorization server, gets a
//! client id — from a Client ID Metadata Document this test serves on loopback http (allowed in
//! `debug`), or by dynamic registration — and starts PKCE; Chromium, signed in as a user who
//! connected the demo provider, allows on the consent page; the code reaches the script's loopback
//! redirect URI and `finishAuth`; the client then lists the tools and calls `call_api` on the demo
//! provider. No token appears in what the client printed.
//!
//! The SDK (1.32.2) supports Client ID Metadata Documents (SEP-991: `clientMetadataUrl`, used when
//! the authorization server's metadata says `client_id_metadata_document_supported`) but only for
//! an https URL, which this test cannot serve with a certificate tokenvault trusts. So the
//! document run gives the SDK the document's http URL as its client id (what the SDK stores itself
//! in its document branch), and a probe checks that the SDK, given an https `clientMetadataUrl`,
//! does choose it as the client id from tokenvault's metadata instead of registering.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{random_vault_key, AppConfig, Browser, WAIT};

/// What the SDK is given: a metadata document's URL (on `site`, served once the script's redirect
/// URI is known), or nothing (it registers).
enum ClientId<'a> {
    Document { site: &'a MockServer, name: &'a str },
    Registered,
}

const DOCUMENT_PATH: &str = "/agent/client.json";

/// Serve the client's metadata document on `site`, naming the script's redirect URI.
async fn serve_document(site: &MockServer, name: &str, port: u16) {
    let document = json!({
        "client_id": format!("{}{DOCUMENT_PATH}", site.uri()),
        "client_name": name,
        "redirect_uris": [format!("http://127.0.0.1:{port}/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    });
    Mock::given(method("GET"))
        .and(path(DOCUMENT_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(document))
        .mount(site)
        .await;
}

/// One run of the script: its `RESULT`, everything it printed, the tokens it kept, and the port
/// of its redirect URI.
struct Run {
    result: Value,
    output: String,
    tokens: Value,
    port: u16,
}

/// Start the script, and once it prints its authorization URL, allow in the browser; then wait
/// for the script's result.
async fn authorize_with_the_sdk(b: &Browser, sdk: &Path, client: &ClientId<'_>) -> Run {
    let dir = tempfile::tempdir().expect("a temp dir");
    let tokens_file = dir.path().join("tokens.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/mcp_sdk_oauth.mjs");
    let mut command = tokio::process::Command::new("node");
    command.arg(script).arg(b.app.url("/mcp"));
    if let ClientId::Document { site, .. } = client {
        command.arg(format!("{}{DOCUMENT_PATH}", site.uri()));
    }
    let mut child = command
        .env("MCP_SDK", sdk)
        .env("TOKENS_FILE", &tokens_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut output = String::new();
    let mut port = None;
    let authorize = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            output.push_str(&line);
            output.push('\n');
            if let Some(p) = line.strip_prefix("LISTENING ") {
                port = Some(p.parse::<u16>().expect("a port"));
                if let (ClientId::Document { site, name }, Some(p)) = (client, port) {
                    serve_document(site, name, p).await;
                }
            }
            if let Some(url) = line.strip_prefix("AUTHORIZE ") {
                return Some(url.to_string());
            }
        }
        None
    })
    .await
    .expect("the SDK asked for authorization in time");
    let (Some(authorize), Some(port)) = (authorize, port) else {
        panic!("the SDK stopped before asking for authorization:\n{output}\n{}", errors.await.unwrap_or_default());
    };
    consent(b, &authorize, client).await;
    let rest = tokio::time::timeout(2 * WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            output.push_str(&line);
            output.push('\n');
        }
        child.wait().await.expect("the script ends")
    })
    .await
    .expect("the SDK finished in time");
    output.push_str(&errors.await.unwrap_or_default());
    let Some(line) = output.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        panic!("the SDK failed ({rest}):\n{output}\n{}", b.context().await);
    };
    println!("{output}");
    let result = serde_json::from_str(line).expect("RESULT is JSON");
    let tokens = serde_json::from_slice(&std::fs::read(&tokens_file).expect("the tokens file")).expect("JSON");
    Run { result, output, tokens, port }
}

/// The user, signed in, sees who asks and allows with the consent page's defaults.
async fn consent(b: &Browser, authorize: &str, client: &ClientId<'_>) {
    assert!(authorize.starts_with(&b.app.url("/oauth/authorize?")), "{authorize}");
    b.c.goto(authorize).await.unwrap_or_else(|e| panic!("cannot open {authorize}: {e}"));
    b.wait_for("#grant-form").await;
    let who = b.text("#grant-client").await;
    let name = match client {
        ClientId::Document { name, .. } => name,
        ClientId::Registered => "SDK Agent",
    };
    assert!(who.contains(name) && who.contains("127.0.0.1"), "name and redirect host: {who}");
    assert!(!b.exists("input[value=\"token:read\"]:checked").await, "token:read only when ticked");
    b.click_to("#grant-allow", "#sdk-callback").await;
}

/// What both tests start with: the SDK, a browser on an app where `user` connected the demo
/// provider, and the demo provider's access token as stored; `None` when the test is skipped.
struct Setup {
    sdk: PathBuf,
    b: Browser,
    demo_token: String,
}

async fn setup(user: &str) -> Option<Setup> {
    use tokenvault::util::ExposeSecret;
    let sdk = crate::node::mcp_sdk("the MCP SDK OAuth browser test")?;
    let vault_key = random_vault_key();
    let b = Browser::start_with(AppConfig::new().vault_key(&vault_key)).await?;
    b.signup(user).await;
    b.connect_demo().await;
    let db = tokenvault::db::Db::open_sized(&b.app.database_url(), 1).expect("open the app's database");
    let mut conn = db.conn().expect("a connection");
    let row = tokenvault::db::models::connections::find(&mut conn, 1, "demo").expect("read").expect("connected");
    let cipher = tokenvault::vault::Cipher::from_base64(&vault_key, &[]).expect("the vault key opens");
    let (access, _) = tokenvault::oauth::store::open_tokens(&cipher, &row).expect("the tokens open");
    let demo_token = access.expose_secret().to_string();
    Some(Setup { sdk, b, demo_token })
}

/// What every run must show: discovery from the 401, PKCE S256 for `/mcp`, `iss` back, the tools,
/// the demo account through `call_api`, and no token in the output; the token is for `/mcp` only.
async fn check_run(b: &Browser, run: &Run, user: &str, demo_token: &str) {
    let r = &run.result;
    assert_eq!(r["discovery"]["resourceMetadataUrl"], b.app.url("/.well-known/oauth-protected-resource/mcp"), "{r}");
    let server = r["discovery"]["authorizationServerUrl"].as_str().unwrap_or_default();
    assert_eq!(server.trim_end_matches('/'), b.app.base, "{r}");
    let urls = r["authorizeUrls"].as_array().expect("authorization URLs");
    assert_eq!(urls.len(), 1, "one authorization: {r}");
    let url = url::Url::parse(urls[0].as_str().unwrap()).unwrap();
    let q: std::collections::BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["code_challenge"].len() >= 43, "{q:?}");
    assert_eq!(q["resource"], b.app.url("/mcp"));
    assert_eq!(q["redirect_uri"], format!("http://127.0.0.1:{}/callback", run.port));
    assert_eq!(q["client_id"], r["clientId"].as_str().unwrap());
    assert_eq!(r["iss"], b.app.base, "RFC 9207 iss");
    assert_eq!(r["protocolVersion"], "2025-11-25");
    assert_eq!(r["tools"], json!(["list_connections", "call_api", "get_account"]), "{r}");
    let called = &r["called"];
    assert_eq!((called["isError"].clone(), called["structuredContent"]["status"].clone()), (json!(false), json!(200)));
    let email = format!("{user}@demo.example");
    let id = format!("dbid:{}", &hex(&Sha256::digest(email.as_bytes()))[..16]);
    assert_eq!(called["structuredContent"]["body"]["id"], id, "the demo account through call_api: {r}");

    let access = run.tokens["access_token"].as_str().expect("an access token");
    let refresh = run.tokens["refresh_token"].as_str().expect("a refresh token");
    for secret in [access, refresh, demo_token] {
        assert!(!run.output.contains(secret), "a token in the client's output:\n{}", run.output);
    }
    let api = reqwest::Client::new().get(b.app.url("/api/v1/connections")).bearer_auth(access).send().await.unwrap();
    assert_eq!(api.status(), 401, "a token for /mcp is refused at /api/v1");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn the_mcp_sdk_authorizes_itself_with_a_client_metadata_document() {
    let Some(Setup { sdk, b, demo_token }) = setup("hedy").await else { return };
    let site = MockServer::start().await;
    let client = ClientId::Document { site: &site, name: "Document Agent" };
    let run = authorize_with_the_sdk(&b, &sdk, &client).await;
    check_run(&b, &run, "hedy", &demo_token).await;
    let url = format!("{}{DOCUMENT_PATH}", site.uri());
    assert_eq!(run.result["clientId"], url.as_str(), "the document's URL is the client id");
    let fetched = site.received_requests().await.unwrap_or_default();
    assert!(!fetched.is_empty(), "tokenvault fetched the client's metadata document");
    let probe = &run.result["probe"];
    assert_eq!(probe["outcome"], "REDIRECT", "{probe}");
    assert_eq!(probe["clientId"], "https://agent.example/tokenvault-test-client.json", "the SDK's own choice: {probe}");
    b.finish().await;
}

#[tokio::test]
async fn the_mcp_sdk_registers_itself_and_authorizes() {
    let Some(Setup { sdk, b, demo_token }) = setup("ada").await else { return };
    let run = authorize_with_the_sdk(&b, &sdk, &ClientId::Registered).await;
    check_run(&b, &run, "ada", &demo_token).await;
    let id = run.result["clientId"].as_str().unwrap();
    assert!(!id.is_empty() && !id.starts_with("http"), "a client id from registration: {id}");
    assert!(run.result["probe"].is_null());
    b.finish().await;
}

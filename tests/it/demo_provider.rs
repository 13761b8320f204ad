//! The built-in demo provider, end to end over real HTTP: the binary is launched on a free port and
//! calls its own `/demo` authorization server, exactly as `cargo run` does.

use crate::common;

use std::collections::BTreeMap;
use tokenvault::util::ExposeSecret;

use reqwest::redirect::Policy;
use reqwest::StatusCode;

pub(crate) struct Live {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    db: tokenvault::db::Db,
    /// The binary (see `common::binary::spawn`), stopped before the database is dropped.
    _server: common::binary::Server,
    _database: common::TestDatabase,
    _dir: tempfile::TempDir,
    cipher: tokenvault::vault::Cipher,
}

pub(crate) async fn launch() -> Live {
    launch_with(120).await
}

async fn launch_with(demo_token_lifetime: i64) -> Live {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = common::binary::spawn("127.0.0.1", None, dir.path(), |cmd, port| {
        cmd.env("ROCKET_CONFIG", dir.path().join("no-Rocket.toml"))
            .env("ROCKET_PROFILE", "debug")
            .env("ROCKET_SECRET_KEY", common::SECRET_KEY)
            .env("ROCKET_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("ROCKET_DATABASE_URL", &database.url)
            .env("ROCKET_DATA_DIR", dir.path())
            .env("ROCKET_VAULT_KEY", common::VAULT_KEY)
            .env("ROCKET_DEMO_PROVIDER", "true")
            .env("ROCKET_DEMO_TOKEN_LIFETIME", demo_token_lifetime.to_string());
    })
    .await;
    let http = reqwest::Client::builder().cookie_store(true).redirect(Policy::none()).build().unwrap();
    let db = tokenvault::db::Db::open_sized(&database.url, 2).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    Live { base: server.base.clone(), http, db, _server: server, _database: database, _dir: dir, cipher }
}

pub(crate) fn hidden_fields(html: &str) -> BTreeMap<String, String> {
    let re = regex::Regex::new(r#"<input type="hidden" name="([a-z_]+)" value="([^"]*)""#).unwrap();
    re.captures_iter(html).map(|c| (c[1].to_string(), c[2].replace("&amp;", "&").replace("&#x3D;", "="))).collect()
}

impl Live {
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        let url = if path.starts_with("http") { path.to_string() } else { format!("{}{path}", self.base) };
        self.http.get(url).send().await.unwrap()
    }

    pub(crate) async fn post(&self, path: &str, form: &BTreeMap<String, String>) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).form(form).send().await.unwrap()
    }

    pub(crate) async fn signup(&self) {
        let page = self.get("/signup").await.text().await.unwrap();
        let mut form = hidden_fields(&page);
        form.insert("username".into(), "alice".into());
        form.insert("password".into(), common::PASSWORD.into());
        form.insert("password_confirm".into(), common::PASSWORD.into());
        assert_eq!(self.post("/signup", &form).await.status(), StatusCode::SEE_OTHER);
    }

    /// Redirector → consent page; returns the consent form's fields.
    pub(crate) async fn to_consent(&self) -> BTreeMap<String, String> {
        let page = self.get("/services/demo/authorize").await.text().await.unwrap();
        assert!(page.contains(r#"id="authorize""#), "{page}");
        let res = self.post("/services/demo/authorize", &hidden_fields(&page)).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let location = res.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(&format!("{}/demo/oauth2/authorize?", self.base)));
        let consent = self.get(&location).await.text().await.unwrap();
        assert!(consent.contains(r#"id="allow""#) && consent.contains(r#"id="deny""#));
        hidden_fields(&consent)
    }

    pub(crate) async fn decide(&self, mut form: BTreeMap<String, String>, decision: &str) -> String {
        form.insert("decision".into(), decision.into());
        form.insert("account".into(), "alice@demo.example".into());
        let res = self.post("/demo/oauth2/authorize", &form).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        res.headers()["location"].to_str().unwrap().to_string()
    }

    /// The demo connection's row.
    fn row(&self) -> tokenvault::db::models::connections::Connection {
        let mut conn = self.db.conn().unwrap();
        tokenvault::db::models::connections::find(&mut conn, 1, "demo").unwrap().expect("connected")
    }

    /// Change the connection's row as the app would: with its cache invalidation, which the
    /// running app's poller applies within about a second.
    fn exec(&self, statement: &str) {
        use diesel::RunQueryDsl;
        let mut conn = self.db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(statement).execute(c)).unwrap();
        let what =
            tokenvault::db::models::invalidations::Invalidated::Connection { user_id: 1, service: "demo".into() };
        tokenvault::db::models::invalidations::record(&mut conn, &what).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }

    pub(crate) fn tokens(&self) -> Option<(String, Option<String>)> {
        let mut conn = self.db.conn().unwrap();
        let c = tokenvault::db::models::connections::find(&mut conn, 1, "demo").unwrap()?;
        let (a, r) = tokenvault::oauth::store::open_tokens(&self.cipher, &c).unwrap();
        Some((a.expose_secret().to_string(), r.map(|r| r.expose_secret().to_string())))
    }

    async fn client_credentials(&self) -> (String, String) {
        let mut conn = self.db.conn().unwrap();
        let creds = tokenvault::vault::store::client_credentials(&mut conn, &self.cipher, "demo").unwrap().unwrap();
        (creds.client_id, creds.client_secret.unwrap().expose_secret().to_string())
    }

    async fn token_call(&self, form: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
        let (id, secret) = self.client_credentials().await;
        let res = self
            .http
            .post(format!("{}/demo/oauth2/token", self.base))
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await
            .unwrap();
        (res.status(), res.json().await.unwrap_or_default())
    }
}

#[tokio::test]
async fn connect_the_demo_provider_end_to_end() {
    let live = launch().await;
    live.signup().await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    assert!(callback.starts_with(&format!("{}/services/demo/callback?code=", live.base)));
    assert!(callback.contains("iss="));
    let res = live.get(&callback).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let clean = res.headers()["location"].to_str().unwrap().to_string();
    assert!(!clean.contains("code="));
    let page = live.get(&clean).await.text().await.unwrap();
    assert!(page.contains(r#"id="connected""#));
    let settings = live.get("/settings/oauth2").await.text().await.unwrap();
    assert!(settings.contains(r#"<tr data-service="demo" data-status="active""#));
    assert!(settings.contains("<code>profile</code>"));

    // The stored token works at the demo account API; a wrong one does not.
    let (access, refresh) = live.tokens().unwrap();
    assert!(refresh.is_some());
    let ok = live.http.get(format!("{}/demo/api/account", live.base)).bearer_auth(&access).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["email"], "alice@demo.example");
    let bad = live.http.get(format!("{}/demo/api/account", live.base)).bearer_auth("nope").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().contains_key("www-authenticate"));

    // The code was single-use.
    let code = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.to_string();
    let (status, body) = live.token_call(&[("grant_type", "authorization_code"), ("code", &code)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn deny_on_the_consent_page_stores_nothing() {
    let live = launch().await;
    live.signup().await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "deny").await;
    assert!(callback.contains("error=access_denied"));
    let res = live.get(&callback).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains(r#"id="cancelled""#));
    assert!(live.tokens().is_none());
}

#[tokio::test]
async fn demo_token_endpoint_checks_pkce_clients_and_rotation() {
    let live = launch().await;
    live.signup().await;
    let consent = live.to_consent().await;
    let redirect_uri = consent["redirect_uri"].clone();
    let callback = live.decide(consent, "allow").await;
    let code = url::Url::parse(&callback).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.to_string();
    // A wrong verifier burns the code.
    let wrong = "w".repeat(64);
    let (status, body) = live
        .token_call(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &wrong),
        ])
        .await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    // Wrong client secret.
    let res = live
        .http
        .post(format!("{}/demo/oauth2/token", live.base))
        .basic_auth("tokenvault-demo", Some("wrong"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Rotation: a refresh token works once; replaying it revokes the whole grant.
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    assert_eq!(live.get(&callback).await.status(), StatusCode::SEE_OTHER);
    let (_, refresh) = live.tokens().unwrap();
    let refresh = refresh.unwrap();
    let (status, first) = live.token_call(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(first["refresh_token"].as_str().unwrap(), refresh);
    let (status, _) = live.token_call(&[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let new_access = first["access_token"].as_str().unwrap();
    let res = live.http.get(format!("{}/demo/api/account", live.base)).bearer_auth(new_access).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "the family was revoked on reuse");
}

#[tokio::test]
async fn a_grant_revoked_at_the_demo_provider_turns_into_a_reconnect_prompt() {
    let live = launch().await;
    live.signup().await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    live.get(&callback).await;
    let account = live.get("/services/demo/account").await.text().await.unwrap();
    assert!(account.contains(r#"<pre id="account-json">"#) && account.contains("alice@demo.example"));

    let console = live.get("/demo/").await.text().await.unwrap();
    assert!(console.contains(r#"data-grant="1""#));
    let res = live.post("/demo/grants/1/revoke", &hidden_fields(&console)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let account = live.get("/services/demo/account").await.text().await.unwrap();
    assert!(account.contains(r#"id="reconnect""#), "{account}");
    let settings = live.get("/settings/oauth2").await.text().await.unwrap();
    assert!(settings.contains("Reconnect required"));
}

#[tokio::test]
async fn the_failure_switch_makes_refreshes_fail_and_tokens_survive() {
    // 2 s tokens: the refresh margin is at most half a token's lifetime, so a visit 1 s after the
    // connection refreshes (a token just issued would be used as it is).
    let live = launch_with(2).await;
    live.signup().await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    live.get(&callback).await;
    let before = live.tokens();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let console = live.get("/demo/").await.text().await.unwrap();
    let mut form = hidden_fields(&console);
    form.insert("count".into(), "1".into());
    form.insert("mode".into(), "temporarily_unavailable".into());
    assert_eq!(live.post("/demo/failures", &form).await.status(), StatusCode::SEE_OTHER);
    let res = live.get("/services/demo/account").await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(live.tokens(), before, "tokens kept");
    let settings = live.get("/settings/oauth2").await.text().await.unwrap();
    assert!(settings.contains(r#"data-status="degraded""#), "{settings}");
    assert!(settings.contains("<code>temporarily_unavailable</code>"), "{settings}");
    // The backoff step passes (as if 30 s later; the row's invalidation reaches the app's cache).
    live.exec("UPDATE connections SET next_attempt_at = 1");
    let res = live.get("/services/demo/account").await;
    assert_eq!(res.status(), StatusCode::OK, "the next try refreshes fine");
    assert_ne!(live.tokens(), before, "rotated");
    let settings = live.get("/settings/oauth2").await.text().await.unwrap();
    assert!(settings.contains(r#"data-status="active""#), "{settings}");
}

/// Set the console's failure switch: the next `count` token calls answer in `mode`.
async fn switch(live: &Live, mode: &str, count: u32) {
    let console = live.get("/demo/").await.text().await.unwrap();
    let mut form = hidden_fields(&console);
    form.insert("count".into(), count.to_string());
    form.insert("mode".into(), mode.into());
    assert_eq!(live.post("/demo/failures", &form).await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_demo_console_shows_every_connection_state() {
    let live = launch_with(2).await;
    live.signup().await;
    // A refresh token that expires: the connection shows when.
    switch(&live, "refresh_token_expires_in", 1).await;
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    live.get(&callback).await;
    let settings = live.get("/settings/oauth2").await.text().await.unwrap();
    assert!(settings.contains("refresh token expires in 6 days"), "{settings}");
    // No expires_in: the demo's tokens do expire, so the default lifetime is used, not "never".
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    switch(&live, "omit_expires_in", 1).await;
    assert_eq!(live.get("/services/demo/account").await.status(), StatusCode::OK);
    let row = live.row();
    assert!(row.expires_at.is_some_and(|e| e > row.obtained_at), "{:?}", row.expires_at);
    // A 429 with Retry-After: degraded until then.
    live.exec(&format!("UPDATE connections SET expires_at = {}", tokenvault::util::now() + 1));
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    switch(&live, "rate_limited", 1).await;
    assert_eq!(live.get("/services/demo/account").await.status(), StatusCode::SERVICE_UNAVAILABLE);
    let row = live.row();
    assert_eq!((row.status.as_str(), row.status_reason.as_deref()), ("degraded", Some("rate_limited")));
    let wait = row.next_attempt_at.unwrap() - tokenvault::util::now();
    assert!((118..=120).contains(&wait), "the demo's Retry-After: {wait}");
    // invalid_grant: reconnect required.
    live.exec("UPDATE connections SET next_attempt_at = 1");
    switch(&live, "invalid_grant", 1).await;
    live.get("/services/demo/account").await;
    let row = live.row();
    assert_eq!((row.status.as_str(), row.status_reason.as_deref()), ("reconnect_required", Some("invalid_grant")));
}

#[tokio::test]
async fn the_demo_provider_only_redirects_to_registered_uris() {
    let live = launch().await;
    live.signup().await;
    let (client_id, _) = live.client_credentials().await;
    let challenge = "c".repeat(43);
    for uri in ["https://evil.example/services/demo/callback", "http://127.0.0.1:1/services/demo/callback"] {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", uri)
            .append_pair("state", "s")
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let res = live.get(&format!("/demo/oauth2/authorize?{q}")).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{uri}");
        assert!(res.headers().get("location").is_none());
    }
}

/// The demo provider's console plays the provider's administrators: tokenvault administrators only.
#[tokio::test]
async fn the_console_is_for_administrators_and_checks_its_input() {
    let app = common::builder().demo().start().await;
    let alice = app.user("alice").await; // the first user: an administrator
    let bob = app.user("bob").await;
    let csrf = bob.csrf("/settings/oauth2").await;
    assert_eq!(bob.fetch("/demo/").await.status, rocket::http::Status::Forbidden);
    let form = [("csrf_token", csrf.as_str()), ("count", "3"), ("mode", "invalid_grant")];
    assert_eq!(bob.post_form("/demo/failures", &form).await.status, rocket::http::Status::Forbidden);
    assert_eq!(
        bob.post_form("/demo/grants/1/revoke", &[("csrf_token", &csrf)]).await.status,
        rocket::http::Status::Forbidden
    );
    let page = alice.fetch("/demo/").await;
    assert_eq!(page.status, rocket::http::Status::Ok);
    assert!(page.text.contains(r#"<strong id="failures-pending">0</strong>"#), "bob's attempt changed nothing");
    let csrf = alice.csrf("/demo/").await;
    let bad = [("csrf_token", csrf.as_str()), ("count", "3"), ("mode", "explode")];
    assert_eq!(alice.post_form("/demo/failures", &bad).await.status, rocket::http::Status::BadRequest);
    assert_eq!(
        alice.post_form("/demo/grants/999/revoke", &[("csrf_token", &csrf)]).await.status,
        rocket::http::Status::NotFound
    );
}

/// Run tests/fixtures/mcp_sdk_client.mjs with `args`: its `RESULT` line and that JSON.
async fn run_mcp_sdk_client(sdk: &std::path::Path, args: &[&str]) -> (String, serde_json::Value) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_sdk_client.mjs");
    let run =
        tokio::process::Command::new("node").arg(script).args(args).env("MCP_SDK", sdk).kill_on_drop(true).output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run).await.expect("in time").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("the MCP client failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr)))
        .to_string();
    let result = serde_json::from_str(&line).unwrap();
    (line, result)
}

/// A real MCP client — the official TypeScript SDK's `Client` with its
/// `StreamableHTTPClientTransport`, run by Node.js — against the binary: with an access token for
/// `/mcp` from tokenvault's authorization server (consent given by alice), it initializes, lists
/// the tools and calls `call_api` on the demo provider alice connected; the provider's token
/// never appears in what it receives. Before alice connects it, a client declaring URL-mode
/// elicitation receives the connect link as the SDK's `UrlElicitationRequiredError`.
#[tokio::test]
async fn a_real_mcp_client_lists_tools_and_calls_the_demo_api() {
    use crate::oauth_server::{authorize_url, consent_fields, pkce, query_of, REDIRECT};
    let Some(sdk) = common::node::mcp_sdk("the MCP SDK test") else { return };
    let live = launch().await;
    live.signup().await;

    // An OAuth client registers, alice consents, the code is exchanged for a /mcp token.
    let registered: serde_json::Value = live
        .http
        .post(format!("{}/oauth/register", live.base))
        .json(&serde_json::json!({"client_name": "MCP SDK", "redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let mcp = format!("{}/mcp", live.base);
    let (verifier, challenge) = pkce();
    let url = authorize_url(
        client_id,
        REDIRECT,
        Some(&challenge),
        &[("resource", &mcp), ("scope", "connections:read proxy:read")],
    );
    let page = live.get(&url).await.text().await.unwrap();
    let mut fields = consent_fields(&page);
    fields.push(("decision".into(), "allow".into()));
    let allowed = live.http.post(format!("{}/oauth/authorize", live.base)).form(&fields).send().await.unwrap();
    assert_eq!(allowed.status(), StatusCode::SEE_OTHER);
    let code = query_of(allowed.headers()["location"].to_str().unwrap())["code"].clone();
    let tokens: serde_json::Value = live
        .http
        .post(format!("{}/oauth/token", live.base))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("resource", &mcp),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().expect("an access token").to_string();

    // Before alice connects the demo provider: a client that declared URL-mode elicitation gets
    // the SDK's UrlElicitationRequiredError with the connect link, for alice only.
    let (_, elicited) = run_mcp_sdk_client(&sdk, &[&mcp, &access, "demo", "account", "elicit"]).await;
    assert_eq!(elicited["code"], -32042, "{elicited}");
    let e = &elicited["elicitations"][0];
    assert_eq!(e["mode"], "url", "{elicited}");
    let link = e["url"].as_str().unwrap();
    assert!(link.starts_with(&format!("{}/services/demo/authorize?for_user=", live.base)), "{link}");
    assert!(e["elicitationId"].as_str().is_some_and(|id| !id.is_empty()));
    // alice connects it; then the same client's calls succeed.
    let consent = live.to_consent().await;
    let callback = live.decide(consent, "allow").await;
    assert_eq!(live.get(&callback).await.status(), StatusCode::SEE_OTHER);
    let (demo_access, _) = live.tokens().expect("demo connected");

    let (line, result) = run_mcp_sdk_client(&sdk, &[&mcp, &access, "demo", "account"]).await;
    assert_eq!(result["protocolVersion"], "2025-11-25", "{result}");
    assert!(result["sessionId"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(result["server"]["name"], "tokenvault");
    assert_eq!(result["tools"], serde_json::json!(["list_connections", "call_api", "get_account"]));
    let called = &result["called"];
    assert_eq!(called["isError"], false, "{result}");
    assert_eq!(called["structuredContent"]["status"], 200, "{result}");
    assert_eq!(called["structuredContent"]["body"]["email"], "alice@demo.example", "{result}");
    assert_eq!(result["missing"]["isError"], true);
    assert!(!line.contains(&demo_access), "the provider's token reached the MCP client");
}

//! Test support: a `TestApp` with a fresh SQLite database in a temp dir, a real HTTP fake
//! provider on a random port, and `Agent`s (one cookie jar each) to act as different users.

pub mod binary;
pub mod cli;
pub mod fake_provider;
pub mod node;
pub mod server;
pub mod webhook_receiver;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tokenvault::util::ExposeSecret;

use rocket::figment::value::{Dict, Value};
use rocket::figment::Figment;
use rocket::http::{ContentType, Header, Status};
use rocket::local::asynchronous::{Client, LocalResponse};
use tempfile::TempDir;

pub use fake_provider::FakeProvider;

use tokenvault::db::Db;
use tokenvault::vault::Cipher;

pub const VAULT_KEY: &str = "dGVzdC12YXVsdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=";
pub const SECRET_KEY: &str = "dG9rZW52YXVsdC10ZXN0LXNlY3JldC1rZXktb2YtNjQtYnl0ZXMtZm9yLXJvY2tldC1jb29raWVzLTAxMjMhIQ==";
pub const PUBLIC_URL: &str = "http://localhost:8000";
pub const CLIENT_ID: &str = "fake-client-id";
pub const CLIENT_SECRET: &str = "CS-CANARY-client-secret-7c1e";
pub const PASSWORD: &str = "correct horse battery";

/// The database of one test: a SQLite file in the test's temp dir, or, when
/// `TOKENVAULT_TEST_POSTGRES_URL` is set, a PostgreSQL database created for the test and dropped
/// after it.
pub struct TestDatabase {
    pub url: String,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(dir: &std::path::Path) -> TestDatabase {
        match std::env::var("TOKENVAULT_TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => {
                use diesel::{Connection, RunQueryDsl};
                let name = format!("tv_test_{}", tokenvault::util::random_token(9).to_lowercase().replace('-', "_"));
                let mut conn =
                    diesel::pg::PgConnection::establish(&admin).expect("TOKENVAULT_TEST_POSTGRES_URL connects");
                diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).expect("create test database");
                let mut url = url::Url::parse(&admin).expect("a postgres:// URL");
                url.set_path(&format!("/{name}"));
                TestDatabase { url: url.to_string(), postgres: Some((admin, name)) }
            }
            _ => TestDatabase { url: dir.join("tokenvault.sqlite").to_string_lossy().to_string(), postgres: None },
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin, name)) = &self.postgres {
            use diesel::{Connection, RunQueryDsl};
            if let Ok(mut conn) = diesel::pg::PgConnection::establish(admin) {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
            }
        }
    }
}

pub struct TestApp {
    pub client: Client,
    pub database: TestDatabase,
    pub dir: TempDir,
    pub db_path: PathBuf,
    pub fake: FakeProvider,
    pub db: Db,
    pub cipher: Cipher,
}

pub struct Builder {
    profile: &'static str,
    extra: Vec<(String, Value)>,
    fake_config: BTreeMap<String, Value>,
    fake_urls: Vec<(String, String)>,
    demo: bool,
    credentials: bool,
    preset: Option<String>,
    /// The fake provider keeps no record of the requests it answers (benchmarks).
    unrecorded: bool,
}

pub fn builder() -> Builder {
    Builder {
        profile: "debug",
        extra: Vec::new(),
        fake_config: BTreeMap::new(),
        fake_urls: Vec::new(),
        demo: false,
        credentials: true,
        preset: None,
        unrecorded: false,
    }
}

impl Builder {
    /// Set a top-level configuration key.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.push((key.to_string(), value.into()));
        self
    }

    /// Set a key of the fake provider's `[providers.fake]` table.
    pub fn provider(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fake_config.insert(key.to_string(), value.into());
        self
    }

    /// Set a key of the fake provider's table to the fake's URL with `path` (once its port is known).
    pub fn provider_with_fake_url(mut self, key: &str, path: &str) -> Self {
        self.fake_urls.push((key.to_string(), path.to_string()));
        self
    }

    /// Make the fake provider a `preset` whose endpoints point at the fake (every other preset
    /// field — auth style, methods, parameters — stays the preset's).
    pub fn preset(mut self, preset: &str) -> Self {
        self.preset = Some(preset.to_string());
        self
    }

    /// Run in another profile than `debug` (e.g. `release`: the production rules).
    #[allow(dead_code, reason = "used by the abuse binary only; the `it` binary checks the rest")]
    pub fn profile(mut self, profile: &'static str) -> Self {
        self.profile = profile;
        self
    }

    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// The fake provider records no requests (a benchmark's 100,000 refreshes would otherwise
    /// be kept in memory, in the same process as the app it measures; `refresh_calls` and the
    /// like then count nothing).
    #[allow(dead_code, reason = "used by benches/keepalive.rs only")]
    pub fn unrecorded_fake(mut self) -> Self {
        self.unrecorded = true;
        self
    }

    /// Leave the fake provider's client credentials out of the vault.
    pub fn without_credentials(mut self) -> Self {
        self.credentials = false;
        self
    }

    pub async fn start(self) -> TestApp {
        let fake = if self.unrecorded { FakeProvider::start_unrecorded().await } else { FakeProvider::start().await };
        let dir = tempfile::tempdir().expect("temp dir");
        let database = TestDatabase::new(dir.path());
        let db_path = dir.path().join("tokenvault.sqlite");
        let mut provider: Dict = Dict::new();
        provider.insert("display_name".into(), "Fake Provider".into());
        provider.insert("authorize_url".into(), format!("{}/authorize", fake.uri()).into());
        provider.insert("token_url".into(), format!("{}/token", fake.uri()).into());
        provider.insert("revoke_url".into(), format!("{}/revoke", fake.uri()).into());
        provider.insert("account_url".into(), format!("{}/account", fake.uri()).into());
        provider.insert("api_base_url".into(), format!("{}/api", fake.uri()).into());
        provider.insert("issuer".into(), fake.uri().into());
        match &self.preset {
            Some(preset) => {
                provider.insert("preset".into(), preset.clone().into());
                let revoke = match preset.as_str() {
                    "dropbox" => format!("{}/dropbox-revoke", fake.uri()),
                    "github" => format!("{}/applications/{{client_id}}/token", fake.uri()),
                    _ => format!("{}/revoke", fake.uri()),
                };
                provider.insert("revoke_url".into(), revoke.into());
                // OpenID Connect presets verify id_tokens: against the fake's keys, which then sends them.
                provider.insert("jwks_url".into(), format!("{}/jwks", fake.uri()).into());
                fake.with_state(|s| s.id_tokens = true);
            }
            None => {
                provider.insert("scopes".into(), vec!["read", "write"].into());
                provider.insert("client_auth".into(), "basic".into());
            }
        }
        for (k, v) in self.fake_config {
            provider.insert(k, v);
        }
        for (k, path) in self.fake_urls {
            provider.insert(k, format!("{}{path}", fake.uri()).into());
        }
        let mut providers = Dict::new();
        providers.insert("fake".into(), provider.into());
        let mut figment = Figment::from(rocket::Config::debug_default())
            .merge(("secret_key", SECRET_KEY))
            .merge(("public_url", PUBLIC_URL))
            .merge(("database_url", database.url.clone()))
            .merge(("data_dir", dir.path().to_string_lossy().to_string()))
            .merge(("vault_key", VAULT_KEY))
            .merge(("demo_provider", self.demo))
            .merge(("allow_signup", true))
            .merge(("http_timeout", 3))
            .merge(("http_connect_timeout", 2))
            .merge(("providers", providers))
            .select(self.profile);
        for (k, v) in self.extra {
            figment = figment.merge((k, v));
        }
        let rocket = tokenvault::app::build(figment).expect("valid test configuration");
        let client = Client::untracked(rocket).await.expect("rocket ignites");
        let db = Db::open_sized(&database.url, 2).expect("db opens");
        let cipher = Cipher::from_base64(VAULT_KEY, &[]).unwrap();
        if self.credentials {
            let mut conn = db.conn().unwrap();
            tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", CLIENT_ID, "test").unwrap();
            tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", CLIENT_SECRET, "test").unwrap();
        }
        TestApp { client, database, dir, db_path, fake, db, cipher }
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        builder().start().await
    }

    /// A new browser-like agent with an empty cookie jar.
    pub fn agent(&self) -> Agent<'_> {
        Agent { app: self, cookies: Mutex::new(BTreeMap::new()) }
    }

    /// An agent signed up (and signed in) as `username`.
    pub async fn user(&self, username: &str) -> Agent<'_> {
        let agent = self.agent();
        let page = agent.get("/signup").await.body().await;
        let csrf = csrf_from(&page);
        let res = agent
            .post_form(
                "/signup",
                &[
                    ("csrf_token", &csrf),
                    ("username", username),
                    ("password", PASSWORD),
                    ("password_confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(res.status, Status::SeeOther, "sign-up of {username} failed: {}", res.text);
        agent
    }

    /// Run a SQL count query against the test database.
    pub fn count(&self, sql: &str) -> i64 {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(sql).get_result::<N>(c)).unwrap().n
    }

    /// Run a statement, ignoring what it returns. Like any change made behind the app's back, it
    /// would reach the app's in-memory caches only after `cache_ttl`, so they are cleared too.
    pub fn exec(&self, sql: &str) {
        self.exec_unannounced(sql);
        self.state().caches.clear();
    }

    /// Run a statement as another program would: the app's caches learn of it only through
    /// `cache_ttl` (or an invalidation row the statement writes itself).
    pub fn exec_unannounced(&self, sql: &str) {
        use diesel::RunQueryDsl;
        let mut conn = self.db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(sql).execute(c)).unwrap();
    }

    /// The app's managed state.
    pub fn state(&self) -> &tokenvault::state::AppState {
        self.client.rocket().state::<tokenvault::state::AppState>().expect("app state")
    }

    /// One text column of the first row.
    pub fn text(&self, sql: &str) -> String {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct T {
            #[diesel(sql_type = diesel::sql_types::Text)]
            t: String,
        }
        let mut conn = self.db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(sql).get_result::<T>(c)).unwrap().t
    }

    pub fn connection_count(&self) -> i64 {
        self.count("SELECT COUNT(*) AS n FROM connections")
    }

    /// A user's stored connection and its decrypted tokens.
    pub fn stored_tokens(&self, username: &str, service: &str) -> Option<(String, Option<String>)> {
        let mut conn = self.db.conn().unwrap();
        let user = tokenvault::db::models::users::find_by_username(&mut conn, username).unwrap()?;
        let c = tokenvault::db::models::connections::find(&mut conn, user.id, service).unwrap()?;
        let (a, r) = tokenvault::oauth::store::open_tokens(&self.cipher, &c).unwrap();
        Some((a.expose_secret().to_string(), r.map(|r| r.expose_secret().to_string())))
    }

    /// Every refresh token tokenvault stores, of every user's connections, sorted.
    pub fn stored_refresh_tokens(&self) -> Vec<String> {
        let mut conn = self.db.conn().unwrap();
        let users = self.count("SELECT COUNT(*) AS n FROM users");
        let mut all = Vec::new();
        for i in 0..users {
            let id = self.count(&format!("SELECT id AS n FROM users ORDER BY id LIMIT 1 OFFSET {i}"));
            for c in tokenvault::db::models::connections::list_for_user(&mut conn, id).unwrap() {
                let (_, refresh) = tokenvault::oauth::store::open_tokens(&self.cipher, &c).unwrap();
                all.extend(refresh.map(|r| r.expose_secret().to_string()));
            }
        }
        all.sort();
        all
    }

    /// Wait until the worker that revokes replaced and discarded tokens has worked every one
    /// queued (woken every 50 ms; a revocation still queued after 10 s fails the test).
    pub async fn revocations_done(&self) {
        for _ in 0..200 {
            if self.count("SELECT COUNT(*) AS n FROM jobs WHERE kind = 'token_revocations' AND dead_at IS NULL") == 0 {
                return;
            }
            self.state().job_wake.wake();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("token revocations still queued after 10 s");
    }

    /// Everything the database holds: the SQLite files (main, -wal, -shm), or for PostgreSQL
    /// every row of every table as JSON (bytea as hex).
    pub fn database_bytes(&self) -> Vec<u8> {
        if self.database.is_postgres() {
            let tables = self.text(
                "SELECT string_agg(table_name, ',') AS t FROM information_schema.tables WHERE table_schema = 'public'",
            );
            let mut all = String::new();
            for table in tables.split(',') {
                all.push_str(
                    &self.text(&format!(
                        "SELECT COALESCE(string_agg(row_to_json(x)::text, ''), '') AS t FROM {table} x"
                    )),
                );
            }
            return all.into_bytes();
        }
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let path = PathBuf::from(format!("{}{suffix}", self.db_path.display()));
            if let Ok(bytes) = std::fs::read(&path) {
                all.extend(bytes);
            }
        }
        all
    }
}

/// The value of the first `csrf_token` hidden field in a page.
pub fn csrf_from(html: &str) -> String {
    let re = regex::Regex::new(r#"name="csrf_token" value="([^"]+)""#).unwrap();
    re.captures(html).map(|c| c[1].to_string()).unwrap_or_else(|| panic!("no csrf_token in page:\n{html}"))
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: Status,
    pub location: Option<String>,
    pub headers: Vec<(String, String)>,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A user agent with its own cookie jar, on the shared local client.
pub struct Agent<'a> {
    pub app: &'a TestApp,
    cookies: Mutex<BTreeMap<String, String>>,
}

pub struct Pending<'a>(LocalResponse<'a>);

impl Pending<'_> {
    pub async fn body(self) -> String {
        self.0.into_string().await.unwrap_or_default()
    }
}

impl<'a> Agent<'a> {
    /// The jar's cookies, sent as the `Cookie` header of the next request.
    fn jar(&self) -> Vec<rocket::http::Cookie<'static>> {
        let jar = self.cookies.lock().unwrap();
        jar.iter().map(|(k, v)| rocket::http::Cookie::new(k.clone(), v.clone())).collect()
    }

    fn absorb(&self, res: &LocalResponse<'_>) {
        let mut jar = self.cookies.lock().unwrap();
        for raw in res.headers().get("Set-Cookie") {
            let c = cookie::Cookie::parse_encoded(raw.to_string()).expect("valid Set-Cookie");
            let removed = c.max_age().is_some_and(|m| m.is_zero() || m.is_negative())
                || c.expires_datetime().is_some_and(|t| t < time::OffsetDateTime::now_utc());
            if removed || c.value().is_empty() {
                jar.remove(c.name());
            } else {
                jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
    }

    /// Raw `Set-Cookie` handling aside, the jar's current cookies.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.cookies.lock().unwrap().get(name).cloned()
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.cookies.lock().unwrap().insert(name.to_string(), value.to_string());
    }

    pub fn clear_cookies(&self) {
        self.cookies.lock().unwrap().clear();
    }

    pub async fn get(&self, uri: &str) -> Pending<'a> {
        let req = self.app.client.get(uri.to_string()).cookies(self.jar());
        let res = req.dispatch().await;
        self.absorb(&res);
        Pending(res)
    }

    /// GET with extra headers (a `User-Agent`, an `Authorization`), read in full.
    pub async fn fetch_with(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = self.app.client.get(uri.to_string()).cookies(self.jar());
        for (k, v) in headers {
            req = req.header(Header::new(k.to_string(), v.to_string()));
        }
        let res = req.dispatch().await;
        self.absorb(&res);
        read(res).await
    }

    pub async fn fetch(&self, uri: &str) -> Reply {
        let res = self.get(uri).await;
        read(res.0).await
    }

    pub async fn post_form(&self, uri: &str, fields: &[(&str, &str)]) -> Reply {
        self.post_with(uri, fields, &[]).await
    }

    pub async fn post_with(&self, uri: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Reply {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let mut req = self.app.client.post(uri.to_string()).header(ContentType::Form).body(body).cookies(self.jar());
        for (k, v) in headers {
            req = req.header(Header::new(k.to_string(), v.to_string()));
        }
        let res = req.dispatch().await;
        self.absorb(&res);
        read(res).await
    }

    /// GET a page and return its CSRF token.
    pub async fn csrf(&self, uri: &str) -> String {
        csrf_from(&self.get(uri).await.body().await)
    }

    /// Press the Redirector's Authorize button; returns the provider authorize URL.
    pub async fn start_flow(&self, service: &str) -> url::Url {
        let csrf = self.csrf(&format!("/services/{service}/authorize")).await;
        let res = self.post_form(&format!("/services/{service}/authorize"), &[("csrf_token", &csrf)]).await;
        assert_eq!(res.status, Status::SeeOther, "authorize failed: {}", res.text);
        url::Url::parse(res.location.as_deref().unwrap()).unwrap()
    }

    /// Press the Redirector's button with these form fields besides the CSRF token
    /// (`connection`, `add_account`, `scopes`); returns the provider authorize URL.
    pub async fn start_flow_with(&self, service: &str, fields: &[(&str, &str)]) -> url::Url {
        let csrf = self.csrf(&format!("/services/{service}/authorize")).await;
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        let res = self.post_form(&format!("/services/{service}/authorize"), &all).await;
        assert_eq!(res.status, Status::SeeOther, "authorize failed: {}", res.text);
        url::Url::parse(res.location.as_deref().unwrap()).unwrap()
    }

    /// Finish a flow started at the fake provider (it approves): the callback's reply.
    pub async fn finish_flow(&self, service: &str, authorize: &url::Url) -> Reply {
        let (state, _) = flow_params(authorize);
        let code = self.app.fake.authorize(authorize);
        self.fetch(&format!("/services/{service}/callback?code={code}&state={state}")).await
    }

    /// Create an API key named `name` on /settings/api-keys; the key, as shown once.
    pub async fn api_key(&self, name: &str) -> String {
        let csrf = self.csrf("/settings/api-keys").await;
        let r = self.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", name)]).await;
        assert_eq!(r.status, Status::Ok, "{}", r.text);
        let re = regex::Regex::new(r#"<code id="new-api-key">(tvk_[A-Za-z0-9_-]+)</code>"#).unwrap();
        re.captures(&r.text).expect("the new key is shown once")[1].to_string()
    }

    /// Run a whole successful flow against the fake provider.
    pub async fn connect(&self, service: &str) -> Reply {
        let authorize = self.start_flow(service).await;
        let reply = self.finish_flow(service, &authorize).await;
        assert_eq!(reply.status, Status::SeeOther, "callback failed: {}", reply.text);
        reply
    }
}

/// `state` and `code_challenge` of an authorize URL.
pub fn flow_params(url: &url::Url) -> (String, String) {
    let q: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    (q.get("state").cloned().unwrap_or_default(), q.get("code_challenge").cloned().unwrap_or_default())
}

async fn read(res: LocalResponse<'_>) -> Reply {
    let status = res.status();
    let headers: Vec<(String, String)> =
        res.headers().iter().map(|h| (h.name().to_string(), h.value().to_string())).collect();
    let location = res.headers().get_one("Location").map(String::from);
    let text = res.into_string().await.unwrap_or_default();
    Reply { status, location, headers, text }
}

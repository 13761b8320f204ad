//! The leak test of SECURITY.md items 11 and 19, against the real binary.
//!
//! The binary runs as a subprocess at `RUST_LOG=trace` with its stderr and stdout in files. A user
//! signs up (and becomes the administrator), sets a vault value and re-saves the client secret
//! through `/admin/vault`, connects the fake provider through the real flow, creates an API key,
//! then every page and API response is fetched — including failing callbacks, revocation,
//! deletion, a password change, logout and login. The fake's `expires_in` is 0 (tokens expired
//! when issued), so every use of the token refreshes it (and rotates the refresh token).
//!
//! Every secret of the run — each access and refresh token the fake issued, the client secret, the
//! admin-typed vault canary, each authorization code, PKCE verifier and `state`, the API key, each
//! session cookie and the session id inside it, and the passwords — is then searched for in raw,
//! HTML/JSON-escaped, percent-encoded, hex (both cases), base64 and base64url (at every byte
//! alignment) form in: every response header and body, the server's log, what the provider's
//! account and API endpoints received, and finally the database (the SQLite file and its
//! `-wal`/`-shm`, or every row of every PostgreSQL table). Only the places where a secret must be
//! are exempt: the access token in `/api/v1/services/<s>/token`'s body, the API key on the page
//! that creates it, a session cookie in the `Set-Cookie` that sets it, a `state` in the redirect to
//! the provider, and the `Authorization` header of calls to the provider.

use crate::common;

use std::path::{Path, PathBuf};
use tokenvault::util::ExposeSecret;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::FakeProvider;
use tokenvault::db::Db;
use tokenvault::vault::Cipher;

const USERNAME: &str = "crawler";

use crate::common::server::Server;

async fn start_server(database_url: &str, fake: &str, dir: &Path) -> Server {
    let env = vec![("ROCKET_HTTP_TIMEOUT".to_string(), "5".to_string())];
    common::server::start(common::server::Options {
        log_filter: "trace",
        env,
        ..common::server::Options::new(database_url, fake, dir)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Secrets and the forms they are searched in

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    AccessToken,
    RefreshToken,
    ClientSecret,
    VaultCanary,
    Code,
    Verifier,
    State,
    ApiKey,
    SessionCookie,
    SessionId,
    Password,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AccessToken => "access token",
            Kind::RefreshToken => "refresh token",
            Kind::ClientSecret => "client secret",
            Kind::VaultCanary => "admin-typed vault canary",
            Kind::Code => "authorization code",
            Kind::Verifier => "PKCE verifier",
            Kind::State => "state",
            Kind::ApiKey => "API key",
            Kind::SessionCookie => "session cookie value",
            Kind::SessionId => "session id (inside the cookie)",
            Kind::Password => "password",
        }
    }

    fn of_token(value: &str) -> Option<Kind> {
        if value.starts_with("AT-CANARY-") {
            Some(Kind::AccessToken)
        } else if value.starts_with("RT-CANARY-") {
            Some(Kind::RefreshToken)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
struct Secret {
    kind: Kind,
    label: String,
    value: String,
}

#[derive(Default)]
struct Secrets {
    list: Vec<Secret>,
}

impl Secrets {
    fn add(&mut self, kind: Kind, value: &str) {
        let n = self.list.iter().filter(|s| s.kind == kind).count() + 1;
        self.add_labeled(kind, &format!("{} #{n}", kind.name()), value);
    }

    fn add_labeled(&mut self, kind: Kind, label: &str, value: &str) {
        if value.is_empty() || self.list.iter().any(|s| s.value == value) {
            return;
        }
        self.list.push(Secret { kind, label: label.to_string(), value: value.to_string() });
    }

    fn add_token(&mut self, value: &str) {
        if let Some(kind) = Kind::of_token(value) {
            self.add(kind, value);
        }
    }

    fn of(&self, kind: Kind) -> Vec<&str> {
        self.list.iter().filter(|s| s.kind == kind).map(|s| s.value.as_str()).collect()
    }
}

fn push_form(out: &mut Vec<(String, String)>, name: String, needle: String) {
    if !needle.is_empty() && !out.iter().any(|(_, n)| *n == needle) {
        out.push((name, needle));
    }
}

/// Every form a secret is searched in: raw, escaped, percent-encoded, hex, and base64/base64url
/// at the three byte alignments it can have inside a longer encoded value (only the characters
/// that depend on the secret alone).
fn forms(value: &str) -> Vec<(String, String)> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    push_form(&mut out, "raw".into(), value.to_string());
    let html = value.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    push_form(&mut out, "HTML-escaped".into(), html.clone());
    let handlebars = html.replace('\'', "&#x27;").replace('`', "&#x60;").replace('=', "&#x3D;");
    push_form(&mut out, "HTML-escaped (Handlebars)".into(), handlebars);
    let json = serde_json::to_string(value).unwrap();
    push_form(&mut out, "JSON-escaped".into(), json[1..json.len() - 1].to_string());
    push_form(&mut out, "form-urlencoded".into(), url::form_urlencoded::byte_serialize(bytes).collect());
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    let rfc3986 = |upper: bool| -> String {
        bytes
            .iter()
            .map(|&b| match (unreserved(b), upper) {
                (true, _) => (b as char).to_string(),
                (false, true) => format!("%{b:02X}"),
                (false, false) => format!("%{b:02x}"),
            })
            .collect()
    };
    push_form(&mut out, "percent-encoded".into(), rfc3986(true));
    push_form(&mut out, "percent-encoded (lowercase hex)".into(), rfc3986(false));
    push_form(&mut out, "percent-encoded (every byte)".into(), bytes.iter().map(|b| format!("%{b:02X}")).collect());
    push_form(&mut out, "hex".into(), bytes.iter().map(|b| format!("{b:02x}")).collect());
    push_form(&mut out, "HEX".into(), bytes.iter().map(|b| format!("{b:02X}")).collect());
    for (name, engine) in [("base64", STANDARD_NO_PAD), ("base64url", URL_SAFE_NO_PAD)] {
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(bytes);
            let encoded = engine.encode(&shifted);
            let (start, end) = ((offset * 8).div_ceil(6), shifted.len() * 8 / 6);
            if end > start {
                push_form(&mut out, format!("{name} (at byte offset {offset})"), encoded[start..end].to_string());
            }
        }
    }
    // Its longest run of plain characters, in case the whole value shows up transformed some other
    // way (escaped, truncated).
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
    if let Some(run) = value.split(|c| !plain(c)).max_by_key(|r| r.len()).filter(|r| r.len() >= 16) {
        push_form(&mut out, format!("in part (`{run}`)"), run.to_string());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// What is searched

#[derive(Clone)]
enum Allow {
    /// Every secret of this kind may appear here.
    Kind(Kind),
    /// This one value may appear here.
    Value(String),
}

/// One text searched for secrets.
struct Hay {
    place: String,
    text: String,
    allow: Vec<Allow>,
    /// Report line numbers (logs).
    lines: bool,
}

impl Hay {
    fn new(place: impl Into<String>, text: impl Into<String>, allow: Vec<Allow>) -> Hay {
        Hay { place: place.into(), text: text.into(), allow, lines: false }
    }

    fn allows(&self, s: &Secret) -> bool {
        self.allow.iter().any(|a| match a {
            Allow::Kind(k) => *k == s.kind,
            Allow::Value(v) => *v == s.value,
        })
    }

    fn describe(&self, at: usize, len: usize) -> String {
        let floor = |mut i: usize| {
            while !self.text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        if self.lines {
            let line = self.text[..at].matches('\n').count() + 1;
            let start = self.text[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = self.text[at..].find('\n').map_or(self.text.len(), |i| at + i);
            let shown = &self.text[start..floor(end.min(start + 600))];
            format!("{} line {line}: {shown}", self.place)
        } else {
            let start = floor(at.saturating_sub(100));
            let end = floor((at + len + 100).min(self.text.len()));
            format!("{}: …{}…", self.place, &self.text[start..end])
        }
    }
}

/// Every (secret, form, place) found; empty means no leak.
fn scan(hays: &[Hay], secrets: &[Secret]) -> Vec<String> {
    let compiled: Vec<(&Secret, Vec<(String, String)>)> = secrets.iter().map(|s| (s, forms(&s.value))).collect();
    let mut findings = Vec::new();
    for hay in hays {
        for (secret, forms) in &compiled {
            if hay.allows(secret) {
                continue;
            }
            for (form, needle) in forms {
                if let Some(at) = hay.text.find(needle.as_str()) {
                    let count = hay.text.matches(needle.as_str()).count();
                    findings.push(format!(
                        "{} `{}` found {form} ({count}×) in {}",
                        secret.label,
                        secret.value,
                        hay.describe(at, needle.len())
                    ));
                    break;
                }
            }
        }
    }
    findings
}

// ---------------------------------------------------------------------------------------------
// The crawler

struct Page {
    place: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn location(&self) -> &str {
        self.header("location")
            .unwrap_or_else(|| panic!("{}: no Location ({}): {}", self.place, self.status, self.body))
    }

    fn expect(&self, status: u16) -> &Page {
        assert_eq!(self.status, status, "{}: unexpected status; body:\n{}", self.place, self.body);
        self
    }

    fn csrf(&self) -> String {
        let re = regex::Regex::new(r#"name="csrf_token" value="([^"]+)""#).unwrap();
        re.captures(&self.body)
            .map(|c| c[1].to_string())
            .unwrap_or_else(|| panic!("{}: no csrf_token in page:\n{}", self.place, self.body))
    }
}

struct Crawler<'a> {
    http: reqwest::Client,
    base: String,
    fake: &'a FakeProvider,
    db: &'a Db,
    cipher: &'a Cipher,
    secrets: Secrets,
    hays: Vec<Hay>,
    /// (place, Location) of every redirect the app answered.
    locations: Vec<(String, String)>,
    /// Every page fetched, in order (for the report).
    crawled: Vec<String>,
    cookie_key: cookie::Key,
}

impl<'a> Crawler<'a> {
    fn new(base: &str, fake: &'a FakeProvider, db: &'a Db, cipher: &'a Cipher) -> Crawler<'a> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Crawler {
            http,
            base: base.to_string(),
            fake,
            db,
            cipher,
            secrets: Secrets::default(),
            hays: Vec::new(),
            locations: Vec::new(),
            crawled: Vec::new(),
            cookie_key: cookie::Key::from(&STANDARD.decode(common::SECRET_KEY).unwrap()),
        }
    }

    async fn sign_up(&mut self) {
        let fields = [("username", USERNAME), ("password", common::PASSWORD), ("password_confirm", common::PASSWORD)];
        self.submit("/signup", "/signup", &fields).await.expect(303);
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        bearer: Option<&str>,
        json_body: Option<&str>,
    ) -> Page {
        let place = format!("#{} {method} {path}", self.crawled.len() + 1);
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(fields) = form {
            req = req.form(fields);
        }
        if let Some(key) = bearer {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        if let Some(body) = json_body {
            req = req.header("Content-Type", "application/json").body(body.to_string());
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{place}: {e}"));
        let status = res.status().as_u16();
        let headers = res
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = res.text().await.unwrap_or_else(|e| panic!("{place}: body: {e}"));
        self.crawled.push(format!("{place} → {status}"));
        self.snapshot();
        Page { place, status, headers, body }
    }

    /// Search this response's headers (with `header_allow`) and body (or `body`, with `body_allow`).
    fn record(&mut self, page: &Page, body: Option<String>, body_allow: Vec<Allow>, header_allow: Vec<Allow>) {
        for (name, value) in &page.headers {
            let mut allow = header_allow.clone();
            if name.eq_ignore_ascii_case("set-cookie") {
                let c = cookie::Cookie::parse_encoded(value.clone()).expect("a valid Set-Cookie");
                if c.name() == "tv_session" && !c.value().is_empty() {
                    let value = c.value().to_string();
                    self.secrets.add(Kind::SessionCookie, &value);
                    let id = session_id(&self.cookie_key, &value).unwrap_or_else(|| {
                        panic!("{}: the session cookie does not decrypt with SECRET_KEY", page.place)
                    });
                    self.secrets.add(Kind::SessionId, &id);
                    allow.push(Allow::Value(value));
                }
            }
            if name.eq_ignore_ascii_case("location") {
                self.locations.push((page.place.clone(), value.clone()));
            }
            self.hays.push(Hay::new(format!("{} response header `{name}`", page.place), value.clone(), allow));
        }
        let body = body.unwrap_or_else(|| page.body.clone());
        self.hays.push(Hay::new(format!("{} response body", page.place), body, body_allow));
    }

    async fn get(&mut self, path: &str) -> Page {
        let page = self.request(Method::GET, path, None, None, None).await;
        self.record(&page, None, vec![], vec![]);
        page
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let page = self.request(Method::POST, path, Some(fields), None, None).await;
        self.record(&page, None, vec![], vec![]);
        page
    }

    async fn api(&mut self, path: &str, key: Option<&str>) -> Page {
        let page = self.request(Method::GET, path, None, key, None).await;
        self.record(&page, None, vec![], vec![]);
        page
    }

    /// A successful proxy call. The fake echoes what it received, including the `Authorization`
    /// header the proxy legitimately sent it (checked to be an access token, then left out);
    /// everything else in the answer is searched.
    async fn proxy(&mut self, method: Method, path: &str, key: &str, body: Option<&str>) {
        let page = self.request(method, path, None, Some(key), body).await;
        page.expect(201);
        let mut echo: Value = serde_json::from_str(&page.body).unwrap();
        let sent = echo["headers"].as_object_mut().and_then(|h| h.remove("authorization"));
        let sent = sent.as_ref().and_then(Value::as_str).unwrap_or_default().to_string();
        assert!(sent.starts_with("Bearer AT-CANARY-"), "{}: the provider got `{sent}`", page.place);
        self.record(&page, Some(echo.to_string()), vec![], vec![]);
    }

    /// GET `csrf_from` for a CSRF token, then POST the form with it.
    async fn submit(&mut self, csrf_from: &str, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get(csrf_from).await.csrf();
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    /// The tokens issued so far: the fake's list of access tokens and what the database holds now
    /// (the refresh token of a connection that is then deleted is seen nowhere else).
    fn snapshot(&mut self) {
        for token in self.fake.with_state(|s| s.access_tokens.clone()) {
            self.secrets.add(Kind::AccessToken, &token);
        }
        let mut conn = self.db.conn().unwrap();
        let Some(user) = tokenvault::db::models::users::find_by_username(&mut conn, USERNAME).unwrap() else {
            return;
        };
        for c in tokenvault::db::models::connections::list_for_user(&mut conn, user.id).unwrap() {
            let (access, refresh) = tokenvault::oauth::store::open_tokens(self.cipher, &c).unwrap();
            self.secrets.add_token(access.expose_secret());
            if let Some(r) = refresh {
                self.secrets.add_token(r.expose_secret());
            }
        }
    }

    /// Press Authorize on the Redirector; returns (state, code_challenge). The state may appear in
    /// that one redirect to the provider.
    async fn start_flow(&mut self) -> (String, String) {
        let csrf = self.get("/services/fake/authorize").await.expect(200).csrf();
        let page = self
            .request(Method::POST, "/services/fake/authorize", Some(&[("csrf_token", csrf.as_str())]), None, None)
            .await;
        page.expect(303);
        let authorize = url::Url::parse(page.location()).expect("an absolute provider URL");
        let (state, challenge) = common::flow_params(&authorize);
        assert!(!state.is_empty() && !challenge.is_empty(), "{}: {authorize}", page.place);
        self.secrets.add(Kind::State, &state);
        self.record(&page, None, vec![], vec![Allow::Value(state.clone())]);
        (state, challenge)
    }

    /// The whole flow: Redirector, provider (the fake issues a code), Callback, greeting page.
    async fn connect(&mut self) {
        let (state, challenge) = self.start_flow().await;
        let code = self.fake.issue_code(&challenge);
        self.secrets.add(Kind::Code, &code);
        let callback = self.get(&callback_path(&[("code", code.as_str()), ("state", state.as_str())])).await;
        callback.expect(303);
        assert_eq!(callback.header("referrer-policy"), Some("no-referrer"), "{}", callback.place);
        assert_eq!(callback.header("cache-control"), Some("no-store"), "{}", callback.place);
        let next = callback.location().to_string();
        assert!(next.starts_with("/services/fake/connected"), "{}: {next}", callback.place);
        self.get(&next).await.expect(200);
    }
}

/// The random session id inside Rocket's private (encrypted) session cookie.
fn session_id(key: &cookie::Key, value: &str) -> Option<String> {
    let jar = cookie::CookieJar::new();
    let plain = jar.private(key).decrypt(cookie::Cookie::new("tv_session", value.to_string()))?;
    Some(plain.value().to_string())
}

fn callback_path(params: &[(&str, &str)]) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    format!("/services/fake/callback?{query}")
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn form_of(req: &wiremock::Request) -> Vec<(String, String)> {
    url::form_urlencoded::parse(&req.body).into_owned().collect()
}

fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Everything the database holds: the SQLite file and its -wal/-shm, or every row of every
/// PostgreSQL table as JSON (bytea as hex), one haystack per file or table.
fn database_hays(db: &Db, database: &common::TestDatabase) -> Vec<Hay> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let text = |sql: &str| -> String {
        let mut conn = db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(sql).get_result::<T>(c)).unwrap().t
    };
    if database.is_postgres() {
        let tables = text(
            "SELECT string_agg(table_name, ',') AS t FROM information_schema.tables WHERE table_schema = 'public'",
        );
        return tables
            .split(',')
            .map(|table| {
                let rows =
                    text(&format!("SELECT COALESCE(string_agg(row_to_json(x)::text, '\n'), '') AS t FROM {table} x"));
                Hay { place: format!("PostgreSQL table {table}"), text: rows, allow: vec![], lines: true }
            })
            .collect();
    }
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", database.url);
            let bytes = std::fs::read(&path).ok()?;
            Some(Hay::new(format!("database file {path}"), String::from_utf8_lossy(&bytes).into_owned(), vec![]))
        })
        .collect()
}

/// Every other file the server may have written under `dir` (key files, stray dumps…).
fn other_files(dir: &Path, skip: &[PathBuf], out: &mut Vec<Hay>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            other_files(&path, skip, out);
        } else if !skip.contains(&path) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            out.push(Hay::new(
                format!("file {}", path.display()),
                String::from_utf8_lossy(&bytes).into_owned(),
                vec![],
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// The fake provider (tokens that expire as they are issued), the test database with the fake's client
/// credentials in the vault, and the server on it.
struct Setup {
    server: Server,
    fake: FakeProvider,
    db: Db,
    cipher: Cipher,
    database: common::TestDatabase,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let fake = FakeProvider::start().await;
    // Tokens expire as they are issued (`expires_in: 0`): every use of a token refreshes it first.
    // (A 30 s token, inside the 60 s margin, used to do the same; now it is used for half its life.)
    fake.with_state(|s| s.expires_in = Some(json!(0)));
    let cipher = Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let db = Db::open_sized(&database.url, 1).expect("the test database opens");
    {
        let mut conn = db.conn().unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
    }
    let server = start_server(&database.url, &fake.uri(), dir.path()).await;
    Setup { server, fake, db, cipher, database, dir }
}

#[tokio::test]
async fn no_secret_leaks_into_pages_headers_logs_or_the_database() {
    let started = Instant::now();
    let Setup { server, fake, db, cipher, database, dir } = setup().await;
    let mut c = Crawler::new(&server.base, &fake, &db, &cipher);
    let vault_canary = format!("CS-CANARY-admin-{} +/=&%?<>\"'ü", random_hex(8));
    let new_password = format!("PW-CANARY-new-{}", random_hex(8));
    let wrong_password = format!("PW-CANARY-wrong-{}", random_hex(8));
    c.secrets.add(Kind::ClientSecret, common::CLIENT_SECRET);
    c.secrets.add(Kind::VaultCanary, &vault_canary);
    c.secrets.add(Kind::Password, common::PASSWORD);
    c.secrets.add(Kind::Password, &new_password);
    c.secrets.add(Kind::Password, &wrong_password);

    // Signed out.
    c.get("/").await.expect(200);
    c.get("/login").await.expect(200);
    c.get("/settings/oauth2").await.expect(303);
    c.get("/healthz").await.expect(200);

    // Sign up: the first user is the administrator.
    c.sign_up().await;
    c.get("/").await.expect(200);

    // The project vault: a new canary value, and the client secret saved again through the form.
    c.submit("/admin/vault", "/admin/vault", &[("path", "spare.api_secret"), ("value", vault_canary.as_str())])
        .await
        .expect(303);
    c.get("/admin/vault").await.expect(200);
    c.submit("/admin/vault", "/admin/vault", &[("path", "fake.client_secret"), ("value", common::CLIENT_SECRET)])
        .await
        .expect(303);
    c.get("/admin/vault").await.expect(200);

    // Connect through the real flow.
    c.connect().await;

    // Every page, the account page several times (each one refreshes).
    for path in [
        "/",
        "/settings/oauth2",
        "/services/fake/connected",
        "/services/fake/account",
        "/services/fake/account",
        "/services/fake/account",
        "/settings/oauth2",
        "/settings/password",
        "/settings/sessions",
        "/settings/api-keys",
        "/admin/vault",
        "/services/fake/authorize",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let page = c.get(path).await;
        assert_eq!(page.status, 200, "{}: {}", page.place, page.body);
    }
    c.get("/nope").await.expect(404);
    c.get("/services/nope/authorize").await.expect(404);

    // An API key: shown once, on the page that creates it.
    let csrf = c.get("/settings/api-keys").await.expect(200).csrf();
    let page = c
        .request(
            Method::POST,
            "/settings/api-keys",
            Some(&[("csrf_token", csrf.as_str()), ("name", "crawl")]),
            None,
            None,
        )
        .await;
    page.expect(200);
    let re = regex::Regex::new(r#"<code id="new-api-key">(tvk_[A-Za-z0-9_-]+)</code>"#).unwrap();
    let api_key = re.captures(&page.body).unwrap_or_else(|| panic!("no new key shown:\n{}", page.body))[1].to_string();
    c.secrets.add(Kind::ApiKey, &api_key);
    c.record(&page, None, vec![Allow::Value(api_key.clone())], vec![]);
    let keys_page = c.get("/settings/api-keys").await.expect(200).body.clone();

    // The JSON API.
    c.api("/api/v1/openapi.json", None).await.expect(200);
    c.api("/api/v1/connections", Some(&api_key)).await.expect(200);
    c.api("/api/v1/connections", None).await.expect(401);
    c.api("/api/v1/connections", Some("tvk_not-a-real-key")).await.expect(401);
    c.api("/api/v1/nope", Some(&api_key)).await.expect(404);
    // The token endpoint returns the access token, and only that.
    let page = c.request(Method::GET, "/api/v1/services/fake/token", None, Some(&api_key), None).await;
    page.expect(200);
    let token: Value = serde_json::from_str(&page.body).unwrap();
    let returned = token["access_token"].as_str().unwrap_or_default().to_string();
    assert!(returned.starts_with("AT-CANARY-"), "{}: {}", page.place, page.body);
    c.record(&page, None, vec![Allow::Kind(Kind::AccessToken)], vec![]);
    // The proxy (the fake echoes what it received).
    c.proxy(Method::GET, "/api/v1/services/fake/proxy/anything?probe=1", &api_key, None).await;
    c.proxy(Method::POST, "/api/v1/services/fake/proxy/anything", &api_key, Some(r#"{"hello":"provider"}"#)).await;
    // The console: a call through the proxy's code shown on a page — the fake's echo of the
    // Authorization header it received included — with every token blanked out.
    c.get("/services/fake/console").await.expect(200);
    let fields = [("method", "POST"), ("path", "/anything"), ("body", r#"{"hello":"console"}"#)];
    c.submit("/services/fake/console", "/services/fake/console", &fields).await.expect(200);

    // Failing callbacks: none may reach the token endpoint.
    let exchanges_before = fake.token_calls().await - fake.refresh_calls().await;
    // A real, unredeemed code with a state nobody issued.
    let stray_code = fake.issue_code("no-such-challenge");
    c.secrets.add(Kind::Code, &stray_code);
    let page = c.get(&callback_path(&[("code", stray_code.as_str()), ("state", "forged-state-0123456789")])).await;
    assert!((400..500).contains(&page.status), "{}: {}", page.place, page.status);
    // The user cancels at the provider.
    let (state, _) = c.start_flow().await;
    c.get(&callback_path(&[("error", "access_denied"), ("state", state.as_str())])).await.expect(200);
    // A mix-up: the right state and code, but another issuer.
    let (state, challenge) = c.start_flow().await;
    let mixed_code = fake.issue_code(&challenge);
    c.secrets.add(Kind::Code, &mixed_code);
    let page = c
        .get(&callback_path(&[
            ("code", mixed_code.as_str()),
            ("state", state.as_str()),
            ("iss", "https://evil.example"),
        ]))
        .await;
    assert!((400..500).contains(&page.status), "{}: {}", page.place, page.status);
    // No parameters at all.
    let page = c.get("/services/fake/callback").await;
    assert!((400..500).contains(&page.status), "{}: {}", page.place, page.status);
    assert_eq!(
        fake.token_calls().await - fake.refresh_calls().await,
        exchanges_before,
        "a failing callback reached the token endpoint"
    );
    c.get("/services/fake/account").await.expect(200);

    // A broken or hostile provider that echoes secrets in its error answers: neither the pages,
    // the API answers, the connection history nor the log may repeat them.
    let user_id = {
        let mut conn = db.conn().unwrap();
        tokenvault::db::models::users::find_by_username(&mut conn, USERNAME).unwrap().unwrap().id
    };
    // A failure makes the connection degraded (issue 12): let its backoff step pass, as the app
    // would learn of it (a cache invalidation, applied by the server's poller within a second).
    let backoff_passed = || {
        use diesel::RunQueryDsl;
        let mut conn = db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query("UPDATE connections SET next_attempt_at = 1").execute(c))
            .unwrap();
        let what = tokenvault::db::models::invalidations::Invalidated::Connection { user_id, service: "fake".into() };
        tokenvault::db::models::invalidations::record(&mut conn, &what).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
    };
    let (echo_at, echo_rt) = {
        let mut conn = db.conn().unwrap();
        let user = tokenvault::db::models::users::find_by_username(&mut conn, USERNAME).unwrap().unwrap();
        let row = tokenvault::db::models::connections::find(&mut conn, user.id, "fake").unwrap().unwrap();
        let (a, r) = tokenvault::oauth::store::open_tokens(&cipher, &row).unwrap();
        (a.expose_secret().to_string(), r.expect("a refresh token").expose_secret().to_string())
    };
    let echo = json!({
        "error": echo_rt,
        "error_description": format!("refresh_token={echo_rt} access_token={echo_at} secret={}", common::CLIENT_SECRET),
    });
    fake.script(wiremock::ResponseTemplate::new(400).set_body_json(echo.clone()));
    let page = c.get("/services/fake/account").await;
    assert_eq!(page.status, 502, "{}: {}", page.place, page.body);
    // Degraded, its token expired: the backoff's 503 (no provider call), crawled like the rest.
    assert_eq!(c.get("/services/fake/account").await.status, 503);
    c.get("/settings/oauth2").await.expect(200);
    backoff_passed();
    fake.script(wiremock::ResponseTemplate::new(500).set_body_string(format!("boom {echo_rt} {echo_at}")));
    assert_eq!(c.get("/services/fake/account").await.status, 502);
    backoff_passed();
    fake.script(wiremock::ResponseTemplate::new(503).set_body_json(echo));
    c.api("/api/v1/services/fake/token", Some(&api_key)).await.expect(502);
    c.api("/api/v1/connections", Some(&api_key)).await.expect(200);
    backoff_passed();
    // An authorization error whose description repeats a code.
    let (state, _) = c.start_flow().await;
    let echoed_code = fake.issue_code("unused-challenge");
    c.secrets.add(Kind::Code, &echoed_code);
    let description = format!("could not use code {echoed_code}");
    let page = c
        .get(&callback_path(&[
            ("error", "server_error"),
            ("error_description", description.as_str()),
            ("state", state.as_str()),
            ("code", echoed_code.as_str()),
        ]))
        .await;
    assert_eq!(page.status, 502, "{}: {}", page.place, page.body);
    assert!(page.body.contains("could not use code [code]"), "{}", page.body);
    c.get("/settings/oauth2").await.expect(200);
    c.get("/services/fake/account").await.expect(200);

    // Revoke (at the provider, then locally), connect again, then delete locally.
    c.submit("/settings/oauth2", "/settings/oauth2/fake/revoke", &[]).await.expect(303);
    c.get("/settings/oauth2").await.expect(200);
    c.connect().await;
    c.get("/services/fake/account").await.expect(200);
    c.proxy(Method::GET, "/api/v1/services/fake/proxy/again", &api_key, None).await;
    c.submit("/settings/oauth2", "/settings/oauth2/fake/delete", &[]).await.expect(303);
    c.get("/settings/oauth2").await.expect(200);
    c.get("/services/fake/account").await.expect(200);
    c.api("/api/v1/services/fake/token", Some(&api_key)).await.expect(404);
    c.api("/api/v1/services/fake/proxy/anything", Some(&api_key)).await.expect(404);

    // Revoking the API key, then the password page (a password change revokes every key too).
    let key_id = regex::Regex::new(r#"data-key="(\d+)""#).unwrap().captures(&keys_page).expect("the key is listed")[1]
        .to_string();
    c.submit("/settings/api-keys", &format!("/settings/api-keys/{key_id}/revoke"), &[]).await.expect(303);
    c.api("/api/v1/connections", Some(&api_key)).await.expect(401);
    c.submit(
        "/settings/password",
        "/settings/password",
        &[
            ("current_password", common::PASSWORD),
            ("new_password", new_password.as_str()),
            ("new_password_confirm", new_password.as_str()),
        ],
    )
    .await
    .expect(303);
    c.get("/settings/password").await.expect(200);
    // The sessions page after the password change (its own test checks it never shows a session id).
    c.get("/settings/sessions").await.expect(200);

    // Log out, a failed login, a login.
    c.submit("/", "/logout", &[]).await.expect(303);
    c.get("/").await.expect(200);
    c.submit("/login", "/login", &[("username", USERNAME), ("password", wrong_password.as_str())]).await.expect(401);
    c.submit("/login", "/login", &[("username", USERNAME), ("password", new_password.as_str())]).await.expect(303);
    c.get("/").await.expect(200);
    c.get("/settings/oauth2").await.expect(200);
    c.get("/healthz").await.expect(200);

    // What reached the provider: codes, verifiers and refresh tokens in the token requests, the
    // refresh token handed to the revocation endpoint.
    let mut exchanges = 0;
    for req in fake.requests_to("/token").await {
        let form = form_of(&req);
        match field(&form, "grant_type") {
            Some("authorization_code") => {
                exchanges += 1;
                let verifier = field(&form, "code_verifier").expect("PKCE on every exchange");
                c.secrets.add(Kind::Verifier, verifier);
                c.secrets.add(Kind::Code, field(&form, "code").unwrap_or_default());
            }
            Some("refresh_token") => c.secrets.add_token(field(&form, "refresh_token").unwrap_or_default()),
            other => panic!("unexpected token request {other:?}"),
        }
    }
    for req in fake.requests_to("/revoke").await {
        c.secrets.add_token(field(&form_of(&req), "token").unwrap_or_default());
    }
    c.snapshot();
    assert_eq!(exchanges, 2, "two connections were made");
    let refreshes = fake.refresh_calls().await;
    assert!(refreshes >= 5, "the crawl was meant to refresh on every use; {refreshes} refreshes");
    let (ats, rts) = (c.secrets.of(Kind::AccessToken), c.secrets.of(Kind::RefreshToken));
    assert!(ats.contains(&returned.as_str()), "the token endpoint returned a token the provider never issued");
    assert_eq!(
        ats.len(),
        rts.len(),
        "every token response carries a new refresh token, so each must have been seen: {ats:?} {rts:?}"
    );
    assert!(c.secrets.of(Kind::SessionCookie).len() >= 3, "sign-up, password change and login set sessions");

    // What the provider's account and API endpoints saw: the access token in `Authorization`,
    // nothing else. No provider request carries a secret in its URL.
    let received = fake_requests(&fake).await;
    for (place, req) in &received {
        c.hays.push(Hay::new(format!("{place} URL"), req.url.to_string(), vec![]));
        if req.url.path() == "/account" || req.url.path().starts_with("/api/") {
            for (name, value) in req.headers.iter() {
                let allow =
                    if name.as_str() == "authorization" { vec![Allow::Kind(Kind::AccessToken)] } else { vec![] };
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                c.hays.push(Hay::new(format!("{place} header `{name}`"), value, allow));
            }
            c.hays.push(Hay::new(format!("{place} body"), String::from_utf8_lossy(&req.body).into_owned(), vec![]));
        }
    }

    // Every URL the app sends a browser to: same-origin without `code=`, or the provider's
    // authorize URL with a state and a challenge but never a code or the verifier.
    let mut findings = Vec::new();
    let provider_authorize = format!("{}/authorize?", fake.uri());
    for (place, location) in &c.locations {
        if location.starts_with(&provider_authorize) {
            let url = url::Url::parse(location).unwrap();
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            let has = |k: &str| keys.iter().any(|x| x == k);
            if has("code") || has("code_verifier") || !has("state") || !has("code_challenge") {
                findings.push(format!("{place}: bad provider redirect {location}"));
            }
            if url.query_pairs().any(|(k, v)| k == "code_challenge_method" && v != "S256") {
                findings.push(format!("{place}: PKCE method is not S256 in {location}"));
            }
        } else {
            let same_origin =
                (location.starts_with('/') && !location.starts_with("//") && !location.starts_with("/\\"))
                    || location.starts_with(&format!("{}/", common::PUBLIC_URL));
            if !same_origin {
                findings.push(format!("{place}: Location leaves the site: {location}"));
            }
            if location.contains("code=") {
                findings.push(format!("{place}: Location carries `code=`: {location}"));
            }
        }
    }
    // Each verifier matches a challenge the app put in an authorize URL (so the right values were
    // recorded).
    for verifier in c.secrets.of(Kind::Verifier) {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert!(c.locations.iter().any(|(_, l)| l.contains(&challenge)), "verifier {verifier} matches no challenge");
    }

    // Stop the server, then read its logs and everything it stored.
    let (base, log, stdout) = (server.base.clone(), server.log.clone(), server.stdout.clone());
    drop(server);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("TRACE") || log_text.contains("DEBUG"), "the log is not at the most verbose level");
    assert!(log_text.contains("/services/fake/callback"), "the request log should list the callbacks");
    c.hays.push(Hay { place: "server log (stderr)".into(), text: log_text.clone(), allow: vec![], lines: true });
    let out_text = std::fs::read_to_string(&stdout).unwrap();
    c.hays.push(Hay { place: "server stdout".into(), text: out_text, allow: vec![], lines: true });
    let stored = database_hays(&db, &database);
    assert!(
        stored.iter().any(|h| h.text.contains("spare.api_secret")),
        "the database read is not the server's (no vault entry `spare.api_secret` in it)"
    );
    c.hays.extend(stored);
    let mut skip = vec![log.clone(), stdout.clone()];
    if !database.is_postgres() {
        skip.extend(["", "-wal", "-shm"].iter().map(|s| PathBuf::from(format!("{}{s}", database.url))));
    }
    other_files(dir.path(), &skip, &mut c.hays);

    // Last, the canary prefixes themselves: any canary, even one this test failed to collect.
    for (kind, prefix) in [
        (Kind::AccessToken, "AT-CANARY-"),
        (Kind::RefreshToken, "RT-CANARY-"),
        (Kind::Code, "CODE-CANARY-"),
        (Kind::ClientSecret, "CS-CANARY-"),
        (Kind::Password, "PW-CANARY-"),
    ] {
        c.secrets.add_labeled(kind, &format!("any {} (prefix)", kind.name()), prefix);
    }
    findings.extend(scan(&c.hays, &c.secrets.list));

    let summary = format!(
        "server {base}, {} database; {} requests crawled, {} places searched (log: {} lines, {} bytes), {} secrets \
         ({} access tokens, {} refresh tokens, {} codes, {} verifiers, {} states, {} session cookies), {} refreshes, \
         {:.1} s",
        if database.is_postgres() { "PostgreSQL" } else { "SQLite" },
        c.crawled.len(),
        c.hays.len(),
        log_text.lines().count(),
        log_text.len(),
        c.secrets.list.len(),
        c.secrets.of(Kind::AccessToken).len(),
        c.secrets.of(Kind::RefreshToken).len(),
        c.secrets.of(Kind::Code).len(),
        c.secrets.of(Kind::Verifier).len(),
        c.secrets.of(Kind::State).len(),
        c.secrets.of(Kind::SessionCookie).len(),
        refreshes,
        started.elapsed().as_secs_f64(),
    );
    eprintln!("canary crawl: {summary}");
    if !findings.is_empty() {
        let shown: Vec<&String> = findings.iter().take(60).collect();
        panic!(
            "{} leak(s) found ({summary}):\n- {}\n\ncrawled:\n{}",
            findings.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n- "),
            c.crawled.join("\n")
        );
    }
}

/// Found by the crawl: after a connection is revoked (or deleted) and made again, its row starts
/// over at version 1 while the in-process mark of the newest version written (70c25ec) still holds
/// the old connection's, so `refresh_if` takes every later refresh as already done by someone
/// else — proactive ones and the one after a 401 alike — until the process restarts.
#[tokio::test]
async fn tokens_are_still_refreshed_after_revoking_and_connecting_again() {
    let Setup { server, fake, db, cipher, database: _database, dir: _dir } = setup().await;
    let mut c = Crawler::new(&server.base, &fake, &db, &cipher);
    c.sign_up().await;
    c.connect().await;
    c.get("/services/fake/account").await.expect(200);
    c.get("/services/fake/account").await.expect(200);
    let before = fake.refresh_calls().await;
    assert_eq!(before, 2, "each use of an expired token refreshes it");
    c.submit("/settings/oauth2", "/settings/oauth2/fake/revoke", &[]).await.expect(303);
    c.connect().await;
    c.get("/services/fake/account").await.expect(200);
    assert_eq!(fake.refresh_calls().await - before, 1, "the new connection's token is refreshed like the first's");
    // And after the provider rejects a token that is not due for refresh: exactly one refresh
    // and one retry.
    fake.with_state(|s| s.expires_in = Some(serde_json::json!(3600)));
    c.get("/services/fake/account").await.expect(200); // one more proactive refresh, to a long-lived token
    fake.invalidate_access_tokens();
    let (refreshes, account_calls) = (fake.refresh_calls().await, fake.requests_to("/account").await.len());
    let page = c.get("/services/fake/account").await;
    assert!(page.body.contains(r#"data-state="ok""#), "{}", page.body);
    assert_eq!(fake.refresh_calls().await - refreshes, 1, "one refresh after the 401");
    assert_eq!(fake.requests_to("/account").await.len() - account_calls, 2, "the call and its one retry");
    drop(server);
}

/// Every request the fake received, with a place name.
async fn fake_requests(fake: &FakeProvider) -> Vec<(String, wiremock::Request)> {
    let mut all = Vec::new();
    for path in ["/token", "/revoke", "/account"] {
        for (i, req) in fake.requests_to(path).await.into_iter().enumerate() {
            all.push((format!("provider request {} {path} #{}", req.method, i + 1), req));
        }
    }
    for path in ["/api/anything", "/api/again"] {
        for (i, req) in fake.requests_to(path).await.into_iter().enumerate() {
            all.push((format!("provider request {} {path} #{}", req.method, i + 1), req));
        }
    }
    all
}

/// The scanner itself: a secret hidden in each form the crawl searches for is found, an allowed
/// one is not reported, and unrelated text gives no false alarm.
#[test]
fn the_scanner_finds_every_form_of_a_secret() {
    let token = "RT-CANARY-7-0a1b2c3d4e5f";
    let typed = "CS-CANARY-admin-00ff +/=&%?<>\"'ü";
    let hex = |v: &str| v.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let cases: Vec<(&str, String)> = vec![
        (token, format!("GET /x token={token} HTTP/1.1")),
        (token, format!("Authorization: Basic {}", STANDARD.encode(format!("client:{token}")))),
        (token, format!("{{\"blob\":\"{}\"}}", STANDARD.encode(format!("ab{token}")))),
        (token, URL_SAFE_NO_PAD.encode(format!("0{token}1"))),
        (token, format!("\\x{}", hex(token))),
        (token, hex(token).to_uppercase()),
        (typed, format!("value={}&x=1", url::form_urlencoded::byte_serialize(typed.as_bytes()).collect::<String>())),
        (typed, format!("<td>{}</td>", typed.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;"))),
        (typed, format!("<td>{}</td>", typed.replace('&', "&#38;"))),
        (typed, format!("log value={}", serde_json::to_string(typed).unwrap())),
        (typed, format!("/api/{}", typed.bytes().map(|b| format!("%{b:02X}")).collect::<String>())),
        (typed, STANDARD.encode(format!("xyz{typed}"))),
    ];
    for (value, text) in cases {
        let secret = Secret { kind: Kind::RefreshToken, label: "canary".into(), value: value.into() };
        let found = scan(&[Hay::new("case", text.clone(), vec![])], std::slice::from_ref(&secret));
        assert_eq!(found.len(), 1, "`{value}` not found in `{text}`");
        let allowed = Hay::new("case", text.clone(), vec![Allow::Kind(Kind::RefreshToken)]);
        assert!(scan(&[allowed], std::slice::from_ref(&secret)).is_empty());
    }
    let secret = Secret { kind: Kind::AccessToken, label: "canary".into(), value: token.into() };
    let unrelated = Hay::new("case", format!("RT-CANARY-8-0a1b2c3d4e5f {}", STANDARD.encode("RT-CANARY-8")), vec![]);
    assert!(scan(&[unrelated], &[secret]).is_empty());
}

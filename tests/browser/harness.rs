//! The browser-test harness: the app as a subprocess on a free port with a fresh data directory, a
//! chromedriver on its own free port driving a headless Chromium with a fresh profile, and helpers
//! that wait explicitly for what a user would see.
//!
//! Every process started here is ended by its own id when its owner is dropped, also when a test
//! panics: the WebDriver session is deleted first (chromedriver then quits Chromium), then
//! chromedriver and the app are killed and reaped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tempfile::TempDir;

pub use crate::binary::free_port_on;
use crate::binary::Server;

/// How long a page may take to show what a test waits for. Generous: the machine has two cores
/// and other builds may run next to the suite.
pub const WAIT: Duration = Duration::from_secs(30);
const STARTUP: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// A password that passes the sign-up form's rules (at least 10 characters).
pub const PASSWORD: &str = "correct horse battery staple";

/// A fresh vault key (base64 of 32 random bytes), to give two apps the same one.
pub fn random_vault_key() -> String {
    random_b64(32)
}

fn random_b64(len: usize) -> String {
    let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    STANDARD.encode(bytes)
}

/// A short random string for usernames and canaries.
pub fn random_suffix() -> String {
    (0..10).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect()
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------------
// The app under test
// ---------------------------------------------------------------------------------------------

/// How to start an app: [`App::start`]'s defaults, plus what a test changes.
#[derive(Debug, Clone, Default)]
pub struct AppConfig {
    /// The loopback address to serve on (`127.0.0.1` by default); also the host of `public_url`.
    ip: Option<String>,
    /// The port (a free one by default); see [`free_port_on`].
    port: Option<u16>,
    /// The vault key, base64 (a random one by default); see [`random_vault_key`].
    vault_key: Option<String>,
    /// Extra environment variables, set after the defaults so that they win.
    env: Vec<(String, String)>,
}

impl AppConfig {
    pub fn new() -> AppConfig {
        AppConfig::default()
    }

    pub fn ip(mut self, ip: &str) -> AppConfig {
        self.ip = Some(ip.to_string());
        self
    }

    pub fn port(mut self, port: u16) -> AppConfig {
        self.port = Some(port);
        self
    }

    pub fn vault_key(mut self, key: &str) -> AppConfig {
        self.vault_key = Some(key.to_string());
        self
    }

    /// Set an environment variable for the app, e.g. `ROCKET_DEMO_TOKEN_LIFETIME`.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> AppConfig {
        self.env.push((name.to_string(), value.into()));
        self
    }
}

/// The tokenvault binary serving on a free port, with its own data directory and keys.
pub struct App {
    server: Server,
    pub base: String,
    dir: TempDir,
}

impl App {
    pub async fn start() -> App {
        App::start_with(AppConfig::default()).await
    }

    /// Start the app with some settings changed (see [`AppConfig`]); the process and the port
    /// race are [`crate::binary::spawn`]'s (a new port, the same keys and database).
    pub async fn start_with(config: AppConfig) -> App {
        let dir = tempfile::Builder::new().prefix("tokenvault-browser-").tempdir().expect("create a temp dir");
        let ip = config.ip.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let (vault_key, secret_key) = (config.vault_key.clone().unwrap_or_else(random_vault_key), random_b64(64));
        let server = crate::binary::spawn(&ip, config.port, dir.path(), |command, port| {
            command
                .env("ROCKET_PROFILE", "debug")
                .env("ROCKET_PUBLIC_URL", format!("http://{ip}:{port}"))
                .env("ROCKET_DATA_DIR", dir.path())
                .env("ROCKET_DATABASE_URL", dir.path().join("tv.sqlite"))
                .env("ROCKET_VAULT_KEY", &vault_key)
                .env("ROCKET_SECRET_KEY", &secret_key)
                .env("ROCKET_DEMO_TOKEN_LIFETIME", "120");
            for (name, value) in &config.env {
                command.env(name, value);
            }
        })
        .await;
        App { base: server.base.clone(), server, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Everything the app wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        self.server.log_text()
    }

    /// The app's data directory (its SQLite files live there).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The app's `database_url`, to open its database with the library while it runs.
    pub fn database_url(&self) -> String {
        self.dir.path().join("tv.sqlite").to_string_lossy().into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the browser
// ---------------------------------------------------------------------------------------------

fn find_program(preferred: &str, names: &[&str]) -> Option<PathBuf> {
    let preferred = Path::new(preferred);
    if preferred.is_file() {
        return Some(preferred.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).flat_map(|dir| names.iter().map(move |n| dir.join(n))).find(|p| p.is_file())
}

/// chromedriver's path, or `None` when the browser tests must be skipped (after saying so once).
/// With `TOKENVAULT_REQUIRE_BROWSER=1` a missing browser fails the test instead.
fn chromedriver_or_skip() -> Option<PathBuf> {
    let driver = find_program("/usr/bin/chromedriver", &["chromedriver"]);
    let browser = find_program("/usr/bin/chromium", &["chromium", "chromium-browser", "google-chrome"]);
    let missing = match (&driver, &browser) {
        (Some(_), Some(_)) => return driver,
        (None, Some(_)) => "chromedriver not found",
        (Some(_), None) => "chromium not found",
        (None, None) => "chromedriver and chromium not found",
    };
    let install = "install Debian's chromium and chromium-driver";
    if std::env::var("TOKENVAULT_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("browser tests cannot run: {missing} ({install}); TOKENVAULT_REQUIRE_BROWSER=1 makes this a failure");
    }
    let message = format!("browser tests skipped: {missing} ({install})");
    static SAID: Once = Once::new();
    // Straight to the process's stderr, past the test harness's output capture, and once per run.
    SAID.call_once(|| {
        let _ = writeln!(std::io::stderr(), "{message}");
    });
    None
}

// ---------------------------------------------------------------------------------------------
// chromedriver
// ---------------------------------------------------------------------------------------------

struct Driver {
    child: Child,
    port: u16,
    /// The WebDriver session, while it is open.
    session: Option<String>,
    /// Chromium's main process, as chromedriver reports it.
    browser_pid: Option<u32>,
    _profile: TempDir,
    log_path: PathBuf,
}

impl Driver {
    async fn start(binary: &Path) -> Driver {
        let profile = tempfile::Builder::new().prefix("tokenvault-chromium-").tempdir().expect("create a profile dir");
        let port = crate::binary::free_port();
        let log_path = profile.path().join("chromedriver.log");
        let log = File::create(&log_path).expect("create chromedriver's log");
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone a file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut driver = Driver { child, port, session: None, browser_pid: None, _profile: profile, log_path };
        driver.wait_ready().await;
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("reqwest client");
        let url = format!("{}/status", self.url());
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited during startup ({status}); its output:\n{}", read_lossy(&self.log_path));
            }
            if let Ok(res) = http.get(&url).send().await {
                if let Ok(body) = res.json::<Value>().await {
                    if body["value"]["ready"] == json!(true) {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("chromedriver was not ready within {STARTUP:?}; its output:\n{}", read_lossy(&self.log_path));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn connect(&mut self) -> Client {
        self.connect_as(None).await
    }

    /// A session on a desktop window (`None`) or emulating a phone's screen: its CSS pixel size, a
    /// mobile viewport (the page's `<meta name="viewport">` applies) and touch input.
    async fn connect_as(&mut self, phone: Option<(u32, u32)>) -> Client {
        let user_data_dir = self._profile.path().join("profile");
        let mut caps = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": { "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", user_data_dir.display()),
            ]},
        });
        if let Some((width, height)) = phone {
            caps["goog:chromeOptions"]["mobileEmulation"] = json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2, "mobile": true, "touch": true },
            });
        }
        let Value::Object(caps) = caps else { unreachable!() };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot open a WebDriver session: {e}; chromedriver said:\n{}", self.log()));
        self.session = client.session_id().await.ok().flatten();
        self.browser_pid = client
            .capabilities()
            .and_then(|c| c.get("goog:processID"))
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok());
        client
    }

    fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Delete the session with a plain blocking request (usable from `Drop`, outside any runtime).
    fn delete_session_blocking(&mut self) -> bool {
        let Some(session) = self.session.take() else { return true };
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let closed = self.delete_session_blocking();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !closed {
            // chromedriver could not quit Chromium: end it by the process id chromedriver reported.
            if let Some(pid) = self.browser_pid {
                let _ = Command::new("kill").arg(pid.to_string()).stderr(Stdio::null()).status();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Browser: the app plus a WebDriver session, and what a test does with them
// ---------------------------------------------------------------------------------------------

pub struct Browser {
    pub c: Client,
    /// Shared with the other browsers of the test ([`Browser::another`]); the app stops with the
    /// last of them.
    pub app: std::sync::Arc<App>,
    driver: Driver,
}

impl Browser {
    /// Start the app and a browser, or `None` when the browser tests are skipped on this machine.
    pub async fn start() -> Option<Browser> {
        Browser::start_with(AppConfig::default()).await
    }

    /// [`Browser::start`] with the app's settings changed.
    pub async fn start_with(config: AppConfig) -> Option<Browser> {
        let binary = chromedriver_or_skip()?;
        let (app, mut driver) = tokio::join!(App::start_with(config), Driver::start(&binary));
        let c = driver.connect().await;
        Some(Browser { c, app: std::sync::Arc::new(app), driver })
    }

    /// [`Browser::start`] on a phone's screen of `width`×`height` CSS pixels (mobile viewport, touch).
    pub async fn start_phone(width: u32, height: u32) -> Option<Browser> {
        let binary = chromedriver_or_skip()?;
        let (app, mut driver) = tokio::join!(App::start_with(AppConfig::default()), Driver::start(&binary));
        let c = driver.connect_as(Some((width, height))).await;
        Some(Browser { c, app: std::sync::Arc::new(app), driver })
    }

    /// A browser on the app of `config`, plus a second app started at the same time (say, the
    /// provider on another origin), or `None` when the browser tests are skipped.
    pub async fn start_with_second_app(config: AppConfig, second: AppConfig) -> Option<(Browser, App)> {
        let binary = chromedriver_or_skip()?;
        let (app, other, mut driver) =
            tokio::join!(App::start_with(config), App::start_with(second), Driver::start(&binary));
        let c = driver.connect().await;
        Some((Browser { c, app: std::sync::Arc::new(app), driver }, other))
    }

    /// A second browser (its own chromedriver and profile, so its own cookies) on the same app.
    pub async fn another(&self) -> Browser {
        let binary = chromedriver_or_skip().expect("the first browser started, so this one can");
        let mut driver = Driver::start(&binary).await;
        let c = driver.connect().await;
        Browser { c, app: self.app.clone(), driver }
    }

    /// End the WebDriver session cleanly (Chromium quits); the processes end when `self` drops.
    pub async fn finish(mut self) {
        if self.c.clone().close().await.is_ok() {
            self.driver.session = None;
        }
    }

    // --- navigation -------------------------------------------------------------------------

    pub async fn goto(&self, path: &str) {
        let url = self.app.url(path);
        self.c.goto(&url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The current URL's path and query, e.g. `/services/demo/connected?next=%2F`.
    pub async fn location(&self) -> String {
        let url = self.c.current_url().await.expect("current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    pub async fn path(&self) -> String {
        self.c.current_url().await.expect("current URL").path().to_string()
    }

    /// What a failure message needs to explain itself: where the browser is and what it shows.
    pub async fn context(&self) -> String {
        let url = self.c.current_url().await.map(|u| u.to_string()).unwrap_or_else(|e| format!("(no URL: {e})"));
        let text = match self.c.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(e) => format!("(no body: {e})"),
        };
        format!(
            "browser at {url}\n--- page text ---\n{}\n--- app stderr (tail) ---\n{}",
            tail(&text, 3000),
            tail(&self.app.stderr(), 3000)
        )
    }

    /// Wait until an element matching the CSS selector is on the page. Fails at once when the app
    /// answered with its error page instead.
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(el) = self.c.find(Locator::Css(css)).await {
                return el;
            }
            if self.exists("#error").await {
                panic!("expected `{css}` but the app showed its error page; {}", self.context().await);
            }
            if Instant::now() > deadline {
                panic!("`{css}` did not appear within {WAIT:?}; {}", self.context().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until nothing matches the CSS selector.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.c.find_all(Locator::Css(css)).await.map(|v| v.len()).unwrap_or(0);
            if found == 0 {
                return;
            }
            if Instant::now() > deadline {
                panic!("`{css}` is still on the page after {WAIT:?}; {}", self.context().await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn exists(&self, css: &str) -> bool {
        self.c.find_all(Locator::Css(css)).await.map(|v| !v.is_empty()).unwrap_or(false)
    }

    pub async fn find(&self, css: &str) -> Element {
        match self.c.find(Locator::Css(css)).await {
            Ok(el) => el,
            Err(e) => panic!("`{css}` is not on the page ({e}); {}", self.context().await),
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// The visible text of every element matching the CSS selector, in document order.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let mut out = Vec::new();
        for el in self.c.find_all(Locator::Css(css)).await.expect("find elements") {
            out.push(el.text().await.expect("element text"));
        }
        out
    }

    /// An attribute of the first element matching the CSS selector (empty when it has none).
    pub async fn attr(&self, css: &str, name: &str) -> String {
        self.find(css).await.attr(name).await.expect("read an attribute").unwrap_or_default()
    }

    /// Type into a form field (cleared first).
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.expect("clear a field");
        field.send_keys(value).await.unwrap_or_else(|e| panic!("cannot type into `{css}`: {e}"));
    }

    /// Click something that loads a new page, wait until the old page is gone and `expect` is
    /// on the new one.
    pub async fn click_to(&self, click: &str, expect: &str) -> Element {
        let old = self.find("html").await;
        let target = self.wait_for(click).await;
        target.click().await.unwrap_or_else(|e| panic!("cannot click `{click}`: {e}"));
        let deadline = Instant::now() + WAIT;
        // The old document's root goes stale once the browser has navigated.
        while old.tag_name().await.is_ok() {
            if Instant::now() > deadline {
                panic!("clicking `{click}` did not load a new page; {}", self.context().await);
            }
            tokio::time::sleep(POLL).await;
        }
        self.wait_for(expect).await
    }

    /// The page's HTML as the browser has it.
    pub async fn source(&self) -> String {
        self.c.source().await.expect("page source")
    }

    /// The browser's console messages since the last call (needs `goog:loggingPrefs`).
    pub async fn console_log(&self) -> Vec<String> {
        let Some(session) = &self.driver.session else { return Vec::new() };
        let url = format!("{}/session/{session}/se/log", self.driver.url());
        let res = reqwest::Client::new().post(&url).json(&json!({"type": "browser"})).send().await;
        let body: Value = match res {
            Ok(res) => res.json().await.unwrap_or(Value::Null),
            Err(e) => panic!("cannot read the browser's console log from chromedriver: {e}"),
        };
        body["value"]
            .as_array()
            .map(|entries| entries.iter().filter_map(|e| e["message"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// Assert that every stylesheet of the page loaded (the CSP allows them) and has rules.
    pub async fn assert_styled(&self) {
        let script = "return Array.from(document.styleSheets).map(s => { \
                      try { return s.cssRules.length; } catch (e) { return -1; } });";
        let sheets = self.c.execute(script, vec![]).await.expect("run a script");
        let counts: Vec<i64> =
            sheets.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default();
        assert!(
            counts.len() == 2 && counts.iter().all(|&n| n > 0),
            "the page's stylesheets did not all load (rules per sheet: {counts:?}); {}",
            self.context().await
        );
    }

    /// Save a PNG of the whole page (and check the page is styled first).
    pub async fn screenshot(&self, name: &str) {
        self.assert_styled().await;
        // No blinking caret in the picture (autofocus fields).
        self.c.execute("document.activeElement && document.activeElement.blur();", vec![]).await.expect("blur");
        // Grow the window to the page's height for the picture, then put it back.
        let script = "return [window.outerHeight - window.innerHeight, document.documentElement.scrollHeight];";
        let dims = self.c.execute(script, vec![]).await.expect("measure the page");
        let dim = |i: usize| dims.get(i).and_then(Value::as_u64).unwrap_or(0);
        let (width, height) = self.c.get_window_size().await.expect("window size");
        let wanted = (dim(0) + dim(1)).clamp(height, 4000);
        let resize = |h: u64| self.c.set_window_size(width as u32, h as u32);
        if wanted > height {
            resize(wanted).await.expect("resize the window");
        }
        let png = self.c.screenshot().await.expect("take a screenshot");
        if wanted > height {
            resize(height).await.expect("restore the window size");
        }
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    // --- user journeys ----------------------------------------------------------------------

    /// Create an account at /signup and land on the dashboard.
    pub async fn signup(&self, username: &str) {
        self.goto("/signup").await;
        self.fill("#username", username).await;
        self.fill("#password", PASSWORD).await;
        self.fill("#password_confirm", PASSWORD).await;
        self.click_to("#signup-submit", ".service-card[data-service=\"demo\"]").await;
        assert_eq!(self.path().await, "/", "sign-up should land on the dashboard");
    }

    /// Sign in at the login page the browser is on (fields already empty or not).
    pub async fn submit_login(&self, username: &str, password: &str, expect: &str) {
        self.fill("#username", username).await;
        self.fill("#password", password).await;
        self.click_to("#login-submit", expect).await;
    }

    pub async fn logout(&self) {
        self.click_to("#logout", "#login-form").await;
        assert_eq!(self.path().await, "/login", "logging out should land on the sign-in page");
    }

    /// Dashboard → Connect → Redirector → Authorize → the demo consent page.
    pub async fn open_consent(&self) {
        self.goto("/").await;
        self.click_to("#connect-demo", "#authorize").await;
        assert_eq!(self.path().await, "/services/demo/authorize");
        self.click_to("#authorize", "#consent").await;
        assert_eq!(self.path().await, "/demo/oauth2/authorize");
    }

    /// The whole connect flow, allowing access; ends on the "connected" page.
    pub async fn connect_demo(&self) {
        self.open_consent().await;
        self.click_to("#allow", "#connected").await;
        assert_eq!(self.path().await, "/services/demo/connected");
    }
}

/// Where screenshots go: `TOKENVAULT_SCREENSHOTS_DIR` (relative to the crate root) or
/// `target/screenshots/`.
pub fn screenshots_dir() -> PathBuf {
    match std::env::var_os("TOKENVAULT_SCREENSHOTS_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Path::new(env!("CARGO_MANIFEST_DIR")).join(dir),
        None => {
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            tmp.parent().unwrap_or(tmp).join("screenshots")
        }
    }
}

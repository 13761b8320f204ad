//! The real `tokenvault` binary as a child process, configured only through environment
//! variables, with the fake provider configured as service `fake`. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
    /// The child's stderr (its log).
    pub log: PathBuf,
    pub stdout: PathBuf,
    /// From spawn to the first `200` of `/healthz`.
    pub started_in: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start a server; `Options::new` gives the defaults of the tests.
pub struct Options<'a> {
    pub database_url: &'a str,
    /// The fake provider's base URL (configured as service `fake`).
    pub fake: &'a str,
    /// Where data/, the log and stdout go.
    pub dir: &'a Path,
    pub profile: &'a str,
    pub log_filter: &'a str,
    /// More `ROCKET_*` (or other) variables.
    pub env: Vec<(String, String)>,
}

impl<'a> Options<'a> {
    pub fn new(database_url: &'a str, fake: &'a str, dir: &'a Path) -> Options<'a> {
        Options { database_url, fake, dir, profile: "debug", log_filter: "info", env: Vec::new() }
    }
}

/// `ROCKET_PROVIDERS` for the fake provider at `fake`.
pub fn fake_provider_env(fake: &str) -> String {
    format!(
        "{{fake={{display_name=\"Fake Provider\",authorize_url=\"{fake}/authorize\",token_url=\"{fake}/token\",\
         revoke_url=\"{fake}/revoke\",account_url=\"{fake}/account\",api_base_url=\"{fake}/api\",issuer=\"{fake}\",\
         scopes=[\"read\",\"write\"],client_auth=\"basic\"}}}}"
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start the binary and wait until `/healthz` answers 200 (or panic with its log).
pub async fn start(o: Options<'_>) -> Server {
    start_in(o, Path::new(env!("CARGO_MANIFEST_DIR"))).await
}

/// The server binary: the one cargo built for this test, or the one `TV_SERVER_BINARY` names (so a
/// benchmark can measure an earlier build against this one in the same run).
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("TV_SERVER_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_tokenvault").into())
}

/// [`start`] with `cwd` as the working directory (the checkout's by default, where `templates/`
/// and `static/` are).
pub async fn start_in(o: Options<'_>, cwd: &Path) -> Server {
    // A port free when picked may be taken before the server binds it (another test's server, or
    // an outgoing connection's local port): then start again on another one.
    for _ in 0..4 {
        if let Some(server) = try_start_in(&o, cwd).await {
            return server;
        }
    }
    try_start_in(&o, cwd).await.expect("a free port, five times in a row")
}

/// One start; `None` when the port was taken before the server could bind it.
async fn try_start_in(o: &Options<'_>, cwd: &Path) -> Option<Server> {
    let port = free_port();
    std::fs::create_dir_all(o.dir).unwrap();
    let log = o.dir.join(format!("server-{port}.stderr.log"));
    let stdout = o.dir.join(format!("server-{port}.stdout.log"));
    let started = Instant::now();
    let mut cmd = Command::new(binary());
    cmd.current_dir(cwd)
        .env("ROCKET_PROFILE", o.profile)
        .env("ROCKET_ADDRESS", "127.0.0.1")
        .env("ROCKET_PORT", port.to_string())
        .env("ROCKET_PUBLIC_URL", super::PUBLIC_URL)
        .env("ROCKET_DATABASE_URL", o.database_url)
        .env("ROCKET_DATA_DIR", o.dir.join(format!("data-{port}")))
        .env("ROCKET_VAULT_KEY", super::VAULT_KEY)
        .env("ROCKET_SECRET_KEY", super::SECRET_KEY)
        .env("ROCKET_DEMO_PROVIDER", "false")
        .env("ROCKET_ALLOW_SIGNUP", "true")
        .env("ROCKET_PROVIDERS", fake_provider_env(o.fake))
        .env("RUST_LOG", o.log_filter)
        .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    for (k, v) in &o.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("the binary starts");
    let mut server =
        Server { child, base: format!("http://127.0.0.1:{port}"), log, stdout, started_in: Duration::ZERO };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{}/healthz", server.base)).send().await {
            if r.status().is_success() {
                server.started_in = started.elapsed();
                return Some(server);
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            if log.contains("Address already in use") {
                eprintln!("port {port} was taken before the server bound it; starting again");
                return None;
            }
            panic!("the server exited with {status}:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "the server on {} did not start:\n{}",
        server.base,
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
}

/// A hidden form field's value in `html`.
pub fn hidden(html: &str, name: &str) -> String {
    let re = regex::Regex::new(&format!(r#"name="{name}" value="([^"]*)""#)).unwrap();
    re.captures(html).map(|c| c[1].to_string()).expect("hidden field")
}

/// A browser for real servers: a cookie jar, redirects not followed.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Sign up `username` on the server at `base`.
pub async fn sign_up(http: &reqwest::Client, base: &str, username: &str) {
    let page = http.get(format!("{base}/signup")).send().await.unwrap().text().await.unwrap();
    let form = [
        ("csrf_token", hidden(&page, "csrf_token")),
        ("username", username.to_string()),
        ("password", super::PASSWORD.to_string()),
        ("password_confirm", super::PASSWORD.to_string()),
    ];
    assert_eq!(http.post(format!("{base}/signup")).form(&form).send().await.unwrap().status(), 303);
}

/// Connect the fake provider: the flow starts on `start` and its callback lands on `callback`
/// (the same server, or another instance on the same database).
pub async fn connect(http: &reqwest::Client, start: &str, callback: &str, fake: &super::FakeProvider) {
    let page = http.get(format!("{start}/services/fake/authorize")).send().await.unwrap().text().await.unwrap();
    let res = http
        .post(format!("{start}/services/fake/authorize"))
        .form(&[("csrf_token", hidden(&page, "csrf_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let authorize = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let (state, challenge) = super::flow_params(&authorize);
    let code = fake.issue_code(&challenge);
    let res = http.get(format!("{callback}/services/fake/callback?code={code}&state={state}")).send().await.unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap_or_default());
}

/// Sign `user` up on the server at `base` and connect the fake provider, with a browser (cookie
/// jar) of its own; that browser.
pub async fn sign_up_and_connect(base: &str, fake: &super::FakeProvider, user: &str) -> reqwest::Client {
    let http = browser();
    sign_up(&http, base, user).await;
    connect(&http, base, base, fake).await;
    http
}

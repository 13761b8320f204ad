//! The real `tokenvault` binary as a server with the tests' settings (keys, the fake provider as
//! service `fake`), configured only through environment variables, and helpers to use it over
//! HTTP. The process itself is [`super::binary`]'s.

use std::path::Path;

pub use super::binary::Server;

/// How to start a server; `Options::new` gives the defaults of the tests.
pub struct Options<'a> {
    pub database_url: &'a str,
    /// The fake provider's base URL (configured as service `fake`).
    pub fake: &'a str,
    /// Where the log goes, and data-<port>/ unless `data_dir` says otherwise.
    pub dir: &'a Path,
    /// The data directory (one per start, under `dir`, by default).
    pub data_dir: Option<&'a Path>,
    pub profile: &'a str,
    pub log_filter: &'a str,
    /// More `ROCKET_*` (or other) variables; they win over the defaults.
    pub env: Vec<(String, String)>,
    /// `public_url` is the server's own address (`http://127.0.0.1:<port>`) instead of
    /// [`super::PUBLIC_URL`]: for clients that check URLs the server names (OAuth discovery).
    pub public_url_is_base: bool,
}

impl<'a> Options<'a> {
    pub fn new(database_url: &'a str, fake: &'a str, dir: &'a Path) -> Options<'a> {
        Options {
            database_url,
            fake,
            dir,
            data_dir: None,
            profile: "debug",
            log_filter: "info",
            env: Vec::new(),
            public_url_is_base: false,
        }
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

/// Start the binary (see [`super::binary::spawn`]) with the tests' keys and the fake provider, and
/// wait until `/healthz` answers 200 (or panic with its log).
pub async fn start(o: Options<'_>) -> Server {
    start_in(o, Path::new(env!("CARGO_MANIFEST_DIR"))).await
}

/// [`start`] with `cwd` as the working directory (the checkout's by default, where `templates/`
/// and `static/` are).
pub async fn start_in(o: Options<'_>, cwd: &Path) -> Server {
    super::binary::spawn("127.0.0.1", None, o.dir, |cmd, port| {
        let data_dir = o.data_dir.map(Path::to_path_buf).unwrap_or_else(|| o.dir.join(format!("data-{port}")));
        cmd.current_dir(cwd)
            .env("ROCKET_PROFILE", o.profile)
            .env(
                "ROCKET_PUBLIC_URL",
                if o.public_url_is_base { format!("http://127.0.0.1:{port}") } else { super::PUBLIC_URL.into() },
            )
            .env("ROCKET_DATABASE_URL", o.database_url)
            .env("ROCKET_DATA_DIR", data_dir)
            .env("ROCKET_VAULT_KEY", super::VAULT_KEY)
            .env("ROCKET_SECRET_KEY", super::SECRET_KEY)
            .env("ROCKET_DEMO_PROVIDER", "false")
            .env("ROCKET_ALLOW_SIGNUP", "true")
            .env("ROCKET_PROVIDERS", fake_provider_env(o.fake))
            .env("RUST_LOG", o.log_filter);
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
    })
    .await
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

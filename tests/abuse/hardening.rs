//! Issue 10, items 8, 9, 11 and 12: the demo consent form's CSRF protection, the attributes of
//! every cookie the app sends, the production profile's rules (`/metrics` behind `metrics_token`, a
//! loud demo-provider warning, `secret_key` ≠ `vault_key`) and database outages answered as 503s.

use std::collections::BTreeSet;

use rocket::http::{Header, Status};

use crate::common::{self, csrf_from, flow_params, Agent, Reply, TestApp, PASSWORD, VAULT_KEY};

// ---------------------------------------------------------------------------------------------
// Item 8: demo consent

/// The hidden fields of the consent form (as the demo provider's tests read them).
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let re = regex::Regex::new(r#"<input type="hidden" name="([a-z_]+)" value="([^"]*)""#).unwrap();
    re.captures_iter(html).map(|c| (c[1].to_string(), c[2].replace("&amp;", "&").replace("&#x3D;", "="))).collect()
}

/// `agent` opens the consent page at `authorize` (a URL on this app); its form's fields, with
/// Allow chosen.
async fn consent_form(agent: &Agent<'_>, authorize: &url::Url) -> Vec<(String, String)> {
    let page = agent.fetch(&format!("{}?{}", authorize.path(), authorize.query().unwrap_or_default())).await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert!(page.text.contains(r#"id="consent""#), "{}", page.text);
    let mut fields = hidden_fields(&page.text);
    fields.push(("decision".into(), "allow".into()));
    fields.push(("account".into(), "alice@demo.example".into()));
    fields
}

fn without(fields: &[(String, String)], name: &str) -> Vec<(String, String)> {
    fields.iter().filter(|(k, _)| k != name).cloned().collect()
}

async fn post(agent: &Agent<'_>, fields: &[(String, String)], headers: &[(&str, &str)]) -> Reply {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    agent.post_with("/demo/oauth2/authorize", &pairs, headers).await
}

#[tokio::test]
async fn a_cross_site_consent_post_gets_no_code() {
    let app = common::builder().demo().start().await;
    let codes = || app.count("SELECT COUNT(*) AS n FROM demo_codes");
    let alice = app.user("alice").await;
    let authorize = alice.start_flow("demo").await;
    let form = consent_form(&alice, &authorize).await;
    assert!(form.iter().any(|(k, v)| k == "csrf_token" && !v.is_empty()), "the consent form carries a CSRF token");
    let forged = without(&form, "csrf_token");
    let evil = [("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site")];

    // An attacker's page posting the consent form: no cookies (a cross-site POST does not carry
    // SameSite=Lax cookies), with or without the browser's cross-site headers.
    let attacker = app.agent();
    for headers in [&[][..], &evil[..]] {
        let res = post(&attacker, &forged, headers).await;
        assert_eq!(res.status, Status::Forbidden, "{headers:?}: {}", res.text);
        assert!(res.location.is_none(), "no redirect back with a code: {:?}", res.location);
    }
    // Even with the victim's cookies: no token, a wrong token, or the right token from another origin.
    let wrong = [without(&form, "csrf_token"), vec![("csrf_token".into(), "not-the-token".into())]].concat();
    for (fields, headers) in [(&forged, &[][..]), (&wrong, &[][..]), (&form, &evil[..])] {
        let res = post(&alice, fields, headers).await;
        assert_eq!(res.status, Status::Forbidden, "{headers:?}: {}", res.text);
        assert!(res.location.is_none());
    }
    assert_eq!(codes(), 0, "no authorization code was issued");

    // The real consent still works, from the consent page's own origin.
    let res = post(&alice, &form, &[("Origin", common::PUBLIC_URL), ("Sec-Fetch-Site", "same-origin")]).await;
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let back = res.location.unwrap();
    assert!(back.starts_with(&format!("{}/services/demo/callback?code=", common::PUBLIC_URL)), "{back}");
    assert_eq!(codes(), 1);

    // Nobody signed in at the provider (another tokenvault using this one as its provider): the
    // token is the anonymous CSRF cookie's.
    let visitor = app.agent();
    let form = consent_form(&visitor, &authorize).await;
    assert!(visitor.cookie("tv_csrf").is_some(), "the consent page set the anonymous CSRF cookie");
    let res = post(&visitor, &without(&form, "csrf_token"), &[]).await;
    assert_eq!(res.status, Status::Forbidden);
    let res = post(&visitor, &form, &[]).await;
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    assert_eq!(codes(), 2);
}

// ---------------------------------------------------------------------------------------------
// Item 9: cookies

/// Every `Set-Cookie` of a response.
fn set_cookies(reply: &Reply) -> Vec<String> {
    reply.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("Set-Cookie")).map(|(_, v)| v.clone()).collect()
}

/// Sign up, see the flash, connect the fake provider, delete it (a flash redirect), log out, sign in
/// again with a wrong and then the right password; check every `Set-Cookie` on the way.
async fn every_cookie(public_url: Option<&str>) {
    let https = public_url.is_some_and(|u| u.starts_with("https:"));
    let mut builder = common::builder();
    if let Some(url) = public_url {
        builder = builder.set("public_url", url);
    }
    let app = builder.start().await;
    app.fake.state.lock().unwrap().public_url = public_url.map(String::from);
    let (session, other_session) =
        if https { ("__Host-tv_session", "tv_session") } else { ("tv_session", "__Host-tv_session") };
    let agent = app.agent();
    let mut replies: Vec<(String, Reply)> = Vec::new();
    let mut step = |name: &str, reply: Reply| -> Reply {
        let copy = Reply {
            status: reply.status,
            location: reply.location.clone(),
            headers: reply.headers.clone(),
            text: String::new(),
        };
        replies.push((name.to_string(), copy));
        reply
    };

    let page = step("GET /signup", agent.fetch("/signup").await);
    let csrf = csrf_from(&page.text);
    let fields =
        [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", PASSWORD), ("password_confirm", PASSWORD)];
    let res = step("POST /signup", agent.post_form("/signup", &fields).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let home = step("GET / (flash)", agent.fetch("/").await);
    assert!(home.text.contains(r#"id="flash""#) && home.text.contains("Welcome to tokenvault"), "{}", home.text);
    let again = step("GET / (again)", agent.fetch("/").await);
    assert!(!again.text.contains(r#"id="flash""#), "a flash message shows once");
    assert!(again.text.contains(r#"id="logout""#), "signed in with the `{session}` cookie");

    let page = step("GET authorize", agent.fetch("/services/fake/authorize").await);
    let csrf = csrf_from(&page.text);
    let res = step("POST authorize", agent.post_form("/services/fake/authorize", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let (state, challenge) = flow_params(&url::Url::parse(res.location.as_deref().unwrap()).unwrap());
    let code = app.fake.issue_code(&challenge);
    let res = step("GET callback", agent.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let connected = step("GET connected", agent.fetch(res.location.as_deref().unwrap()).await);
    assert!(connected.text.contains(r#"id="connected""#), "{}", connected.text);

    let csrf = csrf_from(&step("GET settings", agent.fetch("/settings/oauth2").await).text);
    let res = step("POST delete", agent.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let settings = step("GET settings (flash)", agent.fetch("/settings/oauth2").await);
    assert!(settings.text.contains(r#"id="flash""#), "{}", settings.text);
    assert_eq!(app.connection_count(), 0);

    let csrf = csrf_from(&settings.text);
    let res = step("POST /logout", agent.post_form("/logout", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther);
    let login = step("GET /login (flash)", agent.fetch("/login").await);
    assert!(login.text.contains("You are signed out."), "{}", login.text);
    let csrf = csrf_from(&login.text);
    let bad = [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", "not the password")];
    assert_eq!(step("POST /login (wrong)", agent.post_form("/login", &bad).await).status, Status::Unauthorized);
    let csrf = csrf_from(&step("GET /login", agent.fetch("/login").await).text);
    let good = [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", PASSWORD)];
    assert_eq!(step("POST /login", agent.post_form("/login", &good).await).status, Status::SeeOther);
    let home = step("GET / (signed in)", agent.fetch("/").await);
    assert!(home.text.contains(r#"id="logout""#));

    let (mut set, mut removed) = (BTreeSet::new(), BTreeSet::new());
    for (name, reply) in &replies {
        for raw in set_cookies(reply) {
            let c = cookie::Cookie::parse(raw.clone()).unwrap_or_else(|e| panic!("{name}: unparsable {raw}: {e}"));
            let what = format!("{name}: `Set-Cookie: {raw}`");
            assert_ne!(c.name(), "_flash", "{what}: Rocket's flash cookie");
            assert_ne!(c.name(), other_session, "{what}");
            assert_eq!(c.http_only(), Some(true), "{what} is not HttpOnly");
            assert_eq!(c.same_site(), Some(cookie::SameSite::Lax), "{what} is not SameSite=Lax");
            assert_eq!(c.secure().unwrap_or(false), https, "{what}: Secure must be {https}");
            assert_eq!(c.path(), Some("/"), "{what}");
            assert_eq!(c.domain(), None, "{what}");
            let removal = c.value().is_empty() || c.max_age().is_some_and(|m| m.is_zero() || m.is_negative());
            let names = if removal { &mut removed } else { &mut set };
            names.insert(c.name().to_string());
        }
    }
    for name in [session, "tv_csrf", "tv_flash"] {
        assert!(set.contains(name), "`{name}` was never set: {set:?}");
        assert!(removed.contains(name), "`{name}` was never removed: {removed:?}");
    }
}

#[tokio::test]
async fn every_cookie_is_http_only_and_lax_on_http() {
    every_cookie(None).await;
}

#[tokio::test]
async fn every_cookie_is_secure_on_https_and_the_session_is_host_prefixed() {
    every_cookie(Some("https://tokenvault.example")).await;
}

// ---------------------------------------------------------------------------------------------
// Item 11: production profile

const METRICS_TOKEN: &str = "metrics-token-0123456789abcdef";

async fn metrics(app: &TestApp, authorization: Option<&str>) -> (Status, Option<String>, String) {
    let mut req = app.client.get("/metrics");
    if let Some(value) = authorization {
        req = req.header(Header::new("Authorization", value.to_string()));
    }
    let res = req.dispatch().await;
    let challenge = res.headers().get_one("WWW-Authenticate").map(String::from);
    assert!(res.headers().get_one("Location").is_none(), "/metrics never redirects to a sign-in page");
    (res.status(), challenge, res.into_string().await.unwrap_or_default())
}

#[tokio::test]
async fn metrics_outside_debug_need_the_metrics_token() {
    let bearer = format!("Bearer {METRICS_TOKEN}");
    // Without a token configured, a production profile does not serve metrics at all.
    let app = common::builder().profile("release").start().await;
    for auth in [None, Some(bearer.as_str())] {
        let (status, _, body) = metrics(&app, auth).await;
        assert_eq!(status, Status::NotFound, "{auth:?}");
        assert!(!body.contains("tokenvault_"), "{body}");
    }
    drop(app);

    let app = common::builder().profile("release").set("metrics_token", METRICS_TOKEN).start().await;
    for auth in [None, Some("Bearer wrong-token-0123456789abcdef"), Some(METRICS_TOKEN), Some("Basic eDp5")] {
        let (status, challenge, body) = metrics(&app, auth).await;
        assert_eq!(status, Status::Unauthorized, "{auth:?}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "a Bearer challenge");
        assert!(!body.contains("tokenvault_") && !body.contains(METRICS_TOKEN), "{body}");
    }
    let (status, _, body) = metrics(&app, Some(&bearer)).await;
    assert_eq!(status, Status::Ok, "{body}");
    assert!(body.contains("tokenvault_"), "the metrics: {body}");
}

#[tokio::test]
async fn metrics_in_debug_stay_open_unless_a_token_is_set() {
    let app = TestApp::start().await;
    let (status, _, body) = metrics(&app, None).await;
    assert_eq!(status, Status::Ok);
    assert!(body.contains("tokenvault_"), "{body}");
    drop(app);
    let app = common::builder().set("metrics_token", METRICS_TOKEN).start().await;
    assert_eq!(metrics(&app, None).await.0, Status::Unauthorized);
    assert_eq!(metrics(&app, Some(&format!("Bearer {METRICS_TOKEN}"))).await.0, Status::Ok);
}

#[test]
fn the_cookie_key_equal_to_the_vault_key_is_refused_at_start() {
    let figment = rocket::figment::Figment::from(rocket::Config::release_default())
        .merge(("vault_key", VAULT_KEY))
        .merge(("secret_key", VAULT_KEY))
        .select("release");
    let err = tokenvault::app::prepare(figment).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("`secret_key`") && err.contains("`vault_key`"), "{err}");
    assert!(!err.contains(VAULT_KEY), "the error never shows a key: {err}");

    // The command line (the server and every CLI command share the check) exits with it.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenvault"))
        .args(["vault", "list"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("ROCKET_PROFILE", "release")
        .env("ROCKET_DATABASE_URL", dir.path().join("keys.sqlite"))
        .env("ROCKET_DATA_DIR", dir.path().join("data"))
        .env("ROCKET_VAULT_KEY", VAULT_KEY)
        .env("ROCKET_SECRET_KEY", VAULT_KEY)
        .output()
        .expect("the binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("`secret_key`") && text.contains("`vault_key`") && !text.contains(VAULT_KEY), "{text}");
}

/// The server's log once it is up (the child writes it asynchronously).
async fn log_after_start(server: &common::server::Server, expect: &str) -> String {
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains(expect) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    log
}

#[tokio::test]
async fn the_demo_provider_outside_debug_is_announced_loudly() {
    const WARNING: &str = "DEMO PROVIDER ENABLED OUTSIDE DEBUG";
    for (profile, demo, warned) in [("release", "true", true), ("release", "false", false), ("debug", "true", false)] {
        let dir = tempfile::tempdir().unwrap();
        let database = common::TestDatabase::new(dir.path());
        let mut options = common::server::Options::new(&database.url, "http://127.0.0.1:9", dir.path());
        options.profile = profile;
        options.env.push(("ROCKET_DEMO_PROVIDER".into(), demo.into()));
        let server = common::server::start(options).await;
        let log = log_after_start(&server, "tokenvault listening").await;
        assert!(log.contains("tokenvault listening"), "{log}");
        let warning = log.lines().find(|l| l.contains(WARNING));
        assert_eq!(warning.is_some(), warned, "{profile}, demo_provider = {demo}:\n{log}");
        if let Some(line) = warning {
            assert!(line.contains("WARN") && line.contains("profile=release"), "{line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 12: outages are outages

/// Make one table unreachable, as a database outage does for the queries that need it.
fn break_table(app: &TestApp, table: &str) {
    app.exec_unannounced(&format!("ALTER TABLE {table} RENAME TO {table}_unreachable"));
}

fn assert_retry_after(reply: &Reply) {
    let retry = reply.header("Retry-After").unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers));
    assert!(retry.parse::<u32>().is_ok_and(|s| s > 0), "Retry-After: {retry}");
}

/// A new API key of `agent`'s user, from the API keys page.
async fn new_api_key(agent: &Agent<'_>) -> String {
    let csrf = agent.csrf("/settings/api-keys").await;
    let page = agent.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", "outage")]).await;
    regex::Regex::new(r"tvk_[A-Za-z0-9_-]+").unwrap().find(&page.text).expect("the new key").as_str().to_string()
}

/// `GET /api/v1/connections` with `key`: the status, whether `Retry-After` is a number of seconds,
/// and the JSON body.
async fn list_connections(app: &TestApp, key: &str) -> (Status, bool, serde_json::Value) {
    let res = app
        .client
        .get("/api/v1/connections")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .dispatch()
        .await;
    let status = res.status();
    let retry = res.headers().get_one("Retry-After").is_some_and(|r| r.parse::<u32>().is_ok_and(|s| s > 0));
    let body = serde_json::from_str(&res.into_string().await.unwrap_or_default()).unwrap_or_default();
    (status, retry, body)
}

#[tokio::test]
async fn a_database_outage_in_the_session_guard_is_a_503_not_a_sign_in_page() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let csrf = alice.csrf("/settings/oauth2").await;
    break_table(&app, "sessions");
    // Pages behind `&CurrentUser`, pages with only the layout, and a form post.
    for path in ["/settings/oauth2", "/", "/login", "/services/fake/authorize"] {
        let reply = alice.fetch(path).await;
        assert_eq!(reply.status, Status::ServiceUnavailable, "{path}: {:?} {}", reply.location, reply.text);
        assert!(reply.location.is_none(), "{path}: not sent to /login: {:?}", reply.location);
        assert_retry_after(&reply);
        assert!(reply.text.contains("Temporarily unavailable"), "{path}: an error page: {}", reply.text);
    }
    // Form posts: behind `&CurrentUser`, and behind nothing but the CSRF check (log out).
    for path in ["/settings/oauth2/fake/delete", "/logout"] {
        let reply = alice.post_form(path, &[("csrf_token", &csrf)]).await;
        assert_eq!(reply.status, Status::ServiceUnavailable, "{path}: {}", reply.text);
        assert_retry_after(&reply);
    }
    // Visitors without a session are not affected by the sessions table.
    assert_eq!(app.agent().fetch("/login").await.status, Status::Ok);
}

#[tokio::test]
async fn a_database_outage_in_the_api_key_guard_is_a_503_json_not_a_401() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let key = new_api_key(&alice).await;
    break_table(&app, "api_keys");
    let (status, retry_after, body) = list_connections(&app, &key).await;
    assert_eq!(status, Status::ServiceUnavailable, "{body}");
    assert!(retry_after, "Retry-After");
    assert_eq!(body["error"], "unavailable", "{body}");
    assert!(!body.to_string().contains(&key));
    // A wrong key is still a 401 when the database answers; restore the table to see it.
    app.exec_unannounced("ALTER TABLE api_keys_unreachable RENAME TO api_keys");
    assert_eq!(list_connections(&app, "tvk_wrong").await.0, Status::Unauthorized);
    assert_eq!(list_connections(&app, &key).await.0, Status::Ok, "and the real key works again");
}

/// A real outage on PostgreSQL (only when `TOKENVAULT_TEST_POSTGRES_URL` is set): the app's
/// connections are cut and new ones refused, as when the database server goes away.
#[tokio::test]
async fn a_postgres_outage_is_a_503_for_pages_and_the_api() {
    use diesel::{Connection, RunQueryDsl};
    let app = TestApp::start().await;
    if !app.database.is_postgres() {
        return;
    }
    let alice = app.user("alice").await;
    let key = new_api_key(&alice).await;
    let admin_url = std::env::var("TOKENVAULT_TEST_POSTGRES_URL").unwrap();
    let name = url::Url::parse(&app.database.url).unwrap().path().trim_start_matches('/').to_string();
    let mut admin = diesel::pg::PgConnection::establish(&admin_url).expect("admin connection");
    let sql = |admin: &mut diesel::pg::PgConnection, q: String| diesel::sql_query(q).execute(admin).expect("admin SQL");
    sql(&mut admin, format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    sql(&mut admin, format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"));

    let reply = alice.fetch("/settings/oauth2").await;
    assert_eq!(reply.status, Status::ServiceUnavailable, "{:?} {}", reply.location, reply.text);
    assert!(reply.location.is_none(), "not sent to /login");
    assert_retry_after(&reply);
    let (status, retry_after, body) = list_connections(&app, &key).await;
    assert_eq!(status, Status::ServiceUnavailable, "{body}");
    assert!(retry_after, "Retry-After");
    assert_eq!(body["error"], "unavailable", "{body}");

    // The database is back: the next requests get fresh connections instead of the dead ones
    // (a new connection may take a moment; a bounded number of tries, no timing assertion).
    sql(&mut admin, format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let mut recovered = false;
    for _ in 0..50 {
        if alice.fetch("/settings/oauth2").await.status == Status::Ok {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(recovered, "pages work again once the database is back");
    let (status, _, body) = list_connections(&app, &key).await;
    assert_eq!(status, Status::Ok, "the API works again: {body}");
}

//! Issue 10, items 1–4 and the sign-up/admin row: login floods, throttle state, the client
//! address, owners not locked out, and no administrator from a self-service sign-up outside
//! `debug`. Against the real binary, each client bound to its own 127.0.0.N.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use crate::common::{self, server};

pub(crate) fn addr(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A browser-like client on 127.0.0.`n`: its own cookie jar, no redirects followed, and a generous
/// overall timeout so that a hung request fails the test instead of hanging it.
pub(crate) fn client(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr(n))
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub(crate) async fn start(dir: &Path, database: &common::TestDatabase, env: &[(&str, &str)]) -> server::Server {
    let mut o = server::Options::new(&database.url, "http://127.0.0.1:9", dir);
    o.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    if let Some((_, profile)) = env.iter().find(|(k, _)| *k == "ROCKET_PROFILE") {
        o.profile = profile;
    }
    server::start(o).await
}

async fn csrf(http: &reqwest::Client, base: &str, path: &str) -> String {
    let page = http.get(format!("{base}{path}")).send().await.unwrap().text().await.unwrap();
    common::csrf_from(&page)
}

pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: String,
    pub set_cookies: Vec<String>,
    pub body: String,
}

async fn post(http: &reqwest::Client, url: String, form: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    let mut req = http.post(url).form(form);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("answered, not hung");
    let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (status, retry_after) = (res.status().as_u16(), header("retry-after"));
    let content_type = header("content-type").unwrap_or_default();
    let set_cookies =
        res.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
    Answer { status, retry_after, content_type, set_cookies, body: res.text().await.unwrap() }
}

pub(crate) async fn login(http: &reqwest::Client, base: &str, username: &str, password: &str) -> Answer {
    login_with(http, base, username, password, &[]).await
}

async fn login_with(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let token = csrf(http, base, "/login").await;
    let form = [("csrf_token", token.as_str()), ("username", username), ("password", password)];
    post(http, format!("{base}/login"), &form, headers).await
}

pub(crate) async fn signup(http: &reqwest::Client, base: &str, username: &str) -> Answer {
    let token = csrf(http, base, "/signup").await;
    let form = [
        ("csrf_token", token.as_str()),
        ("username", username),
        ("password", common::PASSWORD),
        ("password_confirm", common::PASSWORD),
    ];
    post(http, format!("{base}/signup"), &form, &[]).await
}

/// One figure of `/metrics`, e.g. `tokenvault_password_hashing{figure="peak"}`.
async fn metric(base: &str, series: &str) -> i64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

fn cores() -> i64 {
    std::thread::available_parallelism().map(|n| n.get() as i64).unwrap()
}

#[tokio::test]
async fn a_flood_of_wrong_passwords_from_96_addresses_is_answered_and_hashing_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[]).await;
    let base = server.base.clone();
    assert_eq!(signup(&client(1), &base, "victim").await.status, 303);

    // 96 browsers, each on its own address with its own CSRF cookie, ready before the flood. Odd
    // ones ask for JSON.
    let mut browsers = Vec::new();
    for i in 0..96u8 {
        let http = client(100 + i);
        let token = csrf(&http, &base, "/login").await;
        browsers.push((i, http, token));
    }
    let flood = futures_util::future::join_all(browsers.into_iter().map(|(i, http, token)| {
        let base = base.clone();
        async move {
            // Distinct usernames: every attempt would need a hash (none is stopped by the
            // per-account limit); a few aim at the real account.
            let name = if i % 16 == 0 { "victim".to_string() } else { format!("guess{i}") };
            let form = [("csrf_token", token.as_str()), ("username", &name), ("password", "wrong password!!")];
            let accept = if i % 2 == 1 { "application/json" } else { "text/html" };
            (i, post(&http, format!("{base}/login"), &form, &[("Accept", accept)]).await)
        }
    }));
    let flood = tokio::spawn(flood);
    // /healthz keeps answering while the flood is on.
    let probe = reqwest::Client::builder().local_address(addr(2)).timeout(Duration::from_secs(60)).build().unwrap();
    let mut health_answers = 0;
    while !flood.is_finished() {
        let r = probe.get(format!("{base}/healthz")).send().await.expect("/healthz answers during the flood");
        assert_eq!(r.status(), 200);
        health_answers += 1;
    }
    let answers = flood.await.unwrap();
    assert!(health_answers > 0);

    let mut busy = 0;
    for (i, a) in &answers {
        assert!(matches!(a.status, 401 | 429 | 503), "request {i}: {}", a.status);
        if a.status == 503 {
            busy += 1;
            assert_eq!(a.retry_after.as_deref(), Some("1"), "a 503 says when to come back");
            if i % 2 == 1 {
                let json: serde_json::Value = serde_json::from_str(&a.body).expect("a JSON error");
                assert_eq!(json["error"], "busy", "{json}");
            } else {
                assert!(a.content_type.starts_with("text/html"), "{}", a.content_type);
                assert!(a.body.contains("tokenvault is busy right now"), "{}", a.body);
            }
        }
    }
    // The hasher never ran more than a hash per core; more than it could queue were refused.
    let peak = metric(&base, "tokenvault_password_hashing{figure=\"peak\"}").await;
    assert!((1..=cores()).contains(&peak), "peak {peak} hashes at once on {} cores", cores());
    assert_eq!(metric(&base, "tokenvault_password_hashing{figure=\"workers\"}").await, cores());
    assert!(busy > 0, "96 hashes at once cannot all be queued: some must get 503");
    assert_eq!(metric(&base, "tokenvault_password_hashing{figure=\"refused\"}").await, busy);
    // Still up, and the owner still signs in (refused attempts were never checked, so they do not
    // count against the account).
    assert!(server_alive(&server));
    assert_eq!(login(&client(3), &base, "victim", common::PASSWORD).await.status, 303);
}

fn server_alive(server: &server::Server) -> bool {
    // `try_wait` needs `&mut`; a kill(0)-style check through /proc is enough here.
    Path::new(&format!("/proc/{}", server.child.id())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
            .unwrap_or_default()
            .contains("State:\tZ")
}

#[tokio::test]
async fn over_long_usernames_are_refused_before_any_throttle_state_and_a_limited_address_adds_none() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[("ROCKET_LOGIN_LIMIT_PER_IP", "5")]).await;
    let base = server.base.clone();

    // 40 unique 30 KB usernames from one address: a clear 422 (the name not echoed back) while
    // the address has allowance, then 429; never an entry in the per-account map.
    let http = client(2);
    let mut statuses = Vec::new();
    for i in 0..40 {
        let name = format!("{i:05}{}", "x".repeat(30 * 1024));
        let a = login(&http, &base, &name, "wrong password!!").await;
        if a.status == 422 {
            assert!(a.body.contains("Usernames are at most 32 characters."), "{}", a.body);
            assert!(!a.body.contains("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), "the over-long name is not echoed");
        }
        statuses.push(a.status);
    }
    assert_eq!(statuses[..5], [422; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(metric(&base, "tokenvault_login_throttle_entries{map=\"account\"}").await, 0);

    // A valid-length flood from another address: once it is over its limit, no new per-account
    // entry appears, however many usernames it tries.
    let http = client(3);
    let mut statuses = Vec::new();
    for i in 0..40 {
        statuses.push(login(&http, &base, &format!("user{i}"), "wrong password!!").await.status);
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(metric(&base, "tokenvault_login_throttle_entries{map=\"account\"}").await, 5);
    assert_eq!(metric(&base, "tokenvault_login_throttle_entries{map=\"address\"}").await, 2);
}

#[tokio::test]
async fn a_spoofed_x_real_ip_is_ignored_unless_ip_header_is_named() {
    let dir = tempfile::tempdir().unwrap();
    // A configuration file that does not mention `ip_header` (Rocket's own default: X-Real-IP).
    let config = dir.path().join("Rocket.toml");
    std::fs::write(&config, "[default]\naddress = \"127.0.0.1\"\n").unwrap();
    let config = config.to_string_lossy().to_string();
    let spoof = |i: usize| format!("203.0.113.{}", i + 1);
    // 10 per minute (one every 6 s after the first 10): the attempts below come far faster.
    let limit = ("ROCKET_LOGIN_LIMIT_PER_IP", "10");

    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[("ROCKET_CONFIG", &config), limit]).await;
    let http = client(4);
    let mut statuses = Vec::new();
    for i in 0..40 {
        let a =
            login_with(&http, &server.base, &format!("user{i}"), "wrong password!!", &[("X-Real-IP", &spoof(i))]).await;
        statuses.push(a.status);
    }
    // One TCP peer, one allowance, whatever the header says.
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert!(statuses.iter().all(|s| matches!(s, 401 | 429)), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 20, "{statuses:?}");
    drop(server);

    // Named explicitly, the header is the client's address: 40 addresses, no 429.
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let env = [("ROCKET_CONFIG", config.as_str()), ("ROCKET_IP_HEADER", "X-Real-IP"), limit];
    let server = start(dir.path(), &database, &env).await;
    let http = client(5);
    for i in 0..40 {
        let a =
            login_with(&http, &server.base, &format!("user{i}"), "wrong password!!", &[("X-Real-IP", &spoof(i))]).await;
        assert_eq!(a.status, 401, "attempt {i}");
    }
    // ... and one header value is one address, whatever the TCP peers.
    let statuses: Vec<u16> = futures_util::future::join_all((0..32u8).map(|i| {
        let base = server.base.clone();
        async move {
            login_with(
                &client(10 + i),
                &base,
                &format!("other{i}"),
                "wrong password!!",
                &[("X-Real-IP", "198.51.100.7")],
            )
            .await
            .status
        }
    }))
    .await;
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 16, "{statuses:?}");
}

#[tokio::test]
async fn guesses_from_15_addresses_do_not_lock_out_the_owner_who_signed_in_before() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[]).await;
    let base = server.base.clone();
    assert_eq!(signup(&client(1), &base, "victim").await.status, 303);

    // The owner signs in from a browser (which gets a device cookie) and signs out again.
    let owner = client(10);
    let first = login(&owner, &base, "victim", common::PASSWORD).await;
    assert_eq!(first.status, 303);
    let device = first.set_cookies.iter().find(|c| c.starts_with("tv_device=")).expect("a device cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(device.contains(attribute), "{attribute} missing: {device}");
    }
    assert!(!device.contains("Secure"), "no Secure on plain http");
    assert!(!device.to_lowercase().contains("victim"), "the cookie is encrypted: {device}");
    let token = csrf(&owner, &base, "/").await;
    assert_eq!(post(&owner, format!("{base}/logout"), &[("csrf_token", &token)], &[]).await.status, 303);

    // 15 wrong guesses from 15 addresses: the account's limit (10 failures per minute; the
    // owner's success did not count) is used up, whatever the case or spacing of the name.
    let mut statuses = Vec::new();
    for i in 0..15u8 {
        let name = if i % 2 == 0 { "victim" } else { " VICTIM " };
        statuses.push(login(&client(20 + i), &base, name, "wrong password!!").await.status);
    }
    // (The allowance comes back at one attempt per 6 s: a slow run may see an eleventh 401.)
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 3 && statuses[10..].iter().all(|s| matches!(s, 401 | 429)), "{statuses:?}");

    // A browser without a device cookie waits, even with the right password ...
    assert_eq!(login(&client(40), &base, "victim", common::PASSWORD).await.status, 429);
    // ... and so does one with a forged device cookie.
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    jar.add_cookie_str("tv_device=forged; Path=/", &base.parse().unwrap());
    let forged = reqwest::Client::builder()
        .local_address(addr(41))
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(login(&forged, &base, "victim", common::PASSWORD).await.status, 429);
    // The owner's browser signs in.
    let back = login(&owner, &base, "victim", common::PASSWORD).await;
    assert_eq!(back.status, 303, "the owner is not locked out");
    assert!(back.set_cookies.iter().any(|c| c.starts_with("tv_session=")));

    // Every refusal and device decision is logged with the address and a hash of the username,
    // never the username itself.
    let tag = tokenvault::auth::throttle::user_tag("victim");
    let mut log = String::new();
    for _ in 0..100 {
        log = std::fs::read_to_string(&server.log).unwrap_or_default();
        if log.contains("known device") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = log.lines().filter(|l| l.contains("refused by the per-account limit")).collect::<Vec<_>>();
    assert_eq!(refused.len(), limited + 2, "{log}");
    assert!(refused.iter().all(|l| l.contains(&format!("user={tag}")) && l.contains("client=127.0.0.")));
    assert!(log.lines().any(|l| l.contains("known device") && l.contains("client=127.0.0.10")), "{log}");
    assert!(log.lines().any(|l| l.contains("invalid device cookie") && l.contains("client=127.0.0.41")), "{log}");
    assert!(!log.to_lowercase().contains("victim"), "no username in the log:\n{log}");
}

async fn first_signup_is_admin(profile: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[("ROCKET_PROFILE", profile), ("ROCKET_ALLOW_SIGNUP", "true")]).await;
    assert_eq!(signup(&client(6), &server.base, "first").await.status, 303);
    drop(server);
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    let mut conn = db.conn().unwrap();
    tokenvault::db::models::users::find_by_username(&mut conn, "first").unwrap().unwrap().is_admin
}

#[tokio::test]
async fn the_first_signup_is_an_administrator_only_in_the_debug_profile() {
    assert!(!first_signup_is_admin("release").await, "release: never an administrator from a sign-up");
    assert!(first_signup_is_admin("debug").await, "debug: the first sign-up is the administrator");
}

//! Load benchmark: `cargo bench --bench load` (builds the release binary; runs for about three
//! minutes, five with PostgreSQL).
//!
//! Starts a loopback fake provider (wiremock, in this process) and the real `tokenvault` binary
//! as a separate process, seeds a user, a connection and an API key, then measures with `wrk`
//! (Debian package `wrk`; a built-in load loop is used when it is missing):
//! - `/healthz`: the framework ceiling;
//! - a direct call to the fake provider (account API, proxied API): the yardstick for overhead;
//! - the token API with a fresh token, the account page, and the proxy;
//! - refresh storms: 1,000 requests at once on a token that has just expired (by the clock, as in
//!   use), on the token API and on the account page, with the fake's token endpoint answering in
//!   20 ms and in 100 ms; each against one refresh round trip alone and against the same burst on
//!   a fresh token (the cost of answering 1,000 requests at all). The storm's requests go out on
//!   already-open keep-alive connections from a minimal hand-driven HTTP/1.1 client, so that the
//!   load generator costs far less than the server;
//! - RSS idle and under load, and start to first 200.
//!
//! Each wrk scenario runs at 1 connection (latency: p50 overhead over the direct call) and at
//! `BENCH_CONNECTIONS` (throughput). With `BENCH_POSTGRES_URL` (or TOKENVAULT_TEST_POSTGRES_URL)
//! the token API and account page are measured on PostgreSQL too, with one and two instances.
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (50), BENCH_STORM (1000).

// The `it` test binary uses all of `common` (its dead-code check covers it); this uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, dead_code)]
mod common;

// The load runner (wrk, or a built-in loop) and the table, shared with the other benchmarks.
#[path = "support/wrk.rs"]
mod wrk;
// The credentials and API key the benchmarks seed.
#[path = "support/seed.rs"]
mod seed;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenvault::util::ExposeSecret;
use wrk::{env_num, load, ms, print_rows, scenario, which};

use common::FakeProvider;
use reqwest::cookie::CookieStore;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

type Instance = common::server::Server;

async fn start(database_url: &str, fake: &str, dir: &std::path::Path) -> Instance {
    // The fake as a provider that says which account a token is for (as every preset does), so
    // that a second account can be connected and named with `?account=`.
    let providers = common::server::fake_provider_env(fake).replacen(
        "client_auth=",
        "account_id_pointer=\"/id\",account_label_pointer=\"/email\",client_auth=",
        1,
    );
    let options = common::server::Options {
        profile: "release",
        env: vec![("ROCKET_PROVIDERS".into(), providers)],
        ..common::server::Options::new(database_url, fake, dir)
    };
    common::server::start(options).await
}

fn hidden(html: &str, name: &str) -> String {
    let re = regex::Regex::new(&format!(r#"name="{name}" value="([^"]*)""#)).unwrap();
    re.captures(html).map(|c| c[1].to_string()).expect("hidden field")
}

/// Through the Redirector (with `fields` beside the CSRF token), the fake's authorize step and the
/// callback, on a client that carries the session.
async fn connect_flow(http: &reqwest::Client, base: &str, fake: &FakeProvider, fields: &[(&str, &str)]) {
    let page = http.get(format!("{base}/services/fake/authorize")).send().await.unwrap().text().await.unwrap();
    let csrf = hidden(&page, "csrf_token");
    let mut form = vec![("csrf_token", csrf.as_str())];
    form.extend_from_slice(fields);
    let res = http.post(format!("{base}/services/fake/authorize")).form(&form).send().await.unwrap();
    let url = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let (state, challenge) = common::flow_params(&url);
    let code = fake.issue_code(&challenge);
    let res = http.get(format!("{base}/services/fake/callback?code={code}&state={state}")).send().await.unwrap();
    assert_eq!(res.status(), 303, "connect {fields:?}");
}

/// Connect account `n` at the fake provider as another connection of the signed-in user
/// ("Connect another account": the Redirector's `#add-account` form).
async fn add_account(instance: &Instance, fake: &FakeProvider, cookie: &str, n: u32) {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("Cookie", cookie.parse().unwrap());
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    fake.with_state(|s| s.sign_in_as(n));
    connect_flow(&http, &instance.base, fake, &[("add_account", "true")]).await;
}

/// Sign up, connect the fake provider; returns the session cookie header, the access token and an API key.
async fn seed(instance: &Instance, fake: &FakeProvider, db: &tokenvault::db::Db) -> (String, String, String) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let http = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &instance.base;
    let page = http.get(format!("{base}/signup")).send().await.unwrap().text().await.unwrap();
    let form = [
        ("csrf_token", hidden(&page, "csrf_token")),
        ("username", "bench".to_string()),
        ("password", common::PASSWORD.to_string()),
        ("password_confirm", common::PASSWORD.to_string()),
    ];
    assert_eq!(http.post(format!("{base}/signup")).form(&form).send().await.unwrap().status(), 303);
    connect_flow(&http, base, fake, &[]).await;
    let cookie = jar.cookies(&url::Url::parse(base).unwrap()).unwrap().to_str().unwrap().to_string();
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    let user = tokenvault::db::models::users::find_by_username(&mut conn, "bench").unwrap().unwrap();
    let row = tokenvault::db::models::connections::find(&mut conn, user.id, "fake").unwrap().unwrap();
    let (access, _) = tokenvault::oauth::store::open_tokens(&cipher, &row).unwrap();
    let key = seed::api_key(&mut conn, user.id);
    (cookie, access.expose_secret().to_string(), key)
}

/// Expire every stored token, as a change made outside the app: with an invalidation row for each
/// connection, then long enough for the app's once-a-second poll to drop its cached copies.
async fn expire_all(db: &tokenvault::db::Db) {
    use diesel::RunQueryDsl;
    let mut conn = db.conn().unwrap();
    tokenvault::on_conn!(&mut conn, c => {
        diesel::sql_query("UPDATE connections SET expires_at = 0").execute(c).unwrap();
        diesel::sql_query(format!(
            "INSERT INTO cache_invalidations (kind, key, created_at) \
             SELECT 'connection', CAST(user_id AS TEXT) || ':' || service, {} FROM connections",
            tokenvault::util::now()
        ))
        .execute(c)
        .unwrap()
    });
    tokio::time::sleep(tokenvault::cache::POLL_INTERVAL * 2).await;
}

struct Storm {
    /// p99 of the same burst on a fresh token (no refresh): the floor of the storm.
    fresh_p99: Duration,
    one: Duration,
    p50: Duration,
    p99: Duration,
    refreshes: usize,
    failed: usize,
}

/// One HTTP/1.1 keep-alive connection driven by hand: the storm's load generator has to cost far
/// less than the server it loads (like wrk), and one request is one write and a read or two.
struct RawConnection {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConnection {
    async fn open(addr: &str) -> RawConnection {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        RawConnection { stream, buf: Vec::with_capacity(8192) }
    }

    /// Send `request` and read the whole answer; its status.
    async fn exchange(&mut self, request: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let complete = if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                {
                    self.buf.len() >= end + 4 + len
                } else if head.contains("transfer-encoding: chunked") {
                    self.buf.ends_with(b"\r\n0\r\n\r\n")
                } else {
                    true
                };
                if complete {
                    return status;
                }
            }
            let n = self.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn raw_request(url: &str, headers: &[(String, String)]) -> (String, Vec<u8>) {
    let u = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap());
    let mut req = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\n", u.path());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    (addr, req.into_bytes())
}

/// The same request on every connection at once; the sorted latencies of the successes, and the
/// number of failures.
async fn burst(conns: Vec<RawConnection>, request: &Arc<Vec<u8>>) -> (Vec<Duration>, usize) {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let request = request.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let ok = c.exchange(&request).await == 200;
                (ok, t.elapsed())
            })
        })
        .collect();
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (ok, d) = t.await.unwrap();
        if ok {
            lat.push(d);
        } else {
            failed += 1;
        }
    }
    lat.sort();
    (lat, failed)
}

/// `n` requests at once on an expired token, each on its own already-open keep-alive connection
/// (as API clients send them), against one such request alone.
async fn storm(
    url: &str,
    headers: &[(String, String)],
    n: usize,
    db: &tokenvault::db::Db,
    fake: &FakeProvider,
) -> Storm {
    let (addr, request) = raw_request(url, headers);
    let (_, health) = raw_request(
        &(url.split("/api/").next().unwrap().split("/services/").next().unwrap().to_string() + "/healthz"),
        &[],
    );
    let open = |count: usize| {
        let (addr, health) = (addr.clone(), health.clone());
        async move {
            let mut conns = Vec::with_capacity(count);
            for _ in 0..count {
                let mut c = RawConnection::open(&addr).await;
                assert_eq!(c.exchange(&health).await, 200);
                conns.push(c);
            }
            conns
        }
    };
    // Tokens expire by the clock, as they do in use: the fake issues them for 6 s, and a token is
    // due for refresh once less than its margin is left — `refresh_margin` (60 s), but at most half
    // its lifetime — so 3 s after it was issued, while the app still holds its row in memory
    // (cache_ttl 10 s). One forced expiry starts the cycle.
    fake.with_state(|s| s.expires_in = Some(serde_json::json!(6)));
    expire_all(db).await;
    let mut single = open(1).await;
    assert_eq!(single[0].exchange(&request).await, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let t = Instant::now();
    assert_eq!(single[0].exchange(&request).await, 200);
    let one = t.elapsed();
    let due = t + Duration::from_millis(3500);

    let request = Arc::new(request);
    let (fresh, _) = burst(open(n).await, &request).await;
    let conns = open(n).await;
    assert!(Instant::now() < due, "opening the connections took too long");
    tokio::time::sleep_until(due.into()).await;
    let before = fake.refresh_calls().await;
    let (lat, failed) = burst(conns, &request).await;
    fake.with_state(|s| s.expires_in = Some(serde_json::json!(3600)));
    let pick = |p: usize| lat.get((lat.len().max(1) - 1) * p / 100).copied().unwrap_or_default();
    Storm {
        fresh_p99: fresh.get((fresh.len().max(1) - 1) * 99 / 100).copied().unwrap_or_default(),
        one,
        p50: pick(50),
        p99: pick(99),
        refreshes: fake.refresh_calls().await - before,
        failed,
    }
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5);
    let connections = env_num("BENCH_CONNECTIONS", 50);
    let storm_n = env_num("BENCH_STORM", 1000) as usize;
    let tool = if which("wrk") { "wrk" } else { "built-in load loop (install wrk for standard figures)" };
    println!("load tool: {tool}; {seconds} s per run; N = {connections} connections; {} cores", num_cpus());

    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = dir.path().join("bench.sqlite").to_string_lossy().to_string();
    let db = tokenvault::db::Db::open_sized(&sqlite_url, 2).unwrap();
    seed::vault(&db);
    let app = start(&sqlite_url, &fake.uri(), &dir.path().join("data")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss_kib(app.child.id());
    let (cookie, access, key) = seed(&app, &fake, &db).await;
    let bearer = |t: &str| vec![("Authorization".to_string(), format!("Bearer {t}"))];
    let session = vec![("Cookie".to_string(), cookie.clone())];

    // Sample the app's RSS while the load runs.
    let pid = app.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let base = app.base.clone();
    let f = fake.uri();
    let rows = vec![
        scenario("GET /healthz (framework ceiling)", &format!("{base}/healthz"), &[], connections, seconds).await,
        scenario("fake provider /account, direct", &format!("{f}/account"), &bearer(&access), connections, seconds)
            .await,
        scenario(
            "GET /services/fake/account (page)",
            &format!("{base}/services/fake/account"),
            &session,
            connections,
            seconds,
        )
        .await,
        scenario(
            "GET /api/v1/services/fake/token",
            &format!("{base}/api/v1/services/fake/token"),
            &bearer(&key),
            connections,
            seconds,
        )
        .await,
        scenario("fake provider /api/me, direct", &format!("{f}/api/me"), &bearer(&access), connections, seconds).await,
        scenario(
            "GET /api/v1/services/fake/proxy/me",
            &format!("{base}/api/v1/services/fake/proxy/me"),
            &bearer(&key),
            connections,
            seconds,
        )
        .await,
    ];
    sampler.abort();
    let rss_load = peak.load(std::sync::atomic::Ordering::Relaxed);

    // Refresh storms: on the token API (the refresh itself), and on the account page (each of the
    // requests then also calls the provider's account API).
    // Refresh storms on the token API (the refresh itself) and on the account page (each request
    // then also calls the provider's account API), with the fake's token endpoint answering in
    // 20 ms (faster than any real one) and in 100 ms (typical of Google, Dropbox, Microsoft).
    let mut storms = Vec::new();
    for (name, url, headers, delay) in [
        ("token API", format!("{base}/api/v1/services/fake/token"), bearer(&key), 20),
        ("token API", format!("{base}/api/v1/services/fake/token"), bearer(&key), 100),
        ("account page", format!("{base}/services/fake/account"), session.clone(), 20),
        ("account page", format!("{base}/services/fake/account"), session.clone(), 100),
    ] {
        fake.with_state(|s| s.refresh_delay = Some(Duration::from_millis(delay)));
        storms.push((name, delay, storm(&url, &headers, storm_n, &db, &fake).await));
    }

    // Several accounts (issue 13): a second account of the same service, each named with
    // `?account=`; measured beside a fresh `/healthz` run, so that the ratio is of one moment.
    add_account(&app, &fake, &cookie, 2).await;
    let audited_before = audit_entries(&db, "token.read");
    let account_rows = vec![
        scenario("GET /healthz (again, beside the next row)", &format!("{base}/healthz"), &[], connections, seconds)
            .await,
        scenario(
            "GET /api/v1/services/fake/token?account=fake-user-2 (2 accounts)",
            &format!("{base}/api/v1/services/fake/token?account=fake-user-2"),
            &bearer(&key),
            connections,
            seconds,
        )
        .await,
    ];
    let (status, body) = get_json(&format!("{base}/api/v1/services/fake/token"), &bearer(&key)).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("ambiguous_account")), "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = audit_entries(&db, "token.read");
    let (audited_rows, audited) = (after.0 - audited_before.0, after.1 - audited_before.1);
    let reads = (account_rows[1].latency.requests + account_rows[1].throughput.requests) as i64;

    println!("\n## SQLite, one instance\n");
    print_rows(&rows);
    let (page, direct, token, health, proxy, direct_api) = (&rows[2], &rows[1], &rows[3], &rows[0], &rows[5], &rows[4]);
    println!();
    println!(
        "- token API throughput vs /healthz: {:.2}x (target >= 0.5x)",
        token.throughput.rps / health.throughput.rps
    );
    println!(
        "- account page: +{} at p50 over the direct provider call (target <= 1 ms); {:.2}x its latency",
        ms(page.latency.p50.saturating_sub(direct.latency.p50)),
        page.latency.p50.as_secs_f64() / direct.latency.p50.as_secs_f64().max(1e-9)
    );
    println!(
        "- proxy: +{} at p50 over the direct provider call (target <= 1 ms)",
        ms(proxy.latency.p50.saturating_sub(direct_api.latency.p50))
    );
    println!();
    print_rows(&account_rows);
    println!();
    println!(
        "- token API with `?account=` (two accounts) vs /healthz: {:.2}x (target >= 0.5x); auditing on: \
         {audited} token reads recorded (of {reads} answered) in {audited_rows} `token.read` rows",
        account_rows[1].throughput.rps / account_rows[0].throughput.rps
    );
    assert_eq!(account_rows[1].latency.errors + account_rows[1].throughput.errors, 0, "every ?account= read succeeds");
    assert!(audited > 0, "auditing is on: every token read is recorded");
    // wrk may stop before reading the last answers of its connections: a few more reads than it counts.
    assert!(
        audited <= reads + 2 * connections as i64 && audited * 100 >= reads * 99,
        "every read recorded: {audited} of {reads}"
    );
    println!();
    println!("| refresh storm: {storm_n} concurrent requests on an expired token | token endpoint delay | token calls | failures | p50 | p99 | one refresh round trip | p99 / round trip (target <= 2x) | same burst, fresh token: p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, delay, st) in &storms {
        println!(
            "| {name} | {delay} ms | {} | {} | {} | {} | {} | {:.1}x | {} |",
            st.refreshes,
            st.failed,
            ms(st.p50),
            ms(st.p99),
            ms(st.one),
            st.p99.as_secs_f64() / st.one.as_secs_f64(),
            ms(st.fresh_p99)
        );
    }
    println!();
    println!(
        "- RSS: idle {:.1} MB, under load (peak) {:.1} MB (targets 20 / 50 MB)",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0
    );
    println!("- start to first 200: {} (target <= 200 ms)", ms(app.started_in));
    drop(app);

    let pg = std::env::var("BENCH_POSTGRES_URL").or_else(|_| std::env::var("TOKENVAULT_TEST_POSTGRES_URL")).ok();
    if let Some(admin) = pg.filter(|u| !u.is_empty()) {
        std::env::set_var("TOKENVAULT_TEST_POSTGRES_URL", &admin);
        let database = common::TestDatabase::new(dir.path());
        let pgdb = tokenvault::db::Db::open_sized(&database.url, 2).unwrap();
        seed::vault(&pgdb);
        let a = start(&database.url, &fake.uri(), &dir.path().join("pa")).await;
        let (cookie, _, key) = seed(&a, &fake, &pgdb).await;
        let session = vec![("Cookie".to_string(), cookie)];
        let one_page = scenario(
            "PostgreSQL, 1 instance: account page",
            &format!("{}/services/fake/account", a.base),
            &session,
            connections,
            seconds,
        )
        .await;
        let one_token = scenario(
            "PostgreSQL, 1 instance: token API",
            &format!("{}/api/v1/services/fake/token", a.base),
            &bearer(&key),
            connections,
            seconds,
        )
        .await;
        let b = start(&database.url, &fake.uri(), &dir.path().join("pb")).await;
        let half = connections / 2;
        let auth = bearer(&key);
        let (ta, tb) =
            (format!("{}/api/v1/services/fake/token", a.base), format!("{}/api/v1/services/fake/token", b.base));
        let (ra, rb) = tokio::join!(load(&ta, &auth, half, seconds), load(&tb, &auth, half, seconds));
        let (ua, ub) = (format!("{}/services/fake/account", a.base), format!("{}/services/fake/account", b.base));
        let (pa, pb) = tokio::join!(load(&ua, &session, half, seconds), load(&ub, &session, half, seconds));
        println!("\n## PostgreSQL vs SQLite\n");
        print_rows(&[one_page, one_token]);
        println!("\n| two instances (N/2 connections each, same machine) | req/s total | p99 A | p99 B | errors |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for (name, x, y) in [("token API", &ra, &rb), ("account page", &pa, &pb)] {
            println!("| {name} | {:.0} | {} | {} | {} |", x.rps + y.rps, ms(x.p99), ms(y.p99), x.errors + y.errors);
        }
        drop((a, b));
    }
    for (_, _, st) in &storms {
        assert_eq!(st.refreshes, 1, "a storm must cause exactly one refresh");
        assert_eq!(st.failed, 0, "every storm request must succeed");
    }
}

/// Reads of `kind` the audit log records so far: its rows, each counting `count` reads when the
/// batcher coalesced identical ones (SQLite's json_extract: the bench's database is SQLite).
fn audit_entries(db: &tokenvault::db::Db, kind: &str) -> (i64, i64) {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = db.conn().unwrap();
    let rows = format!("SELECT COUNT(*) AS n FROM audit_log WHERE kind = '{kind}'");
    let reads = format!(
        "SELECT CAST(COALESCE(SUM(COALESCE(json_extract(detail, '$.count'), 1)), 0) AS BIGINT) AS n \
         FROM audit_log WHERE kind = '{kind}'"
    );
    tokenvault::on_conn!(&mut conn, c => (
        diesel::sql_query(&rows).get_result::<N>(c).unwrap().n,
        diesel::sql_query(&reads).get_result::<N>(c).unwrap().n,
    ))
}

async fn get_json(url: &str, headers: &[(String, String)]) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

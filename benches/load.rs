//! Load benchmark: `cargo bench --bench load` (release build; takes about a minute to run).
//!
//! Starts a loopback fake provider and the app on free ports, signs up a user, connects the
//! fake provider, then measures with a fixed-concurrency HTTP load loop:
//! - `/healthz` (the framework ceiling),
//! - a direct call to the fake provider's account API (the yardstick for overhead),
//! - the account-info page with a fresh token (the app's own cost on top of that call),
//! - a refresh storm: N concurrent account requests on an expired token.
//!
//! Prints a table of requests/s, p50 and p99 and the overhead ratios. Environment knobs:
//! `BENCH_SECONDS` (default 5), `BENCH_CONCURRENCY` (default 32), `BENCH_STORM` (default 1000).

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/fake_provider.rs"]
#[allow(dead_code)]
mod fake_provider;

pub const CLIENT_ID: &str = "fake-client-id";
pub const CLIENT_SECRET: &str = "CS-CANARY-client-secret-7c1e";
pub const PUBLIC_URL: &str = "http://localhost:8000";
const VAULT_KEY: &str = "dGVzdC12YXVsdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=";

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    name: String,
    requests: usize,
    errors: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `concurrency` workers sending `make()` requests back to back for `seconds`.
async fn load<F>(name: &str, concurrency: usize, seconds: u64, make: F) -> Stats
where
    F: Fn() -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                match make().send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    Stats {
        name: name.into(),
        requests: all.len(),
        errors,
        seconds: secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn hidden(html: &str, name: &str) -> String {
    let re = regex::Regex::new(&format!(r#"name="{name}" value="([^"]*)""#)).unwrap();
    re.captures(html).map(|c| c[1].to_string()).expect("hidden field")
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5);
    let concurrency = env_num("BENCH_CONCURRENCY", 32) as usize;
    let storm = env_num("BENCH_STORM", 1000) as usize;

    let fake = fake_provider::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("bench.sqlite");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let provider = rocket::figment::value::Value::from(std::collections::BTreeMap::from([(
        "fake".to_string(),
        std::collections::BTreeMap::from([
            ("authorize_url".to_string(), format!("{}/authorize", fake.uri())),
            ("token_url".to_string(), format!("{}/token", fake.uri())),
            ("account_url".to_string(), format!("{}/account", fake.uri())),
        ]),
    )]));
    let figment = rocket::figment::Figment::from(rocket::Config::release_default())
        .merge(("port", port))
        .merge(("address", "127.0.0.1"))
        .merge(("secret_key", tokenvault::util::random_key_b64(64)))
        .merge(("public_url", PUBLIC_URL))
        .merge(("database_url", db_path.to_string_lossy().to_string()))
        .merge(("vault_key", VAULT_KEY))
        .merge(("allow_signup", true))
        .merge(("providers", provider))
        .merge(("shutdown.ctrlc", false))
        .select("release");
    let rocket = tokenvault::app::build(figment).expect("config");
    let launch_started = Instant::now();
    tokio::spawn(async move { rocket.launch().await.expect("server") });
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency * 2)
        .build()
        .unwrap();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_200 = launch_started.elapsed();

    // Seed: credentials, a user, a connection.
    let db = tokenvault::db::Db::open(&db_path.to_string_lossy()).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(VAULT_KEY, &[]).unwrap();
    {
        let mut conn = db.conn().unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", CLIENT_ID, "bench").unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", CLIENT_SECRET, "bench").unwrap();
    }
    let page = http.get(format!("{base}/signup")).send().await.unwrap().text().await.unwrap();
    let form = [
        ("csrf_token", hidden(&page, "csrf_token")),
        ("username", "bench".into()),
        ("password", "bench password 123".into()),
        ("password_confirm", "bench password 123".into()),
    ];
    assert_eq!(http.post(format!("{base}/signup")).form(&form).send().await.unwrap().status(), 303);
    let page = http.get(format!("{base}/services/fake/authorize")).send().await.unwrap().text().await.unwrap();
    let res = http
        .post(format!("{base}/services/fake/authorize"))
        .form(&[("csrf_token", hidden(&page, "csrf_token"))])
        .send()
        .await
        .unwrap();
    let url = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    let code = fake.issue_code(&q["code_challenge"]);
    let res = http.get(format!("{base}/services/fake/callback?code={code}&state={}", q["state"])).send().await.unwrap();
    assert_eq!(res.status(), 303, "connect");
    let mut conn = db.conn().unwrap();
    let user = tokenvault::db::models::users::find_by_username(&mut conn, "bench").unwrap().unwrap();
    let row = tokenvault::db::models::connections::find(&mut conn, user.id, "fake").unwrap().unwrap();
    let (access, _) = tokenvault::oauth::store::open_tokens(&cipher, &row).unwrap();
    let access = access.expose().to_string();
    drop(conn);

    let mut results = Vec::new();
    let h = http.clone();
    let b = base.clone();
    results.push(
        load("GET /healthz (framework ceiling)", concurrency, seconds, move || h.get(format!("{b}/healthz"))).await,
    );
    let h = http.clone();
    let (u, a) = (format!("{}/account", fake.uri()), access.clone());
    results.push(load("fake provider /account, direct", concurrency, seconds, move || h.get(&u).bearer_auth(&a)).await);
    let h = http.clone();
    let b = base.clone();
    results.push(
        load("GET /services/fake/account (fresh token)", concurrency, seconds, move || {
            h.get(format!("{b}/services/fake/account"))
        })
        .await,
    );

    // One refresh round trip, for the storm's yardstick.
    fake.with_state(|s| s.refresh_delay = Some(Duration::from_millis(20)));
    let before_refreshes = fake.refresh_calls().await;
    {
        let mut conn = db.conn().unwrap();
        use diesel::RunQueryDsl;
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query("UPDATE connections SET expires_at = 0").execute(c))
            .unwrap();
    }
    let t = Instant::now();
    assert!(http.get(format!("{base}/services/fake/account")).send().await.unwrap().status().is_success());
    let one_refresh = t.elapsed();
    {
        let mut conn = db.conn().unwrap();
        use diesel::RunQueryDsl;
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query("UPDATE connections SET expires_at = 0").execute(c))
            .unwrap();
    }
    let storm_before = fake.refresh_calls().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..storm {
        let h = http.clone();
        let b = base.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = h
                .get(format!("{b}/services/fake/account"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (ok, t.elapsed())
        }));
    }
    let mut lat = Vec::new();
    let mut failures = 0;
    for t in tasks {
        let (ok, d) = t.await.unwrap();
        if ok {
            lat.push(d);
        } else {
            failures += 1;
        }
    }
    lat.sort();
    let storm_secs = started.elapsed().as_secs_f64();
    let storm_refreshes = fake.refresh_calls().await - storm_before;
    let _ = before_refreshes;

    println!("\n| scenario | requests | errors | req/s | p50 | p99 |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for s in &results {
        println!("| {} | {} | {} | {:.0} | {} | {} |", s.name, s.requests, s.errors, s.rps(), ms(s.p50), ms(s.p99));
    }
    println!(
        "| refresh storm: {storm} concurrent on an expired token | {} | {failures} | {:.0} | {} | {} |",
        lat.len(),
        lat.len() as f64 / storm_secs,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    let direct = &results[1];
    let page = &results[2];
    println!(
        "\n- account page vs direct provider call: {:.2}x the latency at p50 (+{}), {:.2}x the throughput",
        page.p50.as_secs_f64() / direct.p50.as_secs_f64(),
        ms(page.p50.saturating_sub(direct.p50)),
        page.rps() / direct.rps()
    );
    println!("- account page vs /healthz: {:.2}x the throughput", page.rps() / results[0].rps());
    println!(
        "- refresh storm: {storm_refreshes} token-endpoint call(s) for {storm} requests; one refresh round trip {}; storm p99 {} ({:.1}x)",
        ms(one_refresh),
        ms(percentile(&lat, 0.99)),
        percentile(&lat, 0.99).as_secs_f64() / one_refresh.as_secs_f64()
    );
    println!("- start to first 200: {}", ms(first_200));
    println!(
        "- concurrency {concurrency}, {seconds} s per scenario, {} cores",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    assert_eq!(storm_refreshes, 1, "the storm must cause exactly one refresh");
    assert_eq!(failures, 0, "every storm request must succeed");
}

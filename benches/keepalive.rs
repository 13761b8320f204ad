//! The keep-alive benchmark (`cargo bench --bench keepalive`; with `TOKENVAULT_TEST_POSTGRES_URL=…`
//! on PostgreSQL): BENCH_CONNECTIONS (default 100,000) idle connections of as many users, seeded
//! straight into the database with sealed tokens, refreshed by one keep-alive pass against the
//! loopback fake provider (`keepalive_concurrency` BENCH_CONCURRENCY, default 4) — its token
//! endpoint a bare keep-alive HTTP/1.1 answerer here ([`bare_token_endpoint`]), so that the peak
//! RSS is the app's, not the fake's. Prints the
//! refreshes per second, the process's peak RSS, and the token API's p50/p99 while idle and
//! during the pass (one client asking for one user's token in a loop). Fails unless every
//! connection was refreshed exactly once.

// The `it` test binary uses all of `common` (its dead-code check covers it); this uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, dead_code)]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use rocket::http::{Header, Status};
use tokenvault::db::models::connections::{ConnectionStatus, NewConnection};
use tokenvault::db::schema::{connections, users};
use tokenvault::vault::Aad;

/// A figure of this process's `/proc/self/status` in MB (`VmHWM:` peak RSS, `VmRSS:` now).
fn status_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Token API calls in a loop until `stop` (or `max` calls); the latencies of every `every`-th
/// call, sorted (millions of calls during a pass: keeping every latency would be the harness's
/// own memory in the peak RSS), and the number of calls.
async fn token_loop(
    client: &rocket::local::asynchronous::Client,
    key: &str,
    stop: &AtomicBool,
    max: usize,
    every: usize,
) -> (Vec<Duration>, usize) {
    let (mut took, mut calls) = (Vec::new(), 0usize);
    while !stop.load(Ordering::Relaxed) && calls < max {
        let started = Instant::now();
        let res = client
            .get("/api/v1/services/fake/token")
            .header(Header::new("Authorization", format!("Bearer {key}")))
            .dispatch()
            .await;
        assert_eq!(res.status(), Status::Ok);
        if calls % every == 0 {
            took.push(started.elapsed());
        }
        calls += 1;
        // A cached answer need not yield: let the pass run too.
        tokio::task::yield_now().await;
    }
    took.sort();
    (took, calls)
}

/// A token endpoint that keeps nothing: every POST is answered with fresh tokens, on keep-alive
/// connections (wiremock, the tests' fake, keeps every request it matched — with the read buffer
/// it sits in — which at 100,000 refreshes was most of the process's peak RSS, and not the app's).
async fn bare_token_endpoint() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let issued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { continue };
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: the head, then Content-Length bytes of body.
                    let (head_end, length) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let body = format!(
                        r#"{{"access_token":"AT-BARE-{n}","token_type":"bearer","expires_in":3600,"refresh_token":"RT-BARE-{n}","scope":"read write"}}"#
                    );
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::var("BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let token_url = bare_token_endpoint().await;
    let app = common::builder()
        .unrecorded_fake()
        .provider("token_url", token_url)
        // Long enough that the one real connection, made before a seeding that takes a minute on
        // PostgreSQL, is not idle yet; the seeded ones were last refreshed an hour ago.
        .set("keepalive_interval", 600)
        .set("keepalive_worker", false)
        .set("keepalive_concurrency", concurrency)
        .start()
        .await;
    app.fake.with_state(|s| s.accept_any_refresh = true);
    // One real user with an API key (the token API's caller), connected through the flow.
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let csrf = alice.csrf("/settings/api-keys").await;
    let page = alice.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", "bench")]).await.text;
    let key =
        regex::Regex::new(r#"<code id="new-api-key">(tvk_[A-Za-z0-9_-]+)</code>"#).unwrap().captures(&page).unwrap()[1]
            .to_string();

    // Seed n - 1 more users, each with one idle connection whose tokens are really sealed.
    let seeding = Instant::now();
    let old = tokenvault::util::now() - 3600;
    let mut conn = app.db.conn().unwrap();
    for chunk in (0..n - 1).collect::<Vec<_>>().chunks(2000) {
        conn.transaction(|conn| {
            for i in chunk {
                let name = format!("seed{i}");
                let user_id: i64 = tokenvault::on_conn!(conn, c => diesel::insert_into(users::table)
                    .values((
                        users::username.eq(&name),
                        users::password_hash.eq("!"),
                        users::is_admin.eq(false),
                        users::created_at.eq(old),
                        users::password_changed_at.eq(old),
                    ))
                    .returning(users::id)
                    .get_result(c))?;
                let access = app.cipher.seal_str("AT-seed", Aad::AccessToken { user_id, service: "fake", account: "" });
                let refresh = app
                    .cipher
                    .seal_str(&format!("RT-seed-{i}"), Aad::RefreshToken { user_id, service: "fake", account: "" });
                let row = NewConnection {
                    user_id,
                    service: "fake",
                    access_token: &access,
                    refresh_token: Some(&refresh),
                    token_type: "bearer",
                    scopes: "read write",
                    expires_at: Some(old + 3600 * 24),
                    obtained_at: old,
                    status: ConnectionStatus::Active,
                    version: 1,
                    updated_at: old,
                    refresh_token_expires_at: None,
                    account_id: "",
                    account_label: None,
                    requested_scopes: None,
                };
                tokenvault::on_conn!(conn, c => diesel::insert_into(connections::table).values(&row).execute(c))?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    }
    drop(conn);
    // Alice's connection is fresh: not a candidate, so the token API never waits on a refresh.
    println!("seeded {n} connections in {:?}", seeding.elapsed());
    let client = &app.client;

    let stop = AtomicBool::new(false);
    let (idle, idle_calls) = token_loop(client, &key, &stop, 2000, 1).await;
    let rss_before = peak_rss_mb();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = app.state().keepalive();
    let flag = stop.clone();
    let pass = tokio::spawn(async move {
        let report = worker.pass(&Default::default(), &|| false).await.expect("the pass runs");
        flag.store(true, Ordering::Relaxed);
        report
    });
    // BENCH_TOKEN_LOOP=0: no token API calls during the pass (the pass's own memory alone).
    let calls_during = std::env::var("BENCH_TOKEN_LOOP").map_or(true, |v| v != "0");
    let (during, during_calls) = if calls_during {
        token_loop(client, &key, &stop, usize::MAX, 16).await
    } else {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (Vec::new(), 0)
    };
    let report = pass.await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.ok as i64, n - 1, "every seeded connection refreshed: {report:?}");
    let refreshed = app.count("SELECT COUNT(*) AS n FROM connections WHERE version = 2");
    assert_eq!(refreshed, n - 1, "each exactly once");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "keep-alive pass over {} connections ({}, concurrency {concurrency}): {took:?}, {:.0} refreshes/s; \
         peak RSS {:.1} MB (after seeding {:.1} MB; {:.1} MB after the pass); token API p50/p99 idle \
         {:.2}/{:.2} ms ({} calls), during the pass {:.2}/{:.2} ms ({} calls, every 16th timed)",
        n - 1,
        if app.database.is_postgres() { "PostgreSQL" } else { "SQLite" },
        (n - 1) as f64 / took.as_secs_f64(),
        peak_rss_mb(),
        rss_before,
        rss_mb(),
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle_calls,
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        during_calls,
    );
}

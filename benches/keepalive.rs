//! The keep-alive benchmark (`cargo bench --bench keepalive`; with `TOKENVAULT_TEST_POSTGRES_URL=…`
//! on PostgreSQL): BENCH_CONNECTIONS (default 100,000) idle connections of as many users, seeded
//! straight into the database with sealed tokens, refreshed by one keep-alive pass against the
//! loopback fake provider (`keepalive_concurrency` BENCH_CONCURRENCY, default 4). Prints the
//! refreshes per second, the process's peak RSS, and the token API's p50/p99 while idle and
//! during the pass (one client asking for one user's token in a loop). Fails unless every
//! connection was refreshed exactly once.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use rocket::http::{Header, Status};
use tokenvault::db::models::connections::{ConnectionStatus, NewConnection};
use tokenvault::db::schema::{connections, users};
use tokenvault::vault::Aad;

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Token API calls in a loop until `stop`; their latencies, sorted.
async fn token_loop(
    client: &rocket::local::asynchronous::Client,
    key: &str,
    stop: &AtomicBool,
    max: usize,
) -> Vec<Duration> {
    let mut took = Vec::new();
    while !stop.load(Ordering::Relaxed) && took.len() < max {
        let started = Instant::now();
        let res = client
            .get("/api/v1/services/fake/token")
            .header(Header::new("Authorization", format!("Bearer {key}")))
            .dispatch()
            .await;
        assert_eq!(res.status(), Status::Ok);
        took.push(started.elapsed());
        // A cached answer need not yield: let the pass run too.
        tokio::task::yield_now().await;
    }
    took.sort();
    took
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::var("BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let app = common::builder()
        .unrecorded_fake()
        .set("keepalive_interval", 10)
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
    let idle = token_loop(client, &key, &stop, 2000).await;
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
    let during = token_loop(client, &key, &stop, usize::MAX).await;
    let report = pass.await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.ok as i64, n - 1, "every seeded connection refreshed: {report:?}");
    let refreshed = app.count("SELECT COUNT(*) AS n FROM connections WHERE version = 2");
    assert_eq!(refreshed, n - 1, "each exactly once");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "keep-alive pass over {} connections ({}, concurrency {concurrency}): {took:?}, {:.0} refreshes/s; \
         peak RSS {:.1} MB (after seeding {:.1} MB); token API p50/p99 idle {:.2}/{:.2} ms ({} calls), \
         during the pass {:.2}/{:.2} ms ({} calls)",
        n - 1,
        if app.database.is_postgres() { "PostgreSQL" } else { "SQLite" },
        (n - 1) as f64 / took.as_secs_f64(),
        peak_rss_mb(),
        rss_before,
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        idle.len(),
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99)),
        during.len(),
    );
}

//! The webhook delivery benchmark (`cargo bench --bench webhooks`; with
//! `TOKENVAULT_TEST_POSTGRES_URL=…` on PostgreSQL): 10,000 events recorded at once, delivered by one
//! in-process worker to a loopback receiver. Prints recordings and deliveries per second; fails if
//! any event is missing or delivered twice. Knob: BENCH_WEBHOOKS (default 10000).

// The `it` test binary uses all of `common` (its dead-code check covers it); this uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, dead_code)]
mod common;

use std::time::{Duration, Instant};

use common::webhook_receiver::{secret, Receiver};
use rocket::figment::value::{Dict, Value};

fn endpoint(url: &str, secret: &str) -> Value {
    let mut t = Dict::new();
    t.insert("url".into(), url.into());
    t.insert("secret".into(), secret.into());
    let mut all = Dict::new();
    all.insert("bench".into(), t.into());
    all.into()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_WEBHOOKS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let (rx, s) = (Receiver::start().await, secret());
    let app = common::builder().set("webhooks", endpoint(&rx.url(), &s)).start().await;

    let started_recording = Instant::now();
    {
        let mut conn = app.db.conn().unwrap();
        conn.transaction(|conn| {
            for i in 0..n {
                let data = tokenvault::webhooks::outbox::EventData {
                    connection_id: i as i64,
                    user: "bench".into(),
                    service: "fake".into(),
                    account: None,
                    status: "active".into(),
                    reason: None,
                };
                tokenvault::webhooks::outbox::record(conn, tokenvault::webhooks::EventType::ConnectionCreated, &data)?;
            }
            Ok::<_, diesel::result::Error>(())
        })
        .unwrap();
    }
    let recorded = started_recording.elapsed();
    app.state().webhooks.wake();
    let started = Instant::now();
    let got = rx.wait_for(n, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let ids: std::collections::BTreeSet<&str> = got.iter().map(|r| r.id()).collect();
    assert_eq!((got.len(), ids.len()), (n, n), "each event once");
    assert!(got.iter().take(100).all(|r| r.verifies(&s)));
    println!(
        "{n} events recorded in {recorded:?} ({:.0}/s); delivered in {took:?}: {:.0} deliveries/s ({})",
        n as f64 / recorded.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        if app.database.is_postgres() { "PostgreSQL" } else { "SQLite" }
    );
}

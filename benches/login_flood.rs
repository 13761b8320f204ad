//! Login-flood benchmark: `cargo bench --bench login_flood` (builds the release binary; runs for
//! about a minute). Replays the first two attacks of issue 10 against the real `tokenvault`
//! binary (release profile, SQLite), each client bound to its own loopback address:
//! - 192 wrong-password logins, 96 at once, from 96 source addresses (127.0.0.100–195);
//! - 2,000 `POST /login` with unique 30 KB usernames from one address (127.0.0.2).
//!
//! It prints the server's peak RSS (`VmHWM`) and RSS (`VmRSS`) from `/proc/<pid>/status`, how the
//! logins were answered, and the latency of `/healthz` (p50/p99), polled from another address
//! (127.0.0.3) throughout each attack. Figures, not assertions: the regression tests are in
//! `tests/abuse/login.rs`.
//!
//! `TV_BENCH_SMAPS=1` also prints the largest memory mappings after the first attack;
//! `TV_SERVER_BINARY=<path>` measures another build of the server (e.g. an older commit's) instead
//! of this one, so two builds can be compared on the same machine in one sitting.

// The `it` test binary uses all of `common` (its dead-code check covers it); this uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, dead_code)]
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn client(n: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn csrf(http: &reqwest::Client, base: &str) -> String {
    let page = http.get(format!("{base}/login")).send().await.unwrap().text().await.unwrap();
    common::csrf_from(&page)
}

async fn login(http: &reqwest::Client, base: &str, token: &str, username: &str) -> u16 {
    let form = [("csrf_token", token), ("username", username), ("password", "wrong password!!")];
    match http.post(format!("{base}/login")).form(&form).send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            let _ = res.bytes().await;
            status
        }
        Err(_) => 0,
    }
}

/// Poll `/healthz` until `stop`; the latencies.
async fn probe(base: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let http = client(3);
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if let Ok(res) = http.get(format!("{base}/healthz")).send().await {
            let _ = res.bytes().await;
            samples.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn tally(statuses: &[u16]) -> String {
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(*s).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(s, n)| if *s == 0 { format!("{n}× no answer") } else { format!("{n}× {s}") })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The 15 mappings of `pid` with the most resident memory, from `/proc/<pid>/smaps` (to tell the
/// binary, the heap, thread arenas and stacks apart).
fn print_largest_mappings(pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut maps: Vec<(u64, &str)> = Vec::new();
    let mut mapping = "";
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            mapping = line;
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            maps.push((kib.trim().trim_end_matches(" kB").parse().unwrap_or(0), mapping));
        }
    }
    maps.sort_unstable_by_key(|m| std::cmp::Reverse(m.0));
    for (kib, mapping) in maps.iter().take(15) {
        eprintln!("{kib:>8} KiB  {mapping}");
    }
}

struct Outcome {
    statuses: Vec<u16>,
    health: Vec<Duration>,
}

/// Run `attack` while `/healthz` is polled.
async fn during<F: std::future::Future<Output = Vec<u16>>>(base: &str, attack: F) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(probe(base.to_string(), stop.clone()));
    let statuses = attack.await;
    stop.store(true, Ordering::Relaxed);
    Outcome { statuses, health: poller.await.unwrap() }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let options = common::server::Options {
        profile: "release",
        ..common::server::Options::new(&database.url, "http://127.0.0.1:9", dir.path())
    };
    let server = common::server::start(options).await;
    let (base, pid) = (server.base.clone(), server.child.id());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let idle = proc_kib(pid, "VmRSS:");

    // 1. 192 wrong-password logins, 96 at once, from 96 addresses (two each, one after the other).
    let mut browsers = Vec::new();
    for i in 0..96u8 {
        let http = client(100 + i);
        let token = csrf(&http, &base).await;
        browsers.push((i, http, token));
    }
    let before_flood = proc_kib(pid, "VmRSS:");
    let started = Instant::now();
    let mut flood = during(&base, async {
        let all = futures_util::future::join_all(browsers.iter().map(|(i, http, token)| {
            let base = base.clone();
            async move {
                let mut out = Vec::new();
                for round in 0..2 {
                    out.push(login(http, &base, token, &format!("guess{i}x{round}")).await);
                }
                out
            }
        }))
        .await;
        all.into_iter().flatten().collect()
    })
    .await;
    let flood_time = started.elapsed();
    let flood_peak = proc_kib(pid, "VmHWM:");
    let after_flood = proc_kib(pid, "VmRSS:");
    if std::env::var_os("TV_BENCH_SMAPS").is_some() {
        print_largest_mappings(pid);
    }

    // 2. 2,000 unique 30 KB usernames from one address (eight at a time).
    let http = client(2);
    let token = csrf(&http, &base).await;
    let before_long = proc_kib(pid, "VmRSS:");
    let started = Instant::now();
    let mut long = during(&base, async {
        let mut statuses = Vec::new();
        for batch in 0..250 {
            let names: Vec<String> = (0..8).map(|j| format!("{batch:04}{j}{}", "u".repeat(30 * 1024))).collect();
            let answers =
                futures_util::future::join_all(names.iter().map(|name| login(&http, &base, &token, name))).await;
            statuses.extend(answers);
        }
        statuses
    })
    .await;
    let long_time = started.elapsed();
    let after_long = proc_kib(pid, "VmRSS:");

    println!("login flood against the release binary ({cores} cores), commit {commit}");
    println!("RSS idle {}", mb(idle));
    println!();
    println!("| attack | measured | must be |");
    println!("| --- | --- | --- |");
    println!(
        "| 192 wrong-password logins, 96 at once, from 96 source addresses | peak RSS (VmHWM) {}, RSS {} before → {} after; \
         answers: {}; `/healthz` p50 {}, p99 {} ({} probes over {:.1} s) | peak RSS ≤ 200 MB; `/healthz` p99 ≤ 50 ms during the flood |",
        mb(flood_peak),
        mb(before_flood),
        mb(after_flood),
        tally(&flood.statuses),
        ms(percentile(&mut flood.health, 0.5)),
        ms(percentile(&mut flood.health, 0.99)),
        flood.health.len(),
        flood_time.as_secs_f64(),
    );
    println!(
        "| 2,000 `POST /login` with unique 30 KB usernames from one address | RSS {} → {} (growth {}); answers: {}; \
         `/healthz` p50 {}, p99 {} ({} probes over {:.1} s) | growth ≤ 25 MB; no throttle state for an address already over its limit |",
        mb(before_long),
        mb(after_long),
        mb(after_long.saturating_sub(before_long)),
        tally(&long.statuses),
        ms(percentile(&mut long.health, 0.5)),
        ms(percentile(&mut long.health, 0.99)),
        long.health.len(),
        long_time.as_secs_f64(),
    );
    drop(server);
}

//! The load runner the benchmarks share: `wrk` (Debian package `wrk`) when it is installed, else a
//! built-in loop of keep-alive requests; and the table of scenarios they print.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Requests answered (successes and errors).
    pub requests: u64,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(Duration::from_secs_f64(match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    }))
}

/// Run wrk (or the built-in loop) against `url` with `headers`.
pub async fn load(url: &str, headers: &[(String, String)], connections: u64, seconds: u64) -> Run {
    if which("wrk") {
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{}", connections.min(2)))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .arg("--timeout")
            .arg("10s");
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        let out = cmd.arg(url).output().expect("wrk runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut run = Run::default();
        for line in text.lines() {
            let t = line.trim();
            if t.contains(" requests in ") {
                run.requests = t.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            } else if let Some(v) = t.strip_prefix("Requests/sec:") {
                run.rps = v.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = t.strip_prefix("50%") {
                run.p50 = parse_duration(v).unwrap_or_default();
            } else if let Some(v) = t.strip_prefix("99%") {
                run.p99 = parse_duration(v).unwrap_or_default();
            } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
                run.errors += v.trim().parse::<u64>().unwrap_or(0);
            } else if t.starts_with("Socket errors:") {
                run.errors += t
                    .split(',')
                    .filter_map(|p| p.split_whitespace().last().and_then(|n| n.parse::<u64>().ok()))
                    .sum::<u64>();
            }
        }
        return run;
    }
    builtin_load(url, headers, connections, seconds).await
}

async fn builtin_load(url: &str, headers: &[(String, String)], connections: u64, seconds: u64) -> Run {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, url, headers) = (client.clone(), url.to_string(), headers.to_vec());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut req = client.get(&url);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                match req.send().await {
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
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pick = |p: f64| all.get(((all.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or_default();
    Run {
        requests: all.len() as u64 + errors,
        rps: all.len() as f64 / started.elapsed().as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        errors,
    }
}

pub fn which(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub struct Row {
    pub name: String,
    pub latency: Run,
    pub throughput: Run,
}

pub async fn scenario(name: &str, url: &str, headers: &[(String, String)], connections: u64, seconds: u64) -> Row {
    let latency = load(url, headers, 1, seconds.min(3)).await;
    let throughput = load(url, headers, connections, seconds).await;
    Row { name: name.to_string(), latency, throughput }
}

pub fn print_rows(rows: &[Row]) {
    println!("| scenario | p50 @1 conn | p99 @1 conn | req/s @N conns | p50 @N | p99 @N | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            ms(r.latency.p50),
            ms(r.latency.p99),
            r.throughput.rps,
            ms(r.throughput.p50),
            ms(r.throughput.p99),
            r.latency.errors + r.throughput.errors
        );
    }
}

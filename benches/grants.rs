//! Access tokens of tokenvault's authorization server and many providers (issues 21 and 22):
//! `cargo bench --bench grants` (builds the release binary; runs for about two minutes).
//!
//! Starts the real `tokenvault` binary (as `benches/load.rs` does; `TV_SERVER_BINARY` names
//! another build, e.g. an earlier commit's, to measure it instead), seeds a user with the demo
//! provider and the loopback fake provider connected, an API key and two grants (one for
//! `/api/v1`, one for `/mcp`), and measures:
//! - (a) `GET /api/v1/connections` with the API key and with the grant's access token (same user,
//!   same data), with wrk: p50 and p99 at one connection, req/s at N — on a server with
//!   `cache_ttl = 0` first (every check reads the database, as every access-token check did before
//!   tokens were cached), then on one with the default cache;
//! - (b) the demo provider's `/account` through `call_api` on `POST /mcp` and through
//!   `/api/v1/services/demo/proxy/account`: sequential keep-alive requests, the two interleaved,
//!   p50 and p99 of each;
//! - (c) the token API and the proxy (fake provider) on a server with the default catalog and on
//!   one with 50 providers (every preset of the catalog, the fake, and copies of the fake), with
//!   wrk, the two servers measured one after the other.
//!
//! Knobs: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (50), BENCH_CALLS (2000, for (b)).

// The `it` test binary uses all of `common` (its dead-code check covers it); this uses a part.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports, dead_code)]
mod common;
// The load runner shared with `load.rs`; this uses a part.
#[path = "support/wrk.rs"]
#[allow(dead_code)]
mod wrk;
// The credentials and API key the benchmarks seed.
#[path = "support/seed.rs"]
mod seed;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokenvault::util::ExposeSecret;
use wrk::{env_num, load, ms, print_rows, scenario, which, Row};

const REDIRECT: &str = "http://127.0.0.1:7777/callback";

type Headers = Vec<(String, String)>;

fn bearer(token: &str) -> Headers {
    vec![("Authorization".to_string(), format!("Bearer {token}"))]
}

/// The fake provider as `ROCKET_PROVIDERS` names it, with `extra` more provider tables.
fn providers_env(fake: &str, extra: &[String]) -> String {
    let fake_table = common::server::fake_provider_env(fake);
    let inner = &fake_table[1..fake_table.len() - 1];
    let mut tables = vec![inner.to_string()];
    tables.extend(extra.iter().cloned());
    format!("{{{}}}", tables.join(","))
}

/// 49 provider tables beside the fake: every preset of the catalog (with the parameters those
/// that need them ask for), then copies of the fake named `fake2`…
fn full_catalog(fake: &str) -> Vec<String> {
    let table = regex::Regex::new(r"(?m)^\[([a-z0-9_-]+)\]$").unwrap();
    let catalog = include_str!("../src/oauth/presets.toml");
    let presets: Vec<&str> = table.captures_iter(catalog).map(|c| c.get(1).unwrap().as_str()).collect();
    let params = |name: &str| match name {
        "auth0" => r#",params={domain="acme.us.auth0.com"}"#,
        "keycloak" => r#",params={host="sso.example.com",realm="main"}"#,
        "okta" => r#",params={domain="acme.okta.com"}"#,
        "pipedrive" => r#",params={company_domain="acme"}"#,
        "salesforce" => r#",params={my_domain="acme"}"#,
        "shopify" => r#",params={shop="acme-store"}"#,
        "zendesk" => r#",params={subdomain="acme"}"#,
        _ => "",
    };
    let mut tables: Vec<String> =
        presets.iter().map(|name| format!("{name}={{preset=\"{name}\"{}}}", params(name))).collect();
    let copy = common::server::fake_provider_env(fake);
    let copy = &copy[copy.find("={").unwrap() + 1..copy.len() - 1];
    let mut n = 2;
    while tables.len() < 49 {
        tables.push(format!("fake{n}={copy}"));
        n += 1;
    }
    tables
}

async fn start(database_url: &str, fake: &str, dir: &std::path::Path, env: Headers) -> common::server::Server {
    let mut env = env;
    env.push(("ROCKET_DEMO_PROVIDER".into(), "true".into()));
    env.push(("ROCKET_DEMO_TOKEN_LIFETIME".into(), "86400".into()));
    let options = common::server::Options {
        profile: "release",
        public_url_is_base: true,
        env,
        ..common::server::Options::new(database_url, fake, dir)
    };
    common::server::start(options).await
}

fn hidden_fields(html: &str) -> BTreeMap<String, String> {
    let re = regex::Regex::new(r#"<input type="hidden" name="([a-z_]+)" value="([^"]*)""#).unwrap();
    re.captures_iter(html).map(|c| (c[1].to_string(), c[2].replace("&amp;", "&").replace("&#x3D;", "="))).collect()
}

/// Connect the demo provider (its consent page, account `alice@demo.example`) with `http`'s session.
async fn connect_demo(http: &reqwest::Client, base: &str) {
    let page = http.get(format!("{base}/services/demo/authorize")).send().await.unwrap().text().await.unwrap();
    let res = http.post(format!("{base}/services/demo/authorize")).form(&hidden_fields(&page)).send().await.unwrap();
    let consent_url = res.headers()["location"].to_str().unwrap().to_string();
    let consent = http.get(consent_url).send().await.unwrap().text().await.unwrap();
    let mut form = hidden_fields(&consent);
    form.insert("decision".into(), "allow".into());
    form.insert("account".into(), "alice@demo.example".into());
    let res = http.post(format!("{base}/demo/oauth2/authorize")).form(&form).send().await.unwrap();
    let callback = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(http.get(callback).send().await.unwrap().status(), 303, "the demo provider connected");
}

/// What the bench uses of a seeded server: an API key and the grants' access tokens of `bench`.
struct Seeded {
    key: String,
    api_token: String,
    mcp_token: String,
}

/// Sign `bench` up, connect the fake (and the demo provider when `demo`), make an API key, and
/// grants for `/api/v1` and `/mcp` as the consent page would (issued by the library, in units of
/// work of the database, as the CLI writes).
async fn seed(server: &common::server::Server, db: &tokenvault::db::Db, fake: &common::FakeProvider) -> Seeded {
    let http = common::server::browser();
    fake.with_state(|s| s.public_url = Some(server.base.clone()));
    common::server::sign_up(&http, &server.base, "bench").await;
    common::server::connect(&http, &server.base, &server.base, fake).await;
    connect_demo(&http, &server.base).await;
    let cipher = seed::cipher();
    let mut conn = db.conn().unwrap();
    let user = tokenvault::db::models::users::find_by_username(&mut conn, "bench").unwrap().unwrap();
    let key = seed::api_key(&mut conn, user.id);
    let scope = "connections:read proxy:read";
    let api_token = grant_token(&mut conn, &cipher, user.id, &format!("{}/api/v1", server.base), scope);
    let mcp_token = grant_token(&mut conn, &cipher, user.id, &format!("{}/mcp", server.base), scope);
    Seeded { key, api_token, mcp_token }
}

/// A grant of `user_id` to a newly registered client for `resource` with `scope`, and the access
/// token of its code's exchange.
fn grant_token(
    conn: &mut tokenvault::db::Conn,
    cipher: &tokenvault::vault::Cipher,
    user_id: i64,
    resource: &str,
    scope: &str,
) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    use tokenvault::authz::{clients, grants::GrantScope, tokens};
    use tokenvault::db::models::authz::ClientKind;
    let registration = clients::Registration {
        kind: ClientKind::Dynamic,
        name: "bench",
        redirect_uris: &[REDIRECT.into()],
        confidential: false,
        by: tokenvault::audit::Actor::System,
        address: None,
    };
    let client = tokenvault::changes::write(conn, cipher, 10, |tx| clients::register(tx, registration))
        .unwrap()
        .recorded_only()
        .client;
    let scope = GrantScope::requested(Some(scope), |_| true).unwrap();
    let verifier = format!("v{}", tokenvault::util::random_token(40));
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let allowed = tokens::Allowed {
        user_id,
        client: &client,
        scope: &scope,
        lifetime: 86_400,
        redirect_uri: REDIRECT,
        code_challenge: &challenge,
        resource,
        address: None,
    };
    let code = tokenvault::changes::write(conn, cipher, 10, |tx| tokens::allow(tx, allowed)).unwrap().recorded_only();
    let issued = tokenvault::changes::write(conn, cipher, 10, |tx| {
        tokens::exchange_code(tx, &client, code.expose_secret(), Some(REDIRECT), Some(&verifier), None, 86_400)
    })
    .unwrap()
    .recorded_only()
    .expect("tokens issued");
    issued.access.expose_secret().to_string()
}

/// An MCP session of the `/mcp` token: its id.
async fn mcp_session(http: &reqwest::Client, base: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    let res = http
        .post(format!("{base}/mcp"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.headers()["mcp-session-id"].to_str().unwrap().to_string()
}

/// p50 and p99 of sorted latencies.
fn percentiles(mut lat: Vec<Duration>) -> (Duration, Duration) {
    lat.sort();
    let pick = |p: usize| lat.get((lat.len().max(1) - 1) * p / 100).copied().unwrap_or_default();
    (pick(50), pick(99))
}

/// (b): `calls` requests of each kind, one at a time on one keep-alive connection each,
/// interleaved: the demo's `/account` through `call_api` on `/mcp` and through the proxy.
async fn mcp_vs_proxy(base: &str, seeded: &Seeded, calls: usize) -> [(Duration, Duration); 2] {
    let (mcp, proxy) = (reqwest::Client::new(), reqwest::Client::new());
    let session = mcp_session(&mcp, base, &seeded.mcp_token).await;
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "call_api", "arguments": {"service": "demo", "path": "account"}}})
    .to_string();
    let call_mcp = || async {
        let t = Instant::now();
        let res = mcp
            .post(format!("{base}/mcp"))
            .header("Authorization", format!("Bearer {}", seeded.mcp_token))
            .header("Accept", "application/json, text/event-stream")
            .header("Content-Type", "application/json")
            .header("Mcp-Session-Id", &session)
            .header("MCP-Protocol-Version", "2025-11-25")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let answer: Value = res.json().await.unwrap();
        let elapsed = t.elapsed();
        assert_eq!(answer["result"]["structuredContent"]["status"], 200, "{answer}");
        elapsed
    };
    let call_proxy = || async {
        let t = Instant::now();
        let res = proxy
            .get(format!("{base}/api/v1/services/demo/proxy/account"))
            .header("Authorization", format!("Bearer {}", seeded.key))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let _ = res.bytes().await.unwrap();
        let elapsed = t.elapsed();
        assert_eq!(status, 200);
        elapsed
    };
    let (mut through_mcp, mut through_proxy) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for i in 0..calls + 50 {
        let (m, p) = (call_mcp().await, call_proxy().await);
        if i >= 50 {
            // The first 50 of each warm up.
            through_mcp.push(m);
            through_proxy.push(p);
        }
    }
    [percentiles(through_mcp), percentiles(through_proxy)]
}

/// (c): the token API and the proxy of the fake on one server.
async fn hot_paths(label: &str, base: &str, key: &str, connections: u64, seconds: u64) -> Vec<Row> {
    vec![
        scenario(
            &format!("{label}: GET /api/v1/services/fake/token"),
            &format!("{base}/api/v1/services/fake/token"),
            &bearer(key),
            connections,
            seconds,
        )
        .await,
        scenario(
            &format!("{label}: GET /api/v1/services/fake/proxy/me"),
            &format!("{base}/api/v1/services/fake/proxy/me"),
            &bearer(key),
            connections,
            seconds,
        )
        .await,
    ]
}

/// A server with these `ROCKET_PROVIDERS` (and more `env`) on a database of its own in `dir`,
/// and what was seeded.
async fn seeded_server(
    fake: &common::FakeProvider,
    dir: &std::path::Path,
    providers: String,
    mut env: Headers,
) -> (common::server::Server, Seeded) {
    env.push(("ROCKET_PROVIDERS".into(), providers));
    std::fs::create_dir_all(dir).unwrap();
    let url = dir.join("bench.sqlite").to_string_lossy().to_string();
    let db = tokenvault::db::Db::open_sized(&url, 2).unwrap();
    seed::vault(&db);
    let server = start(&url, &fake.uri(), &dir.join("data"), env).await;
    let seeded = seed(&server, &db, fake).await;
    (server, seeded)
}

fn default_catalog(fake: &common::FakeProvider) -> String {
    providers_env(&fake.uri(), &[])
}

/// (a): `GET /api/v1/connections` with the API key and with the `/api/v1` grant's access token:
/// both one-connection runs first, then both N-connection runs (so that neither latency run
/// follows a throughput run).
async fn key_and_token(label: &str, base: &str, seeded: &Seeded, connections: u64, seconds: u64) -> Vec<Row> {
    let url = format!("{base}/api/v1/connections");
    let mut rows = Vec::new();
    for (name, token) in [("API key", &seeded.key), ("grant access token", &seeded.api_token)] {
        let latency = load(&url, &bearer(token), 1, seconds.min(3)).await;
        let name = format!("{label}: GET /api/v1/connections, {name}");
        rows.push(Row { name, latency, throughput: Default::default() });
    }
    for (row, token) in rows.iter_mut().zip([&seeded.key, &seeded.api_token]) {
        row.throughput = load(&url, &bearer(token), connections, seconds).await;
    }
    rows
}

#[tokio::main]
async fn main() {
    let seconds = env_num("BENCH_SECONDS", 5);
    let connections = env_num("BENCH_CONNECTIONS", 50);
    let calls = env_num("BENCH_CALLS", 2000) as usize;
    let tool = if which("wrk") { "wrk" } else { "built-in load loop (install wrk for standard figures)" };
    let binary = std::env::var("TV_SERVER_BINARY").unwrap_or_else(|_| "this build".into());
    println!("load tool: {tool}; {seconds} s per run; N = {connections} connections; server: {binary}");
    let fake = common::FakeProvider::start_unrecorded().await;
    let dir = tempfile::tempdir().unwrap();

    // Without caches first: every check reads the database, as every access-token check did
    // before tokens were cached.
    let uncached_env = vec![("ROCKET_CACHE_TTL".to_string(), "0".to_string())];
    let (uncached, seeded) =
        seeded_server(&fake, &dir.path().join("uncached"), default_catalog(&fake), uncached_env).await;
    let mut rows = key_and_token("cache_ttl = 0", &uncached.base, &seeded, connections, seconds).await;
    drop(uncached);
    let (one, seeded) = seeded_server(&fake, &dir.path().join("one"), default_catalog(&fake), Vec::new()).await;
    let base = one.base.clone();
    rows.extend(key_and_token("cached", &base, &seeded, connections, seconds).await);
    println!("\n## (a) An access token against an API key\n");
    print_rows(&rows);
    for (label, pair) in [("cache_ttl = 0", &rows[..2]), ("cached", &rows[2..])] {
        println!(
            "- {label}: access token / API key {:.2}x req/s; p50 @1 {} vs {}",
            pair[1].throughput.rps / pair[0].throughput.rps.max(1e-9),
            ms(pair[1].latency.p50),
            ms(pair[0].latency.p50)
        );
    }

    let [(mcp50, mcp99), (proxy50, proxy99)] = mcp_vs_proxy(&base, &seeded, calls).await;
    println!("\n## (b) call_api through /mcp against the proxy (demo provider, {calls} calls each)\n");
    println!("| path | p50 | p99 |\n| --- | ---: | ---: |");
    println!("| POST /mcp tools/call call_api demo account (access token) | {} | {} |", ms(mcp50), ms(mcp99));
    println!("| GET /api/v1/services/demo/proxy/account (API key) | {} | {} |", ms(proxy50), ms(proxy99));
    let added = mcp50.as_secs_f64() - proxy50.as_secs_f64();
    println!("\n- /mcp adds {:+.2} ms at p50 (target <= 1 ms)", added * 1000.0);

    let mut hot = hot_paths("default catalog", &base, &seeded.key, connections, seconds).await;
    drop(one);
    let full = providers_env(&fake.uri(), &full_catalog(&fake.uri()));
    let (fifty, seeded) = seeded_server(&fake, &dir.path().join("fifty"), full, Vec::new()).await;
    for service in ["zoom", "auth0", "fake14"] {
        let url = format!("{}/api/v1/services/{service}/token", fifty.base);
        let res = reqwest::Client::new().get(url).header("Authorization", format!("Bearer {}", seeded.key));
        let body: Value = res.send().await.unwrap().json().await.unwrap();
        assert_eq!(body["error"], "not_connected", "{service} is configured: {body}");
    }
    hot.extend(hot_paths("50 providers", &fifty.base, &seeded.key, connections, seconds).await);
    println!("\n## (c) The token API and the proxy with 50 providers configured\n");
    print_rows(&hot);
    println!(
        "\n- 50 providers / default: token API {:.2}x req/s, proxy {:.2}x req/s",
        hot[2].throughput.rps / hot[0].throughput.rps.max(1e-9),
        hot[3].throughput.rps / hot[1].throughput.rps.max(1e-9)
    );
    let errors: u64 = rows.iter().chain(&hot).map(|r| r.latency.errors + r.throughput.errors).sum();
    assert_eq!(errors, 0, "every measured request succeeds");
}

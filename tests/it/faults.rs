//! Fault injection at the token endpoint (SECURITY.md items 7–9) that wiremock cannot script: a
//! body trickled one byte per second and an endless body, from a raw TCP server; `/healthz`
//! staying fast while a callback or a refresh is stalled; and strict refresh-token rotation with
//! family revocation over several refreshes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{builder, flow_params, Agent, TestApp};
use rocket::http::Status;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `http_timeout` of every `TestApp`.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);
/// SECURITY.md item 7: the app answers within the timeout + 2 s.
const ANSWER_LIMIT: Duration = Duration::from_secs(3 + 2);
/// What "fast" means for `/healthz` while a provider call is stalled.
const HEALTHZ_LIMIT: Duration = Duration::from_millis(1000);

/// How the raw token endpoint answers.
#[derive(Clone, Debug)]
enum Mode {
    /// A complete JSON answer at once.
    Json(String),
    /// A JSON answer with a correct `Content-Length`, one byte per second.
    Trickle(String),
    /// A chunked body that never ends (bounded here at 64 MiB or 30 s).
    Endless,
}

/// A token endpoint on a raw TCP socket: reads one request per connection, answers per `mode`.
struct RawEndpoint {
    url: String,
    mode: Arc<Mutex<Mode>>,
    /// Requests received, as (grant_type, complete request body).
    requests: Arc<Mutex<Vec<(String, String)>>>,
    /// Connections whose answer has started (headers written).
    answering: Arc<AtomicUsize>,
}

fn token_json(access: &str, refresh: &str, expires_in: i64) -> String {
    json!({"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": expires_in,
           "scope": "read write"})
    .to_string()
}

impl RawEndpoint {
    async fn start(mode: Mode) -> RawEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answering = Arc::new(AtomicUsize::new(0));
        let (m, r, a) = (mode.clone(), requests.clone(), answering.clone());
        tokio::spawn(async move {
            // At most 100 connections; the task ends with the test's runtime.
            for _ in 0..100 {
                let Ok((socket, _)) = listener.accept().await else { return };
                tokio::spawn(serve(socket, m.clone(), r.clone(), a.clone()));
            }
        });
        RawEndpoint { url, mode, requests, answering }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn grant_types(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|(g, _)| g.clone()).collect()
    }

    /// Wait until `n` answers have started (so the app is now waiting on the body).
    async fn answering(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.answering.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the app never called the raw token endpoint");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Read one HTTP/1.1 request (headers and a `Content-Length` body).
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while buf.len() < header_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned())
}

async fn serve(
    mut socket: TcpStream,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    answering: Arc<AtomicUsize>,
) {
    let Some(body) = read_request(&mut socket).await else { return };
    let grant = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "grant_type")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    requests.lock().unwrap().push((grant, body));
    let mode = mode.lock().unwrap().clone();
    match mode {
        Mode::Json(json) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                json.len()
            );
            answering.fetch_add(1, Ordering::SeqCst);
            let _ = socket.write_all(format!("{head}{json}").as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        Mode::Trickle(json) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
                json.len()
            );
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            answering.fetch_add(1, Ordering::SeqCst);
            for byte in json.as_bytes() {
                if socket.write_all(std::slice::from_ref(byte)).await.is_err() || socket.flush().await.is_err() {
                    return; // the app hung up
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Mode::Endless => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            answering.fetch_add(1, Ordering::SeqCst);
            let mut chunk = format!("{:x}\r\n", 8192).into_bytes();
            chunk.extend(std::iter::repeat_n(b' ', 8192));
            chunk.extend_from_slice(b"\r\n");
            let _ = socket.write_all(b"2\r\n{\"\r\n").await;
            let started = Instant::now();
            for _ in 0..(64 * 1024 * 1024 / 8192) {
                if started.elapsed() > Duration::from_secs(30) || socket.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A `TestApp` whose fake provider's token endpoint is `raw`.
async fn app_with(raw: &RawEndpoint) -> TestApp {
    builder().provider("token_url", raw.url.as_str()).start().await
}

/// A callback with a fresh state and a code, as the provider would send it.
async fn callback_uri(app: &TestApp, agent: &Agent<'_>) -> String {
    let (state, challenge) = flow_params(&agent.start_flow("fake").await);
    let code = app.fake.issue_code(&challenge);
    format!("/services/fake/callback?code={code}&state={state}")
}

/// `/healthz`, one request every 200 ms from when `raw` starts answering until `stop` elapsed.
/// Returns each request's duration and when the last one ended.
async fn healthz_meanwhile(app: &TestApp, raw: &RawEndpoint, stop: Duration) -> (Vec<Duration>, Instant) {
    raw.answering(raw.answering.load(Ordering::SeqCst) + 1).await;
    let begun = Instant::now();
    let anon = app.agent();
    let mut took = Vec::new();
    while begun.elapsed() < stop {
        let t = Instant::now();
        let reply = anon.fetch("/healthz").await;
        took.push(t.elapsed());
        assert_eq!(reply.status, Status::Ok);
        assert_eq!(reply.text, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (took, Instant::now())
}

fn assert_fast(took: &[Duration], what: &str) {
    let slowest = took.iter().max().copied().unwrap_or_default();
    println!("{what}: {} /healthz answers, slowest {slowest:?}", took.len());
    assert!(took.len() >= 5, "too few /healthz probes while {what}: {took:?}");
    assert!(slowest < HEALTHZ_LIMIT, "/healthz was slow while {what}: {took:?}");
}

#[tokio::test]
async fn a_token_answer_trickled_at_one_byte_per_second_times_out_and_stores_nothing() {
    let raw = RawEndpoint::start(Mode::Trickle(token_json("AT-CANARY-trickle", "RT-CANARY-trickle", 3600))).await;
    let app = app_with(&raw).await;
    let alice = app.user("alice").await;
    let uri = callback_uri(&app, &alice).await;
    let started = Instant::now();
    let reply = alice.fetch(&uri).await;
    let took = started.elapsed();
    println!("trickled token answer: {} after {took:?}", reply.status);
    assert!(matches!(reply.status, Status::GatewayTimeout | Status::BadGateway), "{}: {}", reply.status, reply.text);
    assert!(took >= HTTP_TIMEOUT - Duration::from_millis(500), "gave up before the timeout: {took:?}");
    assert!(took < ANSWER_LIMIT, "answered after {took:?}");
    assert!(reply.text.contains("Fake Provider") && !reply.text.contains("CANARY"), "{}", reply.text);
    assert_eq!(app.connection_count(), 0, "nothing stored");
    assert_eq!(raw.grant_types(), vec!["authorization_code"], "one token call, no retry");
}

#[tokio::test]
async fn an_endless_token_answer_is_cut_off_and_stores_nothing() {
    let raw = RawEndpoint::start(Mode::Endless).await;
    let app = app_with(&raw).await;
    let alice = app.user("alice").await;
    let uri = callback_uri(&app, &alice).await;
    let started = Instant::now();
    let reply = alice.fetch(&uri).await;
    let took = started.elapsed();
    println!("endless token answer: {} after {took:?}", reply.status);
    assert_eq!(reply.status, Status::BadGateway, "{}", reply.text);
    assert!(took < HTTP_TIMEOUT, "the size cap, not the timeout, ends it: {took:?}");
    assert!(reply.text.contains("Fake Provider"));
    assert_eq!(app.connection_count(), 0, "nothing stored");
    assert_eq!(raw.grant_types(), vec!["authorization_code"]);
}

#[tokio::test]
async fn healthz_stays_fast_while_a_callback_waits_on_a_trickling_token_endpoint() {
    let raw = RawEndpoint::start(Mode::Trickle(token_json("AT-CANARY-trickle", "RT-CANARY-trickle", 3600))).await;
    let app = app_with(&raw).await;
    let alice = app.user("alice").await;
    let uri = callback_uri(&app, &alice).await;
    let started = Instant::now();
    let callback = async {
        let reply = alice.fetch(&uri).await;
        (reply, Instant::now())
    };
    let ((reply, callback_done), (took, probes_done)) =
        tokio::join!(callback, healthz_meanwhile(&app, &raw, HTTP_TIMEOUT - Duration::from_millis(800)));
    assert!(probes_done < callback_done, "the probes ran while the callback was stalled");
    assert_fast(&took, "a callback was stalled");
    assert!(matches!(reply.status, Status::GatewayTimeout | Status::BadGateway), "{}", reply.status);
    assert!(callback_done - started < ANSWER_LIMIT);
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn healthz_stays_fast_while_a_refresh_waits_on_a_trickling_token_endpoint() {
    // Connect through the raw endpoint with a token that is inside the refresh margin (60 s).
    let raw = RawEndpoint::start(Mode::Json(token_json("AT-CANARY-raw-1", "RT-CANARY-raw-1", 30))).await;
    let app = app_with(&raw).await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let before = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(before, ("AT-CANARY-raw-1".to_string(), Some("RT-CANARY-raw-1".to_string())));
    // The margin is at most half a token's lifetime: make the 30 s token one obtained long ago,
    // so it is due for a refresh (a token just issued would be used as it is).
    app.exec("UPDATE connections SET obtained_at = obtained_at - 3600");

    raw.set(Mode::Trickle(token_json("AT-CANARY-raw-2", "RT-CANARY-raw-2", 3600)));
    let started = Instant::now();
    let account = async {
        let reply = alice.fetch("/services/fake/account").await;
        (reply, Instant::now())
    };
    let ((reply, account_done), (took, probes_done)) =
        tokio::join!(account, healthz_meanwhile(&app, &raw, HTTP_TIMEOUT - Duration::from_millis(800)));
    assert!(probes_done < account_done, "the probes ran while the refresh was stalled");
    assert_fast(&took, "a refresh was stalled");
    assert_eq!(reply.status, Status::GatewayTimeout, "{}", reply.text);
    assert!(account_done - started < ANSWER_LIMIT, "answered after {:?}", account_done - started);
    assert_eq!(raw.grant_types(), vec!["authorization_code", "refresh_token"]);
    assert_eq!(app.stored_tokens("alice", "fake").unwrap(), before, "the tokens were kept");
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM connections WHERE status = 'degraded'"),
        1,
        "a timeout degrades it"
    );
    assert!(app.fake.requests_to("/account").await.is_empty(), "no API call without a usable token");

    // The mark released the lease: once the backoff step has passed, the next try refreshes at
    // once and works.
    app.exec("UPDATE connections SET next_attempt_at = 1");
    raw.set(Mode::Json(token_json("AT-CANARY-raw-3", "RT-CANARY-raw-3", 3600)));
    app.fake.with_state(|s| s.access_tokens.push("AT-CANARY-raw-3".into())); // the fake's API accepts it
    let refreshed = alice.fetch("/services/fake/account").await;
    assert_eq!(refreshed.status, Status::Ok, "{}", refreshed.text);
    assert!(refreshed.text.contains("fake-user-1"));
    assert_eq!(raw.grant_types(), vec!["authorization_code", "refresh_token", "refresh_token"]);
    let after = app.stored_tokens("alice", "fake").unwrap();
    assert_eq!(after, ("AT-CANARY-raw-3".to_string(), Some("RT-CANARY-raw-3".to_string())));
}

fn expire_tokens(app: &TestApp) {
    app.exec("UPDATE connections SET expires_at = 0");
}

/// The refresh tokens sent to the fake's token endpoint, in order.
async fn refresh_tokens_sent(app: &TestApp) -> Vec<String> {
    app.fake
        .requests_to("/token")
        .await
        .iter()
        .filter_map(|r| {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(&r.body).into_owned().collect();
            (form.get("grant_type").map(String::as_str) == Some("refresh_token"))
                .then(|| form.get("refresh_token").cloned().unwrap_or_default())
        })
        .collect()
}

#[tokio::test]
async fn strict_rotation_with_family_revocation_survives_successive_refreshes() {
    let app = TestApp::start().await; // the fake rotates refresh tokens and revokes the family on reuse
    app.fake.with_state(|s| s.refresh_delay = Some(Duration::from_millis(200)));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let mut history = vec![app.stored_tokens("alice", "fake").unwrap()];

    // Two proactive refreshes in a row, then one after a 401, then one under 10 concurrent requests.
    for step in 0..4 {
        match step {
            2 => app.fake.invalidate_access_tokens(),
            _ => expire_tokens(&app),
        }
        let pages = if step == 3 {
            futures_util::future::join_all((0..10).map(|_| alice.fetch("/services/fake/account"))).await
        } else {
            vec![alice.fetch("/services/fake/account").await]
        };
        for page in &pages {
            assert_eq!(page.status, Status::Ok, "step {step}: {}", page.text);
            assert!(page.text.contains("fake-user-1"), "step {step}: the account, not a reconnect page");
        }
        let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
        let (old_access, old_refresh) = history.last().unwrap().clone();
        assert_ne!(access, old_access, "step {step}: a new access token");
        let refresh = refresh.expect("a refresh token is kept");
        assert_ne!(Some(&refresh), old_refresh.as_ref(), "step {step}: the rotated refresh token is stored");
        assert!(app.fake.refresh_token_valid(&refresh), "step {step}: the stored refresh token is the live one");
        assert!(!app.fake.refresh_token_valid(old_refresh.as_deref().unwrap()), "step {step}: the old one is dead");
        history.push((access, Some(refresh)));
    }

    // Exactly one refresh per step, each with the then-newest refresh token: never a reuse, so the
    // provider never answered invalid_grant and never revoked the family.
    let sent = refresh_tokens_sent(&app).await;
    let expected: Vec<String> = history[..4].iter().map(|(_, r)| r.clone().unwrap()).collect();
    assert_eq!(sent, expected);
    let (latest_access, _) = history.last().unwrap();
    assert!(app.fake.with_state(|s| s.access_tokens.contains(latest_access)), "the family is alive");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM connections WHERE status = 'active'"), 1);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM connection_events WHERE kind = 'refresh' AND outcome = 'ok'"), 4);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM connection_events WHERE kind = 'refresh' AND outcome <> 'ok'"), 0);
    let settings = alice.fetch("/settings/oauth2").await;
    assert!(!settings.text.contains("invalid_grant") && !settings.text.contains("Reconnect required"));
}

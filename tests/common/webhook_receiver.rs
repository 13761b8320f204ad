//! A webhook receiver for tests: a plain HTTP/1.1 server on a random loopback port that records
//! every request (headers, raw body) and answers with scripted status codes, and a Standard
//! Webhooks verifier written here, independently of the app's signer (the `hmac` and `sha2`
//! crates directly).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Received {
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// What the receiver answered.
    pub answered: u16,
    /// Unix seconds when it arrived.
    pub at: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn id(&self) -> &str {
        self.header("webhook-id")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    /// Whether the signature verifies with `secret` (`whsec_…`): HMAC-SHA256 over
    /// `id.timestamp.body` with the base64-decoded key, compared with every `v1,` entry.
    pub fn verifies(&self, secret: &str) -> bool {
        let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.{}", self.id(), self.header("webhook-timestamp"), self.body).as_bytes());
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let ts: i64 = self.header("webhook-timestamp").parse().unwrap_or(0);
        (ts - self.at).abs() <= 300
            && self.header("webhook-signature").split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    /// Status codes for the next requests, in order; 200 once it is empty.
    script: Arc<Mutex<Vec<u16>>>,
}

/// A scripted "code" for never answering (the request is recorded, the connection held open).
pub const STALL: u16 = 0;
/// A scripted "code" for a 200 whose body never ends.
pub const ENDLESS: u16 = 1;

/// The URL of a receiver on `port`.
pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// A fresh `whsec_` secret (32 random bytes).
pub fn secret() -> String {
    format!("whsec_{}", tokenvault::util::random_key_b64(32))
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// On a given port (e.g. one an app was configured with before the receiver existed).
    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let receiver = Receiver { port, received: Default::default(), script: Default::default() };
        let r = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = r.clone();
                tokio::spawn(async move { r.serve(stream).await });
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        url(self.port)
    }

    /// Answer the next requests with these codes.
    pub fn answer(&self, codes: &[u16]) {
        self.script.lock().unwrap().extend_from_slice(codes);
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let count = self.count();
            if count >= n {
                return self.received();
            }
            assert!(std::time::Instant::now() < deadline, "{count} of {n} webhook requests after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serve(&self, mut stream: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let _request_line = lines.next();
                let headers: BTreeMap<String, String> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while buf.len() < end + 4 + len {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                let code = {
                    let mut script = self.script.lock().unwrap();
                    if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    }
                };
                let at = tokenvault::util::now();
                self.received.lock().unwrap().push(Received { headers, body, answered: code, at });
                match code {
                    STALL => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    ENDLESS => {
                        // 200, then a body that never ends (until the client hangs up).
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        while stream.write_all(&chunk).await.is_ok() {}
                        return;
                    }
                    _ => {}
                }
                let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A connection a tarpit accepted: when, and the `webhook-id` of its request once read.
pub type Held = (std::time::Instant, Option<String>);

/// A tarpit endpoint: it accepts every TCP connection, reads the request head, and never answers
/// (each connection is held open until the tarpit is dropped), as a receiver that hangs does.
pub struct Tarpit {
    pub port: u16,
    /// Each connection: when it was accepted, and the `webhook-id` of its request once read.
    seen: Arc<Mutex<Vec<Held>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tarpit {
    pub async fn start() -> Tarpit {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Held>>> = Default::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut held = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let index = {
                    let mut seen = record.lock().unwrap();
                    seen.push((std::time::Instant::now(), None));
                    seen.len() - 1
                };
                let record = record.clone();
                held.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).to_string();
                    let id = head
                        .split("\r\n")
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("webhook-id"))
                        .map(|(_, v)| v.trim().to_string());
                    record.lock().unwrap()[index].1 = id;
                    // Never answer; keep the connection until the tarpit goes.
                    std::future::pending::<()>().await;
                    drop(stream);
                });
            }
        });
        Tarpit { port, seen, task }
    }

    pub fn url(&self) -> String {
        url(self.port)
    }

    /// The connections accepted so far: when, and the `webhook-id` they carried.
    pub fn connections(&self) -> Vec<Held> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Tarpit {
    fn drop(&mut self) {
        self.task.abort();
    }
}

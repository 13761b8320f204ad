//! The MCP conformance suite (npm `@modelcontextprotocol/conformance`, run by Node.js 22; both
//! installed by `.ci/run`, see `common::node`) against `/mcp` (issue 22): the server scenarios that
//! apply to a server without the suite's fixture tools — `server-initialize`, `ping`,
//! `tools-list` and `dns-rebinding-protection`. Any failed check fails the test; the suite's
//! output is printed.
//!
//! The suite sends no credentials, so it talks to a small loopback proxy started here: it adds
//! `Authorization: Bearer` with an access token for `/mcp` (obtained through the authorization
//! server as the other MCP tests do; authorization stays on) and passes every other header —
//! `Host` and `Origin` included — through unchanged to the app. The app's `public_url` is the
//! proxy's address, as behind any reverse proxy, so the suite's own `Origin` is the app's origin
//! and `evil.example.com` is not.
//!
//! The other server scenarios need what tokenvault's MCP server does not offer: the suite's
//! fixture tools (`tools-call-*`, `json-schema-2020-12`, elicitation, sampling, progress and
//! logging through a fixture tool), resources, prompts, completions or `logging/setLevel`
//! (capabilities the server does not declare), or server-sent streams (`server-sse-*`: the
//! server answers POSTs with JSON and offers no GET stream).

use std::path::{Path, PathBuf};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rocket::http::{Header, Method};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{builder, TestApp};
use crate::mcp::mcp_token_at;

const SCENARIOS: [&str; 4] = ["server-initialize", "ping", "tools-list", "dns-rebinding-protection"];

/// Headers that belong to one hop (this proxy's connections), not to the request.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade", "authorization"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// One HTTP/1.1 request from the suite: method, target, headers, body; `None` at the end of the
/// connection.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, String, Vec<(String, String)>, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.ok().filter(|&n| n > 0)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse::<usize>().unwrap_or(0));
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await.ok()?;
    Some((method, target, headers, body))
}

/// Serve one connection: each request goes to the app with the bearer token added.
async fn proxy_connection(app: &TestApp, stream: TcpStream, token: &str) {
    let mut reader = BufReader::new(stream);
    while let Some((method, target, headers, body)) = read_request(&mut reader).await {
        let chunked = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
        assert!(!chunked, "the suite sent a chunked body, which this proxy does not read");
        let method: Method = method.parse().unwrap_or_else(|_| panic!("an HTTP method: {method}"));
        let mut req = app.client.req(method, target).body(body);
        for (name, value) in headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
            req = req.header(Header::new(name.clone(), value.clone()));
        }
        let res = req.header(Header::new("Authorization", format!("Bearer {token}"))).dispatch().await;
        let mut head = format!("HTTP/1.1 {}\r\n", res.status());
        for h in res.headers().iter().filter(|h| !hop_by_hop(h.name().as_str())) {
            head.push_str(&format!("{}: {}\r\n", h.name(), h.value()));
        }
        let body = res.into_bytes().await.unwrap_or_default();
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let stream = reader.get_mut();
        if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
            return;
        }
    }
}

/// The proxy: every connection of the suite, served side by side, until dropped.
async fn proxy(app: &TestApp, listener: &TcpListener, token: &str) {
    let mut open = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.expect("accept a connection");
                open.push(proxy_connection(app, stream, token));
            }
            Some(()) = open.next(), if !open.is_empty() => {}
        }
    }
}

/// Every `checks.json` under `dir` (the suite writes one per scenario run into a directory of its own).
fn checks_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(checks_files(&path));
        } else if path.file_name().is_some_and(|n| n == "checks.json") {
            found.push(path);
        }
    }
    found
}

/// Run one scenario against `url` (the proxy serving meanwhile); its checks and printed output.
async fn run_scenario(
    suite: &(PathBuf, PathBuf),
    url: &str,
    scenario: &str,
    serve: impl std::future::Future,
) -> (Vec<Value>, String) {
    let results = tempfile::tempdir().expect("a temp dir");
    let run = tokio::process::Command::new(&suite.0)
        .arg(&suite.1)
        .args(["server", "--url", url, "--scenario", scenario, "--output-dir"])
        .arg(results.path())
        .current_dir(results.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::select! {
        out = tokio::time::timeout(std::time::Duration::from_secs(120), run) => {
            out.unwrap_or_else(|_| panic!("{scenario} did not finish within 120 s")).expect("run the suite")
        }
        _ = serve => unreachable!("the proxy serves until dropped"),
    };
    let output = format!(
        "$ conformance server --url {url} --scenario {scenario} ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{output}");
    let files = checks_files(results.path());
    assert_eq!(files.len(), 1, "one checks.json for {scenario}:\n{output}");
    let checks: Vec<Value> = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).expect("checks.json is JSON");
    assert!(out.status.success(), "the suite reported failures in {scenario}:\n{output}");
    (checks, output)
}

#[tokio::test]
async fn the_mcp_conformance_suite_passes_the_server_scenarios_that_apply() {
    let Some(suite) = crate::common::node::conformance_suite("the MCP conformance test") else { return };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
    let public_url = format!("http://{}", listener.local_addr().unwrap());
    let app = builder().set("public_url", public_url.clone()).start().await;
    let alice = app.user("alice").await;
    let token = mcp_token_at(&app, &alice, "connections:read proxy:read", &public_url).await;
    let url = format!("{public_url}/mcp");
    for scenario in SCENARIOS {
        let (checks, output) = run_scenario(&suite, &url, scenario, proxy(&app, &listener, &token)).await;
        let failed: Vec<&Value> = checks.iter().filter(|c| c["status"] == "FAILURE").collect();
        assert!(failed.is_empty(), "{scenario}: failed checks {failed:#?}\n{output}");
        assert!(checks.iter().any(|c| c["status"] == "SUCCESS"), "{scenario}: no check passed\n{output}");
        assert!(!output.contains(&token), "the token reached the suite's output");
    }
}

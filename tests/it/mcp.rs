//! The MCP server at `/mcp` (issue 22, section 2): the Streamable HTTP transport (initialize and
//! version negotiation, sessions, ping, notifications, JSON-RPC errors, Origin checks), only
//! `/mcp` access tokens accepted, the tools filtered and checked by the grant, `call_api` through
//! the proxy, and a tool error with a connect link when the service is not connected.

use rocket::http::{ContentType, Header, Status};
use serde_json::{json, Value};

use crate::common::{builder, Agent, TestApp, PUBLIC_URL};
use crate::oauth_server::{authorize_url, consent, exchange, pkce, register, REDIRECT};

/// A full flow for the `/mcp` resource with `scope`: the access token.
pub(crate) async fn mcp_token(app: &TestApp, user: &Agent<'_>, scope: &str) -> String {
    mcp_token_at(app, user, scope, PUBLIC_URL).await
}

/// [`mcp_token`] for an app whose `public_url` is `public_url`.
pub(crate) async fn mcp_token_at(app: &TestApp, user: &Agent<'_>, scope: &str, public_url: &str) -> String {
    let client_id = register(app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let mcp = format!("{public_url}/mcp");
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", scope), ("resource", &mcp)]);
    let (code, _) = consent(user, &url, |_| {}).await;
    let (status, tokens) = exchange(app, &client_id, &code, &verifier, &[("resource", &mcp)]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_string()
}

struct Answer {
    status: Status,
    session: Option<String>,
    challenge: Option<String>,
    text: String,
    json: Value,
}

/// POST `body` to `/mcp` with these headers.
async fn post(app: &TestApp, token: Option<&str>, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut req = app.client.post("/mcp").header(ContentType::JSON).body(body);
    req = req.header(Header::new("Accept", "application/json, text/event-stream"));
    if let Some(t) = token {
        req = req.header(Header::new("Authorization", format!("Bearer {t}")));
    }
    for (k, v) in headers {
        req = req.header(Header::new(k.to_string(), v.to_string()));
    }
    let res = req.dispatch().await;
    let status = res.status();
    let session = res.headers().get_one("Mcp-Session-Id").map(str::to_string);
    let challenge = res.headers().get_one("WWW-Authenticate").map(str::to_string);
    let text = res.into_string().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, session, challenge, text, json }
}

fn initialize(version: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
    .to_string()
}

/// Initialize: the session id.
pub(crate) async fn session(app: &TestApp, token: &str) -> String {
    let a = post(app, Some(token), &[], &initialize("2025-11-25")).await;
    assert_eq!(a.status, Status::Ok, "{}", a.text);
    a.session.expect("a session id")
}

/// A request in the session: the answer's JSON.
async fn rpc(app: &TestApp, token: &str, session: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string();
    let a = post(app, Some(token), &[("Mcp-Session-Id", session), ("MCP-Protocol-Version", "2025-11-25")], &body).await;
    assert_eq!(a.status, Status::Ok, "{}", a.text);
    assert_eq!(a.json["id"], 7);
    a.json
}

pub(crate) async fn call(app: &TestApp, token: &str, session: &str, tool: &str, args: Value) -> Value {
    let answer = rpc(app, token, session, "tools/call", json!({"name": tool, "arguments": args})).await;
    answer["result"].clone()
}

#[tokio::test]
async fn initialize_negotiates_the_version_and_sessions_are_required() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let token = mcp_token(&app, &alice, "connections:read proxy:read").await;
    for (asked, given) in [("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"), ("2024-01-01", "2025-11-25")] {
        let a = post(&app, Some(&token), &[], &initialize(asked)).await;
        assert_eq!(a.status, Status::Ok, "{}", a.text);
        assert_eq!(a.json["result"]["protocolVersion"], given);
        assert_eq!(a.json["result"]["serverInfo"]["name"], "tokenvault");
        assert!(a.json["result"]["capabilities"]["tools"].is_object());
        assert!(a.session.is_some());
    }
    let sid = session(&app, &token).await;
    let ping = json!({"jsonrpc": "2.0", "id": "p", "method": "ping"}).to_string();
    // No session: 400; an unknown one: 404; the right one: an empty result.
    assert_eq!(post(&app, Some(&token), &[], &ping).await.status, Status::BadRequest);
    assert_eq!(post(&app, Some(&token), &[("Mcp-Session-Id", "nope")], &ping).await.status, Status::NotFound);
    let a = post(&app, Some(&token), &[("Mcp-Session-Id", &sid)], &ping).await;
    assert_eq!((a.status, a.json["result"].clone(), a.json["id"].clone()), (Status::Ok, json!({}), json!("p")));
    // An unsupported protocol version header: 400.
    let a = post(&app, Some(&token), &[("Mcp-Session-Id", &sid), ("MCP-Protocol-Version", "1999-01-01")], &ping).await;
    assert_eq!(a.status, Status::BadRequest);
    // A notification: 202, no body.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    let a = post(&app, Some(&token), &[("Mcp-Session-Id", &sid)], &note).await;
    assert_eq!((a.status, a.text.as_str()), (Status::Accepted, ""));
    // GET: no stream offered.
    let res = app.client.get("/mcp").header(Header::new("Authorization", format!("Bearer {token}"))).dispatch().await;
    assert_eq!(res.status(), Status::MethodNotAllowed);
    // DELETE ends the session; it is then unknown.
    let del = |sid: String| {
        app.client
            .delete("/mcp")
            .header(Header::new("Authorization", format!("Bearer {token}")))
            .header(Header::new("Mcp-Session-Id", sid))
            .dispatch()
    };
    assert_eq!(del(sid.clone()).await.status(), Status::NoContent);
    assert_eq!(post(&app, Some(&token), &[("Mcp-Session-Id", &sid)], &ping).await.status, Status::NotFound);
    // Another grant's token cannot use (or end) a session.
    let other = mcp_token(&app, &alice, "connections:read").await;
    let sid = session(&app, &token).await;
    assert_eq!(post(&app, Some(&other), &[("Mcp-Session-Id", &sid)], &ping).await.status, Status::NotFound);
}

#[tokio::test]
async fn bad_messages_get_json_rpc_errors() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let token = mcp_token(&app, &alice, "connections:read").await;
    let sid = session(&app, &token).await;
    let h = [("Mcp-Session-Id", sid.as_str())];
    let a = post(&app, Some(&token), &h, "{not json").await;
    assert_eq!(
        (a.status, a.json["error"]["code"].clone(), a.json["id"].clone()),
        (Status::BadRequest, json!(-32700), Value::Null)
    );
    for bad in [
        r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
        r#"{"id":1,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        "3",
    ] {
        let a = post(&app, Some(&token), &h, bad).await;
        assert_eq!(
            (a.status, a.json["error"]["code"].clone()),
            (Status::BadRequest, json!(-32600)),
            "{bad}: {}",
            a.text
        );
    }
    let a = rpc(&app, &token, &sid, "no/such", json!({})).await;
    assert_eq!(a["error"]["code"], -32601);
    let a = rpc(&app, &token, &sid, "tools/call", json!({"name": "no_such_tool", "arguments": {}})).await;
    assert_eq!(a["error"]["code"], -32602);
    let a = rpc(&app, &token, &sid, "tools/call", json!({"name": "list_connections", "arguments": 3})).await;
    assert_eq!(a["error"]["code"], -32602);
    // Too large a message: 413.
    let big =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"x":"{}"}}}}"#, "a".repeat(20 * 1024 * 1024));
    assert_eq!(post(&app, Some(&token), &h, &big).await.status, Status::PayloadTooLarge);
}

#[tokio::test]
async fn only_mcp_access_tokens_are_accepted_and_foreign_origins_refused() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let init = initialize("2025-11-25");
    // No token: 401 saying where the metadata is.
    let a = post(&app, None, &[], &init).await;
    assert_eq!(a.status, Status::Unauthorized);
    let metadata = format!(r#"resource_metadata="{PUBLIC_URL}/.well-known/oauth-protected-resource/mcp""#);
    assert!(a.challenge.as_deref().is_some_and(|c| c.contains(&metadata)), "{:?}", a.challenge);
    // An API key, and a grant's token for /api/v1: refused.
    let key = alice.api_key("k").await;
    let a = post(&app, Some(&key), &[], &init).await;
    assert_eq!(a.status, Status::Unauthorized);
    assert!(a.challenge.unwrap().contains("invalid_token"));
    let client_id = register(&app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let (code, _) = consent(&alice, &authorize_url(&client_id, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let (_, tokens) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    let api_token = tokens["access_token"].as_str().unwrap();
    assert_eq!(post(&app, Some(api_token), &[], &init).await.status, Status::Unauthorized, "an /api/v1 token");
    let token = mcp_token(&app, &alice, "connections:read").await;
    assert_eq!(post(&app, Some(&token), &[], &init).await.status, Status::Ok);
    // Origin: our own is fine, a foreign one (DNS rebinding) is 403 — before anything else.
    assert_eq!(post(&app, Some(&token), &[("Origin", PUBLIC_URL)], &init).await.status, Status::Ok);
    for origin in ["http://evil.example", "http://localhost:9999", "null"] {
        let a = post(&app, Some(&token), &[("Origin", origin)], &init).await;
        assert_eq!(a.status, Status::Forbidden, "{origin}");
        assert!(a.session.is_none());
        assert_eq!(post(&app, None, &[("Origin", origin)], &init).await.status, Status::Forbidden);
    }
}

#[tokio::test]
async fn tools_follow_the_grant_and_call_api_goes_through_the_proxy() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let names = |list: &Value| -> Vec<String> {
        list["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
    };
    // connections:read only: no call_api.
    let reader = mcp_token(&app, &alice, "connections:read").await;
    let sid = session(&app, &reader).await;
    assert_eq!(names(&rpc(&app, &reader, &sid, "tools/list", json!({})).await), ["list_connections"]);
    let refused = call(&app, &reader, &sid, "call_api", json!({"service": "fake", "path": "files"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    // get_account calls the provider with the user's token and returns its whole answer: a read
    // of the provider's API, which connections:read does not allow.
    let refused = call(&app, &reader, &sid, "get_account", json!({"service": "fake"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    // proxy:read on fake only.
    let token = mcp_token(&app, &alice, "proxy:read service:fake").await;
    let sid = session(&app, &token).await;
    let tools = rpc(&app, &token, &sid, "tools/list", json!({})).await;
    assert_eq!(names(&tools), ["call_api"], "get_account needs connections:read too");
    let refused = call(&app, &token, &sid, "get_account", json!({"service": "fake"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(refused["structuredContent"]["error"], "forbidden_scope", "{refused}");
    assert!(tools["result"]["tools"][0]["inputSchema"]["properties"]["path"].is_object());
    let before = app.fake.all_requests().await.len();
    let got =
        call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "files", "query": {"limit": "2"}}))
            .await;
    assert_eq!(got["isError"], false, "{got}");
    let out = &got["structuredContent"];
    assert_eq!(out["status"], 201, "{out}");
    assert_eq!(out["body"]["method"], "GET");
    assert_eq!(out["body"]["path"], "/api/files", "{out}");
    assert_eq!(out["body"]["query"], "limit=2");
    assert!(out["headers"]["content-type"].as_str().is_some_and(|t| t.contains("json")), "{out}");
    assert!(out["headers"].get("x-provider-header").is_none(), "only allowed headers");
    assert!(out["headers"].get("set-cookie").is_none(), "only allowed headers");
    assert_eq!(app.fake.all_requests().await.len(), before + 1);
    // Outside the grant: a POST, another service — refused before anything is sent.
    let post_refused = call(
        &app,
        &token,
        &sid,
        "call_api",
        json!({"service": "fake", "method": "POST", "path": "files", "body": {"a": 1}}),
    )
    .await;
    assert_eq!(post_refused["isError"], true);
    assert_eq!(post_refused["structuredContent"]["error"], "forbidden_scope", "{post_refused}");
    let other = call(&app, &token, &sid, "call_api", json!({"service": "demo", "path": "x"})).await;
    assert_eq!(other["isError"], true);
    assert_eq!(app.fake.all_requests().await.len(), before + 1, "nothing else reached the provider");
    let denied = call(&app, &token, &sid, "list_connections", json!({})).await;
    assert_eq!(denied["isError"], true, "connections:read not granted");
    // proxy:write: a POST with a JSON body goes through.
    let writer = mcp_token(&app, &alice, "proxy:write connections:read service:fake").await;
    let sid = session(&app, &writer).await;
    let listed = rpc(&app, &writer, &sid, "tools/list", json!({})).await;
    assert_eq!(names(&listed), ["list_connections", "call_api", "get_account"], "both granted: get_account too");
    let posted = call(
        &app,
        &writer,
        &sid,
        "call_api",
        json!({"service": "fake", "method": "POST", "path": "files", "body": {"a": 1}}),
    )
    .await;
    assert_eq!(posted["structuredContent"]["body"]["method"], "POST", "{posted}");
    assert_eq!(posted["structuredContent"]["body"]["body"], r#"{"a":1}"#);
    // Audited as the API's proxy calls are.
    app.state().audit.flush().await;
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'proxy.call'"), 2, "the two calls sent");
}

#[tokio::test]
async fn no_provider_token_in_any_answer_and_a_connect_link_when_not_connected() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let token = mcp_token(&app, &alice, "connections:read proxy:write").await;
    let sid = session(&app, &token).await;
    let mut answers = vec![rpc(&app, &token, &sid, "tools/list", json!({})).await];
    let listed = call(&app, &token, &sid, "list_connections", json!({})).await;
    assert_eq!(listed["structuredContent"]["connections"][0]["service"], "fake", "{listed}");
    assert_eq!(listed["structuredContent"]["connections"][0]["status"], "active");
    answers.push(listed);
    let account = call(&app, &token, &sid, "get_account", json!({"service": "fake"})).await;
    assert_eq!(account["isError"], false, "{account}");
    answers.push(account);
    let mut called = call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "files"})).await;
    assert_eq!(called["isError"], false, "{called}");
    // The fake provider echoes the request's headers (its own Authorization among them): that is
    // the provider's answer, not tokenvault's words; everything else must be free of tokens.
    called["structuredContent"]["body"]["headers"] = Value::Null;
    called["content"] = Value::Null;
    answers.push(called);
    app.state().audit.flush().await;
    let audited = app.count(
        "SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'proxy.call' AND detail LIKE '%get_account%' AND actor LIKE 'grant:%'",
    );
    assert_eq!(audited, 1, "get_account is audited as the grant's");
    // Not connected: a tool error with the Redirector's link for alice.
    let missing = call(&app, &token, &sid, "call_api", json!({"service": "demo", "path": "me"})).await;
    assert_eq!(missing["isError"], true, "{missing}");
    let link = missing["structuredContent"]["connect_url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{PUBLIC_URL}/services/demo/authorize")), "{link}");
    assert!(missing["content"][0]["text"].as_str().unwrap().contains(&link));
    answers.push(missing);
    for a in &answers {
        let text = a.to_string();
        assert!(!text.contains("AT-CANARY") && !text.contains("RT-CANARY"), "a provider token in {text}");
        assert!(!text.contains(&token), "the access token echoed");
    }
    // The link works for alice, and not for another signed-in user.
    let path = link.strip_prefix(PUBLIC_URL).unwrap();
    assert_eq!(alice.fetch(path).await.status, Status::Ok);
    let bob = app.user("bob").await;
    assert_eq!(bob.fetch(path).await.status, Status::Forbidden);
}

#[tokio::test]
async fn after_the_user_connects_the_same_call_succeeds() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    // A grant for every service, before any connection: it covers the one connected later.
    let token = mcp_token(&app, &alice, "proxy:read").await;
    let sid = session(&app, &token).await;
    let args = json!({"service": "fake", "path": "files"});
    let first = call(&app, &token, &sid, "call_api", args.clone()).await;
    assert_eq!(first["isError"], true, "{first}");
    assert_eq!(first["structuredContent"]["error"], "not_connected");
    let link = first["structuredContent"]["connect_url"].as_str().unwrap();
    assert!(link.contains("/services/fake/authorize?for_user="), "{link}");
    alice.connect("fake").await;
    let again = call(&app, &token, &sid, "call_api", args).await;
    assert_eq!(again["isError"], false, "{again}");
    assert_eq!(again["structuredContent"]["status"], 201);
}

/// A `proxy:read` grant calls nothing through `call_api` on a provider whose API acts on a GET
/// (`read_methods_are_safe = false`), and the consent page says so for that service (issue 22).
#[tokio::test]
async fn call_api_under_proxy_read_is_refused_where_reads_are_not_safe() {
    let app = builder().provider("read_methods_are_safe", false).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let (_, challenge) = pkce();
    let page = alice.fetch(&authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "proxy:read")])).await;
    assert!(page.text.contains(r#"id="grant-service-fake-no-read""#), "{}", page.text);
    let token = mcp_token(&app, &alice, "proxy:read service:fake").await;
    let sid = session(&app, &token).await;
    let before = app.fake.all_requests().await.len();
    let refused = call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "files"})).await;
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(refused["structuredContent"]["error"], "forbidden_scope", "{refused}");
    assert_eq!(app.fake.all_requests().await.len(), before, "nothing reached the provider");
    let writer = mcp_token(&app, &alice, "proxy:write service:fake").await;
    let sid = session(&app, &writer).await;
    let got = call(&app, &writer, &sid, "call_api", json!({"service": "fake", "path": "files"})).await;
    assert_eq!(got["isError"], false, "{got}");
}

/// `call_api` passes back at most `mcp_max_response_bytes` (1 MiB by default): a 2 MiB answer is
/// a tool error saying its size and to ask for less, not a 2 MiB JSON value held and sent twice;
/// a smaller answer still comes back (issue 22).
#[tokio::test]
async fn call_api_refuses_an_answer_larger_than_its_own_cap() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let token = mcp_token(&app, &alice, "proxy:read service:fake").await;
    let sid = session(&app, &token).await;
    let big = call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "big-json"})).await;
    assert_eq!(big["isError"], true, "a 2 MiB answer");
    assert_eq!(big["structuredContent"]["error"], "provider_response_too_large", "{big}");
    let message = big["structuredContent"]["message"].as_str().unwrap();
    assert!(message.contains("2097153 bytes") && message.contains("1048576"), "{message}");
    assert!(message.contains("narrower request"), "{message}");
    assert!(big.to_string().len() < 4096, "the answer is not in the error");
    let small = call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "big"})).await;
    assert_eq!(small["isError"], false, "64 KiB is under the cap");
    assert_eq!(small["structuredContent"]["body"].as_str().map(str::len), Some(64 * 1024));

    let app = builder().set("mcp_max_response_bytes", 4 * 1024 * 1024).start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let token = mcp_token(&app, &alice, "proxy:read service:fake").await;
    let sid = session(&app, &token).await;
    let big = call(&app, &token, &sid, "call_api", json!({"service": "fake", "path": "big-json"})).await;
    assert_eq!(big["isError"], false, "raised cap");
    assert_eq!(big["structuredContent"]["body"].as_array().map(Vec::len), Some(1 << 17));
}

/// `call_api` refuses a body with GET or HEAD (invalid params), as the API's GET proxy never
/// forwards one: a `proxy:read` grant sends no body anywhere (issue 22).
#[tokio::test]
async fn call_api_refuses_a_body_with_get_or_head() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let token = mcp_token(&app, &alice, "proxy:write service:fake").await;
    let sid = session(&app, &token).await;
    let before = app.fake.all_requests().await.len();
    for method in ["GET", "HEAD", "get"] {
        let args = json!({"service": "fake", "method": method, "path": "files", "body": {"a": 1}});
        let a = rpc(&app, &token, &sid, "tools/call", json!({"name": "call_api", "arguments": args})).await;
        assert_eq!(a["error"]["code"], -32602, "{method}: {a}");
        assert!(a["error"]["message"].as_str().unwrap().contains("body"), "{a}");
    }
    assert_eq!(app.fake.all_requests().await.len(), before, "nothing reached the provider");
    let args = json!({"service": "fake", "method": "GET", "path": "files", "body": null});
    let ok = call(&app, &token, &sid, "call_api", args).await;
    assert_eq!(ok["isError"], false, "a null body is no body: {ok}");
}

/// Initialize with `version` and these client `capabilities`: the session id.
async fn session_with(app: &TestApp, token: &str, version: &str, capabilities: Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": capabilities, "clientInfo": {"name": "test", "version": "1"}}});
    let a = post(app, Some(token), &[], &body.to_string()).await;
    assert_eq!(a.status, Status::Ok, "{}", a.text);
    a.session.expect("a session id")
}

/// MCP 2025-11-25 URL-mode elicitation: a client that declared `elicitation.url` gets the connect
/// link as a `URLElicitationRequiredError` (-32042); any other (no capability, form mode only,
/// 2025-06-18) the tool error with the same link. The link is for the grant's user only, and once
/// she connects, the same call succeeds in the same session.
#[tokio::test]
async fn url_mode_elicitation_when_the_client_declared_it_else_a_tool_error() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let token = mcp_token(&app, &alice, "connections:read proxy:read").await;
    let url_mode = json!({"elicitation": {"url": {}}});
    let elicits = session_with(&app, &token, "2025-11-25", url_mode.clone()).await;
    let others = [
        session(&app, &token).await,
        session_with(&app, &token, "2025-11-25", json!({"elicitation": {}})).await,
        session_with(&app, &token, "2025-11-25", json!({"elicitation": {"form": {}, "url": null}})).await,
        session_with(&app, &token, "2025-06-18", url_mode).await,
    ];
    let args = json!({"service": "fake", "path": "files"});
    let mut links = Vec::new();
    for (tool, args) in [("call_api", args.clone()), ("get_account", json!({"service": "fake"}))] {
        let answer = rpc(&app, &token, &elicits, "tools/call", json!({"name": tool, "arguments": args})).await;
        assert!(answer.get("result").is_none(), "{answer}");
        assert_eq!(answer["error"]["code"], -32042, "{answer}");
        let e = &answer["error"]["data"]["elicitations"];
        assert_eq!(e.as_array().map(Vec::len), Some(1), "{answer}");
        assert_eq!(e[0]["mode"], "url");
        assert!(e[0]["elicitationId"].as_str().is_some_and(|id| id.len() >= 16), "{answer}");
        assert!(e[0]["message"].as_str().is_some_and(|m| m.contains("not connected")), "{answer}");
        links.push(e[0]["url"].as_str().unwrap().to_string());
    }
    let link = links[0].clone();
    assert!(link.starts_with(&format!("{PUBLIC_URL}/services/fake/authorize?for_user=")), "{link}");
    assert_eq!(links[1], link);
    let ids: Vec<Value> = {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let a = rpc(&app, &token, &elicits, "tools/call", json!({"name": "call_api", "arguments": args})).await;
            ids.push(a["error"]["data"]["elicitations"][0]["elicitationId"].clone());
        }
        ids
    };
    assert_ne!(ids[0], ids[1], "a fresh elicitationId each time");
    for sid in &others {
        let refused = call(&app, &token, sid, "call_api", args.clone()).await;
        assert_eq!(refused["isError"], true, "{refused}");
        assert_eq!(refused["structuredContent"]["connect_url"], link.as_str(), "the same link as a tool error");
    }
    // Something no link fixes stays a tool error, also for the client that declared it.
    let unknown = call(&app, &token, &elicits, "call_api", json!({"service": "nope", "path": "x"})).await;
    assert_eq!(unknown["isError"], true, "{unknown}");
    // The link is alice's only.
    let path = link.strip_prefix(PUBLIC_URL).unwrap();
    let bob = app.user("bob").await;
    assert_eq!(bob.fetch(path).await.status, Status::Forbidden);
    assert_eq!(alice.fetch(path).await.status, Status::Ok);
    alice.connect("fake").await;
    let again = call(&app, &token, &elicits, "call_api", args).await;
    assert_eq!(again["isError"], false, "{again}");
    assert_eq!(again["structuredContent"]["status"], 201);
}

/// Sessions live in one process's memory (README, docs/multi-instance.md): a client whose
/// session this instance does not know — another instance's, or one forgotten by a restart —
/// gets 404 with a JSON-RPC error, and, as the specification says it must, initializes again
/// without a session id, which works with the same access token.
#[tokio::test]
async fn an_unknown_session_is_404_and_the_client_initializes_again() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let token = mcp_token(&app, &alice, "connections:read").await;
    let elsewhere = tokenvault::util::random_token(24);
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string();
    let headers = [("Mcp-Session-Id", elsewhere.as_str()), ("MCP-Protocol-Version", "2025-11-25")];
    let a = post(&app, Some(&token), &headers, &list).await;
    assert_eq!(a.status, Status::NotFound, "{}", a.text);
    assert_eq!((a.json["jsonrpc"].clone(), a.json["id"].clone()), (json!("2.0"), json!(3)), "{}", a.text);
    assert!(a.json["error"]["code"].is_i64());
    assert!(a.session.is_none());
    // A notification and DELETE with it: 404 too.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    assert_eq!(post(&app, Some(&token), &headers, &note).await.status, Status::NotFound);
    let del = app
        .client
        .delete("/mcp")
        .header(Header::new("Authorization", format!("Bearer {token}")))
        .header(Header::new("Mcp-Session-Id", elsewhere.clone()))
        .dispatch()
        .await;
    assert_eq!(del.status(), Status::NotFound);
    // The client starts over: initialize without the old id; the new session works.
    let fresh = session(&app, &token).await;
    assert_ne!(fresh, elsewhere);
    let listed = rpc(&app, &token, &fresh, "tools/list", json!({})).await;
    assert_eq!(listed["result"]["tools"][0]["name"], "list_connections");
    // An initialize that still carries the unknown id is a new session too (the id is ignored).
    let again = post(&app, Some(&token), &[("Mcp-Session-Id", &elsewhere)], &initialize("2025-11-25")).await;
    assert_eq!(again.status, Status::Ok, "{}", again.text);
    assert!(again.session.is_some_and(|s| s != elsewhere));
}

//! The MCP server at `/mcp` (issue 22): the Streamable HTTP transport of the Model Context
//! Protocol (2025-11-25, and 2025-06-18), protected by tokenvault's authorization server — only
//! its access tokens bound to the `/mcp` resource are accepted (no API keys, no `/api/v1` token).
//!
//! - `POST /mcp`: one JSON-RPC message; a request is answered in JSON, a notification or a
//!   response with 202. `initialize` negotiates the version and issues an `Mcp-Session-Id`, which
//!   every later message must carry (unknown or ended: 404; missing: 400).
//! - `GET /mcp`: 405 (no server-initiated stream is offered). `DELETE /mcp`: ends the session.
//! - `Origin`, when sent, must be the app's own origin or one of `mcp_allowed_origins` (a
//!   browser-based client, answered with CORS headers by `crate::web::cors`): else 403
//!   (DNS-rebinding protection).
//! - A client that declared URL-mode elicitation (2025-11-25) gets a refusal that carries a
//!   connect link as a `URLElicitationRequiredError` (-32042); others get the tool error.
//! - Sessions live in this process's memory: a client sent to another instance gets 404 for its
//!   session and initializes again, as the specification says (docs/multi-instance.md).
//!
//! Tools: `list_connections`, `call_api` (through the same proxy code as `/api/v1/…/proxy`:
//! `routes::api::proxy_target` and `forward_audited`), `get_account`. `tools/list` shows only
//! those the grant allows; each call is checked against the grant again. A provider token never
//! appears in an answer.

use std::collections::HashMap;
use std::sync::Mutex;

use rocket::data::{Data, ToByteUnit};
use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};
use rocket::{delete, get, post, routes, Route, State};
use serde_json::{json, Value};

use crate::auth::api_key::{ApiUser, Capability, Via};
use crate::authz::Resource;
use crate::db::models::connections::{self, Which};
use crate::error::AppError;
use crate::oauth::access::{connection_set, pick, Named};
use crate::oauth::proxy::Forward;
use crate::routes::api::{forward_audited, proxy_target, ChoiceQuery};
use crate::routes::view::ConnectionView;
use crate::state::AppState;
use crate::util::{now, random_token, rfc3339};

pub fn routes() -> Vec<Route> {
    routes![post_mcp, get_mcp, delete_mcp]
}

/// The protocol versions spoken, newest first (the first is offered to a client asking another).
pub const VERSIONS: [&str; 2] = ["2025-11-25", "2025-06-18"];
/// The most sessions kept at once (the oldest idle are dropped beyond).
const MAX_SESSIONS: usize = 10_000;
/// The most sessions one grant (or key) keeps at once: its oldest is dropped beyond, so one grant
/// cannot push everyone else's out of [`MAX_SESSIONS`].
const MAX_SESSIONS_PER_GRANT: usize = 16;
/// Seconds a session may stay idle.
const SESSION_IDLE: i64 = 3600;
/// The largest JSON-RPC message accepted (a `call_api` body is capped by the proxy's own limit).
const EXTRA_BYTES: usize = 64 * 1024;

struct Session {
    grant_id: i64,
    version: &'static str,
    last_used: i64,
    /// The order sessions were opened in (ties of `last_used` within a second).
    opened: u64,
    /// The client declared URL-mode elicitation (`capabilities.elicitation.url`, 2025-11-25).
    url_elicitation: bool,
}

static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The live sessions of this process (managed state). A session is bound to the grant that
/// opened it: another grant's token presenting its id gets 404.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn open(&self, grant_id: i64, version: &'static str, url_elicitation: bool) -> String {
        let id = random_token(24);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = now();
        map.retain(|_, s| s.last_used > at - SESSION_IDLE);
        let own = map.iter().filter(|(_, s)| s.grant_id == grant_id);
        if own.clone().count() >= MAX_SESSIONS_PER_GRANT {
            if let Some(oldest) = own.min_by_key(|(_, s)| (s.last_used, s.opened)).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        let opened = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(id.clone(), Session { grant_id, version, last_used: at, opened, url_elicitation });
        id
    }

    /// The session's negotiated version, if `id` is a live session of `grant_id`.
    fn use_session(&self, id: &str, grant_id: i64) -> Option<&'static str> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = now();
        let s = map.get_mut(id).filter(|s| s.grant_id == grant_id && s.last_used > at - SESSION_IDLE)?;
        s.last_used = at;
        Some(s.version)
    }

    /// Whether the session's client declared URL-mode elicitation.
    fn url_elicitation(&self, id: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id).is_some_and(|s| s.url_elicitation)
    }

    fn end(&self, id: &str, grant_id: i64) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(id).is_some_and(|s| s.grant_id == grant_id) {
            map.remove(id);
            true
        } else {
            false
        }
    }
}

/// What `/mcp` reads of a request's headers.
pub struct McpHeaders {
    authorization: Option<String>,
    origin: Option<String>,
    session: Option<String>,
    version: Option<String>,
    address: Option<String>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for McpHeaders {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let h = |name: &str| req.headers().get_one(name).map(str::to_string);
        Outcome::Success(McpHeaders {
            authorization: h("Authorization"),
            origin: h("Origin"),
            session: h("Mcp-Session-Id"),
            version: h("MCP-Protocol-Version"),
            address: req.client_ip().map(|ip| ip.to_string()),
        })
    }
}

/// An answer of `/mcp`: a status, headers and maybe a JSON body.
pub struct McpAnswer {
    status: Status,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
}

impl McpAnswer {
    fn json(status: Status, body: Value) -> McpAnswer {
        McpAnswer { status, headers: Vec::new(), body: Some(body) }
    }

    fn empty(status: Status) -> McpAnswer {
        McpAnswer { status, headers: Vec::new(), body: None }
    }

    /// A JSON-RPC error (`id` null when the request's could not be read).
    fn error(status: Status, id: Value, code: i64, message: &str) -> McpAnswer {
        McpAnswer::json(status, json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
    }

    fn header(mut self, name: &'static str, value: String) -> McpAnswer {
        self.headers.push((name, value));
        self
    }
}

impl<'r> Responder<'r, 'static> for McpAnswer {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        let mut b = Response::build();
        b.status(self.status);
        for (name, value) in self.headers {
            b.header(Header::new(name, value));
        }
        b.raw_header("Cache-Control", "no-store");
        if let Some(body) = self.body {
            let text = body.to_string();
            b.header(ContentType::JSON).sized_body(text.len(), std::io::Cursor::new(text));
        }
        Ok(b.finalize())
    }
}

/// 403 unless `origin` (when sent) is the app's own origin or one of `mcp_allowed_origins`
/// (`crate::web::cors`).
fn origin_refused(app: &AppState, origin: Option<&str>) -> Option<McpAnswer> {
    let origin = origin?;
    (!crate::web::cors::mcp_origin_allowed(&app.settings, origin))
        .then(|| McpAnswer::error(Status::Forbidden, Value::Null, -32600, "Forbidden: this Origin is not allowed."))
}

/// The grant's user, from an access token bound to `/mcp`; else the 401 (or 503) to answer.
async fn authenticate(app: &AppState, headers: &McpHeaders) -> Result<ApiUser, McpAnswer> {
    let metadata = Resource::Mcp.metadata_url(&app.settings);
    let token = headers
        .authorization
        .as_deref()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let refused = |error: &str| {
        McpAnswer::json(
            Status::Unauthorized,
            json!({"error": "unauthorized", "message": "An access token of this tokenvault for /mcp is required."}),
        )
        .header("WWW-Authenticate", format!("Bearer {error}resource_metadata=\"{metadata}\""))
    };
    let Some(token) = token else { return Err(refused("")) };
    if !app.settings.authz.enabled {
        return Err(refused("error=\"invalid_token\", "));
    }
    let (resource, ip) = (Resource::Mcp.url(&app.settings), headers.address.clone());
    match crate::authz::tokens::check_access(&app.db, &app.caches, &token, &resource, ip).await {
        Ok(Ok(holder)) => Ok(ApiUser::from(&holder)),
        Ok(Err(_)) => Err(refused("error=\"invalid_token\", ")),
        Err(e) => {
            tracing::error!(error = %e, "access token lookup failed: answering 503");
            Err(McpAnswer::json(Status::ServiceUnavailable, json!({"error": "unavailable"})))
        }
    }
}

fn grant_id(user: &ApiUser) -> i64 {
    match user.via {
        Via::Grant(id) | Via::Key(id) => id,
    }
}

#[get("/mcp")]
async fn get_mcp(app: &State<AppState>, headers: McpHeaders) -> McpAnswer {
    if let Some(refused) = origin_refused(app, headers.origin.as_deref()) {
        return refused;
    }
    if let Err(refused) = authenticate(app, &headers).await {
        return refused;
    }
    McpAnswer::empty(Status::MethodNotAllowed).header("Allow", "POST, DELETE".into())
}

#[delete("/mcp")]
async fn delete_mcp(app: &State<AppState>, sessions: &State<Sessions>, headers: McpHeaders) -> McpAnswer {
    if let Some(refused) = origin_refused(app, headers.origin.as_deref()) {
        return refused;
    }
    let user = match authenticate(app, &headers).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let Some(id) = headers.session.as_deref() else {
        return McpAnswer::error(Status::BadRequest, Value::Null, -32600, "Mcp-Session-Id is required.");
    };
    if sessions.end(id, grant_id(&user)) {
        McpAnswer::empty(Status::NoContent)
    } else {
        McpAnswer::error(Status::NotFound, Value::Null, -32001, "Session not found.")
    }
}

#[post("/mcp", data = "<body>")]
async fn post_mcp(app: &State<AppState>, sessions: &State<Sessions>, headers: McpHeaders, body: Data<'_>) -> McpAnswer {
    if let Some(refused) = origin_refused(app, headers.origin.as_deref()) {
        return refused;
    }
    let user = match authenticate(app, &headers).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let limit = app.settings.api.proxy_max_request_bytes + EXTRA_BYTES;
    let bytes = match body.open(limit.bytes()).into_bytes().await {
        Ok(capped) if capped.is_complete() => capped.into_inner(),
        Ok(_) => return McpAnswer::error(Status::PayloadTooLarge, Value::Null, -32600, "The message is too large."),
        Err(_) => return McpAnswer::error(Status::BadRequest, Value::Null, -32700, "Parse error."),
    };
    let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
        return McpAnswer::error(Status::BadRequest, Value::Null, -32700, "Parse error: the body is not JSON.");
    };
    let Some(object) = message.as_object() else {
        return McpAnswer::error(Status::BadRequest, Value::Null, -32600, "Invalid Request: one JSON-RPC object.");
    };
    let id = object.get("id").cloned();
    let id_ok = id.as_ref().is_none_or(|i| i.is_string() || i.is_i64() || i.is_u64());
    if object.get("jsonrpc") != Some(&json!("2.0")) || !id_ok {
        return McpAnswer::error(Status::BadRequest, id.unwrap_or(Value::Null), -32600, "Invalid Request.");
    }
    let method = object.get("method").and_then(Value::as_str);
    if let Some(v) = headers.version.as_deref() {
        if !VERSIONS.contains(&v) {
            let text = format!("Unsupported MCP-Protocol-Version; supported: {}.", VERSIONS.join(", "));
            return McpAnswer::error(Status::BadRequest, id.unwrap_or(Value::Null), -32600, &text);
        }
    }
    if method == Some("initialize") {
        return initialize(sessions, &user, id, &message);
    }
    let Some(session) = headers.session.as_deref() else {
        return McpAnswer::error(Status::BadRequest, id.unwrap_or(Value::Null), -32600, "Mcp-Session-Id is required.");
    };
    if sessions.use_session(session, grant_id(&user)).is_none() {
        return McpAnswer::error(Status::NotFound, id.unwrap_or(Value::Null), -32001, "Session not found.");
    }
    // A notification, or the client's answer to a request of ours: accepted, nothing to say.
    let (Some(id), Some(method)) = (id, method) else {
        if method.is_none() && !(object.contains_key("result") || object.contains_key("error")) {
            return McpAnswer::error(Status::BadRequest, Value::Null, -32600, "Invalid Request.");
        }
        return McpAnswer::empty(Status::Accepted);
    };
    let params = object.get("params").cloned().unwrap_or(Value::Null);
    let answer = match method {
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": tools_for(&user)})),
        "tools/call" => match call_tool(app, &user, &params, headers.address.clone()).await {
            Ok(result) if sessions.url_elicitation(session) => match url_elicitation_required(&result) {
                Some(error) => return McpAnswer::json(Status::Ok, json!({"jsonrpc": "2.0", "id": id, "error": error})),
                None => Ok(result),
            },
            other => other,
        },
        _ => Err((-32601, format!("Method not found: {}", crate::util::capped(method, 100)))),
    };
    let body = match answer {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
    };
    McpAnswer::json(Status::Ok, body)
}

/// `initialize`: the version negotiated, a session opened for the grant (with whether the client
/// declared URL-mode elicitation), the server's capabilities.
fn initialize(sessions: &Sessions, user: &ApiUser, id: Option<Value>, message: &Value) -> McpAnswer {
    let Some(id) = id else {
        return McpAnswer::error(Status::BadRequest, Value::Null, -32600, "initialize is a request (an id).");
    };
    let asked = message.pointer("/params/protocolVersion").and_then(Value::as_str);
    let Some(asked) = asked else {
        return McpAnswer::error(Status::Ok, id, -32602, "Invalid params: protocolVersion is required.");
    };
    let version = VERSIONS.iter().find(|v| **v == asked).copied().unwrap_or(VERSIONS[0]);
    // URL-mode elicitation is 2025-11-25's; declared by a non-null `elicitation.url`.
    let url_mode =
        version == VERSIONS[0] && message.pointer("/params/capabilities/elicitation/url").is_some_and(|u| !u.is_null());
    let session = sessions.open(grant_id(user), version, url_mode);
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}},
        "serverInfo": {"name": "tokenvault", "title": "tokenvault", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Call the APIs of the services the user connected in tokenvault. list_connections \
                         says what is connected; call_api calls a provider's API with the user's stored \
                         token (never shown); get_account shows the connected account.",
    });
    McpAnswer::json(Status::Ok, json!({"jsonrpc": "2.0", "id": id, "result": result})).header("Mcp-Session-Id", session)
}

/// The tools, each with the capabilities its grant needs (all of them).
fn all_tools() -> Vec<(&'static [Capability], Value)> {
    vec![
        (
            &[Capability::ConnectionsRead],
            json!({
                "name": "list_connections",
                "title": "List connections",
                "description": "The services the user connected in tokenvault, with each account and its health \
                                (ok, expiring, reconnect_required…) and granted scopes. Never a token.",
                "inputSchema": {"type": "object", "properties": {
                    "service": {"type": "string", "description": "Only this service's connections."}
                }, "additionalProperties": false},
                "annotations": {"readOnlyHint": true},
            }),
        ),
        (
            &[Capability::ProxyRead],
            json!({
                "name": "call_api",
                "title": "Call a provider's API",
                "description": "Call the API of a connected service with the user's stored token (refreshed when \
                                needed; never shown). `path` is under the provider's API base URL. Answers the \
                                provider's status, its allowed headers and its body (JSON when it is JSON). When \
                                the service is not connected, the error carries a link the user opens to connect it.",
                "inputSchema": {"type": "object", "properties": {
                    "service": {"type": "string", "description": "The service's name in tokenvault (see list_connections)."},
                    "account": {"type": "string", "description": "The provider's account id, when the user connected several."},
                    "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], "default": "GET"},
                    "path": {"type": "string", "description": "The path under the provider's API base, e.g. `user` or `/files/list`."},
                    "query": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Query parameters."},
                    "body": {"description": "A JSON body (sent as application/json)."}
                }, "required": ["service", "path"], "additionalProperties": false},
            }),
        ),
        // It calls the provider with the user's token and hands back the provider's whole answer:
        // a read of the provider's API (`proxy:read`), and it names the connection
        // (`connections:read`): both are needed, and only a grant of both lists it.
        (
            &[Capability::ConnectionsRead, Capability::ProxyRead],
            json!({
                "name": "get_account",
                "title": "Get the connected account",
                "description": "The provider's account the user connected for a service (id, name, email and the \
                                provider's full answer), as tokenvault's account page shows it.",
                "inputSchema": {"type": "object", "properties": {
                    "service": {"type": "string", "description": "The service's name in tokenvault."},
                    "account": {"type": "string", "description": "The provider's account id, when the user connected several."}
                }, "required": ["service"], "additionalProperties": false},
                "annotations": {"readOnlyHint": true},
            }),
        ),
    ]
}

/// The tools `user`'s grant allows.
fn tools_for(user: &ApiUser) -> Vec<Value> {
    let allowed = |needs: &[Capability]| needs.iter().all(|c| user.scope.allows_capability(*c));
    all_tools().into_iter().filter(|(needs, _)| allowed(needs)).map(|(_, t)| t).collect()
}

type ToolOutcome = Result<Value, (i64, String)>;

/// A tool's answer: its JSON as text and as structured content.
fn tool_result(value: Value, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": value.to_string()}], "structuredContent": value, "isError": is_error})
}

/// A tool's refusal: an `isError` result saying why, with where the user can fix it.
fn tool_error(app: &AppState, user: &ApiUser, service: Option<&str>, e: AppError) -> Value {
    let mut out = json!({"error": e.code(), "message": e.user_message()});
    let link = match (&e, service) {
        (AppError::NotConnected(_) | AppError::ReconnectRequired(_), Some(s)) => Some(connect_link(app, user, s)),
        (AppError::InsufficientScope { upgrade_url, .. }, _) => upgrade_url.clone(),
        _ => None,
    };
    if let Some(link) = link {
        out["connect_url"] = json!(link);
        out["message"] = json!(format!(
            "{} Ask the user to open {link} (signed in to tokenvault as {}) to connect it, then call again.",
            e.user_message(),
            user.username
        ));
    }
    tool_result(out, true)
}

/// For a client that declared URL-mode elicitation: a tool refusal carrying a link for the user
/// (not connected, reconnect required, a permission missing) as the `URLElicitationRequiredError`
/// (-32042) of MCP 2025-11-25, the link as its one elicitation. The server offers no stream
/// (`GET /mcp` is 405), so no `notifications/elicitation/complete` follows: the client calls
/// again once the user says they are done, as the specification allows.
fn url_elicitation_required(result: &Value) -> Option<Value> {
    let refused = result.get("structuredContent").filter(|_| result["isError"] == true)?;
    let url = refused.get("connect_url")?.as_str()?;
    let message = refused["message"].as_str().unwrap_or("Open the link to continue in tokenvault.");
    Some(json!({
        "code": URL_ELICITATION_REQUIRED,
        "message": message,
        "data": {"elicitations": [{
            "mode": "url",
            "elicitationId": random_token(16),
            "url": url,
            "message": message,
        }]},
    }))
}

/// The JSON-RPC error code of `URLElicitationRequiredError` (MCP 2025-11-25).
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

/// The Redirector's page for `service`, for the grant's user only (`for_user`: another signed-in user
/// is refused).
pub fn connect_link(app: &AppState, user: &ApiUser, service: &str) -> String {
    app.settings.url(&format!("/services/{service}/authorize?for_user={}", user.id))
}

fn arg<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, (i64, String)> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err((-32602, format!("Invalid params: `{name}` must be a string."))),
    }
}

async fn call_tool(app: &AppState, user: &ApiUser, params: &Value, address: Option<String>) -> ToolOutcome {
    let name = params.get("name").and_then(Value::as_str).ok_or((-32602, "Invalid params: `name`.".to_string()))?;
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    if !args.is_object() {
        return Err((-32602, "Invalid params: `arguments` must be an object.".into()));
    }
    let Some((needs, _)) = all_tools().into_iter().find(|(_, t)| t["name"] == name) else {
        return Err((-32602, format!("Unknown tool: {}", crate::util::capped(name, 100))));
    };
    if let Err(e) = needs.iter().try_for_each(|c| user.require(*c, None)) {
        return Ok(tool_error(app, user, None, e));
    }
    match name {
        "list_connections" => list_connections(app, user, arg(&args, "service")?).await,
        "get_account" => {
            let service = arg(&args, "service")?.ok_or((-32602, "Invalid params: `service` is required.".into()))?;
            get_account(app, user, service, arg(&args, "account")?, address).await
        }
        _ => call_api(app, user, &args, address).await,
    }
}

async fn list_connections(app: &AppState, user: &ApiUser, service: Option<&str>) -> ToolOutcome {
    let uid = user.id;
    let rows = match app.db.run(move |conn| Ok(connections::list_for_user(conn, uid)?)).await {
        Ok(rows) => rows,
        Err(e) => return Ok(tool_error(app, user, None, e)),
    };
    let catalog = app.catalog.current();
    let list: Vec<Value> = rows
        .iter()
        .filter(|c| user.scope.allows_service(&c.service) && service.is_none_or(|s| s == c.service))
        .filter(|c| !catalog.is_disabled(&c.service))
        .map(|c| {
            let v = ConnectionView::of(c, &catalog);
            json!({
                "connection_id": v.id,
                "service": v.service,
                "display_name": v.display_name,
                "account_id": v.account_id(),
                "account_label": v.account_label,
                "status": v.health.status().as_str(),
                "status_reason": v.health.reason(),
                "scopes": v.scopes,
                "expires_at": v.expires_at.map(rfc3339),
                "has_refresh_token": v.has_refresh_token,
            })
        })
        .collect();
    let services: Vec<&str> =
        catalog.iter().map(|p| p.name.as_str()).filter(|s| user.scope.allows_service(s)).collect();
    Ok(tool_result(json!({"connections": list, "services": services}), false))
}

/// The account page's data; audited as a `proxy.call` (the stored token was used at the
/// provider's account API), with `"tool": "get_account"`.
async fn get_account(
    app: &AppState,
    user: &ApiUser,
    service: &str,
    account: Option<&str>,
    address: Option<String>,
) -> ToolOutcome {
    let needs = [Capability::ConnectionsRead, Capability::ProxyRead];
    if let Err(e) = needs.iter().try_for_each(|c| user.require(*c, Some(service))) {
        return Ok(tool_error(app, user, Some(service), e));
    }
    // A disabled provider: `service_disabled`, as the API answers.
    let p = match crate::routes::api::provider(app, service) {
        Ok(p) => p,
        Err(e) => return Ok(tool_error(app, user, Some(service), e)),
    };
    if p.account_url.is_none() {
        let e = AppError::BadRequest(format!("{} has no account API configured.", p.display_name));
        return Ok(tool_error(app, user, Some(service), e));
    }
    let set = match connection_set(app.tokens(), user.id, &p.name).await {
        Ok(set) => set,
        Err(e) => return Ok(tool_error(app, user, Some(service), e.into_app_error(&p))),
    };
    let row = match pick(&set, Named { account: account.filter(|a| !a.is_empty()), connection: None }, &p) {
        Ok(row) => row,
        Err(e) => return Ok(tool_error(app, user, Some(service), e)),
    };
    let fetched = crate::oauth::account::fetch_account(&app.access(), Which::id(user.id, row.id), &p)
        .await
        .map_err(|e| e.into_app_error(&p));
    let status = match &fetched {
        Ok(_) => 200,
        Err(e) => e.status().code,
    };
    app.audit.read(
        crate::routes::api::read_entry(crate::audit::Kind::ProxyCall, user, &row, address)
            .with("method", "GET")
            .with("path", "(account)")
            .with("tool", "get_account")
            .with("status", status),
    );
    match fetched {
        Ok(info) => Ok(tool_result(
            json!({
                "service": p.name,
                "connection_id": row.id,
                "account_id": info.id,
                "name": info.name,
                "email": info.email,
                "account": info.json,
            }),
            false,
        )),
        Err(e) => Ok(tool_error(app, user, Some(service), e)),
    }
}

async fn call_api(app: &AppState, user: &ApiUser, args: &Value, address: Option<String>) -> ToolOutcome {
    let service = arg(args, "service")?.ok_or((-32602, "Invalid params: `service` is required.".into()))?;
    let path = arg(args, "path")?.ok_or((-32602, "Invalid params: `path` is required.".into()))?;
    let method = arg(args, "method")?.unwrap_or("GET").to_ascii_uppercase();
    let method = match method.as_str() {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" => reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| (-32602, "Invalid params: `method`.".to_string()))?,
        _ => return Err((-32602, "Invalid params: `method` must be GET, HEAD, POST, PUT, PATCH or DELETE.".into())),
    };
    let query = match args.get("query") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in map {
                match v {
                    Value::String(s) => q.append_pair(k, s),
                    Value::Number(_) | Value::Bool(_) => q.append_pair(k, &v.to_string()),
                    _ => return Err((-32602, "Invalid params: `query` values must be strings.".into())),
                };
            }
            Some(q.finish()).filter(|q| !q.is_empty())
        }
        Some(_) => return Err((-32602, "Invalid params: `query` must be an object.".into())),
    };
    let (body, headers) = match args.get("body") {
        None | Some(Value::Null) => (Vec::new(), Vec::new()),
        Some(v) => (v.to_string().into_bytes(), vec![("Content-Type".to_string(), "application/json".to_string())]),
    };
    if !body.is_empty() && matches!(method, reqwest::Method::GET | reqwest::Method::HEAD) {
        // The API's GET proxy never forwards a body; nor does call_api (proxy:read would carry one).
        return Err((-32602, "Invalid params: `body` is not sent with GET or HEAD; use POST, PUT or PATCH.".into()));
    }
    if body.len() > app.settings.api.proxy_max_request_bytes {
        let e = AppError::PayloadTooLarge { limit: app.settings.api.proxy_max_request_bytes };
        return Ok(tool_error(app, user, Some(service), e));
    }
    let choice = ChoiceQuery { account: arg(args, "account")?.map(str::to_string), ..ChoiceQuery::default() };
    let (p, which, row) = match proxy_target(app, user, service, &method, &choice).await {
        Ok(target) => target,
        Err(e) => return Ok(tool_error(app, user, Some(service), e)),
    };
    let raw_path = path.trim_start_matches('/');
    let segments: Vec<&str> = if raw_path.is_empty() { Vec::new() } else { raw_path.split('/').collect() };
    let forward = Forward { method, raw_path, segments, query: query.as_deref(), headers, body };
    let answer = match forward_audited(app, user, &p, which, &row, forward, address).await {
        Ok(answer) => answer,
        Err(e) => return Ok(tool_error(app, user, Some(service), e)),
    };
    let status = answer.response.status().as_u16();
    let bytes = match read_capped(answer.response, app.settings.api.mcp_max_response_bytes).await {
        Ok(bytes) => bytes,
        Err(why) => {
            let message = format!("{}: {why}", p.display_name);
            return Ok(tool_result(json!({"error": "provider_response_too_large", "message": message}), true));
        }
    };
    let headers: serde_json::Map<String, Value> =
        answer.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v))).collect();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(json) => json,
        Err(_) => match String::from_utf8(bytes) {
            Ok(text) => Value::String(text),
            Err(e) => {
                use base64::Engine;
                json!({"base64": base64::engine::general_purpose::STANDARD.encode(e.into_bytes())})
            }
        },
    };
    Ok(tool_result(json!({"status": status, "headers": headers, "body": body}), false))
}

/// The provider's answer, whole, when it is at most `limit` bytes (`mcp_max_response_bytes`:
/// `call_api` holds it and sends it twice); else why not, saying its size. Refused before reading
/// when its declared length is larger; never parsed when larger.
async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let too_large = |size: String| {
        format!(
            "the provider's answer is {size}, larger than call_api passes back ({limit} bytes, \
             mcp_max_response_bytes): make a narrower request (a smaller page, fewer fields, a filter)"
        )
    };
    if let Some(declared) = response.content_length().filter(|n| *n > limit as u64) {
        return Err(too_large(format!("{declared} bytes")));
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > limit => {
                return Err(too_large(format!("more than {limit} bytes")));
            }
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(format!("reading the provider's answer failed: {}", e.without_url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Sessions, VERSIONS};

    #[test]
    fn a_session_is_bound_to_its_grant_and_ends_once() {
        let sessions = Sessions::default();
        let id = sessions.open(7, VERSIONS[1], false);
        assert_eq!(sessions.use_session(&id, 7), Some("2025-06-18"));
        assert_eq!(sessions.use_session(&id, 8), None, "another grant's token");
        assert_eq!(sessions.use_session("nope", 7), None);
        assert!(!sessions.end(&id, 8), "another grant cannot end it");
        assert!(sessions.end(&id, 7));
        assert!(!sessions.end(&id, 7));
        assert_eq!(sessions.use_session(&id, 7), None);
        let (a, b) = (sessions.open(1, VERSIONS[0], false), sessions.open(1, VERSIONS[0], true));
        assert!(!sessions.url_elicitation(&a) && sessions.url_elicitation(&b));
        assert_ne!(a, b, "fresh random ids");
        assert!(a.len() >= 32);
    }

    /// A grant opening many sessions drops its own oldest only.
    #[test]
    fn one_grant_cannot_evict_the_others_sessions() {
        let sessions = Sessions::default();
        let others = sessions.open(2, VERSIONS[0], false);
        let first = sessions.open(1, VERSIONS[0], false);
        sessions.0.lock().unwrap().get_mut(&first).unwrap().last_used -= 10;
        let mut own = Vec::new();
        for _ in 0..super::MAX_SESSIONS_PER_GRANT * 4 {
            own.push(sessions.open(1, VERSIONS[0], false));
        }
        assert_eq!(sessions.use_session(&others, 2), Some(VERSIONS[0]), "another grant's session stays");
        assert_eq!(sessions.use_session(&first, 1), None, "its oldest went first");
        let kept = sessions.0.lock().unwrap().values().filter(|s| s.grant_id == 1).count();
        assert_eq!(kept, super::MAX_SESSIONS_PER_GRANT);
        assert!(own.iter().rev().take(super::MAX_SESSIONS_PER_GRANT).all(|id| sessions.use_session(id, 1).is_some()));
    }

    #[test]
    fn idle_sessions_expire() {
        let sessions = Sessions::default();
        let id = sessions.open(1, VERSIONS[0], false);
        sessions.0.lock().unwrap().get_mut(&id).unwrap().last_used -= super::SESSION_IDLE + 1;
        assert_eq!(sessions.use_session(&id, 1), None);
    }
}

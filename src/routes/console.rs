//! Launch Test: the console of a connection (`/services/<service>/console`, issue 21). The user
//! picks one of their connections of the service, a method, a path under the provider's
//! `api_base_url`, query parameters and an optional JSON body; **Send** goes through the API
//! proxy's own code (`routes::api::forward_audited_by` → `oauth::proxy::forward`: the same
//! allowlists, size caps, refresh on 401, and a `proxy.call` audit entry with `"via": "console"`)
//! and the page shows the provider's status, the allowed headers, the time taken and the body.
//! **Copy as curl** shows the same call through `/api/v1/…/proxy/…` with `$TOKENVAULT_API_KEY`.
//! No token reaches the page: the connection's tokens (before and after a refresh) are blanked
//! out of whatever the provider answered.

use std::sync::Arc;
use std::time::Instant;

use rocket::form::FromForm;
use rocket::http::Status;
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;
use url::Url;

use crate::audit::Actor;
use crate::auth::{Csrf, CsrfField, CurrentUser};
use crate::db::models::connections::{Connection, Which};
use crate::error::{AppError, AppResult};
use crate::oauth::access::{connection_set, pick, Named};
use crate::oauth::providers::{method_takes_body, Provider, API_METHODS};
use crate::oauth::proxy::{self, Forward, Typed};
use crate::oauth::store::open_tokens;
use crate::routes::api::{forward_audited_by, split_query, Caller};
use crate::routes::services::provider;
use crate::state::AppState;
use crate::util::ExposeSecret;
use crate::web::{fields, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![page, send]
}

/// JSON or text longer than this many lines (or [`FOLD_CHARS`] characters) is shown folded.
const FOLD_LINES: usize = 40;
const FOLD_CHARS: usize = 4000;
/// What stands in for a token found in the provider's answer.
const HIDDEN: &str = "[token hidden]";

/// What the form holds: chosen, typed, or filled in by an example.
#[derive(Debug, Clone, Default)]
struct Filled {
    connection: Option<i64>,
    method: String,
    path: String,
    query: String,
    body: String,
}

#[derive(Serialize)]
struct ConsolePage {
    service: String,
    display_name: String,
    api_base_url: String,
    connected: bool,
    connections: Vec<Choice>,
    methods: Vec<Choice>,
    path: String,
    query: String,
    body: String,
    examples: Vec<ExampleLink>,
    /// The equivalent `/api/v1/…/proxy/…` call, or why there is none yet.
    curl: String,
    result: Option<Shown>,
    error: Option<Refusal>,
    csrf_token: String,
}

#[derive(Serialize)]
struct Choice {
    value: String,
    label: String,
    selected: bool,
}

#[derive(Serialize)]
struct ExampleLink {
    index: usize,
    name: String,
    method: String,
    path: String,
    href: String,
}

/// tokenvault's refusal of the request (the API's code and message), nothing sent.
#[derive(Serialize)]
struct Refusal {
    code: &'static str,
    message: String,
}

/// The provider's answer as shown.
#[derive(Serialize)]
struct Shown {
    status: u16,
    reason: String,
    took_ms: u64,
    headers: Vec<HeaderView>,
    body: BodyView,
}

#[derive(Serialize)]
struct HeaderView {
    name: String,
    value: String,
}

/// The body as shown: pretty JSON, escaped text, or only its size and type.
#[derive(Debug, Default, Serialize, PartialEq)]
struct BodyView {
    /// `json`, `text`, `bytes`, `empty` or `too_large`.
    kind: &'static str,
    json: bool,
    text: String,
    folded: bool,
    lines: usize,
    size: usize,
    content_type: String,
    /// Why the body is not shown (too large, unreadable).
    note: Option<String>,
}

/// The connection's tokens, blanked out of anything shown.
struct Hidden(Vec<String>);

impl Hidden {
    fn add(&mut self, cipher: &crate::vault::Cipher, row: &Connection) -> AppResult<()> {
        let (access, refresh) = open_tokens(cipher, row)?;
        for t in std::iter::once(access).chain(refresh) {
            let t = t.expose_secret().to_string();
            if !t.is_empty() && !self.0.contains(&t) {
                self.0.push(t);
            }
        }
        Ok(())
    }

    fn scrub(&self, text: &str) -> String {
        self.0.iter().fold(text.to_string(), |out, token| out.replace(token.as_str(), HIDDEN))
    }
}

/// The console's form. No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
struct ConsoleForm {
    csrf_token: String,
    connection: Vec<String>,
    method: Vec<String>,
    path: Vec<String>,
    query: Vec<String>,
    body: Vec<String>,
}

impl CsrfField for ConsoleForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

impl ConsoleForm {
    fn filled(&self) -> AppResult<Filled> {
        let text =
            |name: &str, values: &[String]| Ok::<_, AppError>(fields::once(name, values)?.unwrap_or("").to_string());
        Ok(Filled {
            connection: fields::connection_id(&self.connection)?,
            method: text("method", &self.method)?.to_ascii_uppercase(),
            path: text("path", &self.path)?,
            query: text("query", &self.query)?,
            body: text("body", &self.body)?,
        })
    }
}

/// The service's provider in effect (409 `service_disabled` for a disabled one) with its API base.
fn console_provider(app: &AppState, service: &str) -> AppResult<(Arc<Provider>, Url)> {
    let p = provider(app, service)?;
    let base = p.api_base_url.clone().ok_or_else(|| AppError::NoApiBase(p.service()))?;
    Ok((p, base))
}

#[get("/services/<service>/console?<connection>&<example>")]
async fn page(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    connection: Vec<String>,
    example: Vec<String>,
) -> AppResult<Template> {
    let (p, base) = console_provider(app, service)?;
    let connection = fields::connection_id(&connection)?;
    let example = fields::once("example", &example)?
        .map(|e| e.parse::<usize>().map_err(|_| AppError::BadRequest("`example` must be an example's number.".into())))
        .transpose()?;
    let set = connection_set(app.tokens(), user.id, &p.name).await.map_err(|e| e.into_app_error(&p))?;
    let chosen = match connection {
        Some(id) => Some(pick(&set, Named { account: None, connection: Some(id) }, &p)?.id),
        None => set.first().map(|c| c.id),
    };
    let mut filled = Filled { connection: chosen, method: "GET".into(), path: "/".into(), ..Filled::default() };
    if let Some(i) = example {
        let ex = p.examples.get(i).ok_or(AppError::NotFound)?;
        let (path, query) = ex.path.split_once('?').unwrap_or((ex.path.as_str(), ""));
        filled.method = ex.method.clone();
        filled.path = path.to_string();
        filled.query = query.to_string();
        filled.body = ex.body.clone().unwrap_or_default();
    }
    let view = view(app, user, (&p, &base), &set, &filled, None, None);
    Ok(Template::render("services/console", Page::new(layout, console_title(&p), view)))
}

#[post("/services/<service>/console", data = "<form>")]
async fn send(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    form: Csrf<ConsoleForm>,
    ip: Option<std::net::IpAddr>,
) -> AppResult<(Status, Template)> {
    let (p, base) = console_provider(app, service)?;
    let mut filled = form.filled()?;
    let set = connection_set(app.tokens(), user.id, &p.name).await.map_err(|e| e.into_app_error(&p))?;
    // Another user's connection, or none of this user's: 404, nothing sent.
    let row = pick(&set, Named { account: None, connection: filled.connection }, &p)?;
    filled.connection = Some(row.id);
    let outcome = call(app, user.id, (&p, &base), &row, &filled, ip).await;
    let (status, result, error) = match outcome {
        Ok(shown) => (Status::Ok, Some(shown), None),
        Err(e) => (e.status(), None, Some(Refusal { code: e.code(), message: e.user_message() })),
    };
    let view = view(app, user, (&p, &base), &set, &filled, result, error);
    Ok((status, Template::render("services/console", Page::new(layout, console_title(&p), view))))
}

fn console_title(p: &Provider) -> String {
    format!("{} API console", p.display_name)
}

/// The request checked as the proxy checks it: method, path under the base, query without
/// tokenvault's own parameters, a JSON body within the size cap where the method carries one.
fn checked(app: &AppState, p: &Provider, base: &Url, filled: &Filled) -> AppResult<(reqwest::Method, Typed, Vec<u8>)> {
    if !API_METHODS.contains(&filled.method.as_str()) {
        return Err(AppError::BadRequest(format!("The method must be one of {}.", API_METHODS.join(", "))));
    }
    let method =
        reqwest::Method::from_bytes(filled.method.as_bytes()).map_err(|_| AppError::BadRequest("method".into()))?;
    let typed = proxy::typed_target(base, &filled.path, Some(filled.query.trim_start_matches('?')))
        .map_err(|e| e.into_app_error(p))?;
    let (choice, _) = split_query(typed.query.as_deref())?;
    if choice.account.is_some() || choice.connection.is_some() || choice.required_scopes.is_some() {
        return Err(AppError::BadRequest(
            "`account`, `connection` and `required_scopes` are tokenvault's own parameters of the proxy: \
             choose the connection above instead."
                .into(),
        ));
    }
    let body = filled.body.trim();
    if body.is_empty() {
        return Ok((method, typed, Vec::new()));
    }
    if !method_takes_body(method.as_str()) {
        return Err(AppError::BadRequest(format!("A {method} request has no body: leave it empty.")));
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(body) {
        return Err(AppError::BadRequest(format!("The body is not JSON: {e}.")));
    }
    if body.len() > app.settings.api.proxy_max_request_bytes {
        return Err(AppError::PayloadTooLarge { limit: app.settings.api.proxy_max_request_bytes });
    }
    Ok((method, typed, body.as_bytes().to_vec()))
}

/// Send the request through the proxy's code as `user_id`, and read the answer as the proxy
/// would pass it on.
async fn call(
    app: &AppState,
    user_id: i64,
    (p, base): (&Provider, &Url),
    row: &Connection,
    filled: &Filled,
    ip: Option<std::net::IpAddr>,
) -> AppResult<Shown> {
    let (method, typed, body) = checked(app, p, base, filled)?;
    let mut hidden = Hidden(Vec::new());
    hidden.add(&app.cipher, row)?;
    let headers =
        if body.is_empty() { Vec::new() } else { vec![("Content-Type".to_string(), "application/json".to_string())] };
    let forward = Forward {
        method,
        raw_path: &typed.raw_path,
        segments: typed.segments.iter().map(String::as_str).collect(),
        query: typed.query.as_deref(),
        headers,
        body,
    };
    let caller = Caller { user_id, actor: Actor::User(user_id), via: Some("console") };
    let started = Instant::now();
    let which = Which::id(user_id, row.id);
    let answer = forward_audited_by(app, &caller, (p, which, row), forward, ip.map(|i| i.to_string())).await?;
    let status = answer.response.status();
    let content_type = answer
        .response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let read = proxy::read_capped(answer.response, app.settings.api.proxy_max_response_bytes).await;
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // A refresh on 401 stored new tokens: blank those out too.
    let set = connection_set(app.tokens(), user_id, &p.name).await.map_err(|e| e.into_app_error(p))?;
    if let Some(now) = set.iter().find(|c| c.id == row.id) {
        hidden.add(&app.cipher, now)?;
    }
    Ok(Shown {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("").to_string(),
        took_ms,
        headers: answer
            .headers
            .iter()
            .map(|(k, v)| HeaderView { name: k.to_ascii_lowercase(), value: hidden.scrub(v) })
            .collect(),
        body: body_view(&content_type, read, &hidden),
    })
}

/// How an answer's body is shown: JSON pretty-printed, text as text (escaped by the template),
/// anything else as its size and type; folded when long.
fn body_view(content_type: &str, read: Result<Vec<u8>, (Vec<u8>, String)>, hidden: &Hidden) -> BodyView {
    let content_type = content_type.to_string();
    let bytes = match read {
        Ok(bytes) => bytes,
        Err((partial, why)) => {
            let note = Some(format!("{why}: not shown (the API would cut this answer off)."));
            return BodyView { kind: "too_large", size: partial.len(), content_type, note, ..BodyView::default() };
        }
    };
    let size = bytes.len();
    if bytes.is_empty() {
        return BodyView { kind: "empty", content_type, ..BodyView::default() };
    }
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_type = essence.is_empty() || essence.ends_with("json");
    let pretty = json_type
        .then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flatten()
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let textual = essence.is_empty()
        || essence.starts_with("text/")
        || ["json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv"].iter().any(|t| essence.contains(t));
    let (kind, text) = match (pretty, textual.then(|| String::from_utf8(bytes).ok()).flatten()) {
        (Some(pretty), _) => ("json", pretty),
        (None, Some(text)) => ("text", text),
        (None, None) => return BodyView { kind: "bytes", size, content_type, ..BodyView::default() },
    };
    let text = hidden.scrub(&text);
    let lines = text.lines().count();
    BodyView {
        kind,
        json: kind == "json",
        folded: lines > FOLD_LINES || text.len() > FOLD_CHARS,
        lines,
        text,
        size,
        content_type,
        note: None,
    }
}

/// `text` in single quotes for a POSIX shell.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The same request through tokenvault's API proxy, with `$TOKENVAULT_API_KEY` for the key.
fn curl(app: &AppState, p: &Provider, base: &Url, filled: &Filled) -> String {
    let (method, typed, body) = match checked(app, p, base, filled) {
        Ok(ok) => ok,
        Err(e) => return format!("# {}", e.user_message()),
    };
    let mut query: Vec<String> = typed.query.iter().cloned().collect();
    query.extend(filled.connection.map(|id| format!("connection={id}")));
    let mut url = app.settings.url(&format!("/api/v1/services/{}/proxy/{}", p.name, typed.proxy_suffix(base)));
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let flag = match method.as_str() {
        "GET" => String::new(),
        "HEAD" => " --head".into(),
        other => format!(" -X {other}"),
    };
    let mut lines =
        vec![format!("curl{flag} {}", sh_quote(&url)), "  -H \"Authorization: Bearer $TOKENVAULT_API_KEY\"".into()];
    if !body.is_empty() {
        lines.push("  -H 'Content-Type: application/json'".into());
        lines.push(format!("  --data-raw {}", sh_quote(&String::from_utf8_lossy(&body))));
    }
    lines.join(" \\\n")
}

fn connection_label(c: &Connection) -> String {
    let name = c.account_label.clone().or_else(|| (!c.account_id.is_empty()).then(|| c.account_id.clone()));
    match name {
        Some(name) => format!("{name} (connection {})", c.id),
        None => format!("connection {}", c.id),
    }
}

fn view(
    app: &AppState,
    user: &CurrentUser,
    (p, base): (&Provider, &Url),
    set: &[Arc<Connection>],
    filled: &Filled,
    result: Option<Shown>,
    error: Option<Refusal>,
) -> ConsolePage {
    let choice = |value: String, label: String, selected: bool| Choice { value, label, selected };
    let connection_param = filled.connection.map(|id| format!("&connection={id}")).unwrap_or_default();
    ConsolePage {
        service: p.name.clone(),
        display_name: p.display_name.clone(),
        api_base_url: base.to_string(),
        connected: !set.is_empty(),
        connections: set
            .iter()
            .map(|c| choice(c.id.to_string(), connection_label(c), filled.connection == Some(c.id)))
            .collect(),
        methods: API_METHODS.iter().map(|m| choice(m.to_string(), m.to_string(), filled.method == *m)).collect(),
        examples: p
            .examples
            .iter()
            .enumerate()
            .map(|(index, ex)| ExampleLink {
                index,
                name: ex.name.clone(),
                method: ex.method.clone(),
                path: ex.path.clone(),
                href: format!("/services/{}/console?example={index}{connection_param}", p.name),
            })
            .collect(),
        curl: curl(app, p, base, filled),
        path: filled.path.clone(),
        query: filled.query.clone(),
        body: filled.body.clone(),
        result,
        error,
        csrf_token: user.csrf_token.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::{body_view, sh_quote, Hidden};

    fn hidden() -> Hidden {
        Hidden(vec!["AT-secret-123".into()])
    }

    #[test]
    fn bodies_are_shown_by_type_and_never_with_a_token() {
        let json =
            body_view("application/json; charset=utf-8", Ok(br#"{"b":1,"token":"AT-secret-123"}"#.to_vec()), &hidden());
        assert_eq!((json.kind, json.json, json.folded), ("json", true, false));
        assert!(json.text.contains("\n  \"b\": 1") && !json.text.contains("AT-secret"), "{}", json.text);
        let long: Vec<u32> = (0..100).collect();
        let long = body_view("application/json", Ok(serde_json::to_vec(&long).unwrap()), &hidden());
        assert!(long.folded && long.lines > 100);
        let html = body_view("text/html", Ok(b"<script>alert(1)</script>".to_vec()), &hidden());
        assert_eq!((html.kind, html.text.as_str()), ("text", "<script>alert(1)</script>"), "escaped by the template");
        let not_json = body_view("application/json", Ok(b"{oops".to_vec()), &hidden());
        assert_eq!(not_json.kind, "text");
        let binary = body_view("image/png", Ok(vec![0x89, b'P', b'N', b'G']), &hidden());
        assert_eq!((binary.kind, binary.size, binary.text.as_str()), ("bytes", 4, ""));
        let invalid_utf8 = body_view("text/plain", Ok(vec![0xff, 0xfe]), &hidden());
        assert_eq!(invalid_utf8.kind, "bytes");
        assert_eq!(body_view("", Ok(Vec::new()), &hidden()).kind, "empty");
        let cut = body_view("application/json", Err((vec![b'x'; 10], "over the cap".into())), &hidden());
        assert_eq!((cut.kind, cut.text.as_str()), ("too_large", ""));
        assert!(cut.note.unwrap().contains("over the cap"));
    }

    #[test]
    fn shell_quoting_keeps_the_text_literal() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote(r#"{"q":"it's $HOME"}"#), r#"'{"q":"it'\''s $HOME"}'"#);
    }
}

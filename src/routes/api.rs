//! The JSON API under `/api/v1`, authenticated with personal API keys (`Authorization: Bearer`).
//! Errors are `AppError`s, answered as `{"error": "<stable_code>", "message": "…", "request_id": "…"}`
//! (everything under `/api/` is answered in JSON: `web::wants_json`).

use crate::util::ExposeSecret;
use rocket::data::{Data, ToByteUnit};
use rocket::http::uri::Segments;
use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Responder, Response};
use rocket::serde::json::Json;
use rocket::{delete, get, head, patch, post, put, routes, Route, State};
use serde::Serialize;

use crate::audit;
use crate::auth::api_key::{ApiUser, Capability, Via};
use crate::db::models::connections::{self, Which};
use crate::error::AppError;
use crate::oauth::access::{connection_set, fresh_token, missing_scopes, pick, Named};
use crate::oauth::providers::Provider;
use crate::oauth::proxy::{self, Forward};
use crate::routes::view::ConnectionView;
use crate::state::AppState;
use crate::util::rfc3339;

pub fn routes() -> Vec<Route> {
    routes![openapi, list_connections, token, proxy_get, proxy_head, proxy_delete, proxy_post, proxy_put, proxy_patch]
}

type ApiResult<T> = Result<T, AppError>;

/// The provider in effect named `service`: 409 `service_disabled` for one an administrator
/// disabled, 404 `unknown_service` otherwise. Shared with `/mcp`.
pub(crate) fn provider(app: &AppState, service: &str) -> ApiResult<std::sync::Arc<Provider>> {
    let catalog = app.catalog.current();
    match catalog.get(service) {
        Some(p) => Ok(p),
        // Disabled by an administrator: a clear 409 `service_disabled` (its connections are kept).
        None => Err(match catalog.get_any(service) {
            Some(disabled) => AppError::ServiceDisabled(disabled.service()),
            None => AppError::UnknownService,
        }),
    }
}

#[get("/openapi.json")]
fn openapi() -> (ContentType, &'static str) {
    (ContentType::JSON, include_str!("openapi.json"))
}

#[derive(Serialize)]
struct ConnectionOut {
    connection_id: i64,
    service: String,
    display_name: String,
    /// The provider's id of the account and its label (`null` when the provider does not say).
    account_id: Option<String>,
    account_label: Option<String>,
    status: &'static str,
    /// Granted scopes.
    scopes: Vec<String>,
    /// The scopes asked for (the granted ones, unless the provider granted fewer or others).
    requested_scopes: Vec<String>,
    obtained_at: String,
    expires_at: Option<String>,
    has_refresh_token: bool,
    status_reason: Option<String>,
    attempts: i64,
    next_attempt_at: Option<String>,
    refresh_token_expires_at: Option<String>,
}

/// The user's connections: service, scopes, expiry, status. Never a token. A key limited to
/// some services sees only those; those of a provider an administrator disabled are left out
/// (the API hides a disabled provider: its other routes answer 409 `service_disabled`).
#[get("/connections")]
async fn list_connections(app: &State<AppState>, user: &ApiUser) -> ApiResult<Json<Vec<ConnectionOut>>> {
    user.require(Capability::ConnectionsRead, None)?;
    let uid = user.id;
    let rows = app.db.run(move |conn| Ok(connections::list_for_user(conn, uid)?)).await?;
    let catalog = app.catalog.current();
    Ok(Json(
        rows.iter()
            .filter(|c| user.scope.allows_service(&c.service) && !catalog.is_disabled(&c.service))
            .map(|c| ConnectionOut::from(ConnectionView::of(c, &catalog)))
            .collect(),
    ))
}

impl From<ConnectionView> for ConnectionOut {
    fn from(v: ConnectionView) -> ConnectionOut {
        ConnectionOut {
            connection_id: v.id,
            account_id: v.account_id().map(str::to_string),
            status: v.health.status().as_str(),
            status_reason: v.health.reason().map(str::to_string),
            next_attempt_at: v.health.next_attempt_at().map(rfc3339),
            attempts: v.attempts,
            refresh_token_expires_at: v.refresh_token_expires_at.map(rfc3339),
            obtained_at: rfc3339(v.obtained_at),
            expires_at: v.expires_at.map(rfc3339),
            has_refresh_token: v.has_refresh_token,
            requested_scopes: v.requested,
            scopes: v.scopes,
            account_label: v.account_label,
            display_name: v.display_name,
            service: v.service,
        }
    }
}

#[derive(Serialize)]
struct TokenOut {
    service: String,
    connection_id: i64,
    account_id: Option<String>,
    account_label: Option<String>,
    access_token: String,
    token_type: String,
    expires_at: Option<String>,
    expires_in: Option<i64>,
    scopes: Vec<String>,
}

/// The connection `choice` names among the user's connections to `p` (404 `not_connected`, 409
/// `ambiguous_account`), and — with `required_scopes` — 403 `insufficient_scope` when its grant
/// lacks one, with the Redirector's URL that asks for them on the same connection.
async fn chosen(
    app: &AppState,
    user: &ApiUser,
    p: &Provider,
    choice: &ChoiceQuery,
) -> ApiResult<(Which, std::sync::Arc<connections::Connection>)> {
    let set = connection_set(app.tokens(), user.id, &p.name).await.map_err(|e| e.into_app_error(p))?;
    let named = Named { account: choice.account.as_deref().filter(|a| !a.is_empty()), connection: choice.connection };
    let row = pick(&set, named, p)?;
    let required: Vec<String> = choice
        .required_scopes
        .as_deref()
        .unwrap_or("")
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let missing = missing_scopes(&row, &required);
    if !missing.is_empty() {
        // An upgrade can only ask for what the provider offers; otherwise say so (null).
        let offered = missing.iter().all(|s| p.scopes.contains(s) || p.optional_scopes.contains(s));
        let upgrade_url =
            offered.then(|| app.settings.url(&crate::routes::services::upgrade_path(&p.name, row.id, &missing)));
        return Err(AppError::InsufficientScope { service: p.service(), missing, upgrade_url });
    }
    Ok((Which::id(user.id, row.id), row))
}

/// The audit entry of a token read or proxy call by an API key, for connection `row`.
pub(crate) fn read_entry(
    kind: audit::Kind,
    user: &ApiUser,
    row: &connections::Connection,
    ip: Option<impl ToString>,
) -> audit::Entry {
    Caller::from(user).entry(kind, row, ip)
}

/// Who a proxied call is for and who makes it, as its audit entry names them: an API key or grant
/// (`/api/v1`, `/mcp`), or the signed-in user on the console (`via = "console"`).
pub(crate) struct Caller {
    pub user_id: i64,
    pub actor: audit::Actor,
    pub via: Option<&'static str>,
}

impl From<&ApiUser> for Caller {
    fn from(user: &ApiUser) -> Caller {
        Caller { user_id: user.id, actor: user.actor(), via: None }
    }
}

impl Caller {
    fn entry(&self, kind: audit::Kind, row: &connections::Connection, ip: Option<impl ToString>) -> audit::Entry {
        let entry = audit::Entry::new(kind, self.actor.clone())
            .user(self.user_id)
            .service(&row.service)
            .connection(row.id)
            .address(ip);
        let entry = match row.account() {
            Some(a) => entry.with("account", a.id),
            None => entry,
        };
        match self.via {
            Some(via) => entry.with("via", via),
            None => entry,
        }
    }
}

/// A fresh access token (refreshed first when needed, through the same single-flight refresh).
/// `?account=`, `?connection=`, `?required_scopes=` choose the connection (see [`chosen`]).
#[get("/services/<service>/token")]
async fn token(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    origin: &rocket::http::uri::Origin<'_>,
    ip: Option<std::net::IpAddr>,
) -> ApiResult<Json<TokenOut>> {
    user.require(Capability::TokenRead, Some(service))?;
    let p = provider(app, service)?;
    let (choice, _) = split_query(origin.query().map(|q| q.as_str()))?;
    let (which, row) = chosen(app, user, &p, &choice).await?;
    let t = fresh_token(&app.access(), which, &p).await.map_err(|e| e.into_app_error(&p))?;
    let entry = read_entry(audit::Kind::TokenRead, user, &row, ip);
    app.audit.read(match user.via {
        Via::Key(id) => entry.with("key_id", id),
        Via::Grant(id) => entry.with("grant_id", id),
    });
    let token_type = if t.token_type.eq_ignore_ascii_case("bearer") { "Bearer".to_string() } else { t.token_type };
    Ok(Json(TokenOut {
        connection_id: t.connection_id,
        // The account of a connection never changes once known (a reconnect is pinned to it).
        account_id: row.account().map(|a| a.id),
        account_label: row.account_label.clone(),
        service: p.name.clone(),
        access_token: t.access_token.expose_secret().to_string(),
        token_type,
        expires_at: t.expires_at.map(rfc3339),
        expires_in: t.expires_at.map(|e| (e - crate::util::now()).max(0)),
        scopes: t.scopes,
    }))
}

/// The request's headers that may be forwarded (by allowlist: the caller's key and cookies never
/// are), its raw path (for `proxy::refused_raw_path`) and its raw query.
pub struct Incoming {
    headers: Vec<(String, String)>,
    raw_path: String,
    query: Option<String>,
    address: Option<String>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Incoming {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let all: Vec<_> = req.headers().iter().collect();
        let pairs: Vec<(&str, &str)> = all.iter().map(|h| (h.name().as_str(), h.value())).collect();
        let headers = proxy::forwardable_headers(&pairs);
        Outcome::Success(Incoming {
            headers,
            raw_path: req.uri().path().as_str().to_string(),
            query: req.uri().query().map(|q| q.as_str().to_string()),
            address: req.client_ip().map(|ip| ip.to_string()),
        })
    }
}

/// The path after `proxy/`, percent-decoded segment by segment (any segment: `target_url` decides).
type ProxyPath<'r> = Segments<'r, rocket::http::uri::fmt::Path>;

/// The provider's answer, streamed back with the size cap, with the headers
/// `proxy::returned_headers` allows.
pub struct Proxied {
    answer: proxy::Answer,
    limit: usize,
}

impl<'r> Responder<'r, 'static> for Proxied {
    fn respond_to(self, _: &'r Request<'_>) -> response::Result<'static> {
        use futures_util::StreamExt;
        let mut builder = Response::build();
        let proxy::Answer { response, headers } = self.answer;
        builder.status(Status::new(response.status().as_u16()));
        for (name, value) in headers {
            builder.header_adjoin(Header::new(name, value));
        }
        let limit = self.limit;
        // Stop with an error (the connection is cut, not silently truncated) past the cap.
        let stream = response.bytes_stream().scan(0usize, move |seen, chunk| {
            let item = match chunk {
                Ok(bytes) => {
                    *seen += bytes.len();
                    if *seen > limit {
                        Some(Err(std::io::Error::other("the provider's answer exceeds the proxy size cap")))
                    } else {
                        Some(Ok(bytes))
                    }
                }
                Err(e) => Some(Err(std::io::Error::other(e.without_url()))),
            };
            futures_util::future::ready(item)
        });
        builder.streamed_body(tokio_util::io::StreamReader::new(Box::pin(stream)));
        Ok(builder.finalize())
    }
}

async fn run_proxy(
    app: &AppState,
    user: &ApiUser,
    service: &str,
    method: reqwest::Method,
    path: ProxyPath<'_>,
    incoming: Incoming,
    body: Option<Data<'_>>,
) -> ApiResult<Proxied> {
    let (choice, query) = split_query(incoming.query.as_deref())?;
    let (p, which, row) = proxy_target(app, user, service, &method, &choice).await?;
    let body = match body {
        Some(data) => {
            let capped = data
                .open(app.settings.api.proxy_max_request_bytes.bytes())
                .into_bytes()
                .await
                .map_err(|e| AppError::BadRequest(format!("could not read the body: {e}")))?;
            if !capped.is_complete() {
                return Err(AppError::PayloadTooLarge { limit: app.settings.api.proxy_max_request_bytes });
            }
            capped.into_inner()
        }
        None => Vec::new(),
    };
    let forward = Forward {
        method,
        raw_path: &incoming.raw_path,
        segments: path.collect(),
        query: query.as_deref(),
        headers: incoming.headers,
        body,
    };
    let answer = forward_audited(app, user, &p, which, &row, forward, incoming.address).await?;
    Ok(Proxied { answer, limit: app.settings.api.proxy_max_response_bytes })
}

/// The provider and connection a proxied call with `method` goes to, once the key or grant is
/// checked for it (`proxy:read` for GET and HEAD, `proxy` for the rest and for every method of a
/// provider whose `read_methods_are_safe` is `false`). Shared with `/mcp`'s
/// `call_api`.
pub(crate) async fn proxy_target(
    app: &AppState,
    user: &ApiUser,
    service: &str,
    method: &reqwest::Method,
    choice: &ChoiceQuery,
) -> ApiResult<(std::sync::Arc<Provider>, Which, std::sync::Arc<connections::Connection>)> {
    let capability = match *method {
        reqwest::Method::GET | reqwest::Method::HEAD => Capability::ProxyRead,
        _ => Capability::Proxy,
    };
    user.require(capability, Some(service))?;
    let p = provider(app, service)?;
    if !p.read_methods_are_safe {
        // An RPC-style API acts on a GET too (Slack's chat.postMessage): nothing there is read-only.
        user.require(Capability::Proxy, Some(service))?;
    }
    let (which, row) = chosen(app, user, &p, choice).await?;
    Ok((p, which, row))
}

/// Forward a proxied call (`proxy::forward`: its limits and refresh-on-401) and audit it as a
/// `proxy.call` (coalesced like token reads). Shared with `/mcp`'s `call_api`.
pub(crate) async fn forward_audited(
    app: &AppState,
    user: &ApiUser,
    p: &Provider,
    which: Which,
    row: &connections::Connection,
    forward: Forward<'_>,
    address: Option<String>,
) -> ApiResult<proxy::Answer> {
    forward_audited_by(app, &Caller::from(user), (p, which, row), forward, address).await
}

/// [`forward_audited`] for any [`Caller`] (the console's signed-in user too).
pub(crate) async fn forward_audited_by(
    app: &AppState,
    caller: &Caller,
    (p, which, row): (&Provider, Which, &connections::Connection),
    forward: Forward<'_>,
    address: Option<String>,
) -> ApiResult<proxy::Answer> {
    let (method, template) = (forward.method.to_string(), audit::path_template(&forward.segments));
    let result = proxy::forward(&app.access(), which, p, forward).await.map_err(|e| e.into_app_error(p));
    let status = match &result {
        Ok(answer) => answer.response.status().as_u16(),
        Err(e) => e.status().code,
    };
    app.audit.read(
        caller
            .entry(audit::Kind::ProxyCall, row, address)
            .with("method", method)
            .with("path", template)
            .with("status", status),
    );
    result
}

/// tokenvault's own parameters of a proxied call's query (`account`, `connection`,
/// `required_scopes`; a malformed `connection` is a 400), and the rest of the query, forwarded
/// byte for byte as it came.
#[derive(Debug, Default)]
pub(crate) struct ChoiceQuery {
    pub account: Option<String>,
    pub connection: Option<i64>,
    pub required_scopes: Option<String>,
}

/// The token API and the proxy read them alike: a parameter given twice is a 400 (which one
/// would win is a guess a script should not depend on).
pub(crate) fn split_query(query: Option<&str>) -> Result<(ChoiceQuery, Option<String>), AppError> {
    let mut choice = ChoiceQuery::default();
    let Some(query) = query else { return Ok((choice, None)) };
    let mut rest = Vec::new();
    for part in query.split('&') {
        let (raw_key, value) = part.split_once('=').unwrap_or((part, ""));
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("v={text}").as_bytes()).next().map(|(_, v)| v.into_owned())
        };
        let decoded = || decode(value);
        // Names decoded as a form decoder would (`%61ccount` is `account`); the rest is forwarded raw.
        let key = decode(raw_key).unwrap_or_default();
        let twice = match key.as_str() {
            "account" => choice.account.replace(decoded().unwrap_or_default()).is_some(),
            // Not a number: names no connection (404 not_connected), rather than the first.
            "connection" => choice.connection.replace(decoded().and_then(|v| v.parse().ok()).unwrap_or(-1)).is_some(),
            "required_scopes" => choice.required_scopes.replace(decoded().unwrap_or_default()).is_some(),
            _ => {
                rest.push(part);
                false
            }
        };
        if twice {
            return Err(crate::web::fields::given_twice(&key));
        }
    }
    let rest = rest.join("&");
    Ok((choice, (!rest.is_empty()).then_some(rest)))
}

#[get("/services/<service>/proxy/<path..>")]
async fn proxy_get(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::GET, path, incoming, None).await
}

/// `HEAD` goes upstream as `HEAD` (without this route Rocket would answer it with the GET route,
/// which sends a GET).
#[head("/services/<service>/proxy/<path..>")]
async fn proxy_head(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::HEAD, path, incoming, None).await
}

#[delete("/services/<service>/proxy/<path..>")]
async fn proxy_delete(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::DELETE, path, incoming, None).await
}

#[post("/services/<service>/proxy/<path..>", data = "<body>")]
async fn proxy_post(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
    body: Data<'_>,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::POST, path, incoming, Some(body)).await
}

#[put("/services/<service>/proxy/<path..>", data = "<body>")]
async fn proxy_put(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
    body: Data<'_>,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::PUT, path, incoming, Some(body)).await
}

#[patch("/services/<service>/proxy/<path..>", data = "<body>")]
async fn proxy_patch(
    app: &State<AppState>,
    user: &ApiUser,
    service: &str,
    path: ProxyPath<'_>,
    incoming: Incoming,
    body: Data<'_>,
) -> ApiResult<Proxied> {
    run_proxy(app, user, service, reqwest::Method::PATCH, path, incoming, Some(body)).await
}

#[cfg(test)]
mod tests {
    use super::split_query;

    #[test]
    fn tokenvaults_parameters_are_taken_out_of_the_forwarded_query() {
        let (c, rest) =
            split_query(Some("path=%2Fa&account=dbid%3AAB&limit=2&required_scopes=files.read,files.write")).unwrap();
        assert_eq!(c.account.as_deref(), Some("dbid:AB"));
        assert_eq!(c.required_scopes.as_deref(), Some("files.read,files.write"));
        assert_eq!(rest.as_deref(), Some("path=%2Fa&limit=2"), "the rest exactly as sent");
        let (c, rest) = split_query(Some("connection=12")).unwrap();
        assert_eq!((c.connection, rest), (Some(12), None));
        assert_eq!(split_query(Some("connection=x")).unwrap().0.connection, Some(-1), "a bad id names no connection");
        assert!(split_query(None).unwrap().1.is_none());
        // Given twice: refused, whichever parameter (the token API and the proxy alike).
        let (c, rest) = split_query(Some("%61ccount=x&required%5Fscopes=a&q=%61")).unwrap();
        assert_eq!((c.account.as_deref(), c.required_scopes.as_deref()), (Some("x"), Some("a")), "names decoded");
        assert_eq!(rest.as_deref(), Some("q=%61"));
        for q in ["connection=1&connection=2", "account=a&x=1&account=b", "required_scopes=a&required_scopes=a"] {
            assert!(
                matches!(split_query(Some(q)), Err(crate::error::AppError::BadRequest(m)) if m.contains("more than once"))
            );
        }
    }
}

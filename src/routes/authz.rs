//! tokenvault's own OAuth 2.1 authorization server over HTTP (issue 22; the logic is
//! `crate::authz`): the metadata documents (RFC 8414, its OpenID-style twin, RFC 9728), the
//! authorization endpoint and its consent page, the token, revocation (RFC 7009), introspection
//! (RFC 7662) and dynamic registration (RFC 7591) endpoints. Everything here answers 404 when
//! `oauth_server` is off.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rocket::form::{Form, FromForm};
use rocket::http::{ContentType, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{self, Redirect, Responder, Response};
use rocket::serde::json::{json, Json, Value};
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{Csrf, CsrfField, CurrentUser};
use crate::authz::clients::{self, redirect_host, redirect_matches};
use crate::authz::grants::{scopes_supported, GrantCapability, GrantScope};
use crate::authz::tokens::{self, Allowed, IssuedTokens, Refusal};
use crate::authz::{issuer, metadata_doc, Resource};
use crate::db::models::authz::{self as model, Client, ClientKind};
use crate::db::models::key_scope::parse_expiry;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::ExposeSecret;
use crate::web::{Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![
        authorization_server_metadata,
        openid_configuration,
        protected_resource_root,
        protected_resource,
        authorize,
        decide,
        token,
        revoke,
        introspect,
        register,
    ]
}

/// Audit a refusal of the authorization server (`oauth.refused`: the OAuth error code, why, the
/// client and address; never a code or token) through the batcher's bounded refusals, so a flood
/// of bad requests cannot fill the log.
fn audit_refusal(
    app: &AppState,
    client_id: Option<&str>,
    user_id: Option<i64>,
    error: &str,
    why: &str,
    ip: Option<std::net::IpAddr>,
) {
    let mut e = crate::audit::Entry::new(crate::audit::Kind::OAuthRefused, crate::audit::Actor::System)
        .address(ip)
        .with("error", error)
        .with("reason", why);
    if let Some(c) = client_id {
        e = e.with("client_id", c);
    }
    e.user_id = user_id;
    app.audit.refusal(e);
}

/// 404 unless the authorization server is on.
fn enabled(app: &AppState) -> AppResult<()> {
    if app.settings.authz.enabled {
        Ok(())
    } else {
        Err(AppError::NotFound)
    }
}

fn metadata(app: &AppState) -> Value {
    let s = &app.settings;
    let mut doc = json!({
        "issuer": issuer(s),
        "authorization_endpoint": s.url("/oauth/authorize"),
        "token_endpoint": s.url("/oauth/token"),
        "revocation_endpoint": s.url("/oauth/revoke"),
        "introspection_endpoint": s.url("/oauth/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes_supported(app.catalog.current().iter().map(|p| p.name.as_str())),
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
        "service_documentation": s.url("/api/v1/openapi.json"),
    });
    if s.authz.dynamic_registration {
        doc["registration_endpoint"] = json!(s.url("/oauth/register"));
    }
    doc
}

/// RFC 8414.
#[get("/.well-known/oauth-authorization-server")]
fn authorization_server_metadata(app: &State<AppState>) -> AppResult<Json<Value>> {
    enabled(app)?;
    Ok(Json(metadata(app)))
}

/// Where OpenID Connect clients (and some MCP clients) look; the same document.
#[get("/.well-known/openid-configuration")]
fn openid_configuration(app: &State<AppState>) -> AppResult<Json<Value>> {
    enabled(app)?;
    Ok(Json(metadata(app)))
}

fn resource_metadata(app: &AppState, resource: Resource) -> Value {
    let s = &app.settings;
    let name = match resource {
        Resource::Api => "tokenvault API",
        Resource::Mcp => "tokenvault MCP server",
    };
    json!({
        "resource": resource.url(s),
        "authorization_servers": [issuer(s)],
        "scopes_supported": scopes_supported(app.catalog.current().iter().map(|p| p.name.as_str())),
        "bearer_methods_supported": ["header"],
        "resource_name": name,
        "resource_documentation": s.url("/api/v1/openapi.json"),
    })
}

/// RFC 9728 for the host as a whole: the API's.
#[get("/.well-known/oauth-protected-resource")]
fn protected_resource_root(app: &State<AppState>) -> AppResult<Json<Value>> {
    enabled(app)?;
    Ok(Json(resource_metadata(app, Resource::Api)))
}

/// RFC 9728 for `/api/v1` and `/mcp`.
#[get("/.well-known/oauth-protected-resource/<path..>")]
fn protected_resource(app: &State<AppState>, path: std::path::PathBuf) -> AppResult<Json<Value>> {
    enabled(app)?;
    let resource = match path.to_str() {
        Some("api/v1") => Resource::Api,
        Some("mcp") => Resource::Mcp,
        _ => return Err(AppError::NotFound),
    };
    Ok(Json(resource_metadata(app, resource)))
}

/// The client a `client_id` names: a registered one, or a metadata document's (fetched or
/// cached). `Err`: a message for the error page (never a redirect: the redirect URI is not yet
/// verified).
async fn find_client(app: &AppState, client_id: &str) -> AppResult<Result<Client, String>> {
    if metadata_doc::is_document_url(client_id) {
        let private = app.settings.authz.metadata_private_urls;
        return metadata_doc::resolve(app, private, client_id).await;
    }
    let id = client_id.to_string();
    let found = app.db.run(move |conn| Ok(model::find_client(conn, &id)?)).await?;
    Ok(found.ok_or_else(|| "This application is not known to tokenvault (unknown client_id).".to_string()))
}

/// An authorization request (RFC 6749 §4.1.1 with PKCE, RFC 8707 `resource`).
#[derive(FromForm, Default)]
pub struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
}

/// A checked authorization request.
struct Checked {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    requested: GrantScope,
    resource: Resource,
}

/// What the authorization endpoint answers before consent: an error page (client or redirect
/// URI not verified; or an OAuth error of a client anyone could have created, see
/// [`error_back`]), or an error sent back to the verified redirect URI.
enum Stop {
    Page(AppError),
    Shown { error: &'static str, why: String },
    Back { to: Box<Redirect>, error: &'static str, why: String },
}

impl Stop {
    /// Audit it (`oauth.refused`) and answer it.
    fn answer(
        self,
        app: &AppState,
        client_id: Option<&str>,
        user_id: Option<i64>,
        ip: Option<std::net::IpAddr>,
    ) -> AppResult<Redirect> {
        match self {
            Stop::Page(e) => {
                audit_refusal(app, client_id, user_id, "invalid_request", &e.user_message(), ip);
                Err(e)
            }
            Stop::Shown { error, why } => {
                audit_refusal(app, client_id, user_id, error, &why, ip);
                Err(AppError::BadRequest(format!("The authorization request was refused ({error}): {why}.")))
            }
            Stop::Back { to, error, why } => {
                audit_refusal(app, client_id, user_id, error, &why, ip);
                Ok(*to)
            }
        }
    }
}

/// The client's redirect URI with `params` (and `iss`, RFC 9207) added to its query.
fn back_to(app: &AppState, redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Redirect {
    let Ok(mut url) = url::Url::parse(redirect_uri) else { return Redirect::to("/") };
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(state) = state {
            q.append_pair("state", state);
        }
        q.append_pair("iss", &issuer(&app.settings));
    }
    Redirect::to(url.to_string())
}

/// An error of the authorization request (RFC 6749 §4.1.2.1). Sent back to the redirect URI
/// only for a client an administrator registered: a dynamically registered or metadata-document
/// client is anyone's, and sending its errors back before sign-in and consent would make
/// tokenvault an open redirector (RFC 9700 §4.11.2). Those get tokenvault's error page (400)
/// with the error and its description, and no link to the redirect URI.
fn error_back(
    app: &AppState,
    client: &Client,
    redirect_uri: &str,
    error: &'static str,
    description: &str,
    state: Option<&str>,
) -> Stop {
    if client.kind != ClientKind::Admin {
        return Stop::Shown { error, why: description.to_string() };
    }
    let to = back_to(app, redirect_uri, &[("error", error), ("error_description", description)], state);
    Stop::Back { to: Box::new(to), error, why: description.to_string() }
}

/// Check an authorization request: first the client and its redirect URI (errors shown here),
/// then the rest (errors sent back to an administrator's client, RFC 6749 §4.1.2.1; shown here
/// for the others, see [`error_back`]).
async fn check(app: &AppState, q: &AuthorizeQuery) -> AppResult<Result<Checked, Stop>> {
    let page = |m: &str| Ok(Err(Stop::Page(AppError::BadRequest(m.to_string()))));
    let Some(client_id) = q.client_id.as_deref().filter(|c| !c.is_empty()) else {
        return page("The authorization request names no client (client_id is missing).");
    };
    let client = match find_client(app, client_id).await? {
        Ok(c) => c,
        Err(why) => return page(&why),
    };
    let redirect_uri = match q.redirect_uri.as_deref() {
        Some(r) if redirect_matches(&client, r) => r.to_string(),
        Some(_) => return page("The redirect URI is not one this application registered."),
        None => {
            let uris: Vec<&str> = client.redirect_uris().collect();
            match uris.as_slice() {
                [only] => only.to_string(),
                _ => return page("The authorization request must name its redirect_uri."),
            }
        }
    };
    let state = q.state.clone();
    let back = |e: &'static str, d: &str| Ok(Err(error_back(app, &client, &redirect_uri, e, d, state.as_deref())));
    if q.response_type.as_deref() != Some("code") {
        return back("unsupported_response_type", "only response_type=code is supported");
    }
    let challenge = q.code_challenge.as_deref().unwrap_or("");
    if q.code_challenge_method.as_deref() != Some("S256")
        || challenge.len() != 43
        || !challenge.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return back("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256");
    }
    let requested = match GrantScope::requested(q.scope.as_deref(), |s| app.catalog.get(s).is_some()) {
        Ok(s) => s,
        Err(why) => return back("invalid_scope", &why),
    };
    let resource = match q.resource.as_deref() {
        None => Resource::Api,
        Some(r) => match Resource::parse(&app.settings, r) {
            Some(r) => r,
            None => return back("invalid_target", "resource is not a resource of this server"),
        },
    };
    Ok(Ok(Checked { client, redirect_uri, state, code_challenge: challenge.to_string(), requested, resource }))
}

#[derive(Serialize)]
struct Choice {
    value: String,
    label: String,
    checked: bool,
    dangerous: bool,
    /// A service whose API acts on reads too (`read_methods_are_safe = false`): `proxy:read`
    /// allows nothing there.
    no_read: bool,
}

#[derive(Serialize)]
struct ConsentPage {
    /// Why the last submission was refused.
    error: Option<String>,
    csrf_token: String,
    client_id: String,
    client_name: String,
    client_kind: &'static str,
    redirect_uri: String,
    redirect_host: String,
    state: String,
    code_challenge: String,
    resource: String,
    capabilities: Vec<Choice>,
    /// Every service: the ones the client named are ticked.
    services: Vec<Choice>,
    all_services: bool,
    lifetimes: Vec<Choice>,
}

/// A consent page answer: its page, and the client's redirect origin allowed as the form's
/// destination after the redirect (CSP `form-action`).
pub struct ConsentResponse {
    page: Template,
    form_action: String,
    status: Status,
}

impl<'r> Responder<'r, 'static> for ConsentResponse {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut res = self.page.respond_to(req)?;
        res.set_status(self.status);
        res.set_header(Header::new(crate::web::FORM_ACTION_HEADER, self.form_action));
        Ok(res)
    }
}

/// `scheme://host[:port]` (or `scheme:` for a private-use scheme) of a redirect URI.
fn form_action_source(redirect_uri: &str) -> String {
    match url::Url::parse(redirect_uri) {
        Ok(u) if u.host().is_some() => u.origin().ascii_serialization(),
        Ok(u) => format!("{}:", u.scheme()),
        Err(_) => String::new(),
    }
}

fn lifetime_choices(default_secs: i64) -> Vec<Choice> {
    let mut days: Vec<i64> = vec![1, 7, 30, 90, 365];
    let default_days = (default_secs / 86_400).max(1);
    if !days.contains(&default_days) {
        days.push(default_days);
        days.sort_unstable();
    }
    days.into_iter()
        .map(|d| Choice {
            value: format!("{d}d"),
            label: if d == 1 { "1 day".into() } else { format!("{d} days") },
            checked: d == default_days,
            dangerous: false,
            no_read: false,
        })
        .collect()
}

/// The consent page for a checked request (`error`: a refused form, shown above it).
fn consent_page(
    app: &AppState,
    user: &CurrentUser,
    layout: Layout,
    checked: &Checked,
    error: Option<String>,
) -> ConsentResponse {
    let requested = &checked.requested;
    let page = ConsentPage {
        error,
        csrf_token: user.csrf_token.clone(),
        client_id: checked.client.client_id.clone(),
        client_name: checked.client.name.clone(),
        client_kind: match checked.client.kind {
            ClientKind::Admin => "registered by your administrator",
            ClientKind::Dynamic => "registered itself",
            ClientKind::Metadata => "described by its own metadata document",
        },
        redirect_host: redirect_host(&checked.redirect_uri),
        redirect_uri: checked.redirect_uri.clone(),
        state: checked.state.clone().unwrap_or_default(),
        code_challenge: checked.code_challenge.clone(),
        resource: checked.resource.url(&app.settings),
        capabilities: GrantCapability::ALL
            .iter()
            .map(|c| Choice {
                value: c.as_str().into(),
                label: c.label().into(),
                // What was asked — but never token:read unless the user ticks it.
                checked: requested.capabilities.contains(c) && *c != GrantCapability::TokenRead,
                dangerous: *c == GrantCapability::TokenRead,
                no_read: false,
            })
            .collect(),
        services: app
            .catalog
            .current()
            .iter()
            .map(|p| Choice {
                value: p.name.clone(),
                label: p.display_name.clone(),
                checked: requested.services.as_ref().is_some_and(|s| s.contains(&p.name)),
                dangerous: false,
                no_read: !p.read_methods_are_safe,
            })
            .collect(),
        all_services: requested.services.is_none(),
        lifetimes: lifetime_choices(app.settings.authz.grant_default_lifetime),
    };
    let form_action = form_action_source(&checked.redirect_uri);
    let page = Template::render("authz/consent", Page::new(layout, "Allow access?", page));
    ConsentResponse { page, form_action, status: Status::Ok }
}

/// The authorization endpoint: the consent page for a valid request of a signed-in user (signed
/// out: the sign-in page, then back here).
#[get("/oauth/authorize?<q..>")]
async fn authorize(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    layout: Layout,
    q: AuthorizeQuery,
    origin: &rocket::http::uri::Origin<'_>,
    ip: Option<std::net::IpAddr>,
) -> AppResult<Result<ConsentResponse, Redirect>> {
    enabled(app)?;
    let checked = match check(app, &q).await? {
        Ok(c) => c,
        Err(stop) => return stop.answer(app, q.client_id.as_deref(), user.map(|u| u.id), ip).map(Err),
    };
    let Some(user) = user else {
        let next = crate::web::safe_next(&origin.to_string()).unwrap_or_else(|| "/".into());
        return Ok(Err(Redirect::to(rocket::uri!(crate::routes::auth::login_page(Some(next.as_str()))))));
    };
    Ok(Ok(consent_page(app, user, layout, &checked, None)))
}

/// The consent form. No `Debug`: it carries the CSRF token.
#[derive(FromForm)]
pub struct ConsentForm {
    csrf_token: String,
    decision: String,
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    capabilities: Vec<String>,
    /// `all` (every service, also those connected later) or `some` (those ticked).
    service_mode: String,
    services: Vec<String>,
    lifetime: String,
}

impl CsrfField for ConsentForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// What the user chose on the consent form: the grant's scope and lifetime (`Err`: why the form
/// is refused, shown on the page again with 422).
fn chosen_scope(app: &AppState, form: &ConsentForm) -> Result<(GrantScope, i64), String> {
    let mut capabilities = Vec::new();
    for c in &form.capabilities {
        let c: GrantCapability = c.parse().map_err(|_| "Unknown capability.".to_string())?;
        if !capabilities.contains(&c) {
            capabilities.push(c);
        }
    }
    if capabilities.is_empty() {
        return Err("Allow at least one thing, or choose Deny.".into());
    }
    capabilities.sort_by_key(|c| GrantCapability::ALL.iter().position(|a| a == c));
    let services = match form.service_mode.as_str() {
        "all" => None,
        _ => {
            let mut names: Vec<String> = Vec::new();
            for s in &form.services {
                if app.catalog.get(s).is_none() {
                    return Err("Unknown service.".into());
                }
                if !names.contains(s) {
                    names.push(s.clone());
                }
            }
            if names.is_empty() {
                return Err("Choose at least one service, or every service.".into());
            }
            Some(names)
        }
    };
    let lifetime = parse_expiry(&form.lifetime)
        .ok()
        .filter(|l| (3600..=365 * 86_400).contains(l))
        .ok_or_else(|| "Choose a lifetime between one hour and a year.".to_string())?;
    Ok((GrantScope { services, capabilities }, lifetime))
}

/// The user's decision: a grant and a code sent to the client, or `access_denied` (a refused form:
/// the page again, 422).
#[post("/oauth/authorize", data = "<form>")]
async fn decide(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    form: Csrf<ConsentForm>,
    ip: Option<std::net::IpAddr>,
) -> AppResult<Result<Redirect, ConsentResponse>> {
    enabled(app)?;
    let form = form.into_inner();
    // The request is checked again: the form's fields are the user's browser's.
    let q = AuthorizeQuery {
        response_type: Some("code".into()),
        client_id: Some(form.client_id.clone()),
        redirect_uri: Some(form.redirect_uri.clone()),
        state: form.state.clone().filter(|s| !s.is_empty()),
        code_challenge: Some(form.code_challenge.clone()),
        code_challenge_method: Some("S256".into()),
        scope: None,
        resource: Some(form.resource.clone()),
    };
    let checked = match check(app, &q).await? {
        Ok(c) => c,
        Err(stop) => return stop.answer(app, Some(&form.client_id), Some(user.id), ip).map(Ok),
    };
    let state = checked.state.as_deref();
    if form.decision != "allow" {
        audit_refusal(app, Some(&form.client_id), Some(user.id), "access_denied", "the user denied access", ip);
        return Ok(Ok(back_to(app, &checked.redirect_uri, &[("error", "access_denied")], state)));
    }
    let (scope, lifetime) = match chosen_scope(app, &form) {
        Ok(chosen) => chosen,
        Err(why) => {
            let mut page = consent_page(app, user, layout, &checked, Some(why));
            page.status = Status::UnprocessableEntity;
            return Ok(Err(page));
        }
    };
    let (user_id, redirect_uri, resource) =
        (user.id, checked.redirect_uri.clone(), checked.resource.url(&app.settings));
    let (client, challenge) = (checked.client.clone(), checked.code_challenge.clone());
    let code = app
        .db
        .write(app.ledger(), move |tx| {
            tokens::allow(
                tx,
                Allowed {
                    user_id,
                    client: &client,
                    scope: &scope,
                    lifetime,
                    redirect_uri: &redirect_uri,
                    code_challenge: &challenge,
                    resource: &resource,
                    address: ip,
                },
            )
        })
        .await?
        .settle(app.effects());
    tracing::info!(user_id, client = %checked.client.client_id, "grant created");
    Ok(Ok(back_to(app, &checked.redirect_uri, &[("code", code.expose_secret())], state)))
}

/// An OAuth JSON answer (`Cache-Control: no-store` comes from the security headers).
pub struct OAuthJson {
    status: Status,
    body: Value,
    /// `WWW-Authenticate` for a 401 to a client that used HTTP Basic.
    basic_challenge: bool,
}

impl OAuthJson {
    fn ok(body: Value) -> OAuthJson {
        OAuthJson { status: Status::Ok, body, basic_challenge: false }
    }

    fn error(status: Status, error: &str, description: &str) -> OAuthJson {
        OAuthJson { status, body: json!({ "error": error, "error_description": description }), basic_challenge: false }
    }
}

impl<'r> Responder<'r, 'static> for OAuthJson {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let mut res = Response::build_from(Json(self.body).respond_to(req)?).status(self.status).finalize();
        res.set_header(ContentType::JSON);
        res.set_header(Header::new("Pragma", "no-cache"));
        if self.basic_challenge {
            res.set_header(Header::new("WWW-Authenticate", "Basic realm=\"tokenvault\""));
        }
        Ok(res)
    }
}

impl From<AppError> for OAuthJson {
    fn from(e: AppError) -> Self {
        if matches!(e, AppError::NotFound) {
            return OAuthJson::error(Status::NotFound, "not_found", "the authorization server is off");
        }
        tracing::error!(error = %e, "authorization server endpoint failed");
        OAuthJson::error(e.status(), "server_error", "the request could not be handled")
    }
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1: form-urlencoded parts).
pub struct BasicCredentials(Option<(String, String)>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for BasicCredentials {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let parsed = req.headers().get_one("Authorization").and_then(|h| {
            let (scheme, encoded) = h.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("basic") {
                return None;
            }
            let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let unescape =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((unescape(id)?, unescape(secret)?))
        });
        Outcome::Success(BasicCredentials(parsed))
    }
}

/// The fields of the token, revocation and introspection requests. No `Debug`: secrets.
#[derive(FromForm)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    resource: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token: Option<String>,
}

/// The client a token-endpoint request authenticates as (RFC 6749 §2.3): HTTP Basic, or
/// `client_id` (+ `client_secret`) in the body — not both.
async fn client_of(
    app: &AppState,
    basic: &BasicCredentials,
    form: &TokenForm,
    ip: Option<std::net::IpAddr>,
) -> Result<Client, OAuthJson> {
    let named = basic.0.as_ref().map(|(id, _)| id.as_str()).or(form.client_id.as_deref());
    let invalid = |basic: bool| {
        audit_refusal(app, named, None, "invalid_client", "client authentication failed", ip);
        let mut e = OAuthJson::error(Status::Unauthorized, "invalid_client", "client authentication failed");
        e.basic_challenge = basic;
        e
    };
    let (id, secret) = match (&basic.0, &form.client_id, &form.client_secret) {
        (Some(_), _, Some(_)) => return Err(invalid(true)),
        (Some((id, secret)), body_id, None) => {
            if body_id.as_ref().is_some_and(|b| b != id) {
                return Err(invalid(true));
            }
            (id.clone(), Some(secret.clone()))
        }
        (None, Some(id), secret) => (id.clone(), secret.clone()),
        (None, None, _) => return Err(invalid(false)),
    };
    let lookup = id.clone();
    let found = app.db.run(move |conn| Ok(model::find_client(conn, &lookup)?)).await?;
    let found = match found {
        // A metadata document's client whose cached copy was removed: fetch it again.
        None if metadata_doc::is_document_url(&id) => find_client(app, &id).await?.ok(),
        other => other,
    };
    clients::authenticate(found, secret.as_deref()).map_err(|_| invalid(basic.0.is_some()))
}

fn tokens_answer(t: IssuedTokens) -> OAuthJson {
    OAuthJson::ok(json!({
        "access_token": t.access.expose_secret(),
        "token_type": "Bearer",
        "expires_in": t.expires_in,
        "refresh_token": t.refresh.expose_secret(),
        "scope": t.scope,
    }))
}

/// The token endpoint: `authorization_code` (PKCE) and `refresh_token` (rotated).
#[post("/oauth/token", data = "<form>")]
async fn token(
    app: &State<AppState>,
    basic: BasicCredentials,
    form: Form<TokenForm>,
    ip: Option<std::net::IpAddr>,
) -> Result<OAuthJson, OAuthJson> {
    enabled(app)?;
    let form = form.into_inner();
    let client = client_of(app, &basic, &form, ip).await?;
    let client_id = client.client_id.clone();
    let lifetime = app.settings.authz.access_token_lifetime;
    let resource = form.resource.clone();
    let outcome = match form.grant_type.as_deref() {
        Some("authorization_code") => {
            let Some(code) = form.code.clone() else {
                return Err(OAuthJson::error(Status::BadRequest, "invalid_request", "code is required"));
            };
            let (redirect_uri, verifier) = (form.redirect_uri.clone(), form.code_verifier.clone());
            app.db
                .write(app.ledger(), move |tx| {
                    tokens::exchange_code(
                        tx,
                        &client,
                        &code,
                        redirect_uri.as_deref(),
                        verifier.as_deref(),
                        resource.as_deref(),
                        lifetime,
                    )
                })
                .await?
                .settle(app.effects())
        }
        Some("refresh_token") => {
            let Some(refresh) = form.refresh_token.clone() else {
                return Err(OAuthJson::error(Status::BadRequest, "invalid_request", "refresh_token is required"));
            };
            app.db
                .write(app.ledger(), move |tx| tokens::refresh(tx, &client, &refresh, resource.as_deref(), lifetime))
                .await?
                .settle(app.effects())
        }
        _ => {
            return Err(OAuthJson::error(
                Status::BadRequest,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            ))
        }
    };
    match outcome {
        Ok(issued) => Ok(tokens_answer(issued)),
        Err(refusal) => {
            tracing::info!(code = refusal.code(), reason = refusal.description(), "token request refused");
            audit_refusal(app, Some(&client_id), None, refusal.code(), refusal.description(), ip);
            Err(refused(refusal))
        }
    }
}

fn refused(r: Refusal) -> OAuthJson {
    OAuthJson::error(Status::BadRequest, r.code(), r.description())
}

/// RFC 7009: always 200 for an authenticated client, whatever the token was.
#[post("/oauth/revoke", data = "<form>")]
async fn revoke(
    app: &State<AppState>,
    basic: BasicCredentials,
    form: Form<TokenForm>,
    ip: Option<std::net::IpAddr>,
) -> Result<OAuthJson, OAuthJson> {
    enabled(app)?;
    let form = form.into_inner();
    let client = client_of(app, &basic, &form, ip).await?;
    let Some(token) = form.token.clone() else {
        return Err(OAuthJson::error(Status::BadRequest, "invalid_request", "token is required"));
    };
    app.db.write(app.ledger(), move |tx| tokens::revoke(tx, &client, &token)).await?.settle(app.effects());
    Ok(OAuthJson::ok(json!({})))
}

/// RFC 7662, for confidential clients, about their own tokens.
#[post("/oauth/introspect", data = "<form>")]
async fn introspect(
    app: &State<AppState>,
    basic: BasicCredentials,
    form: Form<TokenForm>,
    ip: Option<std::net::IpAddr>,
) -> Result<OAuthJson, OAuthJson> {
    enabled(app)?;
    let form = form.into_inner();
    let client = client_of(app, &basic, &form, ip).await?;
    if client.secret_hash.is_none() {
        return Err(OAuthJson::error(
            Status::Unauthorized,
            "invalid_client",
            "introspection is for confidential clients",
        ));
    }
    let Some(token) = form.token.clone() else {
        return Err(OAuthJson::error(Status::BadRequest, "invalid_request", "token is required"));
    };
    let answer = app.db.run(move |conn| tokens::introspect(conn, &client, &token, crate::util::now())).await?;
    Ok(OAuthJson::ok(answer))
}

/// An RFC 7591 registration request (what is used of it).
#[derive(serde::Deserialize)]
pub struct RegistrationRequest {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
}

/// RFC 7591 dynamic registration (off with `oauth_dynamic_registration = false`), at most
/// [`crate::authz::clients::REGISTRATIONS_PER_HOUR`] per client address.
#[post("/oauth/register", format = "json", data = "<body>")]
async fn register(
    app: &State<AppState>,
    limiter: &State<crate::authz::clients::RegistrationLimiter>,
    body: Json<RegistrationRequest>,
    ip: Option<std::net::IpAddr>,
) -> Result<OAuthJson, OAuthJson> {
    enabled(app)?;
    if !app.settings.authz.dynamic_registration {
        return Err(OAuthJson::error(Status::NotFound, "not_found", "dynamic client registration is off"));
    }
    if !limiter.allow(ip, crate::util::now()) {
        return Err(OAuthJson::error(
            Status::TooManyRequests,
            "too_many_requests",
            "too many registrations from this address; try again later",
        ));
    }
    let req = body.into_inner();
    let bad = |d: &str| Err(OAuthJson::error(Status::BadRequest, "invalid_client_metadata", d));
    let confidential = match req.token_endpoint_auth_method.as_deref() {
        None | Some("none") => false,
        Some("client_secret_basic") | Some("client_secret_post") => true,
        Some(_) => return bad("token_endpoint_auth_method must be none, client_secret_basic or client_secret_post"),
    };
    if req.grant_types.as_ref().is_some_and(|g| g.iter().any(|t| t != "authorization_code" && t != "refresh_token")) {
        return bad("grant_types may only be authorization_code and refresh_token");
    }
    if req.response_types.as_ref().is_some_and(|r| r.iter().any(|t| t != "code")) {
        return bad("response_types may only be code");
    }
    let uris = req.redirect_uris.unwrap_or_default();
    let name = req.client_name.unwrap_or_else(|| uris.first().map(|u| redirect_host(u)).unwrap_or_default());
    let registered = app
        .db
        .write(app.ledger(), move |tx| {
            let (kind, by) = (ClientKind::Dynamic, crate::changes::Actor::System);
            let r = clients::Registration { kind, name: &name, redirect_uris: &uris, confidential, by, address: ip };
            clients::register(tx, r)
        })
        .await
        .map(|done| done.settle(app.effects()));
    let registered = match registered {
        Ok(r) => r,
        Err(AppError::BadRequest(why)) => {
            return Err(OAuthJson::error(Status::BadRequest, "invalid_redirect_uri", &why));
        }
        Err(e) => return Err(e.into()),
    };
    let c = &registered.client;
    tracing::info!(client = %c.client_id, "client registered dynamically");
    let mut answer = json!({
        "client_id": c.client_id,
        "client_id_issued_at": c.created_at,
        "client_name": c.name,
        "redirect_uris": c.redirect_uris().collect::<Vec<_>>(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": if confidential { "client_secret_basic" } else { "none" },
    });
    if let Some(secret) = &registered.secret {
        answer["client_secret"] = json!(secret.expose_secret());
        answer["client_secret_expires_at"] = json!(0);
    }
    Ok(OAuthJson { status: Status::Created, body: answer, basic_challenge: false })
}

//! The built-in demo authorization server, served under `/demo` when `demo_provider` is on.
//!
//! It is small but real: a consent page (Allow / Deny), a token endpoint for the
//! `authorization_code` (PKCE S256 required, single-use codes, exact redirect_uri) and
//! `refresh_token` grants (rotation; replaying a used refresh token revokes the whole grant), an
//! RFC 7009 revocation endpoint, and an account API that answers 401 for expired or revoked tokens.
//! Its client credentials live in the project vault like any provider's (created on first start).

use crate::util::ExposeSecret;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rocket::form::{Form, FromForm};
use rocket::http::{CookieJar, Header, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::response::{Redirect, Responder};
use rocket::serde::json::{json, Json, Value};
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::auth::{AdminUser, Csrf, CsrfField, CsrfOnly};
use crate::db::models::demo::{self as model, DemoCode, DemoToken, KIND_ACCESS, KIND_REFRESH};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::{ct_eq, now, random_token, sha256_hex};
use crate::vault::store as vault;
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![authorize_page, authorize_decision, token, revoke, account, console, revoke_grant, set_failures]
}

/// The console's switch: make the next token calls fail, to see refresh failures happen.
#[derive(Debug, Default)]
pub struct FailureSwitch {
    remaining: std::sync::atomic::AtomicU32,
    mode: std::sync::Mutex<String>,
}

impl FailureSwitch {
    /// The failure to inject into this token call, if any.
    fn take(&self) -> Option<String> {
        use std::sync::atomic::Ordering;
        self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).ok()?;
        Some(self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub const CLIENT_ID_PATH: &str = "demo.client_id";
pub const CLIENT_SECRET_PATH: &str = "demo.client_secret";
const CODE_TTL: i64 = 60;

/// Make sure the demo client's credentials exist in the vault (first start).
pub fn ensure_client(conn: &mut Conn, cipher: &crate::vault::Cipher) -> AppResult<()> {
    if vault::get(conn, cipher, CLIENT_ID_PATH)?.is_none() {
        vault::set(conn, cipher, CLIENT_ID_PATH, &format!("tokenvault-demo-{}", &random_token(6)), "system")?;
    }
    if vault::get(conn, cipher, CLIENT_SECRET_PATH)?.is_none() {
        vault::set(conn, cipher, CLIENT_SECRET_PATH, &random_token(32), "system")?;
    }
    Ok(())
}

/// An OAuth error answer: `{"error": …}` with a status.
pub struct OAuthError(Status, &'static str, &'static str);

impl<'r> Responder<'r, 'static> for OAuthError {
    fn respond_to(self, req: &'r Request<'_>) -> rocket::response::Result<'static> {
        let mut res = (self.0, Json(json!({"error": self.1, "error_description": self.2}))).respond_to(req)?;
        if self.0 == Status::Unauthorized {
            res.set_header(Header::new("WWW-Authenticate", format!("Bearer error=\"{}\"", self.1)));
        }
        Ok(res)
    }
}

impl From<AppError> for OAuthError {
    fn from(e: AppError) -> Self {
        tracing::error!(error = %e, "demo provider failure");
        OAuthError(Status::InternalServerError, "server_error", "the demo provider failed")
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

#[derive(Serialize)]
struct ConsentPage {
    client_id: String,
    redirect_uri: String,
    state: String,
    scope: String,
    scopes: Vec<String>,
    code_challenge: String,
    account: String,
    /// The signed-in user's session token, or before login the anonymous CSRF cookie's.
    csrf_token: String,
}

async fn demo_client(app: &AppState) -> AppResult<(String, String)> {
    let cipher = app.cipher.clone();
    app.db
        .run(move |conn| {
            let id = vault::get(conn, &cipher, CLIENT_ID_PATH)?.ok_or(AppError::NotFound)?;
            let secret = vault::get(conn, &cipher, CLIENT_SECRET_PATH)?.ok_or(AppError::NotFound)?;
            Ok((id.expose_secret().to_string(), secret.expose_secret().to_string()))
        })
        .await
}

/// Check the request parts that decide whether we may redirect back at all.
async fn check_client(app: &AppState, client_id: Option<&str>, redirect_uri: Option<&str>) -> AppResult<()> {
    let (expected_id, _) = demo_client(app).await?;
    if client_id != Some(expected_id.as_str()) {
        return Err(AppError::BadRequest("The demo provider does not know this client_id.".into()));
    }
    if !redirect_uri.is_some_and(|uri| registered_redirect(app, uri)) {
        return Err(AppError::BadRequest("The redirect_uri is not registered for this client.".into()));
    }
    Ok(())
}

/// The demo client's registered redirect URIs: this app's own callback, plus
/// `demo_redirect_uris` (another tokenvault using this one as its provider, on another origin).
fn registered_redirect(app: &AppState, uri: &str) -> bool {
    uri == app.settings.redirect_uri("demo") || app.settings.demo_redirect_uris.iter().any(|r| r == uri)
}

fn back_to(app: &AppState, redirect_uri: &str, params: &[(&str, &str)]) -> AppResult<Redirect> {
    let mut url = url::Url::parse(redirect_uri).map_err(AppError::internal)?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        q.append_pair("iss", &app.settings.url("/demo"));
    }
    Ok(Redirect::to(url.to_string()))
}

#[get("/oauth2/authorize?<q..>")]
async fn authorize_page(
    app: &State<AppState>,
    layout: Layout,
    cookies: &CookieJar<'_>,
    q: AuthorizeQuery,
) -> AppResult<Result<Template, Redirect>> {
    check_client(app, q.client_id.as_deref(), q.redirect_uri.as_deref()).await?;
    let redirect_uri = q.redirect_uri.clone().unwrap_or_default();
    let state = q.state.clone().unwrap_or_default();
    let bad = |desc: &str| {
        back_to(app, &redirect_uri, &[("error", "invalid_request"), ("error_description", desc), ("state", &state)])
    };
    if q.response_type.as_deref() != Some("code") {
        return bad("response_type must be code").map(Err);
    }
    let challenge = q.code_challenge.clone().unwrap_or_default();
    if challenge.len() < 43 || q.code_challenge_method.as_deref() != Some("S256") {
        return bad("PKCE with S256 is required").map(Err);
    }
    let scope = q.scope.clone().unwrap_or_default();
    // The consent form is protected like every other form (`Csrf<Decision>`): a token bound to the
    // signed-in session, or before login to the anonymous CSRF cookie.
    let csrf_token = match &layout.nav.csrf_token {
        Some(token) => token.clone(),
        None => crate::auth::session::anonymous_csrf_token(cookies, &app.settings),
    };
    let page = ConsentPage {
        csrf_token,
        client_id: q.client_id.clone().unwrap_or_default(),
        scopes: crate::util::scope_list(&scope),
        scope,
        redirect_uri,
        state,
        code_challenge: challenge,
        account: layout
            .nav
            .username
            .clone()
            .map(|u| format!("{u}@demo.example"))
            .unwrap_or_else(|| "alice@demo.example".into()),
    };
    Ok(Ok(Template::render("demo/consent", Page::new(layout, "Demo provider: authorize tokenvault?", page))))
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct Decision {
    csrf_token: String,
    decision: String,
    account: String,
    client_id: String,
    redirect_uri: String,
    state: String,
    scope: String,
    code_challenge: String,
}

impl CsrfField for Decision {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// Allow or Deny. A cross-site POST (no CSRF token, or a foreign `Origin`) is a 403 before any code
/// is issued.
#[post("/oauth2/authorize", data = "<form>")]
async fn authorize_decision(app: &State<AppState>, form: Csrf<Decision>) -> AppResult<Redirect> {
    let f = form.into_inner();
    check_client(app, Some(&f.client_id), Some(&f.redirect_uri)).await?;
    if f.decision != "allow" {
        return back_to(app, &f.redirect_uri, &[("error", "access_denied"), ("state", &f.state)]);
    }
    let account: String = f.account.trim().chars().take(100).collect();
    let account = if account.is_empty() { "alice@demo.example".to_string() } else { account };
    let code = random_token(32);
    let row = DemoCode {
        code_hash: sha256_hex(&code),
        client_id: f.client_id.clone(),
        redirect_uri: f.redirect_uri.clone(),
        code_challenge: f.code_challenge.clone(),
        scopes: f.scope.clone(),
        account,
        expires_at: now() + CODE_TTL,
    };
    app.db
        .run(move |conn| {
            model::delete_expired_codes(conn, now())?;
            model::insert_code(conn, &row)?;
            Ok(())
        })
        .await?;
    back_to(app, &f.redirect_uri, &[("code", &code), ("state", &f.state)])
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts) or the body.
pub struct BasicAuth(Option<(String, String)>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for BasicAuth {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let parsed = req.headers().get_one("Authorization").and_then(|h| {
            let encoded = h.strip_prefix("Basic ")?;
            let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let unescape =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((unescape(id)?, unescape(secret)?))
        });
        Outcome::Success(BasicAuth(parsed))
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn authenticate(
    app: &AppState,
    basic: &BasicAuth,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<String, OAuthError> {
    let (id, secret) = match (&basic.0, body_id, body_secret) {
        (Some((id, secret)), _, _) => (id.clone(), secret.clone()),
        (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        _ => return Err(OAuthError(Status::Unauthorized, "invalid_client", "client authentication is required")),
    };
    let (expected_id, expected_secret) = demo_client(app).await?;
    if ct_eq(&id, &expected_id) && ct_eq(&secret, &expected_secret) {
        Ok(id)
    } else {
        Err(OAuthError(Status::Unauthorized, "invalid_client", "unknown client or wrong secret"))
    }
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let valid_chars = verifier.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    (43..=128).contains(&verifier.len())
        && valid_chars
        && ct_eq(&URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())), challenge)
}

fn issue_tokens(conn: &mut Conn, grant_id: i64, scopes: &str, lifetime: i64) -> AppResult<Value> {
    let access = format!("demo-at-{}", random_token(24));
    let refresh = format!("demo-rt-{}", random_token(24));
    model::insert_token(
        conn,
        &DemoToken {
            token_hash: sha256_hex(&access),
            grant_id,
            kind: KIND_ACCESS.into(),
            used: false,
            expires_at: Some(now() + lifetime),
        },
    )?;
    model::insert_token(
        conn,
        &DemoToken {
            token_hash: sha256_hex(&refresh),
            grant_id,
            kind: KIND_REFRESH.into(),
            used: false,
            expires_at: None,
        },
    )?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "refresh_token": refresh,
        "scope": scopes,
    }))
}

#[post("/oauth2/token", data = "<form>")]
async fn token(
    app: &State<AppState>,
    switch: &State<FailureSwitch>,
    basic: BasicAuth,
    form: Form<TokenRequest>,
) -> Result<Json<Value>, OAuthError> {
    let f = form.into_inner();
    let client_id = authenticate(app, &basic, f.client_id.as_deref(), f.client_secret.as_deref()).await?;
    match switch.take().as_deref() {
        Some("invalid_grant") => {
            return Err(OAuthError(Status::BadRequest, "invalid_grant", "failure injected from the demo console"))
        }
        Some("slow") => {
            rocket::tokio::time::sleep(std::time::Duration::from_secs(app.settings.http_timeout + 2)).await;
        }
        Some(_) => {
            return Err(OAuthError(
                Status::ServiceUnavailable,
                "temporarily_unavailable",
                "failure injected from the demo console",
            ))
        }
        None => {}
    }
    let lifetime = app.settings.demo_token_lifetime;
    let invalid_grant =
        OAuthError(Status::BadRequest, "invalid_grant", "the grant is invalid, expired, used or revoked");
    match f.grant_type.as_deref() {
        Some("authorization_code") => {
            let code = f.code.unwrap_or_default();
            let verifier = f.code_verifier.unwrap_or_default();
            let redirect_uri = f.redirect_uri.unwrap_or_default();
            if !registered_redirect(app, &redirect_uri) {
                return Err(OAuthError(Status::BadRequest, "invalid_grant", "the redirect_uri is not registered"));
            }
            let result = app
                .db
                .run(move |conn| {
                    let Some(code) = model::take_code(conn, &sha256_hex(&code))? else { return Ok(None) };
                    let valid = code.expires_at > now()
                        && code.client_id == client_id
                        && code.redirect_uri == redirect_uri
                        && pkce_ok(&verifier, &code.code_challenge);
                    if !valid {
                        return Ok(None);
                    }
                    let grant = model::create_grant(conn, &client_id, &code.account, &code.scopes, now())?;
                    issue_tokens(conn, grant.id, &grant.scopes, lifetime).map(Some)
                })
                .await?;
            result.map(Json).ok_or(invalid_grant)
        }
        Some("refresh_token") => {
            let refresh = f.refresh_token.unwrap_or_default();
            let result = app
                .db
                .run(move |conn| {
                    let hash = sha256_hex(&refresh);
                    let Some((token, grant)) = model::find_token(conn, &hash)? else { return Ok(None) };
                    if token.kind != KIND_REFRESH || grant.revoked || grant.client_id != client_id {
                        return Ok(None);
                    }
                    if !model::mark_used(conn, &hash)? {
                        // A rotated refresh token came back: assume it leaked and end the whole grant.
                        model::revoke_grant(conn, grant.id)?;
                        return Ok(None);
                    }
                    issue_tokens(conn, grant.id, &grant.scopes, lifetime).map(Some)
                })
                .await?;
            result.map(Json).ok_or(invalid_grant)
        }
        _ => Err(OAuthError(Status::BadRequest, "unsupported_grant_type", "use authorization_code or refresh_token")),
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct RevokeRequest {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 7009: revoking any token of a grant ends the grant. Unknown tokens are not an error.
#[post("/oauth2/revoke", data = "<form>")]
async fn revoke(app: &State<AppState>, basic: BasicAuth, form: Form<RevokeRequest>) -> Result<Status, OAuthError> {
    let f = form.into_inner();
    let client_id = authenticate(app, &basic, f.client_id.as_deref(), f.client_secret.as_deref()).await?;
    let token = f.token.unwrap_or_default();
    app.db
        .run(move |conn| {
            if let Some((_, grant)) = model::find_token(conn, &sha256_hex(&token))? {
                if grant.client_id == client_id {
                    model::revoke_grant(conn, grant.id)?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(Status::Ok)
}

/// The bearer token of a request, if any.
pub struct Bearer(Option<String>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Bearer {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let token = req.headers().get_one("Authorization").and_then(|h| {
            let (scheme, token) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
        });
        Outcome::Success(Bearer(token))
    }
}

#[get("/api/account")]
async fn account(app: &State<AppState>, bearer: Bearer) -> Result<Json<Value>, OAuthError> {
    let invalid = OAuthError(Status::Unauthorized, "invalid_token", "the access token is invalid, expired or revoked");
    let Some(token) = bearer.0 else { return Err(invalid) };
    let found = app.db.run(move |conn| Ok(model::find_token(conn, &sha256_hex(&token))?)).await?;
    match found {
        Some((t, grant)) if t.kind == KIND_ACCESS && !grant.revoked && t.expires_at.is_some_and(|e| e > now()) => {
            let id = format!("dbid:{}", &sha256_hex(&grant.account)[..16]);
            let name = grant.account.split('@').next().unwrap_or("").to_string();
            Ok(Json(json!({
                "id": id,
                "name": name,
                "email": grant.account,
                "scopes": grant.scopes.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                "grant_created_at": grant.created_at,
            })))
        }
        _ => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_check() {
        let verifier = "a".repeat(43);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert!(pkce_ok(&verifier, &challenge));
        assert!(!pkce_ok(&"b".repeat(43), &challenge));
        assert!(!pkce_ok("short", &challenge));
        assert!(!pkce_ok(&verifier, &verifier)); // `plain` is not accepted
    }
}

#[derive(Serialize)]
struct GrantView {
    id: i64,
    account: String,
    scopes: String,
    created: String,
    revoked: bool,
}

#[derive(Serialize)]
struct ConsolePage {
    grants: Vec<GrantView>,
    csrf_token: String,
    failures_pending: u32,
}

/// The demo provider's console (administrators): its grants, and a failure switch.
#[get("/")]
async fn console(
    app: &State<AppState>,
    switch: &State<FailureSwitch>,
    admin: AdminUser<'_>,
    layout: Layout,
) -> AppResult<Template> {
    let grants = app.db.run(|conn| Ok(model::recent_grants(conn, 50)?)).await?;
    let now = now();
    let page = ConsolePage {
        grants: grants
            .into_iter()
            .map(|g| GrantView {
                id: g.id,
                account: g.account,
                scopes: g.scopes,
                created: crate::util::relative_time(g.created_at, now),
                revoked: g.revoked,
            })
            .collect(),
        csrf_token: admin.0.csrf_token.clone(),
        failures_pending: switch.remaining.load(std::sync::atomic::Ordering::SeqCst),
    };
    Ok(Template::render("demo/console", Page::new(layout, "Demo provider console", page)))
}

#[post("/grants/<id>/revoke", data = "<_form>")]
async fn revoke_grant(
    app: &State<AppState>,
    _admin: AdminUser<'_>,
    id: i64,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let n = app.db.run(move |conn| Ok(model::revoke_grant(conn, id)?)).await?;
    if n == 0 {
        return Err(AppError::NotFound);
    }
    Ok(Flash::success(Redirect::to("/demo/"), format!("Grant {id} was revoked at the demo provider.")))
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct FailuresForm {
    csrf_token: String,
    count: u32,
    mode: String,
}

impl CsrfField for FailuresForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

#[post("/failures", data = "<form>")]
async fn set_failures(
    switch: &State<FailureSwitch>,
    _admin: AdminUser<'_>,
    form: Csrf<FailuresForm>,
) -> AppResult<Flash<Redirect>> {
    let mode = match form.mode.as_str() {
        m @ ("temporarily_unavailable" | "invalid_grant" | "slow") => m.to_string(),
        _ => return Err(AppError::BadRequest("Unknown failure mode.".into())),
    };
    let count = form.count.min(100);
    *switch.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode.clone();
    switch.remaining.store(count, std::sync::atomic::Ordering::SeqCst);
    Ok(Flash::success(Redirect::to("/demo/"), format!("The next {count} token calls will fail ({mode}).")))
}

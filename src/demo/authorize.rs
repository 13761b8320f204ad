//! The consent page: `GET /demo/oauth2/authorize` shows it, `POST` is the Allow / Deny that
//! redirects back with a code (or an error).

use rocket::form::FromForm;
use rocket::http::CookieJar;
use rocket::response::Redirect;
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use super::{demo_client, registered_redirect};
use crate::auth::{Csrf, CsrfField};
use crate::db::models::demo::{self as model, DemoCode};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{now, random_token, sha256_hex};
use crate::web::{Layout, Page};

pub(super) fn routes() -> Vec<Route> {
    routes![authorize_page, authorize_decision]
}

const CODE_TTL: i64 = 60;

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
    /// The consent page's ticked scopes (with `choose_scopes`; without it, all of `scope`).
    granted: Vec<String>,
    choose_scopes: Option<bool>,
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
        scopes: if f.choose_scopes == Some(true) {
            // Only what was asked for and ticked: a provider grants fewer, never more.
            crate::util::scope_list(&f.scope)
                .into_iter()
                .filter(|s| f.granted.contains(s))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            f.scope.clone()
        },
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

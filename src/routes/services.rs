//! The Redirector (`/services/<service>/authorize`), the Callback (`/services/<service>/callback`)
//! and the greeting after a successful connection (`/services/<service>/connected`).

use std::sync::Arc;

use rocket::form::FromForm;
use rocket::http::Header;
use rocket::response::{Redirect, Responder};
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{Csrf, CsrfField, CurrentUser};
use crate::db::models::connections::{self, ConnectionStatus};
use crate::error::{AppError, AppResult};
use crate::oauth::flow::{self, CallbackParams, Finished};
use crate::oauth::providers::Provider;
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::vault::store as vault;
use crate::web::{safe_next, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![authorize_page, authorize, callback, connected]
}

pub fn provider(app: &AppState, service: &str) -> AppResult<Arc<Provider>> {
    app.catalog.get(service).ok_or(AppError::NotFound)
}

#[derive(Serialize)]
struct AuthorizePage {
    service: String,
    display_name: String,
    description: String,
    provider_host: String,
    scopes: Vec<String>,
    redirect_uri: String,
    configured: bool,
    client_id_path: String,
    is_admin: bool,
    already_connected: bool,
    reconnect: bool,
    csrf_token: String,
    next: String,
}

#[get("/services/<service>/authorize?<next>")]
async fn authorize_page(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    next: Option<&str>,
) -> AppResult<Template> {
    let p = provider(app, service)?;
    let cipher = app.cipher.clone();
    let (name, uid) = (p.name.clone(), user.id);
    let (configured, existing) = app
        .db
        .run(move |conn| {
            Ok((vault::client_credentials(conn, &cipher, &name)?.is_some(), connections::find(conn, uid, &name)?))
        })
        .await?;
    let page = AuthorizePage {
        service: p.name.clone(),
        display_name: p.display_name.clone(),
        description: p.description.clone(),
        provider_host: if p.is_demo {
            "the demo provider built into this tokenvault".to_string()
        } else {
            p.authorize_url.host_str().unwrap_or_default().to_string()
        },
        scopes: p.scopes.clone(),
        redirect_uri: app.settings.redirect_uri(&p.name),
        configured,
        client_id_path: p.client_id_path(),
        is_admin: user.is_admin,
        already_connected: existing.is_some(),
        reconnect: existing.as_ref().is_some_and(|c| c.status == ConnectionStatus::ReconnectRequired),
        csrf_token: user.csrf_token.clone(),
        next: return_path(next),
    };
    let title = format!("Connect {}", p.display_name);
    Ok(Template::render("services/authorize", Page::new(layout, title, page)))
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct AuthorizeForm {
    csrf_token: String,
    next: Option<String>,
}

impl CsrfField for AuthorizeForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

/// The Authorize button: create the flow and send the browser to the provider (303).
#[post("/services/<service>/authorize", data = "<form>")]
async fn authorize(
    app: &State<AppState>,
    user: &CurrentUser,
    service: &str,
    form: Csrf<AuthorizeForm>,
) -> AppResult<Redirect> {
    let p = provider(app, service)?;
    let return_to = return_path(form.next.as_deref());
    let url = flow::start(&app.db, &app.cipher, &app.settings, user, &p, &return_to).await?;
    tracing::info!(user_id = user.id, service = %p.name, "authorization started");
    Ok(Redirect::to(url.to_string()))
}

/// A response that tells browsers not to keep or pass on the URL that led here.
pub struct NoTrace<R>(R);

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for NoTrace<R> {
    fn respond_to(self, req: &'r rocket::Request<'_>) -> rocket::response::Result<'o> {
        let mut res = self.0.respond_to(req)?;
        res.set_header(Header::new("Referrer-Policy", "no-referrer"));
        res.set_header(Header::new("Cache-Control", "no-store"));
        Ok(res)
    }
}

#[derive(Serialize)]
struct Cancelled {
    service: String,
    display_name: String,
}

/// The redirect_uri: check state, exchange the code, store the tokens, then 303 to a clean URL.
#[get("/services/<service>/callback")]
async fn callback(
    app: &State<AppState>,
    user: Option<&CurrentUser>,
    layout: Layout,
    service: &str,
    params: CallbackParams,
) -> NoTrace<AppResult<Result<Redirect, Template>>> {
    NoTrace(finish_callback(app, user, layout, service, params).await)
}

async fn finish_callback(
    app: &AppState,
    user: Option<&CurrentUser>,
    layout: Layout,
    service: &str,
    params: CallbackParams,
) -> AppResult<Result<Redirect, Template>> {
    let p = provider(app, service)?;
    match flow::finish(&app.access(), user, &p, params).await? {
        Finished::Connected { return_to } => {
            tracing::info!(service = %p.name, "service connected");
            app.webhooks.wake();
            let query: String =
                url::form_urlencoded::Serializer::new(String::new()).append_pair("next", &return_to).finish();
            let to = format!("/services/{}/connected?{query}", p.name);
            // No flash here: Rocket's flash cookie is SameSite=Strict and would not reach the next
            // page of a redirect chain that began at the provider; the greeting page says it all.
            Ok(Ok(Redirect::to(to)))
        }
        Finished::Cancelled => {
            let body = Cancelled { service: p.name.clone(), display_name: p.display_name.clone() };
            Ok(Err(Template::render("services/cancelled", Page::new(layout, "Connection cancelled", body))))
        }
    }
}

#[derive(Serialize)]
struct ConnectedPage {
    service: String,
    display_name: String,
    username: String,
    scopes: Vec<String>,
    expires: Option<String>,
    expires_utc: Option<String>,
    has_refresh_token: bool,
    next: String,
}

#[get("/services/<service>/connected?<next>")]
async fn connected(
    app: &State<AppState>,
    user: &CurrentUser,
    layout: Layout,
    service: &str,
    next: Option<&str>,
) -> AppResult<Template> {
    let p = provider(app, service)?;
    let (uid, name) = (user.id, p.name.clone());
    let conn = app.db.run(move |c| Ok(connections::find(c, uid, &name)?)).await?.ok_or(AppError::NotFound)?;
    let page = ConnectedPage {
        service: p.name.clone(),
        display_name: p.display_name.clone(),
        username: user.username.clone(),
        scopes: crate::util::scope_list(&conn.scopes),
        expires: conn.expires_at.map(|e| relative_time(e, now())),
        expires_utc: conn.expires_at.map(format_utc),
        has_refresh_token: conn.refresh_token.is_some(),
        next: return_path(next),
    };
    let title = format!("{} connected", p.display_name);
    Ok(Template::render("services/connected", Page::new(layout, title, page)))
}

/// Where to go after a connect: a same-site `next`, else My Settings → OAuth2 Services.
fn return_path(next: Option<&str>) -> String {
    next.and_then(safe_next).unwrap_or_else(|| "/settings/oauth2".into())
}

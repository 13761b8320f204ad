//! The demo provider's console for administrators: its grants (revocable one by one) and the
//! failure switch that makes the next token calls fail.

use rocket::form::FromForm;
use rocket::response::Redirect;
use rocket::{get, post, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use super::FailureSwitch;
use crate::auth::{AdminUser, Csrf, CsrfField, CsrfOnly};
use crate::db::models::demo as model;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::now;
use crate::web::{Flash, Layout, Page};

pub(super) fn routes() -> Vec<Route> {
    routes![console, revoke_grant, set_failures]
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
        m @ ("temporarily_unavailable"
        | "invalid_grant"
        | "slow"
        | "rate_limited"
        | "omit_expires_in"
        | "refresh_token_expires_in") => m.to_string(),
        _ => return Err(AppError::BadRequest("Unknown failure mode.".into())),
    };
    let count = form.count.min(100);
    *switch.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode.clone();
    switch.remaining.store(count, std::sync::atomic::Ordering::SeqCst);
    Ok(Flash::success(Redirect::to("/demo/"), format!("The next {count} token calls will fail ({mode}).")))
}

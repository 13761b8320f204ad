//! My Settings → Sessions (`/settings/sessions`): the user's signed-in browsers, and signing out
//! one of them or every other one.

use rocket::http::CookieJar;
use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{session, Csrf, CsrfOnly, CurrentUser};
use crate::db::models::sessions;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![page, end, end_others]
}

#[derive(Serialize)]
struct SessionView {
    /// The public id (never the session id or its hash).
    id: String,
    created: String,
    created_utc: String,
    last_seen: String,
    last_seen_utc: String,
    ip: Option<String>,
    user_agent: Option<String>,
    current: bool,
}

#[derive(Serialize)]
struct SessionsPage {
    sessions: Vec<SessionView>,
    others: bool,
    csrf_token: String,
}

#[get("/settings/sessions")]
async fn page(app: &State<AppState>, user: &CurrentUser, layout: Layout) -> AppResult<Template> {
    let uid = user.id;
    let rows = app.db.run(move |conn| Ok(sessions::list_for_user(conn, uid, now())?)).await?;
    let now = now();
    let mut views: Vec<SessionView> = rows
        .into_iter()
        .map(|s| {
            let seen = s.last_seen_at.unwrap_or(s.created_at);
            SessionView {
                current: s.id_hash == user.session_hash,
                id: s.public_id,
                created: relative_time(s.created_at, now),
                created_utc: format_utc(s.created_at),
                last_seen: relative_time(seen, now),
                last_seen_utc: format_utc(seen),
                ip: s.ip,
                user_agent: s.user_agent.filter(|ua| !ua.trim().is_empty()),
            }
        })
        .collect();
    // This browser first, then the most recently used.
    views.sort_by_key(|v| !v.current);
    let body =
        SessionsPage { others: views.iter().any(|v| !v.current), sessions: views, csrf_token: user.csrf_token.clone() };
    Ok(Template::render("settings/sessions", Page::new(layout, "Sessions", body)))
}

/// Sign out one session. Another user's session id is a 404 and nothing changes; this browser's
/// own session is a sign-out.
#[post("/settings/sessions/<id>/end", data = "<_form>")]
async fn end(
    app: &State<AppState>,
    user: &CurrentUser,
    ip: Option<std::net::IpAddr>,
    cookies: &CookieJar<'_>,
    id: &str,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let uid = user.id;
    let ended = session::end_by_public_id(app, uid, id.to_string(), ip).await?.ok_or(AppError::NotFound)?;
    tracing::info!(user_id = uid, "session ended from the sessions page");
    if ended == user.session_hash {
        session::end(&app.db, &app.settings, cookies).await?;
        return Ok(Flash::success(Redirect::to(uri!(crate::routes::auth::login_page(_))), "You are signed out."));
    }
    Ok(Flash::success(Redirect::to(uri!(page)), "That session was signed out."))
}

#[post("/settings/sessions/end-others", data = "<_form>")]
async fn end_others(
    app: &State<AppState>,
    user: &CurrentUser,
    ip: Option<std::net::IpAddr>,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let uid = user.id;
    let ended = session::end_others(app, uid, user.session_hash.clone(), ip).await?;
    tracing::info!(user_id = uid, sessions_ended = ended, "other sessions ended");
    let message = match ended {
        0 => "You were not signed in anywhere else.".to_string(),
        1 => "Your other session was signed out.".to_string(),
        n => format!("Your {n} other sessions were signed out."),
    };
    Ok(Flash::success(Redirect::to(uri!(page)), message))
}

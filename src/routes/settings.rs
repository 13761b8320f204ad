//! My Settings → OAuth2 Services (`/settings/oauth2`): the user's connections, their history, delete.

use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use rocket::form::FromForm;

use crate::auth::{Csrf, CsrfField, CurrentUser};
use crate::db::models::connections::{self, Health, Which};
use crate::db::models::events::{self, EventKind, EventOutcome};
use crate::error::{AppError, AppResult};
use crate::oauth::revoke::{revoke_and_delete, Revoked};
use crate::oauth::store;
use crate::routes::view::ConnectionView;
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::web::{Flash, Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![oauth2, delete, revoke]
}

#[derive(Serialize)]
struct EventView {
    at: String,
    at_utc: String,
    kind: &'static str,
    outcome: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct ConnectionRow {
    service: String,
    display_name: String,
    /// The connection's id (`tr[data-connection]`, the `-<id>` suffix of its actions' ids).
    id: i64,
    /// The first connection of its service: its actions also answer to the unsuffixed ids
    /// (`#revoke-<service>` …), as before there could be several.
    first: bool,
    /// The provider's account id (`tr[data-account]`; empty when not known) and its label.
    account_id: String,
    account_label: Option<String>,
    /// Granted scopes; those asked for and not granted; optional ones not granted yet.
    scopes: Vec<String>,
    not_granted: Vec<String>,
    upgrade_url: Option<String>,
    obtained: String,
    obtained_utc: String,
    expires: String,
    expires_utc: String,
    expired: bool,
    has_refresh_token: bool,
    status: String,
    /// The stored status (`tr[data-status]`): active, degraded or reconnect_required.
    status_code: &'static str,
    /// Why degraded or reconnect required (a code), and when a degraded one is retried.
    status_reason: Option<String>,
    next_attempt: Option<String>,
    /// "in 6 days" / "2 days ago", when the provider said when the refresh token expires.
    refresh_expires: Option<String>,
    refresh_expires_utc: String,
    expired_refresh: bool,
    healthy: bool,
    reconnect: bool,
    known_service: bool,
    can_revoke: bool,
    has_account_page: bool,
    /// The API console (`/services/<s>/console`): the provider is in effect and has an API base.
    has_console: bool,
    /// An administrator disabled the provider: the connection can still be revoked or deleted.
    disabled: bool,
    events: Vec<EventView>,
}

#[derive(Serialize)]
struct SettingsPage {
    connections: Vec<ConnectionRow>,
    csrf_token: String,
}

#[get("/settings/oauth2")]
async fn oauth2(app: &State<AppState>, user: &CurrentUser, layout: Layout) -> AppResult<Template> {
    let uid = user.id;
    let rows = app
        .db
        .run(move |conn| {
            let list = connections::list_for_user(conn, uid)?;
            let mut out: Vec<(connections::Connection, Vec<events::Event>)> = Vec::with_capacity(list.len());
            for c in list {
                let ev = if out.last().is_some_and(|(prev, _)| prev.service == c.service) {
                    Vec::new()
                } else {
                    events::recent(conn, uid, &c.service, 5)?
                };
                out.push((c, ev));
            }
            Ok(out)
        })
        .await?;
    let now = now();
    let mut seen = std::collections::HashSet::new();
    let catalog = app.catalog.current();
    let connections = rows
        .into_iter()
        .map(|(c, ev)| {
            let first = seen.insert(c.service.clone());
            // The history is the service's: shown once, under its last connection (below).
            let events = ev
                .into_iter()
                .map(|e| EventView {
                    at: relative_time(e.at, now),
                    at_utc: format_utc(e.at),
                    kind: e.kind.as_str(),
                    outcome: e.outcome.as_str(),
                    detail: e.detail,
                })
                .collect();
            let disabled = catalog.is_disabled(&c.service);
            ConnectionRow::of(ConnectionView::of(&c, &catalog), (first, disabled), events, now)
        })
        .collect();
    let mut connections: Vec<ConnectionRow> = connections;
    // A service's history (it is the service's, not one account's) goes under its last row.
    for i in 0..connections.len() {
        let next_same = connections.get(i + 1).is_some_and(|n| n.service == connections[i].service);
        if next_same {
            let events = std::mem::take(&mut connections[i].events);
            connections[i + 1].events = events;
        }
    }
    let page = SettingsPage { connections, csrf_token: user.csrf_token.clone() };
    Ok(Template::render("settings/oauth2", Page::new(layout, "OAuth2 services", page)))
}

impl ConnectionRow {
    /// A connection's row on the page (`first`: the first of its service; `events`: the
    /// service's history, moved under its last row by the caller).
    fn of(v: ConnectionView, (first, disabled): (bool, bool), events: Vec<EventView>, now: i64) -> ConnectionRow {
        let more = v.more_scopes();
        let reconnect = matches!(v.health, Health::ReconnectRequired { .. });
        ConnectionRow {
            id: v.id,
            first,
            not_granted: v.not_granted(),
            upgrade_url: (!more.is_empty() && !reconnect)
                .then(|| crate::routes::services::upgrade_path(&v.service, v.id, &more)),
            // A disabled provider's connection: no reconnect, account page or console (they answer
            // 409 service_disabled), but Revoke and Delete stay.
            known_service: v.provider.is_some() && !disabled,
            can_revoke: v.provider.as_ref().is_some_and(|p| p.can_revoke()),
            has_account_page: !disabled && v.provider.as_ref().is_some_and(|p| p.account_url.is_some()),
            has_console: !disabled && v.provider.as_ref().is_some_and(|p| p.api_base_url.is_some()),
            disabled,
            obtained: relative_time(v.obtained_at, now),
            obtained_utc: format_utc(v.obtained_at),
            expires: v.expires_at.map(|e| relative_time(e, now)).unwrap_or_else(|| "never".into()),
            expires_utc: v.expires_at.map(format_utc).unwrap_or_default(),
            expired: v.expires_at.is_some_and(|e| e <= now),
            has_refresh_token: v.has_refresh_token,
            reconnect,
            status: v.health.label().into(),
            status_code: v.health.status().as_str(),
            next_attempt: v.health.next_attempt_at().map(|t| relative_time(t, now)),
            status_reason: v.health.reason().map(str::to_string),
            refresh_expires: v.refresh_token_expires_at.map(|t| relative_time(t, now)),
            refresh_expires_utc: v.refresh_token_expires_at.map(format_utc).unwrap_or_default(),
            expired_refresh: v.refresh_token_expires_at.is_some_and(|t| t <= now),
            healthy: v.health == Health::Active,
            events,
            display_name: v.display_name,
            account_id: v.account_id,
            account_label: v.account_label,
            scopes: v.scopes,
            service: v.service,
        }
    }
}

/// The Revoke and Delete forms: which connection (`connection`; none: the service's first).
/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct ConnectionForm {
    csrf_token: String,
    /// Every value given: one connection id, or none (the first); several or a malformed one is a
    /// 400 (`web::fields`), never the first or the last of them.
    connection: Vec<String>,
}

impl CsrfField for ConnectionForm {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

fn which(user: &CurrentUser, form: &ConnectionForm) -> AppResult<Which> {
    Ok(Which { user_id: user.id, id: crate::web::fields::connection_id(&form.connection)? })
}

/// Delete the local tokens. This alone does not revoke access at the provider.
#[post("/settings/oauth2/<service>/delete", data = "<form>")]
async fn delete(
    app: &State<AppState>,
    user: &CurrentUser,
    service: &str,
    form: Csrf<ConnectionForm>,
) -> AppResult<Flash<Redirect>> {
    let removed = store::delete(
        app.tokens(),
        which(user, &form)?,
        service,
        EventKind::Delete,
        EventOutcome::Ok,
        "tokens deleted locally".into(),
    )
    .await?;
    if !removed {
        return Err(AppError::NotFound);
    }
    let name =
        app.catalog.current().get_any(service).map(|p| p.display_name.clone()).unwrap_or_else(|| service.to_string());
    tracing::info!(user_id = user.id, service, "connection deleted");
    Ok(Flash::success(
        Redirect::to(uri!(oauth2)),
        format!("Your {name} tokens were deleted from tokenvault. Access stays granted at {name} until you revoke it there."),
    ))
}

/// Revoke at the provider (where supported), then delete locally even if the provider call fails.
#[post("/settings/oauth2/<service>/revoke", data = "<form>")]
async fn revoke(
    app: &State<AppState>,
    user: &CurrentUser,
    service: &str,
    form: Csrf<ConnectionForm>,
) -> AppResult<Flash<Redirect>> {
    // A provider an administrator disabled too: the tokens are the user's to remove, and the
    // revocation is tried with the provider's settings as stored.
    let p = app.catalog.current().get_any(service).ok_or(AppError::NotFound)?;
    let outcome = revoke_and_delete(&app.access(), which(user, &form)?, &p).await?;
    let name = &p.display_name;
    let back = Redirect::to(uri!(oauth2));
    Ok(match outcome {
        Revoked::AtProvider => Flash::success(back, format!("{name} access was revoked and the tokens deleted.")),
        Revoked::NotSupported => Flash::success(
            back,
            format!("Your {name} tokens were deleted. {name} offers no revocation: access stays granted there until you remove it in your {name} account settings."),
        ),
        Revoked::ProviderFailed(reason) => Flash::error(
            back,
            format!("The tokens were deleted from tokenvault, but {name} could not confirm the revocation ({reason}). Remove tokenvault's access in your {name} account settings to be sure."),
        ),
    })
}

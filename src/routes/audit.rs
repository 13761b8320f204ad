//! `/admin/audit` (administrators: every entry, with filters) and My Settings → Activity
//! (`/settings/activity`: the signed-in user's own entries only).
//!
//! Filters (query): `user` (username or numeric id), `kind` (a dotted kind, `token.read`),
//! `service`, `from` and `to` (`YYYY-MM-DD`, UTC; `to` includes that whole day — or unix
//! seconds), `before` (an entry id: the next page), `limit` (1-500, default 100).

use rocket::{get, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{AdminUser, CurrentUser};
use crate::db::models::audit::{self as rows, AuditRow, Filter};
use crate::db::models::users;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::format_utc;
use crate::web::{Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![admin_page, activity]
}

#[derive(Serialize)]
struct EntryView {
    id: i64,
    at: String,
    /// When its events happened: `at`, or for a batched entry the range `at – at_last`.
    when: String,
    /// Written by the batcher after its events (its id follows entries recorded meanwhile).
    batched: bool,
    /// How many identical events a batched entry stands for.
    count: u64,
    kind: String,
    user_id: Option<i64>,
    actor: String,
    service: Option<String>,
    address: Option<String>,
    detail: String,
}

impl From<AuditRow> for EntryView {
    fn from(r: AuditRow) -> Self {
        let count =
            serde_json::from_str::<serde_json::Value>(&r.detail).ok().and_then(|d| d["count"].as_u64()).unwrap_or(1);
        EntryView {
            id: r.id,
            at: format_utc(r.at),
            when: crate::audit::when(r.at, r.at_last),
            batched: r.at_last.is_some(),
            count,
            kind: r.kind,
            user_id: r.user_id,
            actor: r.actor,
            service: r.service,
            address: r.address,
            detail: r.detail,
        }
    }
}

#[derive(Serialize, Default)]
struct Shown {
    user: String,
    kind: String,
    service: String,
    from: String,
    to: String,
}

#[derive(Serialize)]
struct AuditPage {
    entries: Vec<EntryView>,
    filters: Shown,
    /// The query of the next (older) page, when there may be one.
    next: Option<String>,
}

/// `YYYY-MM-DD` (UTC midnight; `end_of_day` adds a day) or unix seconds.
pub fn parse_time(text: &str, end_of_day: bool) -> Option<i64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(t, &fmt).ok()?;
    let at = d.midnight().assume_utc().unix_timestamp();
    Some(if end_of_day { at + 86_400 } else { at })
}

fn clean(v: Option<&str>) -> Option<String> {
    v.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// The filters of `/admin/audit` (see the module's documentation).
#[derive(rocket::FromForm)]
struct AuditQuery<'r> {
    user: Option<&'r str>,
    kind: Option<&'r str>,
    service: Option<&'r str>,
    from: Option<&'r str>,
    to: Option<&'r str>,
    before: Option<i64>,
    limit: Option<i64>,
}

#[get("/admin/audit?<query..>")]
async fn admin_page(
    app: &State<AppState>,
    _admin: AdminUser<'_>,
    layout: Layout,
    query: AuditQuery<'_>,
) -> AppResult<Template> {
    let AuditQuery { user, kind, service, from, to, before, limit } = query;
    let limit = limit.unwrap_or(100).clamp(1, 500);
    let bad = |what: &str| AppError::BadRequest(format!("`{what}` is YYYY-MM-DD or unix seconds"));
    let from_at = clean(from).map(|f| parse_time(&f, false).ok_or_else(|| bad("from"))).transpose()?;
    let to_at = clean(to).map(|t| parse_time(&t, true).ok_or_else(|| bad("to"))).transpose()?;
    let (user_s, kind_s, service_s) = (clean(user), clean(kind), clean(service));
    let (u, k, s) = (user_s.clone(), kind_s.clone(), service_s.clone());
    let entries = app
        .db
        .run(move |conn| {
            let user_id = match &u {
                None => None,
                Some(text) => match text.parse::<i64>() {
                    Ok(id) => Some(id),
                    // An unknown name matches nothing.
                    Err(_) => Some(users::find_by_username(conn, text)?.map(|u| u.id).unwrap_or(-1)),
                },
            };
            let f = Filter { user_id, kind: k, service: s, from: from_at, to: to_at, before_id: before };
            Ok(rows::list(conn, &f, limit)?)
        })
        .await?;
    let filters = Shown {
        user: user_s.unwrap_or_default(),
        kind: kind_s.unwrap_or_default(),
        service: service_s.unwrap_or_default(),
        from: clean(from).unwrap_or_default(),
        to: clean(to).unwrap_or_default(),
    };
    let next = (entries.len() as i64 == limit).then(|| {
        let last = entries.last().map(|e| e.id).unwrap_or_default();
        let q = [
            ("user", &filters.user),
            ("kind", &filters.kind),
            ("service", &filters.service),
            ("from", &filters.from),
            ("to", &filters.to),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)))
        .chain([format!("before={last}"), format!("limit={limit}")])
        .collect::<Vec<_>>()
        .join("&");
        format!("/admin/audit?{q}")
    });
    let page = AuditPage { entries: entries.into_iter().map(EntryView::from).collect(), filters, next };
    Ok(Template::render("admin/audit", Page::new(layout, "Audit log", page)))
}

#[derive(Serialize)]
struct ActivityPage {
    entries: Vec<EntryView>,
}

#[get("/settings/activity")]
async fn activity(app: &State<AppState>, user: &CurrentUser, layout: Layout) -> AppResult<Template> {
    let uid = user.id;
    let entries = app
        .db
        .run(move |conn| Ok(rows::list(conn, &Filter { user_id: Some(uid), ..Default::default() }, 100)?))
        .await?;
    let page = ActivityPage { entries: entries.into_iter().map(EntryView::from).collect() };
    Ok(Template::render("settings/activity", Page::new(layout, "Activity", page)))
}

//! `/`: the dashboard of services for signed-in users, a short introduction for everyone else.

use rocket::{get, routes, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::db::models::connections::{self, Health};
use crate::error::AppResult;
use crate::routes::view::ConnectionView;
use crate::state::AppState;
use crate::util::{now, relative_time};
use crate::web::{Layout, Page};

pub fn routes() -> Vec<Route> {
    routes![index]
}

#[derive(Serialize)]
struct ServiceCard {
    name: String,
    display_name: String,
    description: String,
    connected: bool,
    reconnect: bool,
    /// A transient provider failure: still connected, retried with backoff.
    degraded: bool,
    /// `data-status` of the card: the stored status, or `none`.
    status: &'static str,
    expires: Option<String>,
    is_demo: bool,
    /// The connected accounts' labels (several when the user connected more than one).
    accounts: Vec<String>,
    /// The connection the card shows (its Reconnect is pinned to it).
    connection_id: Option<i64>,
}

#[derive(Serialize)]
struct Dashboard {
    services: Vec<ServiceCard>,
    is_admin: bool,
}

#[get("/")]
async fn index(app: &State<AppState>, user: Option<&CurrentUser>, layout: Layout) -> AppResult<Template> {
    let Some(user) = user else {
        let body = Landing { allow_signup: app.settings.allow_signup };
        return Ok(Template::render("home/landing", Page::new(layout, "tokenvault", body)));
    };
    let uid = user.id;
    let rows = app.db.run(move |conn| Ok(connections::list_for_user(conn, uid)?)).await?;
    let now = now();
    let catalog = app.catalog.current();
    let services = catalog
        .iter()
        .map(|p| {
            let mine: Vec<ConnectionView> =
                rows.iter().filter(|c| c.service == p.name).map(|c| ConnectionView::of(c, &catalog)).collect();
            // The card shows the connection in the worst state (the first among equals).
            let row = mine.iter().min_by_key(|c| (c.health.severity_rank(), c.id));
            let health = row.map(|c| &c.health);
            ServiceCard {
                connection_id: row.map(|c| c.id),
                accounts: mine.iter().filter_map(ConnectionView::account_name).collect(),
                name: p.name.clone(),
                display_name: p.display_name.clone(),
                description: p.description.clone(),
                connected: row.is_some(),
                reconnect: matches!(health, Some(Health::ReconnectRequired { .. })),
                degraded: matches!(health, Some(Health::Degraded { .. })),
                status: health.map(|h| h.status().as_str()).unwrap_or("none"),
                expires: row.and_then(|c| c.expires_at).map(|e| relative_time(e, now)),
                is_demo: p.is_demo,
            }
        })
        .collect();
    Ok(Template::render(
        "home/dashboard",
        Page::new(layout, "Your services", Dashboard { services, is_admin: user.is_admin }),
    ))
}

#[derive(Serialize)]
struct Landing {
    allow_signup: bool,
}

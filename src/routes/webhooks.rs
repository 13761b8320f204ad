//! `/admin/webhooks`: the configured endpoints (name, URL, event filter — never the secret), their
//! latest deliveries, and "send test event", which enqueues a `webhook.test` for one endpoint.

use rocket::response::Redirect;
use rocket::{get, post, routes, uri, Route, State};
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::auth::{AdminUser, Csrf, CsrfOnly};
use crate::db::models::webhooks as rows;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{format_utc, now, relative_time};
use crate::web::{Flash, Layout, Page};
use crate::webhooks::outbox;

pub fn routes() -> Vec<Route> {
    routes![page, send_test]
}

/// Deliveries shown per endpoint.
const SHOWN: i64 = 20;

#[derive(Serialize)]
struct DeliveryView {
    event_type: &'static str,
    webhook_id: String,
    attempts: i64,
    status: &'static str,
    response_code: Option<i64>,
    error: Option<String>,
    when: String,
    when_utc: String,
    next_attempt: Option<String>,
}

#[derive(Serialize)]
struct EndpointView {
    name: String,
    url: String,
    events: String,
    deliveries: Vec<DeliveryView>,
}

#[derive(Serialize)]
struct WebhooksPage {
    endpoints: Vec<EndpointView>,
    csrf_token: String,
}

#[get("/admin/webhooks")]
async fn page(app: &State<AppState>, admin: AdminUser<'_>, layout: Layout) -> AppResult<Template> {
    let names: Vec<String> = app.webhooks.endpoints().iter().map(|e| e.name.clone()).collect();
    let recent = app
        .db
        .run(move |conn| {
            names.iter().map(|n| rows::recent(conn, n, SHOWN)).collect::<Result<Vec<_>, _>>().map_err(AppError::from)
        })
        .await?;
    let t = now();
    let endpoints = app
        .webhooks
        .endpoints()
        .iter()
        .zip(recent)
        .map(|(e, deliveries)| EndpointView {
            name: e.name.clone(),
            url: e.url.to_string(),
            events: e.filter_text(),
            deliveries: deliveries
                .into_iter()
                .map(|(d, ev)| DeliveryView {
                    event_type: ev.event_type.as_str(),
                    webhook_id: ev.msg_id,
                    attempts: d.attempts,
                    status: d.status.as_str(),
                    response_code: d.last_status_code,
                    error: d.last_error,
                    when: relative_time(d.updated_at, t),
                    when_utc: format_utc(d.updated_at),
                    next_attempt: (d.status == rows::DeliveryStatus::Pending).then(|| format_utc(d.next_attempt_at)),
                })
                .collect(),
        })
        .collect();
    let body = WebhooksPage { endpoints, csrf_token: admin.0.csrf_token.clone() };
    Ok(Template::render("admin/webhooks", Page::new(layout, "Webhooks", body)))
}

#[post("/admin/webhooks/<name>/test", data = "<_form>")]
async fn send_test(
    app: &State<AppState>,
    admin: AdminUser<'_>,
    name: &str,
    _form: Csrf<CsrfOnly>,
) -> AppResult<Flash<Redirect>> {
    let endpoint = app.webhooks.get(name).ok_or(AppError::NotFound)?.name.clone();
    let (ep, by) = (endpoint.clone(), admin.0.username.clone());
    let id = app.db.run(move |conn| Ok(outbox::record_test(conn, &ep, &by)?)).await?;
    app.webhooks.wake();
    tracing::info!(user_id = admin.0.id, endpoint = %endpoint, webhook_id = %id, "webhook test event queued");
    Ok(Flash::success(Redirect::to(uri!(page)), format!("A test event ({id}) was queued for {endpoint}.")))
}

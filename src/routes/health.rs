//! Operations: `/healthz` (liveness, touches nothing but the process), `/readyz` (database
//! reachable, migrations applied) and `/metrics` (Prometheus, unless `metrics = false`; behind
//! `metrics_token` when one is set, and outside `debug` not served without one).

use rocket::http::{ContentType, Status};
use rocket::request::{self, FromRequest, Request};
use rocket::response::{self, Responder};
use rocket::serde::json::{json, Json, Value};
use rocket::{get, routes, Route, State};

use crate::config::MetricsAccess;
use crate::db::models::connections;
use crate::error::{AppError, AppResult, StatusWords};
use crate::state::AppState;
use crate::web::render_error;

pub fn routes() -> Vec<Route> {
    routes![healthz, readyz, metrics]
}

#[get("/healthz")]
fn healthz() -> &'static str {
    "ok"
}

#[get("/readyz")]
async fn readyz(app: &State<AppState>) -> (Status, Json<Value>) {
    match app.db.run(|conn| Ok(crate::db::ready(conn))).await {
        Ok(Ok(())) => (Status::Ok, Json(json!({"status": "ready"}))),
        Ok(Err(reason)) | Err(crate::error::AppError::Unavailable(reason)) => {
            tracing::warn!(%reason, "not ready");
            (Status::ServiceUnavailable, Json(json!({"status": "not_ready"})))
        }
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (Status::ServiceUnavailable, Json(json!({"status": "not_ready"})))
        }
    }
}

/// The `Authorization` header of a request, if any (never fails).
pub struct Authorization<'r>(Option<&'r str>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Authorization<'r> {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> request::Outcome<Self, Self::Error> {
        request::Outcome::Success(Authorization(req.headers().get_one("Authorization")))
    }
}

/// A 401 for `/metrics` with its Bearer challenge (not the sign-in redirect pages get).
pub struct MetricsUnauthorized;

impl<'r> Responder<'r, 'static> for MetricsUnauthorized {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        tracing::info!("refused /metrics without its token");
        let message = "This needs the metrics token.".into();
        let mut res = render_error(req, Status::Unauthorized, StatusWords::of(Status::Unauthorized).code, message)?;
        res.set_raw_header("WWW-Authenticate", "Bearer realm=\"tokenvault metrics\"");
        Ok(res)
    }
}

#[get("/metrics")]
async fn metrics(
    app: &State<AppState>,
    authorization: Authorization<'_>,
) -> AppResult<Result<(ContentType, String), MetricsUnauthorized>> {
    match app.settings.metrics_access(authorization.0) {
        MetricsAccess::Allowed => {}
        MetricsAccess::Unauthorized => return Ok(Err(MetricsUnauthorized)),
        MetricsAccess::NotServed => return Err(AppError::NotFound),
    }
    let (by_status, deliveries, queues) = app
        .db
        .run(|conn| {
            Ok((
                connections::count_by_status(conn)?,
                crate::db::models::webhooks::count_by_status(conn)?,
                crate::jobs::metrics::queues(conn, crate::util::now())?,
            ))
        })
        .await?;
    let m = &app.metrics;
    let text = {
        let _scrape = m.scrape.lock().unwrap_or_else(|e| e.into_inner());
        m.oauth.set_connections(&by_status);
        m.webhooks.set_deliveries(&deliveries);
        m.jobs.set_queues(&queues);
        m.login.set(app.login_throttle.sizes(), app.hasher.stats());
        m.audit.set_losses(crate::audit::metrics::AuditLosses { dropped: app.audit.dropped(), lost: app.audit.lost() });
        m.caches.set(&app.caches.stats());
        m.registry.render()
    };
    Ok(Ok((ContentType::new("text", "plain").with_params(("version", "0.0.4")), text)))
}

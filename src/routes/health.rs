//! Operations: `/healthz` (liveness, touches nothing but the process), `/readyz` (database
//! reachable, migrations applied) and `/metrics` (Prometheus, unless `metrics = false`).

use rocket::http::{ContentType, Status};
use rocket::serde::json::{json, Json, Value};
use rocket::{get, routes, Route, State};

use crate::app::AppState;
use crate::db::models::connections;
use crate::error::{AppError, AppResult};

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

#[get("/metrics")]
async fn metrics(app: &State<AppState>) -> AppResult<(ContentType, String)> {
    if !app.settings.metrics {
        return Err(AppError::NotFound);
    }
    let by_status = app.db.run(|conn| Ok(connections::count_by_status(conn)?)).await?;
    app.metrics.set_login_figures(app.login_throttle.sizes(), app.hasher.stats());
    let text = app.metrics.render(&by_status, &app.caches.stats());
    Ok((ContentType::new("text", "plain").with_params(("version", "0.0.4")), text))
}

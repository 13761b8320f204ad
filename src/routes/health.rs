//! `/healthz`: liveness, touches nothing but the process.

use rocket::{get, routes, Route};

pub fn routes() -> Vec<Route> {
    routes![healthz]
}

#[get("/healthz")]
fn healthz() -> &'static str {
    "ok"
}

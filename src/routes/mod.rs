//! Thin handlers, one module per area. Each exposes `routes()`; `catchers()` are the error pages.

pub mod account;
pub mod admin;
pub mod api;
pub mod api_keys;
pub mod apps;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod console;
pub mod health;
pub mod home;
pub mod mcp;
pub mod password;
pub mod providers;
pub mod services;
pub mod sessions;
pub mod settings;
pub mod view;
pub mod webhooks;

use rocket::http::Status;
use rocket::response::{Redirect, Responder};
use rocket::{catch, catchers, uri, Catcher, Request};

use crate::error::StatusWords;
use crate::web::render_error;

pub fn catchers() -> Vec<Catcher> {
    catchers![unauthorized, default_catcher]
}

/// Sends signed-out visitors of a page to the login page, remembering where they were going.
#[catch(401)]
fn unauthorized(req: &Request<'_>) -> Result<Redirect, Prerendered> {
    if crate::web::wants_json(req) {
        let words = StatusWords::of(Status::Unauthorized);
        let mut answer = render_error(req, Status::Unauthorized, words.code, words.message.into());
        // RFC 9728 §5.1: say where the resource's metadata (and so its authorization server) is.
        if let (Ok(response), Some(app)) = (&mut answer, req.rocket().state::<crate::state::AppState>()) {
            if app.settings.authz.enabled && req.uri().path().starts_with("/api/v1") {
                let metadata = crate::authz::Resource::Api.metadata_url(&app.settings);
                // RFC 6750 §3.1: an error code only when credentials were sent.
                let error = if req.headers().contains("Authorization") { "error=\"invalid_token\", " } else { "" };
                response.set_raw_header("WWW-Authenticate", format!("Bearer {error}resource_metadata=\"{metadata}\""));
            }
        }
        return Err(Prerendered(answer));
    }
    let target = match req.method() {
        rocket::http::Method::Get => req.uri().to_string(),
        _ => "/".to_string(),
    };
    let next = crate::web::safe_next(&target).unwrap_or_else(|| "/".into());
    Ok(Redirect::to(uri!(crate::routes::auth::login_page(Some(next.as_str())))))
}

/// Every other error status (a guard's refusal, an unknown route, a body over its limit): the
/// status's own words. Nothing is logged here beyond the request line: whoever refused (a guard)
/// logged why.
#[catch(default)]
async fn default_catcher(status: Status, req: &Request<'_>) -> Prerendered {
    // Show the signed-in navigation on error pages too.
    crate::auth::CurrentUser::lookup(req).await;
    let words = StatusWords::of(status);
    Prerendered(render_error(req, status, words.code, words.message.into()))
}

/// A pre-rendered catcher response.
pub struct Prerendered(rocket::response::Result<'static>);

impl<'r> Responder<'r, 'static> for Prerendered {
    fn respond_to(self, _: &'r Request<'_>) -> rocket::response::Result<'static> {
        self.0
    }
}

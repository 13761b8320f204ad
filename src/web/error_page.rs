//! How an [`AppError`] (and every catcher) answers: an HTML error page in the site layout, or
//! JSON for API clients, with the one log line of the failure. It lives in `web/`, above the
//! model: `error.rs` only says what went wrong (status, code, message), this file how it is shown.

use rocket::http::{ContentType, Status};
use rocket::request::Request;
use rocket::response::{self, Responder};
use rocket::serde::json::Json;
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::error::{AppError, StatusWords};
use crate::web::RequestId;

#[derive(Serialize)]
struct ErrorPage<'a> {
    title: &'a str,
    status: u16,
    heading: &'a str,
    message: String,
    request_id: String,
    nav: super::Nav,
    flash: Option<super::FlashView>,
}

#[derive(Serialize)]
struct JsonError<'a> {
    error: &'a str,
    message: String,
    request_id: String,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    details: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether the client wants JSON rather than an HTML page: everything under `/api/`, a JSON
/// body without an `Accept`, or an `Accept` that prefers JSON.
pub fn wants_json(req: &Request<'_>) -> bool {
    req.uri().path().starts_with("/api/")
        || req.format().map(|f| f.is_json()).unwrap_or(false) && req.accept().is_none()
        || req.accept().map(|a| a.preferred().is_json()).unwrap_or(false)
}

/// Seconds a client is asked to wait (`Retry-After`) before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

/// Render an error for `req` (logging nothing): an HTML page with the site layout, or JSON for
/// API clients ([`wants_json`]); a 503 says when to come back. `AppError`'s responder and the
/// catchers both answer through here.
pub fn render_error(req: &Request<'_>, status: Status, code: &str, message: String) -> response::Result<'static> {
    render_error_with(req, status, code, message, None)
}

/// [`render_error`] with the error's own JSON fields ([`AppError::details`]).
fn render_error_with(
    req: &Request<'_>,
    status: Status,
    code: &str,
    message: String,
    details: Option<serde_json::Map<String, serde_json::Value>>,
) -> response::Result<'static> {
    let mut response = render_error_body(req, status, code, message, details)?;
    // A 503 (database outage, overload, shutdown) is temporary: say when to come back.
    if status == Status::ServiceUnavailable {
        response.set_raw_header("Retry-After", RETRY_AFTER_SECS.to_string());
    }
    Ok(response)
}

fn render_error_body(
    req: &Request<'_>,
    status: Status,
    code: &str,
    message: String,
    details: Option<serde_json::Map<String, serde_json::Value>>,
) -> response::Result<'static> {
    let request_id = req.local_cache(RequestId::new).to_string();
    if wants_json(req) {
        let body = JsonError { error: code, message, request_id, details };
        return (status, Json(body)).respond_to(req);
    }
    let heading = StatusWords::of(status).heading;
    let page = ErrorPage {
        title: heading,
        status: status.code,
        heading,
        message,
        request_id,
        nav: crate::auth::CurrentUser::cached(req).map(super::Nav::for_user).unwrap_or_else(super::Nav::anonymous),
        flash: None,
    };
    let mut response = Template::render("errors/error", &page).respond_to(req)?;
    response.set_status(status);
    response.set_header(ContentType::HTML);
    Ok(response)
}

/// The most of an error's detail its log line holds.
pub const LOGGED_ERROR_MAX: usize = 512;

impl<'r> Responder<'r, 'static> for AppError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let (status, code) = (self.status(), self.code());
        let request_id = req.local_cache(RequestId::new).to_string();
        // The one log line of this failure: its detail may hold what the client sent (a name, a
        // query key), so it is capped like the request line's path.
        let detail = self.to_string();
        let error = crate::util::capped(&detail, LOGGED_ERROR_MAX);
        if self.is_news() {
            tracing::error!(%request_id, status = status.code, code, %error, "request failed");
        } else {
            tracing::info!(%request_id, status = status.code, code, %error, "request refused");
        }
        let mut response = render_error_with(req, status, code, self.user_message(), self.details())?;
        if let Some(seconds) = self.retry_after() {
            response.set_raw_header("Retry-After", seconds.to_string());
        }
        if let AppError::OutsideGrant { scope, .. } = &self {
            // Step-up (RFC 6750 §3.1, MCP 2025-11-25): the scope to ask the user for.
            let metadata = req
                .rocket()
                .state::<crate::state::AppState>()
                .map(|app| {
                    format!(", resource_metadata=\"{}\"", crate::authz::Resource::Api.metadata_url(&app.settings))
                })
                .unwrap_or_default();
            response.set_raw_header(
                "WWW-Authenticate",
                format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"{metadata}"),
            );
        }
        Ok(response)
    }
}

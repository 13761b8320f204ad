//! The one error type of the app, its HTTP status, and how it is shown.
//!
//! Which variant to use:
//! - `NotFound`: unknown service, another user's row (never reveal that it exists), missing page.
//! - `BadRequest(msg)`: the request itself is wrong; `msg` is shown to the user, so keep secrets out.
//! - `Upstream { .. }`: a provider failed; `message` is shown, `detail` is only logged.
//! - `Unavailable`: the database pool is exhausted or the server is shutting down (503).
//! - `Busy { retry_after }`: a bounded resource (password hashing) is saturated: 503 with
//!   `Retry-After`, code `busy`.
//! - `Database`, `Vault`, `Internal`: bugs or broken state; logged with detail, shown as a plain 500.

use rocket::http::{ContentType, Status};
use rocket::request::Request;
use rocket::response::{self, Responder};
use rocket::serde::json::Json;
use rocket_dyn_templates::Template;
use serde::Serialize;

use crate::web::RequestId;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("too many requests")]
    TooManyRequests,
    #[error("upstream failure ({status}): {detail}")]
    Upstream { status: Status, message: String, detail: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("busy (retry after {retry_after} s)")]
    Busy { retry_after: u64 },
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("vault error: {0}")]
    Vault(#[from] crate::vault::VaultError),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn status(&self) -> Status {
        match self {
            AppError::NotFound => Status::NotFound,
            AppError::BadRequest(_) => Status::BadRequest,
            AppError::TooManyRequests => Status::TooManyRequests,
            AppError::Upstream { status, .. } => *status,
            AppError::Unavailable(_) | AppError::Busy { .. } => Status::ServiceUnavailable,
            AppError::Database(diesel::result::Error::NotFound) => Status::NotFound,
            AppError::Database(_) | AppError::Vault(_) | AppError::Internal(_) => Status::InternalServerError,
        }
    }

    /// The message a user may see. Never contains a secret or internal detail.
    pub fn user_message(&self) -> String {
        match self {
            AppError::NotFound | AppError::Database(diesel::result::Error::NotFound) => {
                "We could not find what you asked for.".into()
            }
            AppError::BadRequest(msg) => msg.clone(),
            AppError::TooManyRequests => "Too many attempts. Wait a minute and try again.".into(),
            AppError::Upstream { message, .. } => message.clone(),
            AppError::Unavailable(_) => "tokenvault is busy right now. Please try again in a moment.".into(),
            AppError::Busy { retry_after } => {
                format!("tokenvault is busy right now. Please try again in {retry_after} seconds.")
            }
            AppError::Vault(_) => "A stored secret could not be decrypted. An administrator needs to check \
                                   the vault key configuration."
                .into(),
            AppError::Database(_) | AppError::Internal(_) => {
                "Something went wrong on our side. It has been logged.".into()
            }
        }
    }

    /// A stable machine-readable code for JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Busy { .. } => "busy",
            _ => code_for(self.status()),
        }
    }

    /// Seconds for a `Retry-After` header, for errors that say when to come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::Busy { retry_after } => Some(*retry_after),
            AppError::TooManyRequests => Some(60),
            _ => None,
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> AppError {
        AppError::Internal(detail.to_string())
    }
}

impl From<diesel::r2d2::PoolError> for AppError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        AppError::Unavailable(format!("database pool: {e}"))
    }
}

#[derive(Serialize)]
struct ErrorPage<'a> {
    title: &'a str,
    status: u16,
    heading: String,
    message: String,
    request_id: String,
    nav: crate::web::Nav,
    flash: Option<crate::web::FlashView>,
}

#[derive(Serialize)]
struct JsonError<'a> {
    error: &'a str,
    message: String,
    request_id: String,
}

/// Whether the client wants JSON rather than an HTML page.
pub fn wants_json(req: &Request<'_>) -> bool {
    req.uri().path().starts_with("/api/")
        || req.format().map(|f| f.is_json()).unwrap_or(false) && req.accept().is_none()
        || req.accept().map(|a| a.preferred().is_json()).unwrap_or(false)
}

/// Render an error for `req`: an HTML page with the site layout, or JSON for API clients.
/// The stable JSON error code of a status, for errors (and catchers) without a more specific one.
pub fn code_for(status: Status) -> &'static str {
    match status.code {
        400 | 422 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        409 => "reconnect_required",
        413 => "request_too_large",
        429 => "too_many_requests",
        502 => "provider_error",
        503 => "unavailable",
        504 => "provider_timeout",
        _ => "internal_error",
    }
}

/// Seconds a client is asked to wait (`Retry-After`) before retrying a 503.
pub const RETRY_AFTER_SECS: u32 = 5;

pub fn render_error(req: &Request<'_>, status: Status, code: &str, message: String) -> response::Result<'static> {
    let mut response = render_error_body(req, status, code, message)?;
    // A 503 (database outage, overload, shutdown) is temporary: say when to come back.
    if status == Status::ServiceUnavailable {
        response.set_raw_header("Retry-After", RETRY_AFTER_SECS.to_string());
    }
    Ok(response)
}

fn render_error_body(req: &Request<'_>, status: Status, code: &str, message: String) -> response::Result<'static> {
    let request_id = req.local_cache(RequestId::new).to_string();
    if wants_json(req) {
        let body = JsonError { error: code, message, request_id };
        return (status, Json(body)).respond_to(req);
    }
    let heading = match status.code {
        400 => "That request did not work",
        403 => "Not allowed",
        404 => "Not found",
        422 => "That form could not be read",
        429 => "Too many attempts",
        502 => "The provider did not answer properly",
        503 => "Temporarily unavailable",
        504 => "The provider took too long",
        _ => "Something went wrong",
    };
    let page = ErrorPage {
        title: heading,
        status: status.code,
        heading: heading.to_string(),
        message,
        request_id,
        nav: crate::auth::CurrentUser::cached(req)
            .map(crate::web::Nav::for_user)
            .unwrap_or_else(crate::web::Nav::anonymous),
        flash: None,
    };
    let mut response = Template::render("errors/error", &page).respond_to(req)?;
    response.set_status(status);
    response.set_header(ContentType::HTML);
    Ok(response)
}

impl<'r> Responder<'r, 'static> for AppError {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'static> {
        let status = self.status();
        let request_id = req.local_cache(RequestId::new).to_string();
        if status.code >= 500 {
            tracing::error!(%request_id, status = status.code, error = %self, "request failed");
        } else {
            tracing::info!(%request_id, status = status.code, error = %self, "request refused");
        }
        let mut response = render_error(req, status, self.code(), self.user_message())?;
        if let Some(seconds) = self.retry_after() {
            response.set_raw_header("Retry-After", seconds.to_string());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(AppError::NotFound.status(), Status::NotFound);
        assert_eq!(AppError::Unavailable("x".into()).status(), Status::ServiceUnavailable);
        assert_eq!(AppError::Vault(crate::vault::VaultError::Decrypt).status(), Status::InternalServerError);
        let up = AppError::Upstream { status: Status::GatewayTimeout, message: "m".into(), detail: "d".into() };
        assert_eq!(up.status(), Status::GatewayTimeout);
        assert_eq!(up.code(), "provider_timeout");
        let busy = AppError::Busy { retry_after: 2 };
        assert_eq!((busy.status(), busy.code(), busy.retry_after()), (Status::ServiceUnavailable, "busy", Some(2)));
        assert_eq!(AppError::TooManyRequests.retry_after(), Some(60));
    }

    #[test]
    fn internal_detail_is_not_shown() {
        let e = AppError::internal("SELECT secret FROM x");
        assert!(!e.user_message().contains("SELECT"));
        let e = AppError::Upstream { status: Status::BadGateway, message: "shown".into(), detail: "hidden".into() };
        assert_eq!(e.user_message(), "shown");
    }
}

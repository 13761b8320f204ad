//! The one error type of the app, from the model to the response: its HTTP status, its stable
//! JSON code, the message a user may see, the detail that is logged, and how it is shown — an
//! HTML page with the site layout, or JSON (`{"error": "<code>", "message", "request_id"}`) when
//! the request asks for it (`web::wants_json`: under `/api/`, or `Accept: application/json`).
//!
//! Which variant to use:
//! - `NotFound`: another user's row (never reveal that it exists), a missing page or record.
//! - `UnknownService`, `NotConnected`, `NoApiBase`: the API's finer 404s (a page may show them too).
//! - `BadRequest(msg)`: the request itself is wrong; `msg` is shown to the user, so keep secrets out.
//!   `BadPath` and `PayloadTooLarge` are the proxy's refusals (400 `bad_path`, 413).
//! - `ReconnectRequired`: the provider no longer accepts the grant; the user must connect again (409).
//! - `NotConfigured`: tokenvault has no client credentials for the provider: an administrator's
//!   problem, 503 `not_configured` (README, openapi.json), the same on pages and in the API.
//! - `Upstream { .. }`: a provider failed; `message` is shown, `detail` is only logged.
//!   `ClientRejected` (it refused tokenvault's client credentials) and `ProviderResponseTooLarge`
//!   are the provider failures with codes of their own.
//! - `Unavailable`: the database pool is exhausted or the server is shutting down (503).
//! - `Busy { retry_after }`: a bounded resource (password hashing) is saturated: 503 with
//!   `Retry-After`, code `busy`.
//! - `Database`, `Vault`, `Internal`: bugs or broken state; logged with detail, shown as a plain 500.
//!
//! Every failure answered with an `AppError` writes one log line of its own (`request failed` at
//! `error` for ≥ 500, `request refused` at `info` otherwise — and for the 503s that only repeat a
//! state logged when it began, see [`AppError::is_news`]; besides the request line, and besides a
//! warning where the failure is an event of its own, such as a connection turning "reconnect
//! required" or the hasher refusing work) with the request id, status, code and
//! the error's `Display` — which names services and causes, never a token, secret or query.
//! Errors that are not an `AppError` (a guard's refusal, an unknown route) are rendered by the
//! catchers with the same `render_error`, from the same [`StatusWords`] table. How an error is
//! shown (the page, the JSON body, the log line) is `web::error_page`, above the model.

use rocket::http::Status;

/// The service an error is about: its configured name (logged) and display name (shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub display_name: String,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("not found")]
    NotFound,
    #[error("unknown service")]
    UnknownService,
    #[error("{0}: not connected")]
    NotConnected(Service),
    #[error("{0}: no api_base_url configured")]
    NoApiBase(Service),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A form that was read but refused (a value that fails validation): 422 with the message,
    /// the form shown again with what was typed.
    #[error("refused: {0}")]
    Refused(String),
    /// The service exists but an administrator disabled it (409 `service_disabled`; its
    /// connections are kept).
    #[error("{0}: disabled")]
    ServiceDisabled(Service),
    #[error("refused proxy path")]
    BadPath,
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("too many requests")]
    TooManyRequests,
    /// An API key used outside its limits (a service or capability it was not given).
    #[error("forbidden scope: {0}")]
    ForbiddenScope(String),
    /// An access token of tokenvault's authorization server used beyond its grant: 403
    /// `forbidden_scope` as for a limited key, and `scope` (the OAuth scopes to ask for) in the
    /// JSON and in `WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750 §3.1).
    #[error("outside the grant: {message}")]
    OutsideGrant { message: String, scope: String },
    #[error("{0}: reconnect required")]
    ReconnectRequired(Service),
    /// Several accounts of the service are connected and the request named none of them (409
    /// `ambiguous_account`, the accounts listed so the caller can name one).
    #[error("{service}: several accounts are connected and none was named")]
    AmbiguousAccount { service: Service, accounts: Vec<serde_json::Value> },
    /// The connection's grant lacks scopes the caller requires (403 `insufficient_scope`, with
    /// the page that asks the provider for them on the same connection).
    #[error("{service}: the grant lacks {missing:?}")]
    /// `upgrade_url` is `None` when a missing scope is one the provider does not offer here (not
    /// in its `scopes` or `optional_scopes`): no authorization would grant it.
    InsufficientScope { service: Service, missing: Vec<String>, upgrade_url: Option<String> },
    /// The request conflicts with the current state (409); the message is shown.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{service}: no client credentials in the vault")]
    NotConfigured { service: Service, client_id_path: String },
    #[error("upstream failure ({status}): {detail}")]
    Upstream { status: Status, message: String, detail: String },
    #[error("client credentials rejected: {detail}")]
    ClientRejected { message: String, detail: String },
    #[error("{service}: the provider's answer is too large or unreadable: {detail}")]
    ProviderResponseTooLarge { service: Service, detail: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The connection is degraded (the provider failed) and its next attempt is `retry_after`
    /// seconds away: 503 with that `Retry-After`, nothing sent to the provider.
    #[error("{service}: degraded, next attempt in {retry_after} s")]
    ProviderUnavailable { service: Service, retry_after: u64 },
    #[error("busy (retry after {retry_after} s)")]
    Busy { retry_after: u64 },
    #[error("database error: {}", with_causes(.0))]
    Database(#[from] diesel::result::Error),
    #[error("vault error: {0}")]
    /// A sealed value that does not open, with why (`vault::VaultError`, converted there: the base
    /// imports nothing above it).
    Vault(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;

/// An error and its causes, `: `-separated (Diesel's "Error deserializing field 'status'" says
/// which field, its cause which value).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl AppError {
    pub fn status(&self) -> Status {
        match self {
            AppError::NotFound
            | AppError::UnknownService
            | AppError::NotConnected(_)
            | AppError::NoApiBase(_)
            | AppError::Database(diesel::result::Error::NotFound) => Status::NotFound,
            AppError::BadRequest(_) | AppError::BadPath => Status::BadRequest,
            AppError::Refused(_) => Status::UnprocessableEntity,
            AppError::PayloadTooLarge { .. } => Status::PayloadTooLarge,
            AppError::TooManyRequests => Status::TooManyRequests,
            AppError::ForbiddenScope(_) | AppError::OutsideGrant { .. } | AppError::InsufficientScope { .. } => {
                Status::Forbidden
            }
            AppError::ReconnectRequired(_)
            | AppError::AmbiguousAccount { .. }
            | AppError::Conflict(_)
            | AppError::ServiceDisabled(_) => Status::Conflict,
            AppError::Upstream { status, .. } => *status,
            AppError::ClientRejected { .. } | AppError::ProviderResponseTooLarge { .. } => Status::BadGateway,
            AppError::NotConfigured { .. }
            | AppError::Unavailable(_)
            | AppError::Busy { .. }
            | AppError::ProviderUnavailable { .. } => Status::ServiceUnavailable,
            AppError::Database(_) | AppError::Vault(_) | AppError::Internal(_) => Status::InternalServerError,
        }
    }

    /// The stable machine-readable code of JSON errors: the variant's own, else its status's.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::UnknownService => "unknown_service",
            AppError::NotConnected(_) => "not_connected",
            AppError::NoApiBase(_) => "no_api_base",
            AppError::BadPath => "bad_path",
            AppError::Refused(_) => "invalid_input",
            AppError::ServiceDisabled(_) => "service_disabled",
            AppError::NotConfigured { .. } => "not_configured",
            AppError::ClientRejected { .. } => "provider_rejected_client",
            AppError::ProviderResponseTooLarge { .. } => "provider_response_too_large",
            AppError::Busy { .. } => "busy",
            AppError::ForbiddenScope(_) | AppError::OutsideGrant { .. } => "forbidden_scope",
            AppError::AmbiguousAccount { .. } => "ambiguous_account",
            AppError::InsufficientScope { .. } => "insufficient_scope",
            _ => StatusWords::of(self.status()).code,
        }
    }

    /// The message a user may see. Never contains a secret or internal detail.
    pub fn user_message(&self) -> String {
        match self {
            AppError::UnknownService => "No such service.".into(),
            AppError::NotConnected(s) => format!("{} is not connected.", s.display_name),
            AppError::NoApiBase(s) => format!("{} has no API base URL configured.", s.display_name),
            AppError::BadRequest(msg)
            | AppError::ForbiddenScope(msg)
            | AppError::Conflict(msg)
            | AppError::Refused(msg) => msg.clone(),
            AppError::OutsideGrant { message, .. } => message.clone(),
            AppError::ServiceDisabled(s) => {
                format!("{} is disabled by an administrator; its connections are kept.", s.display_name)
            }
            AppError::AmbiguousAccount { service, .. } => format!(
                "Several {} accounts are connected: name one with ?account=<account id> (or ?connection=<id>).",
                service.display_name
            ),
            AppError::InsufficientScope { service, missing, upgrade_url: Some(_) } => format!(
                "The {} connection was not granted {}. Open upgrade_url to ask for more permissions.",
                service.display_name,
                missing.join(", ")
            ),
            AppError::InsufficientScope { service, missing, upgrade_url: None } => format!(
                "The {} connection was not granted {}, and {} does not offer all of them here \
                 (not in its scopes or optional_scopes), so there is no upgrade to ask for.",
                service.display_name,
                missing.join(", "),
                service.display_name
            ),
            AppError::BadPath => {
                "The path must stay under the service's API base URL, without `;`, encoded dots or backslashes.".into()
            }
            AppError::PayloadTooLarge { limit } => format!("Request bodies are limited to {limit} bytes."),
            AppError::ReconnectRequired(s) => {
                format!("Your {} connection needs to be authorized again.", s.display_name)
            }
            AppError::NotConfigured { service, client_id_path } => format!(
                "{} is not set up yet: an administrator must set {client_id_path} in the vault.",
                service.display_name
            ),
            AppError::Upstream { message, .. } | AppError::ClientRejected { message, .. } => message.clone(),
            AppError::ProviderResponseTooLarge { service, .. } => {
                format!("{}'s answer is larger than the proxy allows or unreadable.", service.display_name)
            }
            AppError::Busy { retry_after } => {
                format!("tokenvault is busy right now. Please try again in {retry_after} seconds.")
            }
            AppError::ProviderUnavailable { service, retry_after } => format!(
                "{} is failing at the moment; tokenvault will try again in {retry_after} seconds.",
                service.display_name
            ),
            AppError::Vault(_) => "A stored secret could not be decrypted. An administrator needs to check \
                                   the vault key configuration."
                .into(),
            AppError::Database(e) if !matches!(e, diesel::result::Error::NotFound) => {
                "Something went wrong on our side. It has been logged.".into()
            }
            AppError::Internal(_) => "Something went wrong on our side. It has been logged.".into(),
            AppError::NotFound | AppError::Database(_) | AppError::TooManyRequests | AppError::Unavailable(_) => {
                StatusWords::of(self.status()).message.into()
            }
        }
    }

    /// Fields a JSON error carries besides `error`, `message` and `request_id` (never a secret).
    pub fn details(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let mut extra = serde_json::Map::new();
        match self {
            AppError::AmbiguousAccount { accounts, .. } => {
                extra.insert("accounts".into(), serde_json::Value::Array(accounts.clone()));
            }
            AppError::InsufficientScope { missing, upgrade_url, .. } => {
                extra.insert("missing".into(), serde_json::json!(missing));
                extra.insert("upgrade_url".into(), serde_json::json!(upgrade_url));
            }
            AppError::OutsideGrant { scope, .. } => {
                extra.insert("scope".into(), serde_json::json!(scope));
            }
            _ => return None,
        }
        Some(extra)
    }

    /// Whether answering this is news for the error log (`request failed` at `error`): a 5xx,
    /// unless it only repeats a state that was logged when it began — a degraded connection
    /// backing off (`connection degraded`, at `warn`, when its refresh failed) or a full
    /// password-hashing queue (logged by the hasher when it filled up). Those refusals, like a
    /// 4xx, are `request refused` at `info`: a client polling a degraded connection cannot flood
    /// the error log with one line a request.
    pub fn is_news(&self) -> bool {
        self.status().code >= 500 && !matches!(self, AppError::ProviderUnavailable { .. } | AppError::Busy { .. })
    }

    /// Seconds for a `Retry-After` header, for errors that say when to come back.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::Busy { retry_after } | AppError::ProviderUnavailable { retry_after, .. } => Some(*retry_after),
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

/// What is said for a status: the stable JSON code, the error page's heading, and the message
/// of an error that brings none of its own (the catchers'). The one table of status words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusWords {
    pub code: &'static str,
    pub heading: &'static str,
    pub message: &'static str,
}

impl StatusWords {
    pub fn of(status: Status) -> StatusWords {
        const WRONG: &str = "Something went wrong";
        const OUR_SIDE: &str = "Something went wrong on our side.";
        const NOT_UNDERSTOOD: &str = "That request could not be understood.";
        let (code, heading, message) = match status.code {
            400 => ("bad_request", "That request did not work", NOT_UNDERSTOOD),
            401 => ("unauthorized", WRONG, "Sign in first."),
            403 => ("forbidden", "Not allowed", "This request was refused. Reload the page and try again."),
            404 => ("not_found", "Not found", "We could not find what you asked for."),
            409 => ("reconnect_required", WRONG, OUR_SIDE),
            413 => ("request_too_large", WRONG, "That request was too large."),
            422 => ("bad_request", "That form could not be read", NOT_UNDERSTOOD),
            429 => ("too_many_requests", "Too many attempts", "Too many attempts. Wait a minute and try again."),
            502 => ("provider_error", "The provider did not answer properly", OUR_SIDE),
            503 => (
                "unavailable",
                "Temporarily unavailable",
                "tokenvault is busy right now. Please try again in a moment.",
            ),
            504 => ("provider_timeout", "The provider took too long", OUR_SIDE),
            _ => ("internal_error", WRONG, OUR_SIDE),
        };
        StatusWords { code, heading, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> Service {
        Service { name: "fake".into(), display_name: "Fake Provider".into() }
    }

    #[test]
    fn statuses() {
        assert_eq!(AppError::NotFound.status(), Status::NotFound);
        assert_eq!(AppError::Unavailable("x".into()).status(), Status::ServiceUnavailable);
        assert_eq!(AppError::Vault("a sealed value does not decrypt".into()).status(), Status::InternalServerError);
        let up = AppError::Upstream { status: Status::GatewayTimeout, message: "m".into(), detail: "d".into() };
        assert_eq!(up.status(), Status::GatewayTimeout);
        assert_eq!(up.code(), "provider_timeout");
        let busy = AppError::Busy { retry_after: 2 };
        assert_eq!((busy.status(), busy.code(), busy.retry_after()), (Status::ServiceUnavailable, "busy", Some(2)));
        assert_eq!(AppError::TooManyRequests.retry_after(), Some(60));
    }

    /// The API's documented statuses and codes (README "Errors are JSON …", openapi.json).
    #[test]
    fn the_documented_codes() {
        let not_configured = AppError::NotConfigured { service: fake(), client_id_path: "fake.client_id".into() };
        let rejected = AppError::ClientRejected { message: "m".into(), detail: "d".into() };
        let large = AppError::ProviderResponseTooLarge { service: fake(), detail: "d".into() };
        let cases = [
            (AppError::BadPath, 400, "bad_path"),
            (AppError::BadRequest("x".into()), 400, "bad_request"),
            (AppError::UnknownService, 404, "unknown_service"),
            (AppError::NotConnected(fake()), 404, "not_connected"),
            (AppError::NoApiBase(fake()), 404, "no_api_base"),
            (AppError::NotFound, 404, "not_found"),
            (AppError::OutsideGrant { message: "m".into(), scope: "proxy:write".into() }, 403, "forbidden_scope"),
            (AppError::ReconnectRequired(fake()), 409, "reconnect_required"),
            (AppError::PayloadTooLarge { limit: 10 }, 413, "request_too_large"),
            (AppError::internal("x"), 500, "internal_error"),
            (
                AppError::Upstream { status: Status::BadGateway, message: "m".into(), detail: "d".into() },
                502,
                "provider_error",
            ),
            (rejected, 502, "provider_rejected_client"),
            (large, 502, "provider_response_too_large"),
            (AppError::Unavailable("pool".into()), 503, "unavailable"),
            (not_configured, 503, "not_configured"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status().code, e.code()), (status, code), "{e}");
        }
        assert_eq!(StatusWords::of(Status::Unauthorized).code, "unauthorized");
        assert_eq!(StatusWords::of(Status::UnprocessableEntity).code, "bad_request");
        assert_eq!(StatusWords::of(Status::ImATeapot).code, "internal_error");
    }

    #[test]
    fn internal_detail_is_not_shown() {
        let e = AppError::internal("SELECT secret FROM x");
        assert!(!e.user_message().contains("SELECT"));
        let e = AppError::Upstream { status: Status::BadGateway, message: "shown".into(), detail: "hidden".into() };
        assert_eq!(e.user_message(), "shown");
        let e = AppError::NotConfigured { service: fake(), client_id_path: "fake.client_id".into() };
        assert_eq!(e.to_string(), "fake: no client credentials in the vault");
        assert!(e.user_message().contains("Fake Provider is not set up yet"), "{}", e.user_message());
    }
}

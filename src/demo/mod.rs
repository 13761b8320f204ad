//! The built-in demo authorization server, served under `/demo` when `demo_provider` is on.
//!
//! It is small but real: a consent page (Allow / Deny), a token endpoint for the
//! `authorization_code` (PKCE S256 required, single-use codes, exact redirect_uri) and
//! `refresh_token` grants (rotation; replaying a used refresh token revokes the whole grant), an
//! RFC 7009 revocation endpoint, and an account API that answers 401 for expired or revoked tokens.
//! Its client credentials live in the project vault like any provider's (created on first start).
//!
//! - `authorize.rs`: the consent page and its Allow / Deny (codes are issued here);
//! - `token.rs`: client authentication, the token endpoint and RFC 7009 revocation;
//! - `api.rs`: the account API, the resource a token opens;
//! - `console.rs`: the administrators' console (grants, and a switch that makes token calls fail).

mod api;
mod authorize;
mod console;
mod token;

use rocket::http::{Header, Status};
use rocket::request::Request;
use rocket::response::Responder;
use rocket::serde::json::{json, Json};
use rocket::Route;

use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::{random_token, ExposeSecret};
use crate::vault::store as vault;

pub fn routes() -> Vec<Route> {
    [authorize::routes(), token::routes(), api::routes(), console::routes()].concat()
}

/// The `Retry-After` of the console's `rate_limited` failure, seconds.
pub const RATE_LIMIT_RETRY_AFTER: u64 = 120;
/// The `refresh_token_expires_in` of the console's `refresh_token_expires_in` mode: 6 days.
pub const REFRESH_TOKEN_LIFETIME: i64 = 6 * 86_400;

/// The console's switch: make the next token calls fail (or answer unusually), to see each
/// connection state happen: `temporarily_unavailable` (503), `slow` (past `http_timeout`),
/// `invalid_grant`, `rate_limited` (429 + `Retry-After`), `omit_expires_in` and
/// `refresh_token_expires_in` (successful answers shaped so).
#[derive(Debug, Default)]
pub struct FailureSwitch {
    remaining: std::sync::atomic::AtomicU32,
    mode: std::sync::Mutex<String>,
}

impl FailureSwitch {
    /// The failure to inject into this token call, if any.
    fn take(&self) -> Option<String> {
        use std::sync::atomic::Ordering;
        self.remaining.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).ok()?;
        Some(self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub const CLIENT_ID_PATH: &str = "demo.client_id";
pub const CLIENT_SECRET_PATH: &str = "demo.client_secret";

/// Make sure the demo client's credentials exist in the vault (first start).
pub fn ensure_client(conn: &mut Conn, cipher: &crate::vault::Cipher) -> AppResult<()> {
    if vault::get(conn, cipher, CLIENT_ID_PATH)?.is_none() {
        vault::set(conn, cipher, CLIENT_ID_PATH, &format!("tokenvault-demo-{}", &random_token(6)), "system")?;
    }
    if vault::get(conn, cipher, CLIENT_SECRET_PATH)?.is_none() {
        vault::set(conn, cipher, CLIENT_SECRET_PATH, &random_token(32), "system")?;
    }
    Ok(())
}

/// An OAuth error answer: `{"error": …}` with a status.
pub struct OAuthError(Status, &'static str, &'static str);

impl<'r> Responder<'r, 'static> for OAuthError {
    fn respond_to(self, req: &'r Request<'_>) -> rocket::response::Result<'static> {
        let mut res = (self.0, Json(json!({"error": self.1, "error_description": self.2}))).respond_to(req)?;
        if self.0 == Status::Unauthorized {
            res.set_header(Header::new("WWW-Authenticate", format!("Bearer error=\"{}\"", self.1)));
        }
        if self.0 == Status::TooManyRequests {
            res.set_header(Header::new("Retry-After", RATE_LIMIT_RETRY_AFTER.to_string()));
        }
        Ok(res)
    }
}

impl From<AppError> for OAuthError {
    fn from(e: AppError) -> Self {
        tracing::error!(error = %e, "demo provider failure");
        OAuthError(Status::InternalServerError, "server_error", "the demo provider failed")
    }
}

/// The demo client's id and secret, from the vault.
async fn demo_client(app: &AppState) -> AppResult<(String, String)> {
    let cipher = app.cipher.clone();
    app.db
        .run(move |conn| {
            let id = vault::get(conn, &cipher, CLIENT_ID_PATH)?.ok_or(AppError::NotFound)?;
            let secret = vault::get(conn, &cipher, CLIENT_SECRET_PATH)?.ok_or(AppError::NotFound)?;
            Ok((id.expose_secret().to_string(), secret.expose_secret().to_string()))
        })
        .await
}

/// The demo client's registered redirect URIs: this app's own callback, plus
/// `demo_redirect_uris` (another tokenvault using this one as its provider, on another origin).
fn registered_redirect(app: &AppState, uri: &str) -> bool {
    uri == app.settings.redirect_uri("demo") || app.settings.demo.redirect_uris.iter().any(|r| r == uri)
}

//! Flash messages: a short message for the next page, carried in the private cookie `tv_flash`.
//!
//! Rocket's own `Flash` uses a plain `_flash` cookie without `HttpOnly` and never `Secure`; this one
//! is built with the app's cookie attributes (`crate::auth::session::cookie`: HttpOnly,
//! SameSite=Lax, Secure on https) and is encrypted and signed like the session cookie. The
//! ergonomics are Rocket's: `Flash::success(Redirect::to(…), "…")` as a handler's answer, and the
//! `Layout` guard reads (and removes) the message on the next page.

use rocket::http::CookieJar;
use rocket::request::Request;
use rocket::response::{self, Responder};

use crate::auth::session::cookie;
use crate::config::Settings;
use crate::state::AppState;

use super::FlashView;

pub const FLASH_COOKIE: &str = "tv_flash";

/// How long an unread message waits for its page (the redirect is followed at once).
const FLASH_MAX_AGE_SECS: i64 = 300;

/// A responder (usually a `Redirect`) with a message for the next page.
#[derive(Debug)]
pub struct Flash<R> {
    inner: R,
    kind: &'static str,
    message: String,
}

impl<R> Flash<R> {
    pub fn success(inner: R, message: impl Into<String>) -> Flash<R> {
        Flash { inner, kind: "success", message: message.into() }
    }

    pub fn error(inner: R, message: impl Into<String>) -> Flash<R> {
        Flash { inner, kind: "error", message: message.into() }
    }

    pub fn kind(&self) -> &str {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<'r, 'o: 'r, R: Responder<'r, 'o>> Responder<'r, 'o> for Flash<R> {
    fn respond_to(self, req: &'r Request<'_>) -> response::Result<'o> {
        match req.rocket().state::<AppState>() {
            Some(app) => {
                let mut c = cookie(FLASH_COOKIE, format!("{}:{}", self.kind, self.message), &app.settings);
                c.set_max_age(rocket::time::Duration::seconds(FLASH_MAX_AGE_SECS));
                req.cookies().add_private(c);
            }
            None => tracing::error!("no application state: the flash message is dropped"),
        }
        self.inner.respond_to(req)
    }
}

/// The flash message this request carries, if any; the cookie is removed so it shows only once.
pub fn take(cookies: &CookieJar<'_>, settings: &Settings) -> Option<FlashView> {
    let c = cookies.get_private(FLASH_COOKIE)?;
    crate::auth::session::remove(cookies, FLASH_COOKIE, settings);
    let (kind, message) = c.value().split_once(':')?;
    let kind = match kind {
        "success" => "success",
        "error" => "error",
        _ => return None,
    };
    Some(FlashView { kind: kind.to_string(), message: message.to_string() })
}

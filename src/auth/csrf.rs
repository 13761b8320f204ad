//! CSRF protection for every POST form: a token bound to the session (or, before login, to a
//! private cookie), compared in constant time, plus an `Origin` check.

use rocket::data::{self, Data, FromData};
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::outcome::Outcome;
use rocket::request::Request;

use crate::auth::session::ANON_CSRF_COOKIE;
use crate::auth::CurrentUser;
use crate::state::AppState;
use crate::util::ct_eq;

/// A form that carries a `csrf_token` field.
pub trait CsrfField {
    fn csrf_token(&self) -> &str;
}

/// A form data guard that only succeeds when the form's CSRF token and the request's origin
/// check out. Failures answer 403 before the handler runs.
#[derive(Debug)]
pub struct Csrf<T>(pub T);

impl<T> Csrf<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Csrf<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Debug)]
pub enum CsrfError {
    Origin,
    Token,
    Form(String),
    /// The session could not be checked (database outage): 503.
    Unavailable,
}

/// Whether the request comes from our own origin (browsers send `Origin` on POSTs).
pub fn same_origin(req: &Request<'_>) -> bool {
    let Some(settings) = req.rocket().state::<AppState>().map(|s| &s.settings) else {
        return false;
    };
    let fetch_site = req.headers().get_one("Sec-Fetch-Site");
    if let Some(origin) = req.headers().get_one("Origin") {
        // Under `Referrer-Policy: no-referrer` browsers send `Origin: null` even for same-origin
        // form posts; `Sec-Fetch-Site` (which pages cannot set) then says where the post came from.
        let null_but_same_site = origin == "null" && fetch_site == Some("same-origin");
        if origin != settings.public_origin() && !null_but_same_site {
            return false;
        }
    }
    !matches!(fetch_site, Some("cross-site") | Some("same-site"))
}

#[rocket::async_trait]
impl<'r, T> FromData<'r> for Csrf<T>
where
    T: FromForm<'r> + CsrfField + Send + 'r,
{
    type Error = CsrfError;

    async fn from_data(req: &'r Request<'_>, data: Data<'r>) -> data::Outcome<'r, Self> {
        if !same_origin(req) {
            tracing::info!("refused a POST from another origin");
            return Outcome::Error((Status::Forbidden, CsrfError::Origin));
        }
        let form = match Form::<T>::from_data(req, data).await {
            Outcome::Success(form) => form.into_inner(),
            Outcome::Error((status, errors)) => {
                // A form without its token is a CSRF failure, not a malformed form.
                let status = if errors.iter().any(|e| e.is_for("csrf_token")) { Status::Forbidden } else { status };
                return Outcome::Error((status, CsrfError::Form(errors.to_string())));
            }
            Outcome::Forward(f) => return Outcome::Forward(f),
        };
        let given = form.csrf_token();
        let session_ok = match CurrentUser::check(req).await {
            Ok(Some(user)) => ct_eq(given, &user.csrf_token),
            Ok(None) => false,
            Err(_) => return Outcome::Error((Status::ServiceUnavailable, CsrfError::Unavailable)),
        };
        let anon_ok = req.cookies().get_private(ANON_CSRF_COOKIE).map(|c| ct_eq(given, c.value())).unwrap_or(false);
        if !given.is_empty() && (session_ok || anon_ok) {
            Outcome::Success(Csrf(form))
        } else {
            tracing::info!("refused a POST with a missing or wrong CSRF token");
            Outcome::Error((Status::Forbidden, CsrfError::Token))
        }
    }
}

/// A form with nothing but its CSRF token (buttons like Log out, Delete).
/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct CsrfOnly {
    pub csrf_token: String,
}

impl CsrfField for CsrfOnly {
    fn csrf_token(&self) -> &str {
        &self.csrf_token
    }
}

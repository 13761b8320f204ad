use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use serde::Serialize;

use crate::auth::CurrentUser;
use crate::state::AppState;

/// The navigation bar's view of the visitor.
#[derive(Clone, Serialize)]
pub struct Nav {
    pub username: Option<String>,
    pub is_admin: bool,
    /// The session's CSRF token, for the logout button.
    pub csrf_token: Option<String>,
}

impl Nav {
    pub fn anonymous() -> Nav {
        Nav { username: None, is_admin: false, csrf_token: None }
    }

    pub fn for_user(user: &CurrentUser) -> Nav {
        Nav {
            username: Some(user.username.clone()),
            is_admin: user.is_admin,
            csrf_token: Some(user.csrf_token.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlashView {
    /// `success` or `error` (used as a CSS class).
    pub kind: String,
    pub message: String,
}

/// What every page's layout needs: the nav and the flash message of the previous POST.
///
/// Fails only when the visitor's session could not be checked (the database is down): the page
/// is then a 503, not a signed-out version of itself.
pub struct Layout {
    pub nav: Nav,
    pub flash: Option<FlashView>,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Layout {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let nav = match CurrentUser::check(req).await {
            Ok(Some(user)) => Nav::for_user(user),
            Ok(None) => Nav::anonymous(),
            Err(_) => return Outcome::Error((Status::ServiceUnavailable, ())),
        };
        let flash = req.rocket().state::<AppState>().and_then(|app| super::flash::take(req.cookies(), &app.settings));
        Outcome::Success(Layout { nav, flash })
    }
}

/// A page's template context: the layout's parts plus the page's own fields (flattened).
#[derive(Serialize)]
pub struct Page<T: Serialize> {
    pub title: String,
    pub nav: Nav,
    pub flash: Option<FlashView>,
    #[serde(flatten)]
    pub body: T,
}

impl<T: Serialize> Page<T> {
    pub fn new(layout: Layout, title: impl Into<String>, body: T) -> Page<T> {
        Page { title: title.into(), nav: layout.nav, flash: layout.flash, body }
    }
}

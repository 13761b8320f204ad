//! Request guards: `&CurrentUser` (signed in, cached per request) and `AdminUser` built on it.

use rocket::http::Status;
use rocket::outcome::try_outcome;
use rocket::request::{FromRequest, Outcome, Request};

use crate::auth::session::session_cookie_name;
use crate::db::models::sessions;
use crate::state::AppState;
use crate::util::{now, sha256_hex};

/// The longest user agent kept with a session, in characters.
pub const USER_AGENT_MAX_CHARS: usize = 256;

/// The signed-in user of this request.
#[derive(Clone)]
pub struct CurrentUser {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    /// SHA-256 of the session id: what flows are bound to.
    pub session_hash: String,
    pub csrf_token: String,
}

/// The session could not be checked because the database failed (an outage, not "signed out").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUnavailable;

/// What the per-request lookup found; cached in the request under this one type.
type Lookup = Result<Option<CurrentUser>, SessionUnavailable>;

impl CurrentUser {
    /// The signed-in user if this request already looked it up (for synchronous callers such as
    /// error pages); `None` when it did not.
    pub fn cached<'r>(req: &'r Request<'_>) -> Option<&'r CurrentUser> {
        req.local_cache(|| Ok(None) as Lookup).as_ref().ok().and_then(Option::as_ref)
    }

    /// The signed-in user, looked up once per request; `None` when signed out or when the
    /// database could not be asked (see [`CurrentUser::check`] to tell the two apart).
    pub async fn lookup<'r>(req: &'r Request<'_>) -> Option<&'r CurrentUser> {
        Self::check(req).await.ok().flatten()
    }

    /// The signed-in user (`Ok(None)`: signed out), or `Err` when the session cookie could not be
    /// checked because the database failed: callers answer 503 rather than treat the visitor as
    /// signed out. Looked up once per request.
    pub async fn check<'r>(req: &'r Request<'_>) -> Result<Option<&'r CurrentUser>, SessionUnavailable> {
        let found: &Lookup = req
            .local_cache_async(async {
                let Some(app) = req.rocket().state::<AppState>() else { return Ok(None) };
                let Some(cookie) = req.cookies().get_private(session_cookie_name(&app.settings)) else {
                    return Ok(None);
                };
                let hash = sha256_hex(cookie.value());
                let ip = req.client_ip().map(|ip| ip.to_string());
                let agent = req
                    .headers()
                    .get_one("User-Agent")
                    .map(|ua| ua.chars().take(USER_AGENT_MAX_CHARS).collect::<String>());
                let found = app.db.run(move |conn| {
                    let found = sessions::find_valid(conn, &hash, now())?;
                    if let Some((session, _)) = &found {
                        // What My Settings → Sessions shows, written at most once a minute.
                        if session.last_seen_at.is_none_or(|t| t <= now() - sessions::TOUCH_INTERVAL) {
                            sessions::touch(conn, &session.id_hash, now(), ip.as_deref(), agent.as_deref())?;
                        }
                    }
                    Ok(found)
                });
                match found.await {
                    Ok(Some((session, user))) => Ok(Some(CurrentUser {
                        id: user.id,
                        username: user.username,
                        is_admin: user.is_admin,
                        session_hash: session.id_hash,
                        csrf_token: session.csrf_token,
                    })),
                    Ok(None) => Ok(None),
                    Err(e) => {
                        tracing::error!(error = %e, "session lookup failed: answering 503");
                        Err(SessionUnavailable)
                    }
                }
            })
            .await;
        found.as_ref().map(Option::as_ref).map_err(|e| *e)
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for &'r CurrentUser {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        match CurrentUser::check(req).await {
            Ok(Some(user)) => Outcome::Success(user),
            Ok(None) => Outcome::Error((Status::Unauthorized, ())),
            // An outage is an outage: the catcher answers 503 with `Retry-After`, not a sign-in page.
            Err(SessionUnavailable) => Outcome::Error((Status::ServiceUnavailable, ())),
        }
    }
}

/// A signed-in administrator.
pub struct AdminUser<'r>(pub &'r CurrentUser);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for AdminUser<'r> {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let user = try_outcome!(req.guard::<&CurrentUser>().await);
        if user.is_admin {
            Outcome::Success(AdminUser(user))
        } else {
            Outcome::Error((Status::Forbidden, ()))
        }
    }
}

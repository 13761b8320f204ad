//! Request guards: `&CurrentUser` (signed in, cached per request) and `AdminUser` built on it.

use rocket::http::Status;
use rocket::outcome::try_outcome;
use rocket::request::{FromRequest, Outcome, Request};

use crate::app::AppState;
use crate::auth::session::SESSION_COOKIE;
use crate::db::models::sessions;
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

impl CurrentUser {
    /// The signed-in user if this request already looked it up (for synchronous callers such as
    /// error pages); `None` when it did not.
    pub fn cached<'r>(req: &'r Request<'_>) -> Option<&'r CurrentUser> {
        req.local_cache(|| None::<CurrentUser>).as_ref()
    }

    /// The signed-in user, looked up once per request.
    pub async fn lookup<'r>(req: &'r Request<'_>) -> Option<&'r CurrentUser> {
        req.local_cache_async(async {
            let raw = req.cookies().get_private(SESSION_COOKIE)?.value().to_string();
            let db = &req.rocket().state::<AppState>()?.db;
            let hash = sha256_hex(&raw);
            let ip = req.client_ip().map(|ip| ip.to_string());
            let agent =
                req.headers().get_one("User-Agent").map(|ua| ua.chars().take(USER_AGENT_MAX_CHARS).collect::<String>());
            let found = db.run(move |conn| {
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
                Ok(Some((session, user))) => Some(CurrentUser {
                    id: user.id,
                    username: user.username,
                    is_admin: user.is_admin,
                    session_hash: session.id_hash,
                    csrf_token: session.csrf_token,
                }),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(error = %e, "session lookup failed");
                    None
                }
            }
        })
        .await
        .as_ref()
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for &'r CurrentUser {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        match CurrentUser::lookup(req).await {
            Some(user) => Outcome::Success(user),
            None => Outcome::Error((Status::Unauthorized, ())),
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

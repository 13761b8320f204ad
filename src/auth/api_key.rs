//! Personal API keys: `tvk_` + 256 random bits, shown once, stored as a SHA-256 hash, sent as
//! `Authorization: Bearer <key>`. A key acts for its user only.

use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};

use crate::app::AppState;
use crate::db::models::api_keys::{self, ApiKey, NewApiKey};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::{now, random_token, sha256_hex, Secret};

pub const KEY_PREFIX: &str = "tvk_";

/// Create a key for `user_id`; the key itself is returned once and never stored.
pub fn create(conn: &mut Conn, user_id: i64, name: &str) -> AppResult<(ApiKey, Secret)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::BadRequest("Give the key a name of 1 to 100 characters.".into()));
    }
    let key = format!("{KEY_PREFIX}{}", random_token(32));
    let prefix: String = key.chars().take(12).collect();
    let row = api_keys::insert(
        conn,
        &NewApiKey { user_id, name, prefix: &prefix, key_hash: &sha256_hex(&key), created_at: now() },
    )?;
    Ok((row, Secret::new(key)))
}

/// The user an API request acts for.
#[derive(Debug, Clone)]
pub struct ApiUser {
    pub id: i64,
    pub username: String,
    pub key_id: i64,
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for &'r ApiUser {
    type Error = ();

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, ()> {
        let found = req
            .local_cache_async(async {
                let header = req.headers().get_one("Authorization")?;
                let (scheme, key) = header.split_once(' ')?;
                let key = key.trim();
                if !scheme.eq_ignore_ascii_case("bearer") || !key.starts_with(KEY_PREFIX) {
                    return None;
                }
                let app = req.rocket().state::<AppState>()?;
                let hash = sha256_hex(key);
                let result = app
                    .db
                    .run(move |conn| {
                        let found = api_keys::find_active(conn, &hash)?;
                        if let Some((k, _)) = &found {
                            // Record the use at most once a minute: no write on the hot path.
                            if k.last_used_at.is_none_or(|t| t < now() - 60) {
                                api_keys::touch(conn, k.id, now())?;
                            }
                        }
                        Ok(found)
                    })
                    .await;
                match result {
                    Ok(Some((k, user))) => Some(ApiUser { id: user.id, username: user.username, key_id: k.id }),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::error!(error = %e, "API key lookup failed");
                        None
                    }
                }
            })
            .await;
        match found {
            Some(user) => Outcome::Success(user),
            None => Outcome::Error((Status::Unauthorized, ())),
        }
    }
}

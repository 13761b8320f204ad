//! Server-side sessions: a random id in a private (encrypted, signed) cookie, a row in the database.

use std::net::IpAddr;

use rocket::http::{Cookie, CookieJar, SameSite};

use crate::changes::{Change, SessionsEnd};
use crate::config::Settings;
use crate::db::models::{flows, sessions};
use crate::db::Db;
use crate::error::AppResult;
use crate::state::AppState;
use crate::util::{now, random_token, sha256_hex};

/// The session cookie's name on plain http (loopback and development).
pub const SESSION_COOKIE: &str = "tv_session";
/// The session cookie's name on https: the `__Host-` prefix makes browsers accept it only when it is
/// `Secure`, has `Path=/` and no `Domain`, so a sibling subdomain cannot set or shadow it.
pub const HOST_SESSION_COOKIE: &str = "__Host-tv_session";
pub const ANON_CSRF_COOKIE: &str = "tv_csrf";

/// The session cookie's name for this deployment: `__Host-tv_session` on https, `tv_session` on http.
pub fn session_cookie_name(settings: &Settings) -> &'static str {
    if settings.is_https() {
        HOST_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

/// The cookie attributes every app cookie gets: HttpOnly, SameSite=Lax (the provider's redirect
/// back to the callback is a top-level cross-site navigation and must carry the session), Secure
/// on https; `Path=/` and no `Domain` (as the `__Host-` prefix requires).
pub fn cookie(name: &'static str, value: String, settings: &Settings) -> Cookie<'static> {
    Cookie::build((name, value)).path("/").http_only(true).same_site(SameSite::Lax).secure(settings.is_https()).build()
}

/// Start a new session for `user_id` (a fresh id at every login) and set its cookie.
pub async fn start(db: &Db, settings: &Settings, cookies: &CookieJar<'_>, user_id: i64) -> AppResult<()> {
    let raw = random_token(32);
    let row = sessions::Session {
        id_hash: sha256_hex(&raw),
        user_id,
        csrf_token: random_token(32),
        created_at: now(),
        expires_at: now() + settings.login.session_ttl,
        public_id: random_token(16),
        // Filled in by the first request of the new session (`CurrentUser::lookup`).
        last_seen_at: None,
        ip: None,
        user_agent: None,
    };
    db.run(move |conn| {
        sessions::delete_expired(conn, now())?;
        sessions::insert(conn, &row)?;
        Ok(())
    })
    .await?;
    let mut c = cookie(session_cookie_name(settings), raw, settings);
    c.set_max_age(rocket::time::Duration::seconds(settings.login.session_ttl));
    cookies.add_private(c);
    remove(cookies, ANON_CSRF_COOKIE, settings);
    Ok(())
}

/// End the session named by the cookie (the row is deleted, so a replayed cookie is worthless).
pub async fn end(db: &Db, settings: &Settings, cookies: &CookieJar<'_>) -> AppResult<()> {
    let name = session_cookie_name(settings);
    if let Some(c) = cookies.get_private(name) {
        let hash = sha256_hex(c.value());
        db.run(move |conn| {
            flows::delete_for_session(conn, &hash)?;
            sessions::delete(conn, &hash)?;
            Ok(())
        })
        .await?;
    }
    remove(cookies, name, settings);
    Ok(())
}

/// Remove one of the app's cookies. The removal `Set-Cookie` carries the same attributes as the
/// cookie (HttpOnly, SameSite=Lax, Secure on https), like every cookie the app sends.
pub fn remove(cookies: &CookieJar<'_>, name: &'static str, settings: &Settings) {
    cookies.remove_private(cookie(name, String::new(), settings));
}

/// End one of the user's sessions, named by its public id, with its pending flows and its
/// `session.end` audit entry (`"reason": "ended_from_settings"`), in one transaction; the ended
/// session's id hash, or `None` when the user has no such session (another user's id included).
pub async fn end_by_public_id(
    app: &AppState,
    user_id: i64,
    public_id: String,
    address: Option<IpAddr>,
) -> AppResult<Option<String>> {
    let committed = app
        .db
        .write(app.ledger(), move |tx| {
            let ended = sessions::delete_by_public_id(tx.conn(), user_id, &public_id)?;
            if let Some(hash) = &ended {
                flows::delete_for_session(tx.conn(), hash)?;
                let why = SessionsEnd::FromSettings { session: public_id };
                tx.record(Change::SessionsEnded { user_id, address, why })?;
            }
            Ok(ended)
        })
        .await?;
    Ok(committed.settle(app.effects()))
}

/// End every session of the user but the one with `keep_hash` (this browser's), with their
/// pending flows and one `session.end` audit entry saying how many (`"reason":
/// "ended_from_settings"`, `"scope": "others"`), in one transaction; how many ended.
pub async fn end_others(app: &AppState, user_id: i64, keep_hash: String, address: Option<IpAddr>) -> AppResult<usize> {
    let committed = app
        .db
        .write(app.ledger(), move |tx| {
            let ended = sessions::delete_others(tx.conn(), user_id, &keep_hash)?;
            for hash in &ended {
                flows::delete_for_session(tx.conn(), hash)?;
            }
            if !ended.is_empty() {
                let why = SessionsEnd::OthersFromSettings { count: ended.len() };
                tx.record(Change::SessionsEnded { user_id, address, why })?;
            }
            Ok(ended.len())
        })
        .await?;
    Ok(committed.settle(app.effects()))
}

/// The CSRF token for forms shown before login, kept in a private cookie.
pub fn anonymous_csrf_token(cookies: &CookieJar<'_>, settings: &Settings) -> String {
    if let Some(c) = cookies.get_private(ANON_CSRF_COOKIE) {
        return c.value().to_string();
    }
    let token = random_token(32);
    cookies.add_private(cookie(ANON_CSRF_COOKIE, token.clone(), settings));
    token
}

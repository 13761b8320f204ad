//! The token store: a user's tokens per service, sealed with the vault cipher and bound to
//! (user, service, column) so that a ciphertext moved to another row does not open.

use crate::db::models::connections::{self, Connection, NewConnection, STATUS_ACTIVE};
use crate::db::models::events::{self, NewEvent};
use crate::db::Conn;
use crate::error::AppResult;
use crate::oauth::tokens::TokenSet;
use crate::util::{now, Secret};
use crate::vault::Cipher;

pub fn aad(user_id: i64, service: &str, column: &str) -> String {
    format!("connections/{user_id}/{service}/{column}")
}

/// Record something that happened to a connection. `detail` is shown to the user.
pub fn record_event(
    conn: &mut Conn,
    user_id: i64,
    service: &str,
    kind: &str,
    outcome: &str,
    detail: &str,
) -> AppResult<()> {
    events::insert(conn, &NewEvent { user_id, service, at: now(), kind, outcome, detail })?;
    Ok(())
}

/// Store a fresh token set for (user, service), replacing any older one, with its event, in one
/// transaction.
pub fn save_new(
    conn: &mut Conn,
    cipher: &Cipher,
    user_id: i64,
    service: &str,
    tokens: &TokenSet,
    event_kind: &str,
) -> AppResult<()> {
    let access = cipher.seal_str(tokens.access_token.expose(), &aad(user_id, service, "access_token"));
    let refresh =
        tokens.refresh_token.as_ref().map(|r| cipher.seal_str(r.expose(), &aad(user_id, service, "refresh_token")));
    let scopes = tokens.scopes.join(" ");
    let new = NewConnection {
        user_id,
        service,
        access_token: &access,
        refresh_token: refresh.as_deref(),
        token_type: &tokens.token_type,
        scopes: &scopes,
        expires_at: tokens.expires_at,
        obtained_at: tokens.obtained_at,
        status: STATUS_ACTIVE,
        version: 1,
        updated_at: now(),
    };
    conn.transaction(|conn| {
        connections::upsert(conn, &new)?;
        let detail = if tokens.refresh_token.is_some() { "with a refresh token" } else { "without a refresh token" };
        record_event(conn, user_id, service, event_kind, "ok", detail)
    })
}

/// Delete a user's connection and record why, in one transaction; false when there was none
/// (or it is not this user's).
pub fn delete_with_event(
    conn: &mut Conn,
    user_id: i64,
    service: &str,
    kind: &str,
    outcome: &str,
    detail: &str,
) -> AppResult<bool> {
    conn.transaction(|conn| {
        let removed = connections::delete(conn, user_id, service)? > 0;
        if removed {
            record_event(conn, user_id, service, kind, outcome, detail)?;
        }
        Ok(removed)
    })
}

/// The decrypted access and refresh tokens of a stored connection.
pub fn open_tokens(cipher: &Cipher, c: &Connection) -> AppResult<(Secret, Option<Secret>)> {
    let access = cipher.open(&c.access_token, &aad(c.user_id, &c.service, "access_token"))?;
    let refresh = match &c.refresh_token {
        Some(r) => Some(cipher.open(r, &aad(c.user_id, &c.service, "refresh_token"))?),
        None => None,
    };
    Ok((access, refresh))
}

//! The token store: a user's tokens per service, sealed with the vault cipher and bound to
//! (user, service, column) so that a ciphertext moved to another row does not open.

use crate::app::AppState;
use crate::db::models::connections::{self, Connection, ConnectionStatus, NewConnection};
use crate::db::models::events::{self, EventKind, EventOutcome, NewEvent};
use crate::db::Conn;
use crate::error::AppResult;
use crate::oauth::tokens::TokenSet;
use crate::util::ExposeSecret;
use crate::util::{now, Secret};
use crate::vault::Cipher;

pub fn aad(user_id: i64, service: &str, column: &str) -> String {
    format!("connections/{user_id}/{service}/{column}")
}

/// Record something that happened to a connection, keeping its newest `keep` events (the
/// `events_per_connection` setting; the oldest go first). `detail` is shown to the user.
#[allow(clippy::too_many_arguments)]
pub fn record_event(
    conn: &mut Conn,
    keep: i64,
    user_id: i64,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: &str,
) -> AppResult<()> {
    events::insert(conn, &NewEvent { user_id, service, at: now(), kind, outcome, detail })?;
    events::prune(conn, user_id, service, keep)?;
    Ok(())
}

/// Store a fresh token set for (user, service), replacing any older one, with its event, in one
/// transaction.
#[allow(clippy::too_many_arguments)]
pub fn save_new(
    conn: &mut Conn,
    keep: i64,
    cipher: &Cipher,
    user_id: i64,
    service: &str,
    tokens: &TokenSet,
    event_kind: EventKind,
) -> AppResult<()> {
    let access = cipher.seal_str(tokens.access_token.expose_secret(), &aad(user_id, service, "access_token"));
    let refresh = tokens
        .refresh_token
        .as_ref()
        .map(|r| cipher.seal_str(r.expose_secret(), &aad(user_id, service, "refresh_token")));
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
        status: ConnectionStatus::Active,
        version: 1,
        updated_at: now(),
    };
    conn.transaction(|conn| {
        connections::upsert(conn, &new)?;
        let detail = if tokens.refresh_token.is_some() { "with a refresh token" } else { "without a refresh token" };
        record_event(conn, keep, user_id, service, event_kind, EventOutcome::Ok, detail)
    })
}

/// Delete a user's connection and record why, in one transaction; false when there was none
/// (or it is not this user's).
#[allow(clippy::too_many_arguments)]
pub fn delete_with_event(
    conn: &mut Conn,
    keep: i64,
    user_id: i64,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: &str,
) -> AppResult<bool> {
    conn.transaction(|conn| {
        let removed = connections::delete(conn, user_id, service)? > 0;
        if removed {
            record_event(conn, keep, user_id, service, kind, outcome, detail)?;
        }
        Ok(removed)
    })
}

/// [`save_new`] on the blocking pool, then drop this process's cached copy of the row (other
/// instances learn of it from the invalidation `save_new` records).
pub async fn save(
    app: &AppState,
    user_id: i64,
    service: &str,
    tokens: TokenSet,
    event_kind: EventKind,
) -> AppResult<()> {
    let (cipher, svc, keep) = (app.cipher.clone(), service.to_string(), app.settings.events_per_connection);
    app.db.run(move |conn| save_new(conn, keep, &cipher, user_id, &svc, &tokens, event_kind)).await?;
    app.caches.connection_changed(user_id, service);
    Ok(())
}

/// [`delete_with_event`] on the blocking pool, then drop this process's cached copy of the row.
pub async fn delete(
    app: &AppState,
    user_id: i64,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: String,
) -> AppResult<bool> {
    let (svc, keep) = (service.to_string(), app.settings.events_per_connection);
    let removed = app.db.run(move |conn| delete_with_event(conn, keep, user_id, &svc, kind, outcome, &detail)).await?;
    app.caches.connection_changed(user_id, service);
    Ok(removed)
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

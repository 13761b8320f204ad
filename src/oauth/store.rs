//! The token store: a user's tokens per service, sealed with the vault cipher and bound to
//! (user, service, column) so that a ciphertext moved to another row does not open.

use std::sync::Arc;

use crate::cache::Caches;
use crate::db::models::connections::{self, Account, Connection, ConnectionStatus, NewConnection, Which};
use crate::db::models::events::{self, EventKind, EventOutcome, NewEvent};
use crate::db::models::invalidations::Written;
use crate::db::{Conn, Db};
use crate::error::AppResult;
use crate::oauth::tokens::TokenSet;
use crate::util::ExposeSecret;
use crate::util::{now, Secret};
use crate::vault::{Aad, Cipher};
use crate::webhooks::{
    outbox::{self, EventData},
    EventType,
};

/// What storing a user's tokens needs: the database, the cipher that seals them, this process's
/// cache of connection rows (dropped after every write) and how many events to keep per
/// connection. Borrowed from the server's state (`AppState::tokens`) or made by a test.
#[derive(Clone, Copy)]
pub struct Tokens<'a> {
    pub db: &'a Db,
    pub cipher: &'a Arc<Cipher>,
    pub caches: &'a Caches,
    /// `events_per_connection`.
    pub events_kept: i64,
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

/// Where a finished authorization's tokens go: the user's connection to `service` for `account`
/// (a new one, or the one already there for that account), or — `into: Some(id)` — connection
/// `id` reconnected in place (the caller has checked it is the same account, or one not known).
#[derive(Debug, Clone)]
pub struct Destination {
    pub user_id: i64,
    pub service: String,
    /// The provider account (`None`: the provider does not say).
    pub account: Option<Account>,
    pub into: Option<i64>,
    /// The scopes asked for, stored when the grant differs from them.
    pub requested: Vec<String>,
    /// Queue the tokens this write replaces for revocation at the provider (`oauth::retire`;
    /// `Provider::revokes_retired_tokens`).
    pub retire_replaced: bool,
}

/// Store a fresh token set where `to` says, with its event, in one transaction; the connection's
/// id, and what it invalidated, for this process's caches.
pub fn save_new(
    conn: &mut Conn,
    keep: i64,
    cipher: &Cipher,
    to: &Destination,
    tokens: &TokenSet,
    event_kind: EventKind,
) -> AppResult<Written<i64>> {
    let (user_id, service) = (to.user_id, to.service.as_str());
    let account = to.account.as_ref().map_or("", |a| a.id.as_str());
    let access = cipher.seal_str(tokens.access_token.expose_secret(), Aad::AccessToken { user_id, service, account });
    let refresh = tokens
        .refresh_token
        .as_ref()
        .map(|r| cipher.seal_str(r.expose_secret(), Aad::RefreshToken { user_id, service, account }));
    let scopes = tokens.scopes.join(" ");
    let mut granted = tokens.scopes.clone();
    granted.sort();
    let mut requested = to.requested.clone();
    requested.sort();
    requested.dedup();
    let requested = (!requested.is_empty() && requested != granted).then(|| to.requested.join(" "));
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
        refresh_token_expires_at: tokens.refresh_expires_at,
        account_id: account,
        account_label: to.account.as_ref().and_then(|a| a.label.as_deref()),
        requested_scopes: requested.as_deref(),
    };
    conn.transaction(|conn| {
        // The row this write replaces, if any, as it is now: locked until the write, so that its
        // tokens are the ones retired (a refresh in between would have rotated them).
        let before = connections::list_for_update(conn, user_id, service)?;
        let old = match to.into {
            Some(id) => before.into_iter().find(|c| c.id == id),
            None => before.into_iter().find(|c| c.account_id == account),
        };
        let written = match to.into {
            Some(id) => {
                let replaced = connections::replace(conn, id, &new)?;
                if *replaced.value() == 0 {
                    return Err(crate::error::AppError::Conflict(
                        "The connection you were reconnecting was deleted meanwhile; nothing was stored.".into(),
                    ));
                }
                replaced
            }
            None => connections::upsert(conn, &new)?,
        };
        let mut detail = String::from(if tokens.refresh_token.is_some() {
            "with a refresh token"
        } else {
            "without a refresh token"
        });
        if let Some(label) = to.account.as_ref().and_then(|a| a.label.as_deref()) {
            detail.push_str(&format!(" ({label})"));
        }
        record_event(conn, keep, user_id, service, event_kind, EventOutcome::Ok, &detail)?;
        if let Some(old) = old.filter(|_| to.retire_replaced) {
            retire_replaced(conn, cipher, &old, tokens)?;
        }
        let Some(row) = connections::list_for(conn, user_id, service)?.into_iter().find(|c| c.account_id == account)
        else {
            return Err(crate::error::AppError::internal("the connection just stored is not there"));
        };
        // A new row starts at version 1; connecting again over an existing one bumps it.
        let t = if row.version == 1 { EventType::ConnectionCreated } else { EventType::ConnectionReconnected };
        let data = EventData::of(conn, &row, ConnectionStatus::Active.as_str(), None)?;
        outbox::record(conn, t, &data)?;
        crate::audit::record(conn, cipher, audit_entry(t, &row))?;
        Ok(written.with(row.id))
    })
}

/// Queue `old`'s tokens for revocation if `new` replaces them (in the caller's transaction). Tokens
/// that do not open are left alone (logged): storing the new ones matters more.
fn retire_replaced(conn: &mut Conn, cipher: &Cipher, old: &Connection, new: &TokenSet) -> AppResult<()> {
    match open_tokens(cipher, old) {
        Ok((access, refresh)) if crate::oauth::retire::replaced(&access, refresh.as_ref(), new) => {
            let whose = (old.user_id, old.service.as_str(), old.account_id.as_str());
            crate::oauth::retire::enqueue(conn, cipher, whose, &access, refresh.as_ref())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(service = %old.service, connection_id = old.id, error = %e, "the replaced tokens could not be decrypted: not revoked");
            Ok(())
        }
    }
}

/// Delete a user's connection and record why, in one transaction; false when there was none
/// (or it is not this user's), with what it invalidated.
#[allow(clippy::too_many_arguments)]
pub fn delete_with_event(
    conn: &mut Conn,
    keep: i64,
    cipher: &Cipher,
    which: Which,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: &str,
) -> AppResult<Written<bool>> {
    let user_id = which.user_id;
    conn.transaction(|conn| {
        let removed = connections::delete(conn, which, service)?;
        if let Some(row) = removed.value().clone() {
            record_event(conn, keep, user_id, service, kind, outcome, detail)?;
            let (t, status) = match kind {
                EventKind::Revoke => (EventType::ConnectionRevoked, "revoked"),
                _ => (EventType::ConnectionDeleted, "deleted"),
            };
            let reason = (outcome == EventOutcome::ProviderFailed).then_some("provider_revocation_failed");
            let data = EventData::of(conn, &row, status, reason)?;
            outbox::record(conn, t, &data)?;
            crate::audit::record(conn, cipher, audit_entry(t, &row))?;
        }
        Ok(removed.map(|row| row.is_some()))
    })
}

/// [`save_new`] on the blocking pool, then drop this process's cached copy of the row (other
/// instances learn of it from the invalidation `save_new` records).
pub async fn save(store: Tokens<'_>, to: Destination, tokens: TokenSet, event_kind: EventKind) -> AppResult<i64> {
    let (cipher, keep) = (store.cipher.clone(), store.events_kept);
    let written = store.db.run(move |conn| save_new(conn, keep, &cipher, &to, &tokens, event_kind)).await?;
    Ok(store.caches.after_write(written))
}

impl Destination {
    /// The user's only connection to `service`, of an account the provider does not name (what
    /// tests and providers without an account API store).
    pub fn only(user_id: i64, service: &str) -> Destination {
        Destination {
            user_id,
            service: service.to_string(),
            account: None,
            into: None,
            requested: Vec::new(),
            retire_replaced: false,
        }
    }
}

/// [`delete_with_event`] on the blocking pool, then drop this process's cached copy of the row.
pub async fn delete(
    store: Tokens<'_>,
    which: Which,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: String,
) -> AppResult<bool> {
    let (svc, keep, cipher) = (service.to_string(), store.events_kept, store.cipher.clone());
    let removed =
        store.db.run(move |conn| delete_with_event(conn, keep, &cipher, which, &svc, kind, outcome, &detail)).await?;
    Ok(store.caches.after_write(removed))
}

/// The audit entry of a change to connection `row` (the webhook event type names the kind), with
/// its provider account when known.
fn audit_entry(t: EventType, row: &Connection) -> crate::audit::Entry {
    use crate::audit::{Actor, Entry, Kind};
    let kind = match t {
        EventType::ConnectionCreated => Kind::ConnectionCreated,
        EventType::ConnectionReconnected => Kind::ConnectionReconnected,
        EventType::ConnectionRevoked => Kind::ConnectionRevoked,
        _ => Kind::ConnectionDeleted,
    };
    let entry = Entry::new(kind, Actor::User(row.user_id)).user(row.user_id).service(&row.service).connection(row.id);
    match row.account() {
        Some(a) => entry.with("account", a.id),
        None => entry,
    }
}

/// The decrypted access and refresh tokens of a stored connection.
pub fn open_tokens(cipher: &Cipher, c: &Connection) -> AppResult<(Secret, Option<Secret>)> {
    let (user_id, service, account) = (c.user_id, c.service.as_str(), c.account_id.as_str());
    let access = cipher.open(&c.access_token, Aad::AccessToken { user_id, service, account })?;
    let refresh = match &c.refresh_token {
        Some(r) => Some(cipher.open(r, Aad::RefreshToken { user_id, service, account })?),
        None => None,
    };
    Ok((access, refresh))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{delete, open_tokens, save, Destination, Tokens};
    use crate::cache::Caches;
    use crate::db::models::connections::Which;
    use crate::db::models::events::{EventKind, EventOutcome};
    use crate::db::models::{connections, events, users};
    use crate::db::Db;
    use crate::oauth::tokens::TokenSet;
    use crate::util::{now, ExposeSecret, Secret};
    use crate::vault::Cipher;

    /// The store's handles are plain values: a test makes them from a database file, a cipher and
    /// a cache, without Rocket.
    #[rocket::async_test]
    async fn tokens_are_sealed_per_row_and_deleted_with_their_event() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let (cipher, caches) = (Arc::new(Cipher::for_tests(7)), Caches::new(60));
        let store = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10 };
        // The audit log starts before the first user, as at a server's first start.
        crate::audit::open(&mut db.conn().unwrap(), &cipher).unwrap().unwrap();
        let user_id = users::for_tests(&mut db.conn().unwrap(), "ann");
        let set = TokenSet {
            access_token: Secret::from("AT-1"),
            refresh_token: Some(Secret::from("RT-1")),
            token_type: "Bearer".into(),
            scopes: vec!["read".into()],
            expires_at: None,
            obtained_at: now(),
            refresh_expires_at: None,
        };
        save(store, Destination::only(user_id, "fake"), set, EventKind::Connect).await.unwrap();

        let mut conn = db.conn().unwrap();
        let row = connections::find(&mut conn, user_id, "fake").unwrap().expect("stored");
        assert!(!row.access_token.windows(4).any(|w| w == b"AT-1"), "sealed, not stored in the clear");
        let (access, refresh) = open_tokens(&cipher, &row).unwrap();
        assert_eq!((access.expose_secret(), refresh.as_ref().map(|r| r.expose_secret())), ("AT-1", Some("RT-1")));
        // Bound to its row: the same ciphertext under another user's name does not open.
        let moved = connections::Connection { user_id: user_id + 1, ..row.clone() };
        assert!(open_tokens(&cipher, &moved).is_err());

        assert!(delete(store, Which::first(user_id), "fake", EventKind::Delete, EventOutcome::Ok, "gone".into())
            .await
            .unwrap());
        assert!(connections::find(&mut conn, user_id, "fake").unwrap().is_none());
        let details: Vec<String> =
            events::recent(&mut conn, user_id, "fake", 5).unwrap().into_iter().map(|e| e.detail).collect();
        assert_eq!(details, ["gone", "with a refresh token"]);
        assert!(
            !delete(store, Which::first(user_id), "fake", EventKind::Delete, EventOutcome::Ok, "gone".into())
                .await
                .unwrap(),
            "nothing left"
        );
    }

    /// A reconnect queues the tokens it replaces in its own transaction, sealed (bound to whose
    /// they were), and `vault rotate-key` re-seals them.
    #[rocket::async_test]
    async fn replaced_tokens_are_queued_sealed_and_survive_a_key_rotation() {
        use crate::db::models::revocations;
        use crate::vault::Aad;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let (old_key, new_key) = (Cipher::generate_key(), Cipher::generate_key());
        let cipher = Arc::new(Cipher::from_base64(&old_key, &[]).unwrap());
        let caches = Caches::new(60);
        let store = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10 };
        crate::audit::open(&mut db.conn().unwrap(), &cipher).unwrap().unwrap();
        let user_id = users::for_tests(&mut db.conn().unwrap(), "ann");
        let set = |n: u32, refresh: Option<&str>| TokenSet {
            access_token: Secret::from(format!("AT-{n}")),
            refresh_token: refresh.map(Secret::from),
            token_type: "Bearer".into(),
            scopes: vec!["read".into()],
            expires_at: None,
            obtained_at: now(),
            refresh_expires_at: None,
        };
        let to = |retire| Destination { retire_replaced: retire, ..Destination::only(user_id, "fake") };
        save(store, to(true), set(1, Some("RT-1")), EventKind::Connect).await.unwrap();
        let mut conn = db.conn().unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty(), "nothing replaced yet");
        // Replaced without retiring (a provider whose revocation ends the grant): nothing queued.
        save(store, to(false), set(2, Some("RT-2")), EventKind::Connect).await.unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty());
        // The same refresh token again: the grant goes on, nothing to revoke.
        save(store, to(true), set(3, Some("RT-2")), EventKind::Connect).await.unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty());
        save(store, to(true), set(4, Some("RT-4")), EventKind::Connect).await.unwrap();
        let queued = revocations::all(&mut conn).unwrap();
        assert_eq!(queued.len(), 1);
        let row = &queued[0];
        assert_eq!((row.user_id, row.service.as_str(), row.attempts), (user_id, "fake", 0));
        let sealed = row.refresh_token.clone().unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"RT-2") && !row.access_token.windows(4).any(|w| w == b"AT-3"));
        let aad = |user_id, column| Aad::RetiredToken { user_id, service: "fake", account: "", column };
        assert_eq!(cipher.open(&sealed, aad(user_id, "refresh_token")).unwrap().expose_secret(), "RT-2");
        assert_eq!(cipher.open(&row.access_token, aad(user_id, "access_token")).unwrap().expose_secret(), "AT-3");
        assert!(cipher.open(&sealed, aad(user_id + 1, "refresh_token")).is_err(), "bound to whose it was");
        assert!(cipher.open(&sealed, aad(user_id, "access_token")).is_err(), "and to its column");

        let ring = Cipher::from_base64(&new_key, std::slice::from_ref(&old_key)).unwrap();
        let done = crate::vault::rotation::rotate(&mut conn, &ring, |_, _| {}).unwrap();
        assert_eq!(done.retired_tokens, 2);
        let only_new = Cipher::from_base64(&new_key, &[]).unwrap();
        let row = &revocations::all(&mut conn).unwrap()[0];
        let refresh = only_new.open(row.refresh_token.as_ref().unwrap(), aad(user_id, "refresh_token")).unwrap();
        assert_eq!(refresh.expose_secret(), "RT-2");
        assert_eq!(crate::vault::rotation::rotate(&mut conn, &ring, |_, _| {}).unwrap().retired_tokens, 0);
    }
}

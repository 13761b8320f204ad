//! The token store: a user's tokens per service, sealed with the vault cipher and bound to
//! (user, service, column) so that a ciphertext moved to another row does not open.

use std::sync::Arc;

use crate::cache::Caches;
use crate::changes::{self, Change, Committed, Effects, Ledger, Subject};
use crate::db::models::connections::{self, Account, Connection, ConnectionStatus, NewConnection, Which};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::db::models::invalidations::Invalidated;
use crate::db::{Conn, Db};
use crate::error::AppResult;
use crate::oauth::tokens::TokenSet;
use crate::util::ExposeSecret;
use crate::util::{now, Secret};
use crate::vault::{Aad, Cipher};
use crate::webhooks::Webhooks;

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
    /// The webhook worker's bell, rung after a write that recorded an event (`None`: a process
    /// without the worker).
    pub webhooks: Option<&'a Webhooks>,
    /// The jobs' workers' bell, rung after a write that queued a job (`None`: no workers).
    pub jobs: Option<&'a crate::jobs::Wake>,
}

impl Tokens<'_> {
    /// What a unit of work of the store needs (`crate::changes`).
    pub fn ledger(&self) -> Ledger {
        Ledger { cipher: self.cipher.clone(), events_kept: self.events_kept }
    }

    /// What this process does after a commit: drop its cached rows, wake the webhook worker.
    pub fn effects(&self) -> Effects<'_> {
        Effects { caches: Some(self.caches), webhooks: self.webhooks, jobs: self.jobs }
    }

    /// Record `change` alone in a unit of work of its own, settled.
    pub async fn record(&self, change: Change) -> AppResult<()> {
        self.db.write(self.ledger(), move |tx| tx.record(change)).await?.settle(self.effects());
        Ok(())
    }
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

/// Store a fresh token set where `to` says, with its event, in one unit of work; the connection's
/// id, to settle.
pub fn save_new(
    conn: &mut Conn,
    keep: i64,
    cipher: &Cipher,
    to: &Destination,
    tokens: &TokenSet,
) -> AppResult<Committed<i64>> {
    let (user_id, service) = (to.user_id, to.service.as_str());
    let account = to.account.as_ref().map_or("", |a| a.id.as_str());
    let access = cipher.seal_str(tokens.access_token.expose_secret(), Aad::AccessToken { user_id, service, account });
    let refresh = tokens
        .refresh_token
        .as_ref()
        .map(|r| cipher.seal_str(r.expose_secret(), Aad::RefreshToken { user_id, service, account }));
    let scopes = tokens.scopes.join(" ");
    let requested = to.requested_if_not_granted(&tokens.scopes);
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
    changes::write(conn, cipher, keep, |tx| {
        // The row this write replaces, if any, as it is now: locked until the write, so that its
        // tokens are the ones retired (a refresh in between would have rotated them).
        let before = connections::list_for_update(tx.conn(), user_id, service)?;
        let old = match to.into {
            Some(id) => before.into_iter().find(|c| c.id == id),
            None => before.into_iter().find(|c| c.account_id == account),
        };
        write_row(tx, to.into, &new)?;
        if let Some(old) = old.filter(|_| to.retire_replaced) {
            retire_replaced(tx, cipher, &old, tokens)?;
        }
        let Some(row) =
            connections::list_for(tx.conn(), user_id, service)?.into_iter().find(|c| c.account_id == account)
        else {
            return Err(crate::error::AppError::internal("the connection just stored is not there"));
        };
        let mut detail = String::from(if tokens.refresh_token.is_some() {
            "with a refresh token"
        } else {
            "without a refresh token"
        });
        if let Some(label) = to.account.as_ref().and_then(|a| a.label.as_deref()) {
            detail.push_str(&format!(" ({label})"));
        }
        // A new row starts at version 1; connecting again over an existing one bumps it.
        let conn = Subject::of(&row);
        tx.record(if row.version == 1 {
            Change::ConnectionCreated { conn, detail }
        } else {
            Change::ConnectionReconnected { conn, detail }
        })?;
        Ok(row.id)
    })
}

/// Write `new` over connection `into` (refused when it was deleted meanwhile), or as the row of
/// its account (a new one, or the one there).
fn write_row(tx: &mut changes::Tx<'_>, into: Option<i64>, new: &NewConnection<'_>) -> AppResult<()> {
    match into {
        Some(id) => {
            if connections::replace(tx.conn(), id, new)? == 0 {
                return Err(crate::error::AppError::Conflict(
                    "The connection you were reconnecting was deleted meanwhile; nothing was stored.".into(),
                ));
            }
        }
        None => {
            connections::upsert(tx.conn(), new)?;
        }
    }
    Ok(())
}

/// Queue `old`'s tokens for revocation if `new` replaces them (in the caller's transaction). Tokens
/// that do not open are left alone (logged): storing the new ones matters more.
fn retire_replaced(tx: &mut changes::Tx<'_>, cipher: &Cipher, old: &Connection, new: &TokenSet) -> AppResult<()> {
    match open_tokens(cipher, old) {
        Ok((access, refresh)) if crate::oauth::retire::pending::replaced(&access, refresh.as_ref(), new) => {
            let whose = (old.user_id, old.service.as_str(), old.account_id.as_str());
            crate::oauth::retire::pending::enqueue(tx, cipher, whose, &access, refresh.as_ref())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(service = %old.service, connection_id = old.id, error = %e, "the replaced tokens could not be decrypted: not revoked");
            Ok(())
        }
    }
}

/// Delete a user's connection and record why (`kind`: [`EventKind::Revoke`] or a deletion), in
/// one unit of work; false when there was none (or it is not this user's), to settle.
pub fn delete_with_event(
    conn: &mut Conn,
    ledger: &Ledger,
    which: Which,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: &str,
) -> AppResult<Committed<bool>> {
    changes::write(conn, &ledger.cipher, ledger.events_kept, |tx| {
        let Some(row) = connections::delete(tx.conn(), which, service)? else {
            // Gone already (deleted by another instance, which recorded it): drop our copy.
            tx.saw_stale(Invalidated::Connection { user_id: which.user_id, service: service.to_string() });
            return Ok(false);
        };
        let (conn, detail) = (Subject::of(&row), detail.to_string());
        tx.record(match kind {
            EventKind::Revoke => Change::ConnectionRevoked { conn, outcome, detail },
            EventKind::Connect | EventKind::Refresh | EventKind::Delete => {
                Change::ConnectionDeleted { conn, outcome, detail }
            }
        })?;
        Ok(true)
    })
}

/// [`save_new`] on the blocking pool, then settled: this process's cached copy of the row dropped
/// (other instances learn of it from the recorded invalidation), the webhook worker woken.
pub async fn save(store: Tokens<'_>, to: Destination, tokens: TokenSet) -> AppResult<i64> {
    let (cipher, keep) = (store.cipher.clone(), store.events_kept);
    let committed = store.db.run(move |conn| save_new(conn, keep, &cipher, &to, &tokens)).await?;
    Ok(committed.settle(store.effects()))
}

impl Destination {
    /// The scopes asked for, space-separated, when the provider granted other ones (`None`: as
    /// asked, or nothing asked).
    fn requested_if_not_granted(&self, granted: &[String]) -> Option<String> {
        let mut granted = granted.to_vec();
        granted.sort();
        let mut requested = self.requested.clone();
        requested.sort();
        requested.dedup();
        (!requested.is_empty() && requested != granted).then(|| self.requested.join(" "))
    }

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

/// [`delete_with_event`] on the blocking pool, then settled.
pub async fn delete(
    store: Tokens<'_>,
    which: Which,
    service: &str,
    kind: EventKind,
    outcome: EventOutcome,
    detail: String,
) -> AppResult<bool> {
    let (svc, ledger) = (service.to_string(), store.ledger());
    let committed =
        store.db.run(move |conn| delete_with_event(conn, &ledger, which, &svc, kind, outcome, &detail)).await?;
    Ok(committed.settle(store.effects()))
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
        let store = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10, webhooks: None, jobs: None };
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
        save(store, Destination::only(user_id, "fake"), set).await.unwrap();

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
        let store = Tokens { db: &db, cipher: &cipher, caches: &caches, events_kept: 10, webhooks: None, jobs: None };
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
        save(store, to(true), set(1, Some("RT-1"))).await.unwrap();
        let mut conn = db.conn().unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty(), "nothing replaced yet");
        // Replaced without retiring (a provider whose revocation ends the grant): nothing queued.
        save(store, to(false), set(2, Some("RT-2"))).await.unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty());
        // The same refresh token again: the grant goes on, nothing to revoke.
        save(store, to(true), set(3, Some("RT-2"))).await.unwrap();
        assert!(revocations::all(&mut conn).unwrap().is_empty());
        save(store, to(true), set(4, Some("RT-4"))).await.unwrap();
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
        let done = crate::changes::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap();
        assert_eq!(done.retired_tokens, 2);
        let only_new = Cipher::from_base64(&new_key, &[]).unwrap();
        let row = &revocations::all(&mut conn).unwrap()[0];
        let refresh = only_new.open(row.refresh_token.as_ref().unwrap(), aad(user_id, "refresh_token")).unwrap();
        assert_eq!(refresh.expose_secret(), "RT-2");
        assert_eq!(crate::changes::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap().retired_tokens, 0);
    }
}

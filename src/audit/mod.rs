//! The tamper-evident audit log: an append-only chain of security events.
//!
//! Every entry's `hash` is HMAC-SHA256(chain key, prev_hash || the canonical encoding of every
//! field, the id included), and ids are consecutive chain positions taken from the single
//! `audit_head` row that every append updates first. So a changed row breaks its hash, a removed
//! one leaves a gap, a reordered one no longer follows its predecessor, and a cut tail no longer
//! matches the head, whose own `mac` covers (seq, hash, anchor) so it cannot be rolled back by hand.
//! Two instances on one PostgreSQL queue on the head row's lock and never fork the chain.
//!
//! The chain key is 32 random bytes made on first use and sealed under the vault key in `meta`
//! (`Aad::AuditChainKey`); `vault rotate-key` re-seals it, so the chain survives key rotation.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::db::models::audit::{self as rows, AuditRow, Head};
use crate::db::models::meta;
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::{hex, now, ExposeSecret};
use crate::vault::{Aad, Cipher};

/// The `prev_hash` of the first entry (and of an empty chain).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const KEY_NAME: &str = "audit_chain_key";

/// The kinds of entry, as stored (dotted names; a kind's string never changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SigninSuccess,
    SigninFailure,
    SessionEnd,
    ConnectionCreated,
    ConnectionReconnected,
    ConnectionRevoked,
    ConnectionDeleted,
    TokenRead,
    ProxyCall,
    VaultSet,
    VaultDelete,
    ApiKeyCreated,
    ApiKeyRevoked,
    UserAdded,
    WebhookChanged,
    /// Retention pruning removed the entries up to the anchor.
    AuditPruned,
    /// A user changed their password (every session ended, every API key revoked: those are
    /// recorded as `session.end` and `api_key.revoked` entries of their own).
    PasswordChanged,
    /// An account was renamed (`tokenvault user rename`).
    UserRenamed,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::SigninSuccess,
        Kind::SigninFailure,
        Kind::SessionEnd,
        Kind::ConnectionCreated,
        Kind::ConnectionReconnected,
        Kind::ConnectionRevoked,
        Kind::ConnectionDeleted,
        Kind::TokenRead,
        Kind::ProxyCall,
        Kind::VaultSet,
        Kind::VaultDelete,
        Kind::ApiKeyCreated,
        Kind::ApiKeyRevoked,
        Kind::UserAdded,
        Kind::WebhookChanged,
        Kind::AuditPruned,
        Kind::PasswordChanged,
        Kind::UserRenamed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::SigninSuccess => "signin.success",
            Kind::SigninFailure => "signin.failure",
            Kind::SessionEnd => "session.end",
            Kind::ConnectionCreated => "connection.created",
            Kind::ConnectionReconnected => "connection.reconnected",
            Kind::ConnectionRevoked => "connection.revoked",
            Kind::ConnectionDeleted => "connection.deleted",
            Kind::TokenRead => "token.read",
            Kind::ProxyCall => "proxy.call",
            Kind::VaultSet => "vault.set",
            Kind::VaultDelete => "vault.delete",
            Kind::ApiKeyCreated => "api_key.created",
            Kind::ApiKeyRevoked => "api_key.revoked",
            Kind::UserAdded => "user.added",
            Kind::WebhookChanged => "webhook.changed",
            Kind::AuditPruned => "audit.pruned",
            Kind::PasswordChanged => "password.changed",
            Kind::UserRenamed => "user.renamed",
        }
    }
}

/// Who acted: `user:<id>`, `key:<id>` (an API key), `cli` or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(i64),
    Key(i64),
    Cli,
    System,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Key(id) => write!(f, "key:{id}"),
            Actor::Cli => f.write_str("cli"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// An entry to append. `detail` is small JSON: never a token, secret, code, password or
/// username (a username only as [`ChainKey::username_hash`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    pub user_id: Option<i64>,
    pub actor: Actor,
    pub service: Option<String>,
    pub connection_id: Option<i64>,
    pub address: Option<String>,
    pub detail: serde_json::Value,
    /// When it happened (unix seconds); the batcher keeps the time of the request.
    pub at: i64,
}

impl Entry {
    pub fn new(kind: Kind, actor: Actor) -> Entry {
        Entry {
            kind,
            user_id: None,
            actor,
            service: None,
            connection_id: None,
            address: None,
            detail: serde_json::Value::Object(Default::default()),
            at: now(),
        }
    }

    pub fn user(mut self, id: i64) -> Entry {
        self.user_id = Some(id);
        self
    }

    pub fn service(mut self, s: impl Into<String>) -> Entry {
        self.service = Some(s.into());
        self
    }

    pub fn connection(mut self, id: i64) -> Entry {
        self.connection_id = Some(id);
        self
    }

    pub fn address(mut self, a: Option<impl ToString>) -> Entry {
        self.address = a.map(|a| a.to_string());
        self
    }

    /// Add `name: value` to the detail.
    pub fn with(mut self, name: &str, value: impl Into<serde_json::Value>) -> Entry {
        if let serde_json::Value::Object(map) = &mut self.detail {
            map.insert(name.to_string(), value.into());
        }
        self
    }
}

/// The chain key (no `Debug` of its bytes; zeroed on drop).
#[derive(Clone)]
pub struct ChainKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey([REDACTED])")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl ChainKey {
    pub fn for_tests(seed: u8) -> ChainKey {
        ChainKey(Zeroizing::new([seed; 32]))
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.0[..]).expect("HMAC takes any key length")
    }

    /// The keyed hash a username is recorded as (16 bytes, hex): the same name gives the same
    /// hash for as long as the chain key lives, but the name cannot be read back.
    pub fn username_hash(&self, username: &str) -> String {
        let mut m = self.mac();
        m.update(b"tokenvault audit username\0");
        m.update(username.trim().to_lowercase().as_bytes());
        hex(&m.finalize().into_bytes()[..16])
    }

    /// The entry's hash: over the previous hash and every field, each length-prefixed.
    pub fn entry_hash(&self, prev_hash: &str, r: &AuditRow) -> String {
        let mut m = self.mac();
        m.update(b"tokenvault audit entry v1\0");
        field(&mut m, Some(prev_hash.as_bytes()));
        field(&mut m, Some(&r.id.to_be_bytes()));
        field(&mut m, Some(&r.at.to_be_bytes()));
        field(&mut m, Some(r.kind.as_bytes()));
        field(&mut m, r.user_id.map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
        field(&mut m, Some(r.actor.as_bytes()));
        field(&mut m, r.service.as_deref().map(str::as_bytes));
        field(&mut m, r.connection_id.map(i64::to_be_bytes).as_ref().map(|b| &b[..]));
        field(&mut m, r.account.as_deref().map(str::as_bytes));
        field(&mut m, r.address.as_deref().map(str::as_bytes));
        field(&mut m, Some(r.detail.as_bytes()));
        hex(&m.finalize().into_bytes())
    }

    /// The head's MAC, over its position, hash and anchor.
    pub fn head_mac(&self, h: &Head) -> String {
        let mut m = self.mac();
        m.update(b"tokenvault audit head v1\0");
        m.update(&h.seq.to_be_bytes());
        field(&mut m, Some(h.hash.as_bytes()));
        m.update(&h.anchor_id.to_be_bytes());
        field(&mut m, Some(h.anchor_hash.as_bytes()));
        hex(&m.finalize().into_bytes())
    }
}

/// A field: absent (0) or present (1, 4-byte big-endian length, bytes): no two different rows
/// encode alike.
fn field(m: &mut HmacSha256, value: Option<&[u8]>) {
    match value {
        None => m.update(&[0]),
        Some(v) => {
            m.update(&[1]);
            m.update(&(v.len() as u32).to_be_bytes());
            m.update(v);
        }
    }
}

/// The chain key of this database, if it has one.
pub fn chain_key(conn: &mut Conn, cipher: &Cipher) -> AppResult<Option<ChainKey>> {
    let Some(sealed) = meta::get(conn, KEY_NAME)? else { return Ok(None) };
    let opened = cipher.open(&sealed, Aad::AuditChainKey)?;
    let bytes = crate::util::b64_decode(opened.expose_secret())
        .filter(|b| b.len() == 32)
        .ok_or_else(|| AppError::Internal("the audit chain key in meta is malformed".into()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Ok(Some(ChainKey(key)))
}

/// The chain key, made (and sealed into `meta`) on first use. Call it inside the appending
/// transaction after [`rows::reserve`]: the head row's lock orders two instances' first uses.
pub fn chain_key_or_create(conn: &mut Conn, cipher: &Cipher) -> AppResult<ChainKey> {
    if let Some(k) = chain_key(conn, cipher)? {
        return Ok(k);
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
    let encoded = Zeroizing::new(crate::util::b64_encode(&bytes[..]));
    meta::set(conn, KEY_NAME, &cipher.seal_str(&encoded, Aad::AuditChainKey), now())?;
    Ok(ChainKey(bytes))
}

/// Re-seal the chain key under the active vault key (`vault rotate-key`).
pub fn reseal_key(conn: &mut Conn, cipher: &Cipher) -> AppResult<bool> {
    let Some(sealed) = meta::get(conn, KEY_NAME)? else { return Ok(false) };
    if !cipher.needs_rotation(&sealed) {
        return Ok(false);
    }
    let plain = cipher.open(&sealed, Aad::AuditChainKey)?;
    meta::set(conn, KEY_NAME, &cipher.seal_str(plain.expose_secret(), Aad::AuditChainKey), now())?;
    Ok(true)
}

/// Append one security event, in the caller's transaction when there is one (so the event exists
/// exactly when the change does), else in its own.
pub fn record(conn: &mut Conn, cipher: &Cipher, entry: Entry) -> AppResult<()> {
    append(conn, cipher, &[entry]).map(|_| ())
}

/// A failed sign-in: the account's id when the name is one, and the name only as its keyed hash.
pub fn record_signin_failure(
    conn: &mut Conn,
    cipher: &Cipher,
    user_id: Option<i64>,
    username: &str,
    address: Option<std::net::IpAddr>,
) -> AppResult<()> {
    conn.transaction(|conn| {
        rows::reserve(conn, 0)?;
        let hash = chain_key_or_create(conn, cipher)?.username_hash(username);
        let mut e = Entry::new(Kind::SigninFailure, Actor::System).address(address).with("username_hash", hash);
        e.user_id = user_id;
        record(conn, cipher, e)
    })
}

/// Append `entries` in one transaction; the id of the last one.
pub fn append(conn: &mut Conn, cipher: &Cipher, entries: &[Entry]) -> AppResult<i64> {
    conn.transaction(|conn| {
        // First the head (its lock), then the key: nothing is read before the lock is held.
        let mut head = rows::reserve(conn, entries.len() as i64)?;
        let key = chain_key_or_create(conn, cipher)?;
        let mut prev = head.hash.clone();
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let mut row = AuditRow {
                id: head.seq + 1 + i as i64,
                at: e.at,
                kind: e.kind.as_str().to_string(),
                user_id: e.user_id,
                actor: e.actor.to_string(),
                service: e.service.clone(),
                connection_id: e.connection_id,
                account: None,
                address: e.address.clone(),
                detail: e.detail.to_string(),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            row.hash = key.entry_hash(&prev, &row);
            prev = row.hash.clone();
            out.push(row);
        }
        for chunk in out.chunks(100) {
            rows::insert(conn, chunk)?;
        }
        head.seq += entries.len() as i64;
        head.hash = prev;
        head.mac = Some(key.head_mac(&head));
        rows::set_head(conn, &head)?;
        Ok(head.seq)
    })
}

/// Why the chain does not verify, naming the first bad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// The entry's fields do not match its hash: it was changed.
    Changed(i64),
    /// The entry does not follow the one before it: entries were removed or reordered.
    OutOfOrder(i64),
    /// The entry is missing (the next one has a higher id).
    Missing(i64),
    /// Entries from this id on are missing: the head says there are more.
    Truncated(i64),
    /// The head row was changed by hand.
    HeadChanged,
}

impl Broken {
    /// The first bad entry's id (the head's position for `HeadChanged`).
    pub fn id(&self) -> Option<i64> {
        match self {
            Broken::Changed(id) | Broken::OutOfOrder(id) | Broken::Missing(id) | Broken::Truncated(id) => Some(*id),
            Broken::HeadChanged => None,
        }
    }
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Changed(id) => write!(f, "entry {id}: hash mismatch (the entry was changed)"),
            Broken::OutOfOrder(id) => {
                write!(f, "entry {id}: does not follow the entry before it (entries removed or reordered)")
            }
            Broken::Missing(id) => write!(f, "entry {id}: missing (gap in the chain)"),
            Broken::Truncated(id) => write!(f, "entry {id}: missing (the log was truncated after entry {})", id - 1),
            Broken::HeadChanged => f.write_str("the chain's head row was changed (its MAC does not match)"),
        }
    }
}

/// Walk the chain from the anchor in id order; the number of entries when intact.
pub fn verify(conn: &mut Conn, cipher: &Cipher) -> AppResult<Result<i64, Broken>> {
    let head = rows::head(conn)?;
    let Some(key) = chain_key(conn, cipher)? else {
        // Nothing was ever appended (the key is made by the first append).
        let pristine = head.seq == 0 && head.anchor_id == 0 && rows::count(conn)? == 0;
        return Ok(if pristine { Ok(0) } else { Err(Broken::HeadChanged) });
    };
    if head.mac.as_deref().is_none_or(|m| !crate::util::ct_eq(m, &key.head_mac(&head))) {
        return Ok(Err(Broken::HeadChanged));
    }
    let (mut expected, mut prev, mut count) = (head.anchor_id + 1, head.anchor_hash.clone(), 0i64);
    let mut after = i64::MIN;
    loop {
        let batch = rows::after(conn, after, 1000)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for row in batch {
            if row.id < expected {
                // A row at or before the anchor (pruned positions) or a duplicate position.
                return Ok(Err(Broken::OutOfOrder(row.id)));
            }
            if row.id > expected {
                return Ok(Err(Broken::Missing(expected)));
            }
            if row.prev_hash != prev {
                return Ok(Err(Broken::OutOfOrder(row.id)));
            }
            if !crate::util::ct_eq(&key.entry_hash(&prev, &row), &row.hash) {
                return Ok(Err(Broken::Changed(row.id)));
            }
            prev = row.hash;
            expected += 1;
            count += 1;
        }
    }
    if expected - 1 != head.seq || prev != head.hash {
        return Ok(Err(Broken::Truncated(expected)));
    }
    Ok(Ok(count))
}

/// Delete the entries older than `days` days (0: keep forever), moving the anchor to the last one
/// removed (in the head, under its MAC) and appending an `audit.pruned` entry, in one
/// transaction; how many were removed.
pub fn prune(conn: &mut Conn, cipher: &Cipher, days: i64, at: i64) -> AppResult<usize> {
    if days <= 0 {
        return Ok(0);
    }
    let cutoff = at - days * 86_400;
    conn.transaction(|conn| {
        let mut head = rows::reserve(conn, 0)?;
        let Some(through) = rows::last_id_before(conn, cutoff)? else { return Ok(0) };
        if through <= head.anchor_id {
            return Ok(0);
        }
        let Some(last) = rows::find(conn, through)? else { return Ok(0) };
        let key = chain_key_or_create(conn, cipher)?;
        let removed = rows::delete_through(conn, through)?;
        head.anchor_id = through;
        head.anchor_hash = last.hash;
        head.mac = Some(key.head_mac(&head));
        rows::set_head(conn, &head)?;
        let entry = Entry::new(Kind::AuditPruned, Actor::System)
            .with("through_id", through)
            .with("removed", removed as i64)
            .with("retention_days", days);
        append(conn, cipher, &[entry])?;
        Ok(removed)
    })
}

/// A proxied path as recorded: segments that look like identifiers or values (digits, or longer
/// than 24 characters, or not plain words) become `*`, so no id, e-mail or token lands in the log.
pub fn path_template<S: AsRef<str>>(segments: &[S]) -> String {
    let parts: Vec<&str> = segments
        .iter()
        .map(|s| {
            let s = s.as_ref();
            let word = !s.is_empty()
                && s.len() <= 24
                && s.chars().all(|c| c.is_ascii_alphabetic() || matches!(c, '_' | '-' | '.'));
            if word {
                s
            } else {
                "*"
            }
        })
        .collect();
    format!("/{}", parts.join("/"))
}

pub mod batcher;
#[cfg(test)]
mod tests;

//! The tamper-evident audit log: an append-only chain of security events.
//!
//! Every entry's `hash` is HMAC-SHA256(chain key, prev_hash || the canonical encoding of every
//! field, the id included), and ids are consecutive chain positions taken from the single
//! `audit_head` row that every append updates first. So a changed row breaks its hash, a removed
//! one leaves a gap, a reordered one no longer follows its predecessor, and a cut tail no longer
//! matches the head, whose own `mac` covers (seq, hash, anchor) so it cannot be set by hand. Two
//! instances on one PostgreSQL queue on the head row's lock and never fork the chain.
//!
//! **Starting a log.** The migration leaves a placeholder head (no MAC). A log is started — a
//! random chain key made and sealed under the vault key in `meta` (`Aad::AuditChainKey`), and an
//! authenticated genesis head written: position 0, a random genesis hash, its MAC — only in a
//! database that has never had one: placeholder head, no entry, no chain key, and no user (every
//! user's making is recorded, so a database with users has had a log). Anywhere else a head
//! without a MAC, a missing chain key or a head whose MAC does not verify makes the log refuse
//! every append (and `verify` fail): no key is ever made over a log, and an unauthenticated head
//! is never extended, so a reset, wiped or hand-set head cannot be laundered by the next append.
//!
//! The chain key cannot be made or replaced from the database alone: a sealed value needs the
//! vault key, and tokenvault makes one only as above. It is random and sealed rather than derived
//! from the vault key so that the chain outlives the vault key it was made under: `vault
//! rotate-key` re-seals it, and the old vault key can then be dropped (a derived key would need
//! every entry's hash rewritten, or the old key kept for ever). Checkpoints, which must verify
//! without the database, are signed with a key derived from the vault key.
//!
//! **What the database alone cannot hide.** Without the vault key, a change, removal, reordering,
//! a moved `at`, a cut tail with a hand-made head, or an emptied log in a database with users is
//! found. What no chain kept in the database can find — restoring an older genuine head and
//! cutting what followed, or making the whole database look brand new — is found by
//! [`checkpoint`]s kept outside it.

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

/// The `prev_hash` of the first entry of a log started before genesis heads were random (the
/// logs of databases made by tokenvault up to 4c91691), and the placeholder head's hash.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const KEY_NAME: &str = crate::vault::AUDIT_CHAIN_KEY;

/// Longest text of one string in an entry's detail, and of its service (bytes; longer ones are cut
/// at a character boundary and end with `…`).
pub const MAX_TEXT_BYTES: usize = 256;
/// Longest address recorded (bytes).
const MAX_ADDRESS_BYTES: usize = 64;
/// Longest detail (its JSON, bytes): beyond it the largest values are left out, largest first, and
/// `"truncated": true` says so.
pub const MAX_DETAIL_BYTES: usize = 1024;
/// The hard cap of one entry's variable fields (kind, actor, service, address, detail), enforced
/// by [`append`] whatever the caller built: no entry is refused for its size, it is cut.
pub const MAX_ENTRY_BYTES: usize = 2048;
/// A proxied path template keeps at most this many segments and bytes, then ends with `/…`.
pub const PATH_SEGMENTS: usize = 16;
pub const PATH_BYTES: usize = 256;
/// What a cut text ends with, and the template of a path left out.
pub const CUT: &str = "…";
pub const PATH_CUT: &str = "/…";

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
    /// `tokenvault audit restart`: a log that could no longer be appended to was archived and a
    /// new one started after it (the first entry of the new log).
    AuditRestarted,
    /// A user allowed a client of tokenvault's authorization server a grant.
    GrantCreated,
    /// A grant ended before its expiry (`"reason"` says why).
    GrantRevoked,
    /// The token endpoint issued tokens of a grant.
    GrantTokensIssued,
    /// The authorization server refused a request (an authorization request, the consent
    /// denied, a token request): through the batcher's bounded refusals, like refused sign-ins.
    OAuthRefused,
    /// A provider was added, edited, disabled, enabled, reverted or deleted in the app.
    ProviderChanged,
    /// A client of the authorization server became known (an administrator's, a dynamic
    /// registration, a metadata document seen for the first time).
    ClientRegistered,
    /// An administrator deleted a client of the authorization server (its grants revoked).
    ClientDeleted,
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
        Kind::AuditRestarted,
        Kind::GrantCreated,
        Kind::GrantRevoked,
        Kind::GrantTokensIssued,
        Kind::OAuthRefused,
        Kind::ProviderChanged,
        Kind::ClientRegistered,
        Kind::ClientDeleted,
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
            Kind::AuditRestarted => "audit.restarted",
            Kind::GrantCreated => "grant.created",
            Kind::GrantRevoked => "grant.revoked",
            Kind::GrantTokensIssued => "grant.tokens_issued",
            Kind::OAuthRefused => "oauth.refused",
            Kind::ProviderChanged => "provider.changed",
            Kind::ClientRegistered => "client.registered",
            Kind::ClientDeleted => "client.deleted",
        }
    }
}

/// Who acted: `user:<id>`, `key:<id>` (an API key), `grant:<id>` (an OAuth grant's token), `cli` or `system`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(i64),
    Key(i64),
    /// An access token of a grant of tokenvault's authorization server.
    Grant(i64),
    Cli,
    System,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(id) => write!(f, "user:{id}"),
            Actor::Key(id) => write!(f, "key:{id}"),
            Actor::Grant(id) => write!(f, "grant:{id}"),
            Actor::Cli => f.write_str("cli"),
            Actor::System => f.write_str("system"),
        }
    }
}

/// An entry to append. `detail` is small JSON: never a token, secret, code, password or
/// username (a username only as [`ChainKey::username_hash`]). Whatever it holds, [`append`] stores
/// it within [`MAX_ENTRY_BYTES`] ([`Entry::bounded`]).
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
    /// Set by the batcher: the time of the last event the entry stands for (`at`: the first's).
    /// Its entry is written later than its events, after entries recorded meanwhile.
    pub at_last: Option<i64>,
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
            at_last: None,
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

    /// The entry as it is stored: the service and every string of the detail cut to
    /// [`MAX_TEXT_BYTES`], the address to 64 bytes, the detail to [`MAX_DETAIL_BYTES`] (its
    /// largest values left out first, and `"truncated": true`), so that the whole stays within
    /// [`MAX_ENTRY_BYTES`]. Deterministic (the same entry is always cut the same way) and
    /// idempotent; never fails.
    pub fn bounded(mut self) -> Entry {
        self.service = self.service.map(|s| cut(&s, MAX_TEXT_BYTES));
        self.address = self.address.map(|a| cut(&a, MAX_ADDRESS_BYTES));
        bound_value(&mut self.detail, 0);
        if self.detail.to_string().len() > MAX_DETAIL_BYTES {
            let serde_json::Value::Object(map) = &mut self.detail else {
                self.detail = serde_json::json!({ "truncated": true });
                return self;
            };
            map.insert("truncated".into(), true.into());
            // Leave out the largest values first (by their JSON's length, then by name).
            let mut sizes: Vec<(usize, String)> = map
                .iter()
                .filter(|(k, _)| k.as_str() != "truncated")
                .map(|(k, v)| (k.len() + v.to_string().len(), k.clone()))
                .collect();
            sizes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, key) in sizes {
                if serde_json::Value::Object(map.clone()).to_string().len() <= MAX_DETAIL_BYTES {
                    break;
                }
                map.remove(&key);
            }
        }
        if self.stored_bytes() > MAX_ENTRY_BYTES {
            // Unreachable with the caps above; the hard cap holds regardless.
            self.detail = serde_json::json!({ "truncated": true });
        }
        self
    }

    /// The bytes of the entry's variable fields as stored (kind, actor, service, address, detail).
    pub fn stored_bytes(&self) -> usize {
        self.kind.as_str().len()
            + self.actor.to_string().len()
            + self.service.as_deref().map_or(0, str::len)
            + self.address.as_deref().map_or(0, str::len)
            + self.detail.to_string().len()
    }
}

/// `text` cut to at most `max` bytes at a character boundary, ending with [`CUT`] when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - CUT.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &text[..end])
}

/// Cap a detail value in place: strings to [`MAX_TEXT_BYTES`], arrays to 16 items and objects to
/// 32 members (then `…`), nesting to 4 levels.
fn bound_value(v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.len() > MAX_TEXT_BYTES => *s = cut(s, MAX_TEXT_BYTES),
        Value::Array(_) | Value::Object(_) if depth >= 4 => *v = Value::String(CUT.into()),
        Value::Array(items) => {
            if items.len() > 16 {
                items.truncate(16);
                items.push(Value::String(CUT.into()));
            }
            items.iter_mut().for_each(|i| bound_value(i, depth + 1));
        }
        Value::Object(map) => {
            if map.len() > 32 {
                let keep: serde_json::Map<String, Value> = std::mem::take(map).into_iter().take(32).collect();
                *map = keep;
                map.insert(CUT.into(), Value::Bool(true));
            }
            map.values_mut().for_each(|i| bound_value(i, depth + 1));
        }
        _ => {}
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

    /// The entry's hash: over the previous hash and every field, each length-prefixed. `at_last`
    /// comes last and only when set, so an entry without it hashes exactly as entries did before
    /// it existed (and no entry with it encodes like one without).
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
        if let Some(at_last) = r.at_last {
            field(&mut m, Some(&at_last.to_be_bytes()));
        }
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

    /// Whether the head's stored MAC is this key's MAC of it.
    fn authenticates(&self, h: &Head) -> bool {
        h.mac.as_deref().is_some_and(|m| crate::util::ct_eq(m, &self.head_mac(h)))
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

/// A new random chain key, sealed into `meta` (replacing any there).
fn new_chain_key(conn: &mut Conn, cipher: &Cipher) -> AppResult<ChainKey> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
    let encoded = Zeroizing::new(crate::util::b64_encode(&bytes[..]));
    meta::set(conn, KEY_NAME, &cipher.seal_str(&encoded, Aad::AuditChainKey), now())?;
    Ok(ChainKey(bytes))
}

/// A random genesis hash: the `prev_hash` of a new log's first entry, so that no two logs (nor a
/// log and the one that replaced it) share a position-0 checkpoint.
fn random_genesis() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// Whether the head is the migration's placeholder: no MAC, nothing appended, nothing anchored.
/// The placeholder head's hash after the migration `2026-12-06-000110_audit_batched_range` found a
/// database with users but no log at all (an upgrade from a version that never wrote an entry).
pub const UPGRADED_WITHOUT_LOG: &str = "upgraded-without-log";

fn is_placeholder(h: &Head) -> bool {
    h.mac.is_none() && h.seq == 0 && h.anchor_id == 0
}

/// Under the head's lock (the caller's [`rows::reserve`] came first): the chain key to extend
/// `head` with, once its MAC is checked — or, in a database that never had a log, the key of a log
/// started here (its genesis head written, `head` updated). `Err(Broken)`: the log cannot be
/// extended (never started though the database has history, chain key missing, head changed).
fn extendable(conn: &mut Conn, cipher: &Cipher, head: &mut Head) -> AppResult<Result<ChainKey, Broken>> {
    if head.mac.is_none() {
        // A database with users never starts a log, unless the upgrade migration found it
        // without one (`UPGRADED_WITHOUT_LOG`: users from before the audit log, no entry yet).
        let fresh = is_placeholder(head)
            && rows::count(conn)? == 0
            && meta::get(conn, KEY_NAME)?.is_none()
            && (head.hash == UPGRADED_WITHOUT_LOG || !rows::database_has_history(conn)?);
        if !fresh {
            return Ok(Err(Broken::NotStarted));
        }
        let key = new_chain_key(conn, cipher)?;
        let genesis = random_genesis();
        *head = Head { seq: 0, hash: genesis.clone(), anchor_id: 0, anchor_hash: genesis, mac: None };
        head.mac = Some(key.head_mac(head));
        rows::set_head(conn, head)?;
        tracing::info!(genesis = %head.hash, "audit log started");
        return Ok(Ok(key));
    }
    let Some(key) = chain_key(conn, cipher)? else { return Ok(Err(Broken::KeyMissing)) };
    if !key.authenticates(head) {
        return Ok(Err(Broken::HeadChanged));
    }
    Ok(Ok(key))
}

/// What an operator is told when the log cannot be extended (the server refuses to start, an
/// append is refused).
pub fn unusable(broken: &Broken) -> String {
    format!(
        "the audit log cannot be appended to: {broken}. tokenvault never starts a new log over one (nor in a database \
         with users): nothing can be recorded, so nothing that must be recorded is done, until an operator looks — \
         `tokenvault audit verify` says what is wrong; then restore the database from a backup, or archive what is \
         left and start a new log with `tokenvault audit restart --archive <file> --reason <text>`"
    )
}

/// The error of an append to a log that cannot be extended.
fn refused(broken: Broken) -> AppError {
    AppError::Internal(unusable(&broken))
}

/// Open the log at start (server, CLI): start it in a database that never had one, else check
/// that its head can be extended. `Ok(Err(_))`: it cannot — every append would be refused.
pub fn open(conn: &mut Conn, cipher: &Cipher) -> AppResult<Result<Head, Broken>> {
    conn.transaction(|conn| {
        let mut head = rows::reserve(conn, 0)?;
        Ok(extendable(conn, cipher, &mut head)?.map(|_| head))
    })
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
        let mut head = rows::reserve(conn, 0)?;
        let hash = extendable(conn, cipher, &mut head)?.map_err(refused)?.username_hash(username);
        let mut e = Entry::new(Kind::SigninFailure, Actor::System).address(address).with("username_hash", hash);
        e.user_id = user_id;
        record(conn, cipher, e)
    })
}

/// Append `entries` ([`Entry::bounded`] first) in one transaction; the id of the last one.
pub fn append(conn: &mut Conn, cipher: &Cipher, entries: &[Entry]) -> AppResult<i64> {
    let entries: Vec<Entry> = entries.iter().cloned().map(Entry::bounded).collect();
    conn.transaction(|conn| {
        // First the head (its lock), then the key: nothing is read before the lock is held.
        let mut head = rows::reserve(conn, entries.len() as i64)?;
        let key = extendable(conn, cipher, &mut head)?.map_err(refused)?;
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
                at_last: e.at_last,
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
    /// The head row was changed by hand (its MAC does not match).
    HeadChanged,
    /// The head has no MAC: the log was never started here, or it was emptied and its head reset
    /// to the migration's values. Only a log started in a database without history may begin
    /// from such a head; an empty log verifies only from an authenticated genesis.
    NotStarted,
    /// The head says a log was started, but its chain key is not in `meta` (deleted).
    KeyMissing,
}

impl Broken {
    /// The first bad entry's id (`None` for the head's problems).
    pub fn id(&self) -> Option<i64> {
        match self {
            Broken::Changed(id) | Broken::OutOfOrder(id) | Broken::Missing(id) | Broken::Truncated(id) => Some(*id),
            Broken::HeadChanged | Broken::NotStarted | Broken::KeyMissing => None,
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
            Broken::NotStarted => f.write_str(
                "the chain's head is not an authenticated genesis (no MAC): the log was emptied and its head reset, \
                 or it was never started in a database that has users",
            ),
            Broken::KeyMissing => {
                f.write_str("the chain key is missing from meta (deleted), though the head says the log was started")
            }
        }
    }
}

/// The last verified entry a walk accepted, and how many it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Walked {
    count: i64,
    last_id: i64,
    last_hash: String,
}

/// Walk the entries after the head's anchor in id order, checking each against the chain key:
/// `accept` sees each entry that verifies and says whether to go on (an entry it refuses ends the
/// walk, not counted). Rows at or before the anchor, gaps, reordered or changed entries end it
/// with their [`Broken`]. The head's MAC is the caller's to check.
fn walk(
    conn: &mut Conn,
    key: &ChainKey,
    head: &Head,
    mut accept: impl FnMut(&AuditRow) -> bool,
) -> AppResult<(Result<(), Broken>, Walked)> {
    let mut w = Walked { count: 0, last_id: head.anchor_id, last_hash: head.anchor_hash.clone() };
    let mut after = i64::MIN;
    loop {
        let batch = rows::after(conn, after, 1000)?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for row in batch {
            let expected = w.last_id + 1;
            let broken = if row.id < expected {
                // A row at or before the anchor (pruned positions) or a duplicate position.
                Some(Broken::OutOfOrder(row.id))
            } else if row.id > expected {
                Some(Broken::Missing(expected))
            } else if row.prev_hash != w.last_hash {
                Some(Broken::OutOfOrder(row.id))
            } else if !crate::util::ct_eq(&key.entry_hash(&w.last_hash, &row), &row.hash) {
                Some(Broken::Changed(row.id))
            } else {
                None
            };
            if let Some(b) = broken {
                return Ok((Err(b), w));
            }
            if !accept(&row) {
                return Ok((Ok(()), w));
            }
            w = Walked { count: w.count + 1, last_id: row.id, last_hash: row.hash };
        }
    }
    Ok((Ok(()), w))
}

/// What moved the anchor to where it is: the verified `audit.pruned` (or `audit.restarted`) entry
/// that says it removed the entries through the anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorMove {
    /// The id of that entry.
    pub entry: i64,
    pub kind: String,
    /// The last id it removed (the anchor).
    pub through: i64,
}

/// What `verify` found: the verdict, the head as stored, and what explains its anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The number of entries after the anchor when intact.
    pub result: Result<i64, Broken>,
    pub head: Head,
    pub anchor_moved_by: Option<AnchorMove>,
}

/// Walk the chain from the anchor in id order; the number of entries when intact.
pub fn verify(conn: &mut Conn, cipher: &Cipher) -> AppResult<Result<i64, Broken>> {
    Ok(verify_report(conn, cipher)?.result)
}

/// [`verify`], with the head and what moved its anchor (for checkpoints, see [`checkpoint`]).
pub fn verify_report(conn: &mut Conn, cipher: &Cipher) -> AppResult<Report> {
    let head = rows::head(conn)?;
    let done = |result, head, anchor_moved_by| Ok(Report { result, head, anchor_moved_by });
    if head.mac.is_none() {
        return done(Err(Broken::NotStarted), head, None);
    }
    let Some(key) = chain_key(conn, cipher)? else { return done(Err(Broken::KeyMissing), head, None) };
    if !key.authenticates(&head) {
        return done(Err(Broken::HeadChanged), head, None);
    }
    let mut moved = None;
    let (result, walked) = walk(conn, &key, &head, |row| {
        if row.kind == Kind::AuditPruned.as_str() || row.kind == Kind::AuditRestarted.as_str() {
            let through = serde_json::from_str::<serde_json::Value>(&row.detail)
                .ok()
                .and_then(|d| d["through_id"].as_i64())
                .filter(|t| *t == head.anchor_id);
            if let Some(through) = through {
                moved = Some(AnchorMove { entry: row.id, kind: row.kind.clone(), through });
            }
        }
        true
    })?;
    let result = match result {
        Err(b) => Err(b),
        Ok(()) if walked.last_id != head.seq || walked.last_hash != head.hash => {
            Err(Broken::Truncated(walked.last_id + 1))
        }
        Ok(()) => Ok(walked.count),
    };
    done(result, head, moved)
}

/// Delete the entries older than `days` days (0: keep forever), moving the anchor to the last one
/// removed (in the head, under its MAC) and appending an `audit.pruned` entry; how many were
/// removed. Nothing is trusted that was not verified: the head's MAC is checked and the chain
/// walked from the anchor, entry by entry, and the entries removed are the longest verified run
/// from the anchor whose every entry is older than the cut-off (`at`, and `at_last` for a batched
/// one, are under each entry's hash) — an older entry after a newer one (a batched read written
/// late) is kept with it. `Ok(Err(_))`: something on the way did not verify, and nothing was
/// removed.
pub fn prune(conn: &mut Conn, cipher: &Cipher, days: i64, at: i64) -> AppResult<Result<usize, Broken>> {
    if days <= 0 {
        return Ok(Ok(0));
    }
    let cutoff = at - days * 86_400;
    // The walk first, without the lock (appends go on meanwhile)…
    let head = rows::head(conn)?;
    if is_placeholder(&head) && rows::count(conn)? == 0 {
        return Ok(Ok(0));
    }
    if head.mac.is_none() {
        return Ok(Err(Broken::NotStarted));
    }
    let Some(key) = chain_key(conn, cipher)? else { return Ok(Err(Broken::KeyMissing)) };
    if !key.authenticates(&head) {
        return Ok(Err(Broken::HeadChanged));
    }
    let (result, walked) = walk(conn, &key, &head, |row| row.at.max(row.at_last.unwrap_or(row.at)) < cutoff)?;
    if let Err(b) = result {
        return Ok(Err(b));
    }
    if walked.count == 0 {
        return Ok(Ok(0));
    }
    // …then, under the lock, the removal of what was verified, if the anchor has not moved since.
    conn.transaction(|conn| {
        let mut now_head = rows::reserve(conn, 0)?;
        if let Err(b) = extendable(conn, cipher, &mut now_head)? {
            return Ok(Err(b));
        }
        if (now_head.anchor_id, &now_head.anchor_hash) != (head.anchor_id, &head.anchor_hash) {
            return Ok(Ok(0)); // Another instance pruned meanwhile.
        }
        if now_head.seq < walked.last_id {
            return Ok(Err(Broken::Truncated(now_head.seq + 1)));
        }
        match rows::find(conn, walked.last_id)? {
            Some(r) if r.hash == walked.last_hash => {}
            _ => return Ok(Err(Broken::Changed(walked.last_id))),
        }
        let removed = rows::delete_through(conn, walked.last_id)?;
        now_head.anchor_id = walked.last_id;
        now_head.anchor_hash = walked.last_hash.clone();
        now_head.mac = Some(key.head_mac(&now_head));
        rows::set_head(conn, &now_head)?;
        let entry = Entry::new(Kind::AuditPruned, Actor::System)
            .with("through_id", walked.last_id)
            .with("removed", removed as i64)
            .with("retention_days", days);
        append(conn, cipher, &[entry])?;
        Ok(Ok(removed))
    })
}

/// What `tokenvault audit restart` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// Entries written to the archive (and removed from the database).
    pub archived: usize,
    /// SHA-256 (hex) of the archive's bytes, recorded in the new log's first entry.
    pub archive_sha256: String,
    /// The new log's anchor: the last position the old one had used (ids are never reused).
    pub anchor: i64,
    /// What was wrong with the old log.
    pub broken: String,
}

/// Start a new log after one that cannot be extended or does not verify: every stored entry, the
/// head and the sealed chain key are first written to `archive` (JSON lines), then removed, and
/// the new log — a new genesis after the last position the old one used, under the old chain key
/// when it still opens — begins with an `audit.restarted` entry that records why, what was found,
/// and the archive's SHA-256. Refused while the log verifies. The operator's act, with the vault
/// key: nothing else ever starts a log in a database with history.
pub fn restart(
    conn: &mut Conn,
    cipher: &Cipher,
    reason: &str,
    archive: &mut dyn std::io::Write,
) -> AppResult<Restarted> {
    use sha2::Digest;
    let broken = match verify_report(conn, cipher) {
        Ok(Report { result: Ok(n), .. }) => {
            return Err(AppError::BadRequest(format!(
                "the audit log verifies ({n} entries): there is nothing to restart"
            )))
        }
        Ok(Report { result: Err(b), .. }) => b.to_string(),
        Err(e) => format!("the log could not be read: {e}"),
    };
    conn.transaction(|conn| {
        let head = rows::reserve(conn, 0)?;
        let mut digest = sha2::Sha256::new();
        let mut write = |line: String| -> AppResult<()> {
            digest.update(line.as_bytes());
            digest.update(b"\n");
            writeln!(archive, "{line}").map_err(|e| AppError::Internal(format!("cannot write the archive: {e}")))
        };
        let sealed_key = meta::get(conn, KEY_NAME)?.map(|k| crate::util::b64_encode(&k));
        write(
            serde_json::json!({
                "archive": "tokenvault audit log",
                "written_at": now(),
                "reason": reason,
                "broken": broken,
                "head": { "seq": head.seq, "hash": head.hash, "anchor_id": head.anchor_id,
                          "anchor_hash": head.anchor_hash, "mac": head.mac },
                "sealed_chain_key": sealed_key,
            })
            .to_string(),
        )?;
        let (mut after, mut archived) = (i64::MIN, 0usize);
        loop {
            let batch = rows::after(conn, after, 1000)?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            for row in &batch {
                write(serde_json::to_string(row).map_err(|e| AppError::Internal(e.to_string()))?)?;
                archived += 1;
            }
        }
        archive.flush().map_err(|e| AppError::Internal(format!("cannot write the archive: {e}")))?;
        let archive_sha256 = hex(&digest.finalize());
        let anchor = head.seq.max(head.anchor_id).max(rows::max_id(conn)?.unwrap_or(0));
        rows::delete_all(conn)?;
        let key = match chain_key(conn, cipher) {
            Ok(Some(k)) => k,
            Ok(None) | Err(AppError::Vault(_)) | Err(AppError::Internal(_)) => new_chain_key(conn, cipher)?,
            Err(e) => return Err(e),
        };
        let genesis = random_genesis();
        let mut new_head =
            Head { seq: anchor, hash: genesis.clone(), anchor_id: anchor, anchor_hash: genesis, mac: None };
        new_head.mac = Some(key.head_mac(&new_head));
        rows::set_head(conn, &new_head)?;
        let entry = Entry::new(Kind::AuditRestarted, Actor::Cli)
            .with("through_id", anchor)
            .with("reason", reason)
            .with("broken", broken.clone())
            .with("archived", archived as i64)
            .with("archive_sha256", archive_sha256.clone());
        append(conn, cipher, &[entry])?;
        Ok(Restarted { archived, archive_sha256, anchor, broken: broken.clone() })
    })
}

/// When an entry's events happened, as pages and `audit tail` show it (UTC): its time, or for an
/// entry of the batcher the range of its events, marked `batched` — such an entry was written
/// after them, so entries with lower ids may have happened later: compare times, not ids.
pub fn when(at: i64, at_last: Option<i64>) -> String {
    use crate::util::format_utc;
    match at_last {
        None => format_utc(at),
        Some(last) if last <= at => format!("{} (batched)", format_utc(at)),
        Some(last) => format!("{} – {} (batched)", format_utc(at), format_utc(last)),
    }
}

/// A proxied path as recorded: segments that look like identifiers or values (digits, or longer
/// than 24 characters, or not plain words) become `*`, so no id, e-mail or token lands in the log;
/// at most [`PATH_SEGMENTS`] segments and [`PATH_BYTES`] bytes are kept, then `/…`.
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
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        let room = if i + 1 == parts.len() { PATH_BYTES } else { PATH_BYTES - PATH_CUT.len() };
        if i == PATH_SEGMENTS || out.len() + 1 + part.len() > room {
            out.push_str(PATH_CUT);
            return out;
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub mod batcher;
pub mod checkpoint;
pub mod metrics;
#[cfg(test)]
mod tests;

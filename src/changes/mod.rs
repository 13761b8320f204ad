//! The unit of work: domain code says what happened — a [`Change`] — inside one transaction
//! ([`write`], or [`Db::write`] on the blocking pool), and [`project`] turns each change, in that
//! transaction, into everything that must follow from it: its connection history row
//! (`connection_events`), its audit entry, its webhook outbox row and its cache invalidation.
//! Nothing else writes any of the four: the model functions that write the cached tables
//! (`connections`, `api_keys`) only write the rows, and the change recorded beside them says what
//! every instance must drop. A compare-and-swap that finds the row changed under it records no
//! change; it tells the unit with [`Tx::saw_stale`], so this process's copy is dropped on settling
//! (the writer that won recorded its own invalidation for the other instances).
//!
//! Committing hands back a [`Committed`], `#[must_use]`, whose value comes out only through
//! [`Committed::settle`] (this process's cached copies dropped, the webhook worker woken when an
//! event was recorded) or, in a process that caches nothing and runs no worker (the CLI, a test
//! playing another instance), [`Committed::recorded_only`].
//!
//! ```ignore
//! let id = app.db.write(app.ledger(), move |tx| {
//!     connections::upsert(tx.conn(), &new)?;
//!     let row = connections::find(tx.conn(), user_id, &service)?.ok_or(AppError::NotFound)?;
//!     tx.record(Change::ConnectionCreated { conn: Subject::of(&row), detail })?;
//!     Ok(row.id)
//! }).await?.settle(app.effects());
//! ```

pub mod project;

use std::net::IpAddr;
use std::sync::Arc;

pub use crate::audit::Actor;

use crate::audit::checkpoint::Checkpoint;

use crate::cache::{Caches, Ticket};
use crate::db::models::connections::{Account, Connection};
use crate::db::models::events::EventOutcome;
use crate::db::models::invalidations::Invalidated;
use crate::db::{Conn, Db};
use crate::error::AppResult;
use crate::jobs::Wake;
use crate::vault::Cipher;
use crate::webhooks::Webhooks;

/// A connection as a change names it: which one, whose, of which account. Never its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub account: Option<Account>,
}

impl Subject {
    pub fn of(row: &Connection) -> Subject {
        Subject { id: row.id, user_id: row.user_id, service: row.service.clone(), account: row.account() }
    }
}

/// Something that happened, as domain code says it. Each variant carries what its projections
/// need (ids, names, reasons shown to the user) and never a secret. Adding one: a variant here,
/// then one arm in each projection of [`project`] (the compiler lists them: no wildcard arms).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new connection was stored (`detail`: shown in its history).
    ConnectionCreated { conn: Subject, detail: String },
    /// An existing connection got new tokens from a new authorization.
    ConnectionReconnected { conn: Subject, detail: String },
    /// An authorization did not end in tokens (`cancelled`: the user said no at the provider).
    ConnectRefused { user_id: i64, service: String, cancelled: bool, detail: String },
    /// A connection was deleted locally (`outcome` as its history shows it).
    ConnectionDeleted { conn: Subject, outcome: EventOutcome, detail: String },
    /// A connection was revoked (at the provider or, `outcome` says, not) and deleted.
    ConnectionRevoked { conn: Subject, outcome: EventOutcome, detail: String },
    /// A refresh stored new tokens (`rotated`: with a new refresh token; `recovered`: the
    /// connection was degraded until now).
    ConnectionRefreshed { conn: Subject, rotated: bool, recovered: bool },
    /// The provider no longer accepts the grant: the user must connect again.
    ReconnectRequired { conn: Subject, reason: String, detail: String },
    /// A transient refresh failure; `entering`: the connection was healthy until now.
    ConnectionDegraded { conn: Subject, reason: String, detail: String, entering: bool },
    /// A refresh could not be tried: an administrator must act (the tokens are kept).
    RefreshNeedsAdmin { user_id: i64, service: String, detail: String },
    /// A connection's refresh token expires soon (`status`: the connection's, as stored).
    ExpiryWarned { conn: Subject, status: String },
    /// `vault rotate-key` re-sealed a connection's tokens under the active key: the same tokens,
    /// so no history, no event and no audit entry of its own; cached copies hold the old
    /// ciphertext and are dropped everywhere.
    ConnectionResealed { id: i64, user_id: i64, service: String },

    /// A user signed in.
    SignedIn { user_id: i64, address: Option<IpAddr> },
    /// A sign-in was refused (`user_id`: when the name is an account's). The name is audited only
    /// as its keyed hash.
    SignInRefused { user_id: Option<i64>, username: String, address: Option<IpAddr> },
    /// A user signed out.
    SignedOut { user_id: i64, address: Option<IpAddr> },
    /// Sessions of a user ended other than by signing out.
    SessionsEnded { user_id: i64, address: Option<IpAddr>, why: SessionsEnd },
    /// An account was created (`admin`: said in the entry, as `tokenvault user add` does).
    UserAdded { user_id: i64, by: Actor, admin: Option<bool>, address: Option<IpAddr> },
    /// An account was renamed (`tokenvault user rename`).
    UserRenamed { user_id: i64 },
    /// A user changed their password (the sessions and keys it ended are changes of their own).
    PasswordChanged { user_id: i64, address: Option<IpAddr>, sessions_ended: usize, api_keys_revoked: usize },
    /// An API key was created.
    ApiKeyCreated { by: Actor, user_id: i64, key_id: i64 },
    /// An API key was revoked (`key_hash`: its stored SHA-256, what caches know it by).
    ApiKeyRevoked { by: Actor, user_id: i64, key_id: i64, key_hash: String, why: KeyRevoked, address: Option<IpAddr> },
    /// A vault value was set (never the value).
    VaultValueSet { by: Actor, path: String },
    /// A vault value was deleted.
    VaultValueDeleted { by: Actor, path: String },
    /// An administrator (`by`: their username, as the event says) queued a `webhook.test` event
    /// for endpoint `endpoint` only.
    WebhookTestQueued { endpoint: String, by: String },
    /// An administrator changed webhook endpoint `endpoint` on `/admin/webhooks`.
    WebhookEndpointChanged { user_id: i64, endpoint: String, change: EndpointChange },
    /// An audit checkpoint was published and an endpoint in effect wants its `audit.checkpoint`
    /// event (recorded only then: see [`checkpoint_event`]). Audit's own: no audit entry.
    AuditCheckpointed { checkpoint: Checkpoint },

    /// A user allowed a client of tokenvault's authorization server (`crate::authz`) a grant.
    GrantCreated { grant: GrantSubject, address: Option<IpAddr> },
    /// A grant ended before its expiry: its tokens stop working at once on this instance and, through
    /// the grant's invalidation, on every other one (see `crate::cache::Caches::access_tokens`).
    GrantRevoked { by: Actor, grant: GrantSubject, why: GrantEnd },
    /// Its client revoked one access token of a live grant (RFC 7009): the grant's cached tokens are
    /// dropped everywhere, as for [`Change::GrantRevoked`] (never the token).
    GrantTokenRevoked { grant: GrantSubject },
    /// The token endpoint issued tokens of a grant (never the tokens).
    GrantTokensIssued { grant: GrantSubject, how: Issued, resource: String },
    /// A client of the authorization server became known: registered by an administrator
    /// (`by`: them), by dynamic registration or a metadata document seen for the first time
    /// (`by`: system; `address`: the registering client's). Never its secret.
    ClientRegistered { by: Actor, client: ClientSubject, confidential: bool, address: Option<IpAddr> },
    /// An administrator deleted a client; its `grants_revoked` live grants were revoked (each a
    /// [`Change::GrantRevoked`] of its own, in the same unit) and its codes and tokens deleted.
    ClientDeleted { by: Actor, client: ClientSubject, grants_revoked: usize },
    /// A provider was changed in the app (`crate::oauth::managed`): its audit entry, its
    /// `provider.changed` webhook and the invalidation that makes every instance rebuild its
    /// catalog. Never a client secret.
    ProviderChanged { by: Actor, name: String, action: ProviderAction },
}

/// What was done to a provider ([`Change::ProviderChanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderAction {
    /// Added in the app; its authorize URL's origin.
    Added {
        authorize_origin: String,
    },
    /// Keys of its table set in the app (names only; `client_id`/`client_secret` when new
    /// credentials were sealed into the vault).
    Edited {
        keys: Vec<String>,
        authorize_origin: String,
    },
    Disabled,
    Enabled,
    /// A configured provider's edits dropped.
    Reverted,
    /// An added provider deleted.
    Deleted,
}

impl ProviderAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderAction::Added { .. } => "added",
            ProviderAction::Edited { .. } => "edited",
            ProviderAction::Disabled => "disabled",
            ProviderAction::Enabled => "enabled",
            ProviderAction::Reverted => "reverted",
            ProviderAction::Deleted => "deleted",
        }
    }
}

/// A grant as a change names it: whose, to which client, what it allows. Never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSubject {
    pub id: i64,
    pub user_id: i64,
    pub client_id: String,
    pub client_name: String,
    /// `None`: every service, also those connected later.
    pub services: Option<Vec<String>>,
    pub capabilities: Vec<String>,
    pub expires_at: i64,
}

/// A client of the authorization server as a change names it. Never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSubject {
    /// Its row id (the administrators' page names it by this).
    pub id: i64,
    pub client_id: String,
    pub name: String,
    /// `admin`, `dynamic` or `metadata`.
    pub kind: &'static str,
}

impl ClientSubject {
    pub fn of(c: &crate::db::models::authz::Client) -> ClientSubject {
        ClientSubject { id: c.id, client_id: c.client_id.clone(), name: c.name.clone(), kind: c.kind.as_str() }
    }
}

/// Why a grant ended ([`Change::GrantRevoked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEnd {
    /// On My Settings → Connected apps.
    ByUser,
    /// By an administrator on `/admin/oauth-clients`.
    ByAdmin,
    /// The client revoked its refresh token (RFC 7009).
    ByClient,
    /// An authorization code was presented a second time.
    CodeReused,
    /// A rotated refresh token was presented again after the grace period.
    RefreshReplayed,
    /// Its user changed their password (which ends every grant, as it ends sessions and keys).
    PasswordChanged,
    /// The only service it was limited to, a provider added in the app, was deleted.
    ProviderDeleted,
    /// An administrator deleted its client.
    ClientDeleted,
}

/// How tokens were issued ([`Change::GrantTokensIssued`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issued {
    /// For an authorization code.
    Code,
    /// For a refresh token (rotated).
    Refresh,
    /// For a refresh token presented again within the grace period (the pair issued for it
    /// the first time is revoked).
    RefreshRetry,
}

/// What changed of a webhook endpoint ([`Change::WebhookEndpointChanged`]). A URL only as its
/// origin (a receiver's path may hold a token of its own); `events` as set (empty: all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointChange {
    Added {
        url_origin: String,
        events: Vec<String>,
    },
    Updated {
        url_origin: String,
        events: Vec<String>,
    },
    /// A new secret; the replaced one signs until `previous_valid_until`.
    SecretRotated {
        previous_valid_until: i64,
    },
    /// An endpoint added on the page was deleted.
    Deleted,
    /// A configured endpoint's edits were reverted.
    Reverted,
}

/// Why sessions ended ([`Change::SessionsEnded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionsEnd {
    /// Every session, by a password change.
    PasswordChanged { count: usize },
    /// One session, from the settings page (`session`: its public id).
    FromSettings { session: String },
    /// Every other session, from the settings page.
    OthersFromSettings { count: usize },
}

/// Why an API key was revoked ([`Change::ApiKeyRevoked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRevoked {
    ByUser,
    /// Evicted by a new key beyond `max_api_keys_per_user`.
    OverLimit {
        max_keys: i64,
    },
    PasswordChanged,
    /// The only service it was limited to, a provider added in the app, was deleted.
    ProviderDeleted,
}

/// The transaction of a unit of work: the connection, for the domain's own queries, and
/// [`Tx::record`] for what happened.
pub struct Tx<'c> {
    conn: &'c mut Conn,
    cipher: &'c Cipher,
    /// `None`: a unit that records no connection history (see [`write_no_history`]).
    events_kept: Option<i64>,
    /// What this unit recorded as invalidated (each once).
    recorded: Vec<Invalidated>,
    /// What this process drops from its caches on settling: the recorded ones, and the stale.
    invalidated: Vec<Invalidated>,
    wake: bool,
    /// A job was queued in the jobs table: its workers are woken on settling.
    jobs_queued: bool,
    /// The `webhook-id`s of the events recorded so far.
    events: Vec<String>,
    /// The transaction's id in its notifications, when it ended a grant's tokens (PostgreSQL):
    /// [`Db::write`] answers once this process's listener heard that commit.
    echo: Option<i64>,
}

impl<'c> Tx<'c> {
    /// The connection, for the domain's queries in this transaction.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn
    }

    /// Record `change`: its projections are written now, in this transaction.
    pub fn record(&mut self, change: Change) -> AppResult<()> {
        project::history(self.conn, self.events_kept, &change)?;
        project::audit(self.conn, self.cipher, &change)?;
        if let Some(id) = project::outbox(self.conn, &change)? {
            self.events.push(id);
        }
        self.wake |= project::wakes_webhooks(&change);
        if let Some(what) = project::invalidation_of(&change) {
            if !self.recorded.contains(&what) {
                project::invalidate(self.conn, &what)?;
                if matches!(what, Invalidated::Grant(_)) && self.echo.is_none() {
                    self.echo = crate::db::notify::commit_id(self.conn)?;
                }
                self.recorded.push(what.clone());
                self.drop_on_settle(what);
            }
        }
        Ok(())
    }

    /// This unit queued a job in the jobs table (`crate::jobs::queue`): settling wakes its workers.
    pub fn job_queued(&mut self) {
        self.jobs_queued = true;
    }

    /// A compare-and-swap of this unit found `what` changed under it (or gone): nothing is
    /// recorded — whoever changed it recorded that — but this process's copy, which the unit read,
    /// is dropped on settling so the next read sees the row as it is.
    pub fn saw_stale(&mut self, what: Invalidated) {
        self.drop_on_settle(what);
    }

    fn drop_on_settle(&mut self, what: Invalidated) {
        if !self.invalidated.contains(&what) {
            self.invalidated.push(what);
        }
    }

    /// The `webhook-id`s of the events recorded so far in this unit, oldest first.
    pub fn events(&self) -> &[String] {
        &self.events
    }
}

/// What a unit of work needs besides the connection: the cipher of the audit chain and how many
/// history rows to keep per connection (`events_per_connection`).
#[derive(Clone)]
pub struct Ledger {
    pub cipher: Arc<Cipher>,
    pub events_kept: i64,
}

/// Run `f` in one transaction (nested in the caller's when there is one) with the changes it
/// records projected in it; committed when it returns `Ok`.
pub fn write<T>(
    conn: &mut Conn,
    cipher: &Cipher,
    events_kept: i64,
    f: impl FnOnce(&mut Tx<'_>) -> AppResult<T>,
) -> AppResult<Committed<T>> {
    unit(conn, cipher, Some(events_kept), f)
}

/// [`write`] for a unit that records no connection history (accounts, keys, the vault, webhook
/// endpoints): recording a change that has one is an internal error.
pub fn write_no_history<T>(
    conn: &mut Conn,
    cipher: &Cipher,
    f: impl FnOnce(&mut Tx<'_>) -> AppResult<T>,
) -> AppResult<Committed<T>> {
    unit(conn, cipher, None, f)
}

fn unit<T>(
    conn: &mut Conn,
    cipher: &Cipher,
    events_kept: Option<i64>,
    f: impl FnOnce(&mut Tx<'_>) -> AppResult<T>,
) -> AppResult<Committed<T>> {
    conn.transaction(|conn| {
        let mut tx = Tx {
            conn,
            cipher,
            events_kept,
            recorded: Vec::new(),
            invalidated: Vec::new(),
            wake: false,
            jobs_queued: false,
            events: Vec::new(),
            echo: None,
        };
        let value = f(&mut tx)?;
        let (invalidated, wake, jobs_queued, echo) = (tx.invalidated, tx.wake, tx.jobs_queued, tx.echo);
        Ok(Committed { value, invalidated, wake, jobs_queued, echo })
    })
}

/// The `audit.checkpoint` event of a published checkpoint, in a unit of its own, when an endpoint
/// in effect wants it (none: nothing is written, so the outbox does not fill with events nobody
/// receives). The server settles it (waking its worker); the CLI keeps it recorded only.
pub fn checkpoint_event(
    conn: &mut Conn,
    cipher: &Cipher,
    webhooks: &Webhooks,
    checkpoint: &Checkpoint,
) -> AppResult<Committed<()>> {
    let wanted = webhooks.wants_any(crate::webhooks::EventType::AuditCheckpoint);
    write_no_history(conn, cipher, |tx| {
        if wanted {
            tx.record(Change::AuditCheckpointed { checkpoint: checkpoint.clone() })?;
        }
        Ok(())
    })
}

/// Re-encrypt every sealed value under the active key ([`crate::vault::rotation::rotate`]),
/// each batch of re-sealed connections recorded as [`Change::ConnectionResealed`] in the batch's
/// transaction. Run by the CLI, which caches nothing: the recorded invalidations tell the servers.
pub fn rotate_vault_key(
    conn: &mut Conn,
    cipher: &Cipher,
    progress: impl FnMut(&str, usize),
) -> AppResult<crate::vault::rotation::Rotated> {
    let resealed = |conn: &mut Conn, rows: &[crate::vault::rotation::Resealed]| {
        write_no_history(conn, cipher, |tx| {
            for r in rows {
                tx.record(Change::ConnectionResealed { id: r.id, user_id: r.user_id, service: r.service.clone() })?;
            }
            Ok(())
        })
        .map(Committed::recorded_only)
    };
    crate::vault::rotation::rotate(conn, cipher, resealed, progress)
}

impl Db {
    /// [`write`] on the blocking pool. A unit that ended a grant's tokens on PostgreSQL returns
    /// only once this process's listener heard its commit's notification (at most
    /// `jobs::listen::ECHO_WITHIN`): PostgreSQL has then sent it to the other instances too, whose
    /// check of a cached token looks at what reached their listener, so the revoking request's
    /// answer is followed by a refusal on every instance.
    pub async fn write<F, T>(&self, ledger: Ledger, f: F) -> AppResult<Committed<T>>
    where
        F: FnOnce(&mut Tx<'_>) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let committed = self.run(move |conn| write(conn, &ledger.cipher, ledger.events_kept, f)).await?;
        if let Some(tx) = committed.echo {
            crate::jobs::listen::echoed(tx, crate::jobs::listen::ECHO_WITHIN).await;
        }
        Ok(committed)
    }
}

/// What a process does after a commit: drop its cached copies, wake its webhook worker and the
/// workers of the jobs table. A process without one of them leaves it `None`.
#[derive(Clone, Copy, Default)]
pub struct Effects<'a> {
    pub caches: Option<&'a Caches>,
    pub webhooks: Option<&'a Webhooks>,
    pub jobs: Option<&'a Wake>,
}

impl Effects<'_> {
    fn wake_workers(&self, webhooks: bool, jobs: bool) {
        if let (true, Some(hooks)) = (webhooks, self.webhooks) {
            hooks.wake();
        }
        if let (true, Some(wake)) = (jobs, self.jobs) {
            wake.wake();
        }
    }
}

/// A committed unit of work: its value, and what this process must do now that it is committed.
#[must_use = "settle it: `Committed::settle` drops this process's cached copies and wakes the webhook worker"]
#[derive(Debug)]
pub struct Committed<T> {
    value: T,
    invalidated: Vec<Invalidated>,
    wake: bool,
    jobs_queued: bool,
    /// The commit's id in its notifications, when it ended a grant's tokens (see [`Db::write`]).
    echo: Option<i64>,
}

impl<T> Committed<T> {
    /// Drop this process's cached copies of what changed, wake the webhook worker when an event
    /// was recorded and the jobs' workers when a job was queued, and hand back the value.
    pub fn settle(self, fx: Effects<'_>) -> T {
        let Committed { value, invalidated, wake, jobs_queued, .. } = self;
        fx.wake_workers(wake, jobs_queued);
        if let Some(caches) = fx.caches {
            caches.after_write(&invalidated);
        }
        value
    }

    /// [`Committed::settle`] for a refresh that has just stored `row` with a ticket taken before
    /// the write: the row goes into the cached set in place of the old one (`Caches::after_refresh`).
    pub fn settle_refresh(self, fx: Effects<'_>, ticket: Ticket, row: Arc<Connection>) -> T {
        let Committed { value, invalidated, wake, jobs_queued, .. } = self;
        fx.wake_workers(wake, jobs_queued);
        if let Some(caches) = fx.caches {
            caches.after_refresh(&invalidated, ticket, row);
        }
        value
    }

    /// The value, for a process that caches nothing and runs no webhook worker (the CLI, or a
    /// test playing another instance): the recorded rows alone tell the running servers.
    pub fn recorded_only(self) -> T {
        self.value
    }

    /// The value, to look at before settling.
    pub fn value(&self) -> &T {
        &self.value
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Committed<U> {
        Committed {
            value: f(self.value),
            invalidated: self.invalidated,
            wake: self.wake,
            jobs_queued: self.jobs_queued,
            echo: self.echo,
        }
    }

    /// Whether settling wakes the webhook worker (an event was recorded).
    pub fn wakes(&self) -> bool {
        self.wake
    }

    /// Whether settling wakes the workers of the jobs table (a job was queued).
    pub fn wakes_jobs(&self) -> bool {
        self.jobs_queued
    }

    /// What settling drops from this process's caches.
    pub fn invalidated(&self) -> &[Invalidated] {
        &self.invalidated
    }
}

#[cfg(test)]
mod tests;

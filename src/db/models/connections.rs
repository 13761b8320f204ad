use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::schema::connections;
use crate::db::Conn;

crate::db::text_enum::text_enum! {
    /// Whether a connection's tokens may be used and refreshed, or the user must authorize again.
    pub enum ConnectionStatus {
        Active = "active",
        /// A transient refresh failure (5xx, timeout, 429): retried with capped exponential
        /// backoff (`status_reason`, `attempts`, `next_attempt_at`); still usable while its access
        /// token is valid.
        Degraded = "degraded",
        /// The provider no longer accepts the grant (`invalid_grant`, no refresh token).
        ReconnectRequired = "reconnect_required",
    }
    // A status written by a newer instance: this one neither hands out nor refreshes its tokens.
    unknown => ReconnectRequired;
}

/// A user's stored tokens for one service. Token columns are sealed by the vault cipher.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = connections)]
pub struct Connection {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: String,
    pub scopes: String,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    pub status: ConnectionStatus,
    pub version: i64,
    pub updated_at: i64,
    pub refresh_lease_until: Option<i64>,
    /// When a refresh after a 401 was last attempted (its lease taken), in any instance; `None`
    /// since the connection was made. See `oauth::access::may_refresh_after_401`.
    pub refresh_after_401_at: Option<i64>,
    /// Why the connection is degraded or needs a reconnect (a code, see `oauth::refresh::health`);
    /// `None` when active.
    pub status_reason: Option<String>,
    /// Failed refresh attempts since the last success.
    pub attempts: i64,
    /// When a degraded connection may be refreshed again; no lease is granted before.
    pub next_attempt_at: Option<i64>,
    /// When the provider said the refresh token expires (`None`: it did not say).
    pub refresh_token_expires_at: Option<i64>,
    /// The refresh-token expiry that `connection.expiring` was raised for (once per expiry).
    pub expiry_warned_for: Option<i64>,
    /// The provider's id of the account (`""`: not known — a provider without an account API, or
    /// a connection made before accounts were recorded). Unique per (user, service).
    pub account_id: String,
    /// What the user recognises the account by (an email, a login), when known.
    pub account_label: Option<String>,
    /// The scopes tokenvault asked for, when they differ from those granted (`scopes`).
    pub requested_scopes: Option<String>,
}

impl Connection {
    /// The provider account, when known.
    pub fn account(&self) -> Option<Account> {
        (!self.account_id.is_empty())
            .then(|| Account { id: self.account_id.clone(), label: self.account_label.clone() })
    }

    /// The scopes granted, as a list.
    pub fn granted(&self) -> Vec<String> {
        crate::util::scope_list(&self.scopes)
    }

    /// The scopes asked for (the granted ones when none were recorded).
    pub fn requested(&self) -> Vec<String> {
        crate::util::scope_list(self.requested_scopes.as_deref().unwrap_or(&self.scopes))
    }

    /// The connection's health: its status with what belongs to that status (a degraded one's
    /// reason, attempts and next try; the reason a reconnect is required).
    pub fn health(&self) -> Health {
        match self.status {
            ConnectionStatus::Active => Health::Active,
            ConnectionStatus::Degraded => Health::Degraded {
                reason: self.status_reason.clone(),
                attempts: self.attempts,
                next_attempt_at: self.next_attempt_at,
            },
            ConnectionStatus::ReconnectRequired => Health::ReconnectRequired { reason: self.status_reason.clone() },
        }
    }
}

/// A connection's health as one value: what its status says, and only what belongs to it (the
/// columns `status`, `status_reason`, `attempts` and `next_attempt_at` read together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Active,
    /// A transient refresh failure, retried at `next_attempt_at` (after `attempts` failures).
    Degraded {
        reason: Option<String>,
        attempts: i64,
        next_attempt_at: Option<i64>,
    },
    /// The provider no longer accepts the grant: the user must connect again.
    ReconnectRequired {
        reason: Option<String>,
    },
}

impl Health {
    pub fn status(&self) -> ConnectionStatus {
        match self {
            Health::Active => ConnectionStatus::Active,
            Health::Degraded { .. } => ConnectionStatus::Degraded,
            Health::ReconnectRequired { .. } => ConnectionStatus::ReconnectRequired,
        }
    }

    /// As people read it.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Active => "Active",
            Health::Degraded { .. } => "Degraded",
            Health::ReconnectRequired { .. } => "Reconnect required",
        }
    }

    /// Why it is not active (`None` when it is, or nothing was said).
    pub fn reason(&self) -> Option<&str> {
        match self {
            Health::Active => None,
            Health::Degraded { reason, .. } | Health::ReconnectRequired { reason } => reason.as_deref(),
        }
    }

    /// When a degraded connection's refresh is tried again.
    pub fn next_attempt_at(&self) -> Option<i64> {
        match self {
            Health::Degraded { next_attempt_at, .. } => *next_attempt_at,
            Health::Active | Health::ReconnectRequired { .. } => None,
        }
    }

    /// Worst first: a service's card shows its connection in the worst state.
    pub fn severity_rank(&self) -> u8 {
        match self {
            Health::ReconnectRequired { .. } => 0,
            Health::Degraded { .. } => 1,
            Health::Active => 2,
        }
    }
}

/// Which account at the provider a connection is: its id there and a label a person recognises.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Account {
    pub id: String,
    pub label: Option<String>,
}

/// Which of a user's connections to a service: the one with this id, or (`id: None`) the first
/// connected — the only one for a user with one account per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Which {
    pub user_id: i64,
    pub id: Option<i64>,
}

impl Which {
    /// The user's first (for most users: only) connection to the service.
    pub fn first(user_id: i64) -> Which {
        Which { user_id, id: None }
    }

    /// The user's connection `id` (only if it is theirs and of the service asked for).
    pub fn id(user_id: i64, id: i64) -> Which {
        Which { user_id, id: Some(id) }
    }

    /// The chosen row of the user's connections to one service (ordered by id).
    pub fn pick<'r, C: std::borrow::Borrow<Connection>>(&self, rows: &'r [C]) -> Option<&'r C> {
        match self.id {
            None => rows.first(),
            Some(id) => rows.iter().find(|c| c.borrow().id == id && c.borrow().user_id == self.user_id),
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = connections)]
pub struct NewConnection<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub access_token: &'a [u8],
    pub refresh_token: Option<&'a [u8]>,
    pub token_type: &'a str,
    pub scopes: &'a str,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    pub status: ConnectionStatus,
    pub version: i64,
    pub updated_at: i64,
    pub refresh_token_expires_at: Option<i64>,
    /// `""` when the provider does not say which account this is.
    pub account_id: &'a str,
    pub account_label: Option<&'a str>,
    pub requested_scopes: Option<&'a str>,
}

/// Insert the connection, or — the same account (`account_id`) of the same user and service
/// connected again — replace the tokens of the existing one (bumping its version).
/// Call inside a unit of work: the change it records invalidates the cached copies.
pub fn upsert(conn: &mut Conn, new: &NewConnection<'_>) -> QueryResult<usize> {
    let n = crate::on_conn!(conn, conn => {
        diesel::insert_into(connections::table)
            .values(new)
            .on_conflict((connections::user_id, connections::service, connections::account_id))
            .do_update()
            .set((
                connections::account_label.eq(excluded(connections::account_label)),
                connections::requested_scopes.eq(excluded(connections::requested_scopes)),
                connections::access_token.eq(excluded(connections::access_token)),
                connections::refresh_token.eq(excluded(connections::refresh_token)),
                connections::token_type.eq(excluded(connections::token_type)),
                connections::scopes.eq(excluded(connections::scopes)),
                connections::expires_at.eq(excluded(connections::expires_at)),
                connections::obtained_at.eq(excluded(connections::obtained_at)),
                connections::status.eq(excluded(connections::status)),
                connections::version.eq(connections::version + 1),
                connections::updated_at.eq(excluded(connections::updated_at)),
                connections::refresh_lease_until.eq(None::<i64>),
                connections::refresh_after_401_at.eq(None::<i64>),
                connections::status_reason.eq(None::<String>),
                connections::attempts.eq(0),
                connections::next_attempt_at.eq(None::<i64>),
                connections::refresh_token_expires_at.eq(excluded(connections::refresh_token_expires_at)),
            ))
            .execute(conn)
    })?;
    Ok(n)
}

/// Reconnect connection `id` in place: new tokens, and the account the provider now names (a
/// connection whose account was not known learns it), the version bumped, healthy again.
pub fn replace(conn: &mut Conn, id: i64, new: &NewConnection<'_>) -> QueryResult<usize> {
    let n = crate::on_conn!(conn, conn => {
        // Only a row of this account, or of one not known yet: the pin holds at the write too
        // (two reconnects of a row of unknown account racing each other cannot both name it).
        diesel::update(
            connections::table
                .filter(connections::id.eq(id))
                .filter(connections::user_id.eq(new.user_id))
                .filter(connections::service.eq(new.service))
                .filter(connections::account_id.eq(new.account_id).or(connections::account_id.eq(""))),
        )
        .set((
            connections::account_id.eq(new.account_id),
            connections::account_label.eq(new.account_label),
            connections::requested_scopes.eq(new.requested_scopes),
            connections::access_token.eq(new.access_token),
            connections::refresh_token.eq(new.refresh_token),
            connections::token_type.eq(new.token_type),
            connections::scopes.eq(new.scopes),
            connections::expires_at.eq(new.expires_at),
            connections::obtained_at.eq(new.obtained_at),
            connections::status.eq(new.status),
            connections::version.eq(connections::version + 1),
            connections::updated_at.eq(new.updated_at),
            connections::refresh_lease_until.eq(None::<i64>),
            connections::refresh_after_401_at.eq(None::<i64>),
            connections::status_reason.eq(None::<String>),
            connections::attempts.eq(0),
            connections::next_attempt_at.eq(None::<i64>),
            connections::refresh_token_expires_at.eq(new.refresh_token_expires_at),
        ))
        .execute(conn)
    })?;
    Ok(n)
}

/// The user's first connection to `service` (the only one for a user with one account there).
pub fn find(conn: &mut Conn, user_id: i64, service: &str) -> QueryResult<Option<Connection>> {
    find_which(conn, Which::first(user_id), service)
}

/// The connection `which` names among the user's connections to `service`.
pub fn find_which(conn: &mut Conn, which: Which, service: &str) -> QueryResult<Option<Connection>> {
    crate::on_conn!(conn, conn => {
        let q = connections::table
            .filter(connections::user_id.eq(which.user_id))
            .filter(connections::service.eq(service))
            .into_boxed();
        let q = match which.id {
            Some(id) => q.filter(connections::id.eq(id)),
            None => q,
        };
        q.order(connections::id.asc()).select(Connection::as_select()).first(conn).optional()
    })
}

/// The user's connections to `service`, first connected first.
pub fn list_for(conn: &mut Conn, user_id: i64, service: &str) -> QueryResult<Vec<Connection>> {
    crate::on_conn!(conn, conn => {
        connections::table
            .filter(connections::user_id.eq(user_id))
            .filter(connections::service.eq(service))
            .order(connections::id.asc())
            .select(Connection::as_select())
            .load(conn)
    })
}

/// [`list_for`], locked for the caller's transaction until it writes (PostgreSQL `FOR UPDATE`;
/// SQLite takes its write lock first): what the caller reads is what its write replaces.
pub fn list_for_update(conn: &mut Conn, user_id: i64, service: &str) -> QueryResult<Vec<Connection>> {
    match conn {
        Conn::Sqlite(c) => {
            let c: &mut diesel::sqlite::SqliteConnection = c;
            diesel::connection::SimpleConnection::batch_execute(c, "UPDATE connections SET id = id WHERE 0")?;
            list_for(conn, user_id, service)
        }
        Conn::Postgres(c) => {
            let c: &mut diesel::pg::PgConnection = c;
            connections::table
                .filter(connections::user_id.eq(user_id))
                .filter(connections::service.eq(service))
                .order(connections::id.asc())
                .select(Connection::as_select())
                .for_update()
                .load(c)
        }
    }
}

/// All the user's connections, by service, then first connected first.
pub fn list_for_user(conn: &mut Conn, user_id: i64) -> QueryResult<Vec<Connection>> {
    crate::on_conn!(conn, conn => {
        connections::table
            .filter(connections::user_id.eq(user_id))
            .order((connections::service.asc(), connections::id.asc()))
            .select(Connection::as_select())
            .load(conn)
    })
}

/// Delete the connection `which` names among the user's connections to `service`; the row
/// removed (`None` when there is none), read in the same statement (`RETURNING`), so the caller's
/// transaction starts with its write.
pub fn delete(conn: &mut Conn, which: Which, service: &str) -> QueryResult<Option<Connection>> {
    let Some(id) = (match which.id {
        Some(id) => Some(id),
        None => find(conn, which.user_id, service)?.map(|c| c.id),
    }) else {
        return Ok(None);
    };
    let row = crate::on_conn!(conn, conn => {
        diesel::delete(
            connections::table
                .filter(connections::id.eq(id))
                .filter(connections::user_id.eq(which.user_id))
                .filter(connections::service.eq(service)),
        )
        .returning(Connection::as_returning())
        .get_result(conn)
        .optional()
    })?;
    Ok(row)
}

/// Take the refresh lease of connection `id` at `version` until `until`: true when this caller
/// won it (nobody holds an unexpired lease, the version is unchanged, the connection does not
/// need a reconnect and, if degraded, its next attempt is due). With
/// `after_401_by: Some(t)` the refresh answers a 401: the lease is taken only if no refresh after a
/// 401 was attempted after `t`, and `now` is recorded as the latest one.
pub fn take_refresh_lease(
    conn: &mut Conn,
    id: i64,
    version: i64,
    now: i64,
    until: i64,
    after_401_by: Option<i64>,
) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        let target = connections::table
            .filter(connections::id.eq(id))
            .filter(connections::version.eq(version))
            .filter(connections::status.ne(ConnectionStatus::ReconnectRequired))
            .filter(connections::next_attempt_at.is_null().or(connections::next_attempt_at.le(now)))
            .filter(connections::refresh_lease_until.is_null().or(connections::refresh_lease_until.lt(now)));
        let lease = connections::refresh_lease_until.eq(until);
        let n = match after_401_by {
            Some(t) => diesel::update(
                target.filter(connections::refresh_after_401_at.is_null().or(connections::refresh_after_401_at.le(t))),
            )
            .set((lease, connections::refresh_after_401_at.eq(now)))
            .execute(conn)?,
            None => diesel::update(target).set(lease).execute(conn)?,
        };
        Ok(n == 1)
    })
}

pub fn release_refresh_lease(conn: &mut Conn, id: i64, version: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(connections::table.filter(connections::id.eq(id)).filter(connections::version.eq(version)))
            .set(connections::refresh_lease_until.eq(None::<i64>))
            .execute(conn)
    })
}

/// A connection row at a version: what compare-and-swap writes name.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub id: i64,
    pub version: i64,
    pub user_id: i64,
    pub service: &'a str,
}

impl Connection {
    pub fn at_version(&self) -> RowRef<'_> {
        RowRef { id: self.id, version: self.version, user_id: self.user_id, service: &self.service }
    }

    /// A row for unit tests.
    #[cfg(test)]
    pub fn for_tests(user_id: i64, service: &str) -> Connection {
        Connection {
            id: 1,
            user_id,
            service: service.to_string(),
            access_token: Vec::new(),
            refresh_token: None,
            token_type: "bearer".into(),
            scopes: String::new(),
            expires_at: None,
            obtained_at: 0,
            status: ConnectionStatus::Active,
            version: 1,
            updated_at: 0,
            refresh_lease_until: None,
            refresh_after_401_at: None,
            status_reason: None,
            attempts: 0,
            next_attempt_at: None,
            refresh_token_expires_at: None,
            expiry_warned_for: None,
            account_id: String::new(),
            account_label: None,
            requested_scopes: None,
        }
    }
}

/// New tokens after a refresh, written only if the row is still at `version` (compare-and-swap).
pub struct Refreshed<'a> {
    pub access_token: &'a [u8],
    /// `None`: the provider sent no new refresh token; keep the old one.
    pub refresh_token: Option<&'a [u8]>,
    pub token_type: &'a str,
    pub scopes: &'a str,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    /// The refresh token's expiry to store (`Some(None)`: unknown now), `None`: keep the stored one.
    pub refresh_token_expires_at: Option<Option<i64>>,
}

/// Store a refresh's new tokens if the row is still at its version; the connection is active
/// again (reason, attempts and next attempt cleared).
pub fn store_refreshed(conn: &mut Conn, row: RowRef<'_>, r: &Refreshed<'_>) -> QueryResult<bool> {
    let RowRef { id, version, .. } = row;
    let stored: bool = crate::on_conn!(conn, conn => {
        let target = connections::table.filter(connections::id.eq(id)).filter(connections::version.eq(version));
        let common = (
            connections::access_token.eq(r.access_token),
            connections::token_type.eq(r.token_type),
            connections::scopes.eq(r.scopes),
            connections::expires_at.eq(r.expires_at),
            connections::obtained_at.eq(r.obtained_at),
            connections::version.eq(version + 1),
            connections::updated_at.eq(r.obtained_at),
            connections::refresh_lease_until.eq(None::<i64>),
        );
        let healthy = (
            connections::status.eq(ConnectionStatus::Active),
            connections::status_reason.eq(None::<String>),
            connections::attempts.eq(0),
            connections::next_attempt_at.eq(None::<i64>),
        );
        let n = match r.refresh_token {
            Some(rt) => diesel::update(target).set((common, healthy, connections::refresh_token.eq(rt))).execute(conn)?,
            None => diesel::update(target).set((common, healthy)).execute(conn)?,
        };
        if let (1, Some(expiry)) = (n, r.refresh_token_expires_at) {
            diesel::update(connections::table.filter(connections::id.eq(id)))
                .set(connections::refresh_token_expires_at.eq(expiry))
                .execute(conn)?;
        }
        QueryResult::Ok(n == 1)
    })?;
    Ok(stored)
}

/// Mark a connection as needing the user to authorize again, with the reason's code (only if still
/// at `version`).
pub fn mark_reconnect_required(conn: &mut Conn, row: RowRef<'_>, reason: &str, now: i64) -> QueryResult<bool> {
    mark_unhealthy(conn, row, ConnectionStatus::ReconnectRequired, reason, None, now)
}

/// Mark a connection degraded after a transient refresh failure (only if still at `version`):
/// the reason's code, one more attempt, no refresh before `next_attempt_at`, the lease released.
pub fn mark_degraded(
    conn: &mut Conn,
    row: RowRef<'_>,
    reason: &str,
    next_attempt_at: i64,
    now: i64,
) -> QueryResult<bool> {
    mark_unhealthy(conn, row, ConnectionStatus::Degraded, reason, Some(next_attempt_at), now)
}

/// Set `status` with its reason and next attempt (a degraded mark counts one more attempt), a new
/// version and no lease, if the row is still at its version.
fn mark_unhealthy(
    conn: &mut Conn,
    row: RowRef<'_>,
    status: ConnectionStatus,
    reason: &str,
    next_attempt_at: Option<i64>,
    now: i64,
) -> QueryResult<bool> {
    let RowRef { id, version, .. } = row;
    let one_more = i64::from(status == ConnectionStatus::Degraded);
    let marked: bool = crate::on_conn!(conn, conn => {
        let n = diesel::update(connections::table.filter(connections::id.eq(id)).filter(connections::version.eq(version)))
            .set((
                connections::status.eq(status),
                connections::status_reason.eq(reason),
                connections::attempts.eq(connections::attempts + one_more),
                connections::next_attempt_at.eq(next_attempt_at),
                connections::version.eq(version + 1),
                connections::updated_at.eq(now),
                connections::refresh_lease_until.eq(None::<i64>),
            ))
            .execute(conn)?;
        QueryResult::Ok(n == 1)
    })?;
    Ok(marked)
}

/// Connections the keep-alive worker should look at, by id above `after` (at most `limit`): those
/// with a refresh token that are active and were not refreshed (or connected) since
/// `idle_before`, degraded ones whose next attempt is due, and those whose refresh token has
/// expired (to be marked without a provider call); none that another instance holds the lease of.
pub fn keepalive_candidates(
    conn: &mut Conn,
    now: i64,
    idle_before: i64,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<(i64, i64, String)>> {
    crate::on_conn!(conn, conn => {
        let idle = connections::status.eq(ConnectionStatus::Active).and(connections::obtained_at.le(idle_before));
        let due = connections::status
            .eq(ConnectionStatus::Degraded)
            .and(connections::next_attempt_at.is_null().or(connections::next_attempt_at.le(now)));
        let expired = connections::status
            .ne(ConnectionStatus::ReconnectRequired)
            .and(connections::refresh_token_expires_at.le(now));
        connections::table
            .filter(connections::id.gt(after))
            .filter(connections::refresh_token.is_not_null())
            .filter(connections::refresh_lease_until.is_null().or(connections::refresh_lease_until.lt(now)))
            .filter(idle.or(due).or(expired))
            .order(connections::id.asc())
            .limit(limit)
            .select((connections::id, connections::user_id, connections::service))
            .load(conn)
    })
}

/// Up to `limit` connections (id above `after`) whose refresh token expires within `window`
/// seconds of `now` and was not warned about yet for that expiry, nor needs a reconnect already.
pub fn expiring_unwarned(
    conn: &mut Conn,
    now: i64,
    window: i64,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Connection>> {
    crate::on_conn!(conn, conn => {
        connections::table
            .filter(connections::id.gt(after))
            .filter(connections::status.ne(ConnectionStatus::ReconnectRequired))
            .filter(connections::refresh_token_expires_at.gt(now))
            .filter(connections::refresh_token_expires_at.le(now + window))
            .filter(
                connections::expiry_warned_for
                    .is_null()
                    .or(connections::expiry_warned_for.nullable().ne(connections::refresh_token_expires_at)),
            )
            .order(connections::id.asc())
            .limit(limit)
            .select(Connection::as_select())
            .load(conn)
    })
}

/// Record that the warning for the refresh-token expiry `expires_at` of connection `id` was
/// raised — a compare-and-swap: false when it was already (another instance was first) or the
/// expiry changed meanwhile.
pub fn mark_expiry_warned(conn: &mut Conn, id: i64, expires_at: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            connections::table
                .filter(connections::id.eq(id))
                .filter(connections::refresh_token_expires_at.eq(expires_at))
                .filter(connections::expiry_warned_for.is_null().or(connections::expiry_warned_for.ne(expires_at))),
        )
        .set(connections::expiry_warned_for.eq(expires_at))
        .execute(conn)
    })
    .map(|n| n == 1)
}

/// How many connections there are in each status, by its stored string: a status this version
/// does not know (written by a newer instance) is counted under `"unknown"`, not an error.
pub fn count_by_status(conn: &mut Conn) -> QueryResult<Vec<(&'static str, i64)>> {
    let rows: Vec<(String, i64)> = crate::on_conn!(conn, conn => {
        connections::table
            .group_by(connections::status)
            .select((connections::status, diesel::dsl::count_star()))
            .load(conn)
    })?;
    let mut counts: Vec<(&'static str, i64)> = Vec::new();
    for (text, n) in rows {
        let label = text.parse::<ConnectionStatus>().map_or("unknown", ConnectionStatus::as_str);
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, total)) => *total += n,
            None => counts.push((label, n)),
        }
    }
    Ok(counts)
}

/// The sealed columns of a connection, for key rotation.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = connections)]
pub struct Sealed {
    pub id: i64,
    pub version: i64,
    pub user_id: i64,
    pub service: String,
    pub account_id: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
}

/// Up to `limit` connections with an id above `after`.
pub fn sealed_batch(conn: &mut Conn, after: i64, limit: i64) -> QueryResult<Vec<Sealed>> {
    crate::on_conn!(conn, conn => {
        connections::table
            .filter(connections::id.gt(after))
            .order(connections::id.asc())
            .limit(limit)
            .select(Sealed::as_select())
            .load(conn)
    })
}

/// Replace sealed tokens (same plaintext, another key) if the row is still at `version`.
pub fn reseal(conn: &mut Conn, row: RowRef<'_>, access: Option<&[u8]>, refresh: Option<&[u8]>) -> QueryResult<bool> {
    let RowRef { id, version, .. } = row;
    let changed: bool = crate::on_conn!(conn, conn => {
        let target = connections::table.filter(connections::id.eq(id)).filter(connections::version.eq(version));
        let mut changed = 0;
        if let Some(a) = access {
            changed += diesel::update(target).set(connections::access_token.eq(a)).execute(conn)?;
        }
        if let Some(r) = refresh {
            changed += diesel::update(target).set(connections::refresh_token.eq(r)).execute(conn)?;
        }
        QueryResult::Ok(changed > 0)
    })?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::events::{self, EventKind, EventOutcome, NewEvent};
    use crate::db::models::users;
    use crate::db::Db;

    /// A newer instance on the same database (a rolling upgrade) writes a status and an event
    /// outcome this version does not know: the user's pages and `/metrics` still work.
    #[test]
    fn a_status_from_a_newer_version_breaks_neither_the_list_nor_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let user_id = users::for_tests(&mut conn, "alice");
        for service in ["dropbox", "google"] {
            let row = NewConnection {
                user_id,
                service,
                access_token: b"sealed",
                refresh_token: None,
                token_type: "bearer",
                scopes: "",
                expires_at: None,
                obtained_at: 0,
                status: ConnectionStatus::Active,
                version: 1,
                updated_at: 0,
                refresh_token_expires_at: None,
                account_id: "",
                account_label: None,
                requested_scopes: None,
            };
            upsert(&mut conn, &row).unwrap();
            for outcome in [EventOutcome::Ok, EventOutcome::Failed] {
                let event = NewEvent { user_id, service, at: 1, kind: EventKind::Refresh, outcome, detail: "" };
                events::insert(&mut conn, &event).unwrap();
            }
        }
        let sql = "UPDATE connections SET status = 'from_the_future' WHERE service = 'google'";
        crate::on_conn!(&mut conn, c => diesel::sql_query(sql).execute(c)).unwrap();
        let sql =
            "UPDATE connection_events SET outcome = 'from the future' WHERE service = 'google' AND outcome = 'ok'";
        crate::on_conn!(&mut conn, c => diesel::sql_query(sql).execute(c)).unwrap();

        let listed = list_for_user(&mut conn, user_id).unwrap();
        let statuses: Vec<_> = listed.iter().map(|c| (c.service.as_str(), c.status)).collect();
        assert_eq!(
            statuses,
            [("dropbox", ConnectionStatus::Active), ("google", ConnectionStatus::ReconnectRequired)],
            "the unknown status reads as the fail-closed one; the other row is untouched"
        );
        assert_eq!(find(&mut conn, user_id, "google").unwrap().unwrap().status, ConnectionStatus::ReconnectRequired);

        let mut counts = count_by_status(&mut conn).unwrap();
        counts.sort();
        assert_eq!(counts, [("active", 1), ("unknown", 1)]);

        let history = events::recent(&mut conn, user_id, "google", 10).unwrap();
        assert_eq!(
            history.iter().map(|e| e.outcome).collect::<Vec<_>>(),
            [EventOutcome::Failed],
            "only the unknown row is skipped"
        );
        assert_eq!(events::recent(&mut conn, user_id, "dropbox", 10).unwrap().len(), 2);
    }

    /// A connection made before accounts were recorded survives the migration that allows several
    /// per service (SQLite rebuilds the table): its id, its tokens (sealed in the format without an
    /// account) and its place as the service's only connection; then a second account can join,
    /// and the way back (down.sql) keeps the first.
    #[test]
    fn connections_from_before_accounts_survive_the_accounts_migration_both_ways() {
        use crate::vault::{Aad, Cipher};
        use diesel_migrations::MigrationHarness;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let user_id = users::for_tests(&mut conn, "old");
        let revert = |conn: &mut Conn| {
            let crate::db::Conn::Sqlite(c) = conn else { unreachable!() };
            let c: &mut diesel::sqlite::SqliteConnection = &mut *c;
            loop {
                let reverted = c.revert_last_migration(crate::db::SQLITE_MIGRATIONS).unwrap();
                if reverted.to_string().contains("000060") {
                    break;
                }
            }
        };
        revert(&mut conn);
        // A deleted connection with a higher id: its id must never be handed out again.
        let gone = format!(
            "INSERT INTO connections (id, user_id, service, access_token, token_type, scopes, obtained_at, updated_at) \
             VALUES (90, {user_id}, 'gone', X'00', 'bearer', '', 1, 1)"
        );
        crate::on_conn!(&mut conn, c => diesel::sql_query(gone).execute(c)).unwrap();
        crate::on_conn!(&mut conn, c => diesel::sql_query("DELETE FROM connections WHERE id = 90").execute(c)).unwrap();
        let cipher = Cipher::for_tests(9);
        let sealed = cipher.seal_str("AT-old", Aad::AccessToken { user_id, service: "dropbox", account: "" });
        let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
        let sql = format!(
            "INSERT INTO connections (id, user_id, service, access_token, token_type, scopes, obtained_at, updated_at) \
             VALUES (41, {user_id}, 'dropbox', X'{hex}', 'bearer', 'read', 1, 1)"
        );
        crate::on_conn!(&mut conn, c => diesel::sql_query(sql).execute(c)).unwrap();
        {
            let crate::db::Conn::Sqlite(c) = &mut conn else { unreachable!() };
            let c: &mut diesel::sqlite::SqliteConnection = &mut *c;
            c.run_pending_migrations(crate::db::SQLITE_MIGRATIONS).unwrap();
        }
        let row = find(&mut conn, user_id, "dropbox").unwrap().expect("kept");
        assert_eq!((row.id, row.account_id.as_str(), row.account()), (41, "", None));
        let (access, _) = crate::oauth::store::open_tokens(&cipher, &row).unwrap();
        assert_eq!(crate::util::ExposeSecret::expose_secret(&access), "AT-old");
        let second = NewConnection {
            user_id,
            service: "dropbox",
            access_token: b"sealed",
            refresh_token: None,
            token_type: "bearer",
            scopes: "",
            expires_at: None,
            obtained_at: 2,
            status: ConnectionStatus::Active,
            version: 1,
            updated_at: 2,
            refresh_token_expires_at: None,
            account_id: "dbid:work",
            account_label: Some("work@example.com"),
            requested_scopes: None,
        };
        upsert(&mut conn, &second).unwrap();
        assert_eq!(list_for(&mut conn, user_id, "dropbox").unwrap().len(), 2, "a second account is a second row");
        let other = NewConnection { account_id: "dbid:other", ..second };
        let next = diesel::insert_into(connections::table).values(&other).returning(connections::id);
        let id: i64 = crate::on_conn!(&mut conn, c => next.get_result(c)).unwrap();
        assert!(id > 90, "ids keep growing after the rebuild, past deleted rows: {id}");
        revert(&mut conn);
        let ids: Vec<i64> =
            crate::on_conn!(&mut conn, c => connections::table.select(connections::id).load(c)).unwrap();
        assert_eq!(ids, [41], "down.sql keeps the first connection of each service");
    }

    #[test]
    fn every_status_is_stored_as_its_string() {
        assert_eq!(
            ConnectionStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            ["active", "degraded", "reconnect_required"]
        );
        crate::db::text_enum::assert_text_round_trips!(ConnectionStatus);
    }
}

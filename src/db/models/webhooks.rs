//! The webhook outbox (`webhook_events`) and its deliveries (`webhook_deliveries`). What is sent
//! and when is decided in `crate::webhooks`; these are the queries.

use diesel::prelude::*;

use crate::db::schema::{webhook_deliveries, webhook_events};
use crate::db::Conn;

crate::db::text_enum::text_enum! {
    /// What a webhook reports (`webhook_events.event_type`, the body's `type`).
    pub enum EventType {
        ConnectionCreated = "connection.created",
        ConnectionReconnected = "connection.reconnected",
        ConnectionRefreshFailed = "connection.refresh_failed",
        ConnectionRecovered = "connection.recovered",
        ConnectionReconnectRequired = "connection.reconnect_required",
        ConnectionExpiring = "connection.expiring",
        ConnectionRevoked = "connection.revoked",
        ConnectionDeleted = "connection.deleted",
        /// Sent from `/admin/webhooks` to one endpoint, whatever its filter.
        Test = "webhook.test",
        /// An audit checkpoint (`crate::audit::checkpoint`): only to the endpoints whose `events`
        /// name it (`audit.checkpoint` or `audit.*`), not to those that take every event.
        AuditCheckpoint = "audit.checkpoint",
        /// A user allowed a client of tokenvault's authorization server a grant (`data`: the grant).
        GrantCreated = "grant.created",
        /// A grant ended before its expiry (`data`: the grant and why).
        GrantRevoked = "grant.revoked",
        /// A provider was added, edited, disabled, enabled, reverted or deleted in the app
        /// (`crate::oauth::managed`; never a secret).
        ProviderChanged = "provider.changed",
    }
}

crate::db::text_enum::text_enum! {
    /// Where a delivery stands (`webhook_deliveries.status`).
    pub enum DeliveryStatus {
        /// Not yet delivered; attempted again at `next_attempt_at`.
        Pending = "pending",
        /// A 2xx answer was received.
        Delivered = "delivered",
        /// Every attempt of the retry schedule failed.
        Failed = "failed",
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = webhook_events)]
pub struct NewEvent<'a> {
    pub msg_id: &'a str,
    pub event_type: EventType,
    pub body: &'a str,
    pub target: Option<&'a str>,
    pub fanned_out: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_events)]
pub struct Event {
    pub id: i64,
    pub msg_id: String,
    pub event_type: EventType,
    pub body: String,
    pub target: Option<String>,
    pub fanned_out: bool,
    pub created_at: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = webhook_deliveries)]
pub struct NewDelivery<'a> {
    pub event_id: i64,
    pub endpoint: &'a str,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub struct Delivery {
    pub id: i64,
    pub event_id: i64,
    pub endpoint: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_until: Option<i64>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

/// Record an event in the outbox; on PostgreSQL the other instances' workers are woken at commit
/// (`db::notify`).
pub fn insert_event(conn: &mut Conn, event: &NewEvent<'_>) -> QueryResult<i64> {
    let id = crate::on_conn!(conn, conn => {
        diesel::insert_into(webhook_events::table).values(event).returning(webhook_events::id).get_result(conn)
    })?;
    crate::db::notify::notify(conn, crate::db::notify::Channel::Webhooks)?;
    Ok(id)
}

/// Up to `limit` events not yet fanned out into deliveries, oldest first.
pub fn unfanned(conn: &mut Conn, limit: i64) -> QueryResult<Vec<Event>> {
    crate::on_conn!(conn, conn => {
        webhook_events::table
            .filter(webhook_events::fanned_out.eq(false))
            .order(webhook_events::id.asc())
            .limit(limit)
            .select(Event::as_select())
            .load(conn)
    })
}

/// Add a delivery unless the event already has one to that endpoint (another instance fanned it
/// out first): fanning out twice is harmless.
pub fn insert_delivery(conn: &mut Conn, delivery: &NewDelivery<'_>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(webhook_deliveries::table).values(delivery).on_conflict_do_nothing().execute(conn)
    })
}

/// Mark events fanned out (call first in the transaction that adds their deliveries: it takes the
/// write lock at once).
pub fn mark_fanned_out(conn: &mut Conn, event_ids: &[i64]) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(webhook_events::table.filter(webhook_events::id.eq_any(event_ids)))
            .set(webhook_events::fanned_out.eq(true))
            .execute(conn)
    })
}

/// Whose due deliveries a claim takes.
#[derive(Debug, Clone, Copy)]
pub enum ClaimScope<'a> {
    /// Any endpoint's.
    All,
    /// This endpoint's only (the delivery worker claims each endpoint on its own).
    Endpoint(&'a str),
}

/// Take the lease, until `until`, of up to `limit` deliveries in `scope` that are due at `now` and
/// not leased (or whose lease ran out), oldest due first; the ids this caller won. One statement,
/// `UPDATE … WHERE id IN (<the candidates, LIMIT n>) AND <still free> … RETURNING`: the
/// compare-and-swap happens row by row inside it (PostgreSQL re-checks the conditions on a row
/// another transaction changed meanwhile; SQLite has one writer), so of several instances asking
/// at once each delivery goes to exactly one.
pub fn claim(conn: &mut Conn, now: i64, until: i64, scope: ClaimScope<'_>, limit: i64) -> QueryResult<Vec<i64>> {
    crate::on_conn!(conn, conn => {
        let free = webhook_deliveries::status
            .eq(DeliveryStatus::Pending)
            .and(webhook_deliveries::next_attempt_at.le(now))
            .and(webhook_deliveries::lease_until.is_null().or(webhook_deliveries::lease_until.lt(now)));
        let mut candidates = webhook_deliveries::table
            .filter(free)
            .order((webhook_deliveries::next_attempt_at.asc(), webhook_deliveries::id.asc()))
            .limit(limit)
            .select(webhook_deliveries::id)
            .into_boxed();
        match scope {
            ClaimScope::All => {}
            ClaimScope::Endpoint(name) => candidates = candidates.filter(webhook_deliveries::endpoint.eq(name)),
        }
        // One statement: the candidates are a subquery, the conditions checked again per row.
        diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(candidates)).filter(free))
            .set(webhook_deliveries::lease_until.eq(until))
            .returning(webhook_deliveries::id)
            .get_results(conn)
    })
}

/// Every endpoint name deliveries are kept for, whatever their status — also of endpoints no
/// longer configured, whose deliveries must still be attempted (and fail). One index probe per
/// name (a loose index scan on `webhook_deliveries_endpoint`), not a read of every row.
pub fn endpoint_names(conn: &mut Conn) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        name: Option<String>,
    }
    const SQL: &str = "WITH RECURSIVE e(name) AS ( \
           SELECT (SELECT endpoint FROM webhook_deliveries ORDER BY endpoint LIMIT 1) \
           UNION ALL \
           SELECT (SELECT d.endpoint FROM webhook_deliveries d WHERE d.endpoint > e.name ORDER BY d.endpoint LIMIT 1) \
           FROM e WHERE e.name IS NOT NULL \
         ) SELECT name FROM e WHERE name IS NOT NULL";
    let names: Vec<Name> = crate::on_conn!(conn, c => diesel::sql_query(SQL).load(c))?;
    Ok(names.into_iter().filter_map(|n| n.name).collect())
}

/// Deliveries with their events.
pub fn with_events(conn: &mut Conn, ids: &[i64]) -> QueryResult<Vec<(Delivery, Event)>> {
    crate::on_conn!(conn, conn => {
        webhook_deliveries::table
            .inner_join(webhook_events::table)
            .filter(webhook_deliveries::id.eq_any(ids))
            .order(webhook_deliveries::id.asc())
            .select((Delivery::as_select(), Event::as_select()))
            .load(conn)
    })
}

/// What an attempt came to.
#[derive(Debug)]
pub struct Attempted<'a> {
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_status_code: Option<i64>,
    pub last_error: Option<&'a str>,
    pub now: i64,
}

/// Record an attempt of delivery `id` made under the lease that ends at `lease_until`, and release
/// the lease; false when the lease was no longer ours (it ran out and another instance took it).
pub fn record_attempt(conn: &mut Conn, id: i64, lease_until: i64, a: &Attempted<'_>) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::id.eq(id))
                .filter(webhook_deliveries::lease_until.eq(lease_until)),
        )
        .set((
            webhook_deliveries::status.eq(a.status),
            webhook_deliveries::attempts.eq(a.attempts),
            webhook_deliveries::next_attempt_at.eq(a.next_attempt_at),
            webhook_deliveries::last_status_code.eq(a.last_status_code),
            webhook_deliveries::last_error.eq(a.last_error),
            webhook_deliveries::lease_until.eq(None::<i64>),
            webhook_deliveries::updated_at.eq(a.now),
        ))
        .execute(conn)
        .map(|n| n == 1)
    })
}

/// The newest `limit` deliveries to `endpoint`, with their events, newest first.
pub fn recent(conn: &mut Conn, endpoint: &str, limit: i64) -> QueryResult<Vec<(Delivery, Event)>> {
    crate::on_conn!(conn, conn => {
        webhook_deliveries::table
            .inner_join(webhook_events::table)
            .filter(webhook_deliveries::endpoint.eq(endpoint))
            .order(webhook_deliveries::id.desc())
            .limit(limit)
            .select((Delivery::as_select(), Event::as_select()))
            .load(conn)
    })
}

/// Delete up to 1000 events older than `before` whose deliveries are all finished (their
/// deliveries go with them); how many.
/// How many deliveries are kept in each status (a status a newer version wrote: `unknown`).
pub fn count_by_status(conn: &mut Conn) -> QueryResult<Vec<(&'static str, i64)>> {
    let rows: Vec<(String, i64)> = crate::on_conn!(conn, conn => {
        webhook_deliveries::table
            .group_by(webhook_deliveries::status)
            .select((webhook_deliveries::status, diesel::dsl::count_star()))
            .load(conn)
    })?;
    Ok(rows
        .into_iter()
        .map(|(text, n)| (text.parse::<DeliveryStatus>().map_or("unknown", DeliveryStatus::as_str), n))
        .collect())
}

/// Deliveries waiting (pending) and when the event of the oldest was recorded (the
/// `webhook_deliveries` job's queue figures on `/metrics`).
pub fn pending_figures(conn: &mut Conn) -> QueryResult<(i64, Option<i64>)> {
    crate::on_conn!(conn, conn => {
        let pending = webhook_deliveries::table.filter(webhook_deliveries::status.eq(DeliveryStatus::Pending));
        let depth: i64 = pending.count().get_result(conn)?;
        let oldest: Option<i64> = webhook_events::table
            .filter(webhook_events::id.eq_any(pending.select(webhook_deliveries::event_id)))
            .select(diesel::dsl::min(webhook_events::created_at))
            .first(conn)?;
        Ok((depth, oldest))
    })
}

pub fn prune(conn: &mut Conn, before: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        let unfinished = webhook_deliveries::table
            .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
            .select(webhook_deliveries::event_id);
        let old: Vec<i64> = webhook_events::table
            .filter(webhook_events::created_at.lt(before))
            .filter(webhook_events::fanned_out.eq(true))
            .filter(webhook_events::id.ne_all(unfinished))
            .select(webhook_events::id)
            .limit(1000)
            .load(conn)?;
        diesel::delete(webhook_deliveries::table.filter(webhook_deliveries::event_id.eq_any(&old))).execute(conn)?;
        diesel::delete(webhook_events::table.filter(webhook_events::id.eq_any(&old))).execute(conn)
    })
}

#[cfg(test)]
mod tests {
    use super::{DeliveryStatus, EventType};

    #[test]
    fn event_types_and_statuses_are_stored_as_their_strings() {
        let types: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "connection.created",
                "connection.reconnected",
                "connection.refresh_failed",
                "connection.recovered",
                "connection.reconnect_required",
                "connection.expiring",
                "connection.revoked",
                "connection.deleted",
                "webhook.test",
                "audit.checkpoint",
                "grant.created",
                "grant.revoked",
                "provider.changed"
            ]
        );
        let statuses: Vec<_> = DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(statuses, ["pending", "delivered", "failed"]);
        crate::db::text_enum::assert_text_round_trips!(EventType);
        crate::db::text_enum::assert_text_round_trips!(DeliveryStatus);
    }
}

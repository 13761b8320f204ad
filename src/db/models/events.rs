use diesel::prelude::*;

use crate::db::schema::connection_events;
use crate::db::Conn;

crate::db::text_enum::text_enum! {
    /// What happened to a connection (`connection_events.kind`).
    pub enum EventKind {
        Connect = "connect",
        Refresh = "refresh",
        Revoke = "revoke",
        Delete = "delete",
    }
}

crate::db::text_enum::text_enum! {
    /// How it ended (`connection_events.outcome`), as the settings page shows it.
    pub enum EventOutcome {
        Ok = "ok",
        Failed = "failed",
        /// The user said no at the provider (`access_denied`).
        Cancelled = "cancelled",
        /// An administrator must act (no or rejected client credentials); the tokens are kept.
        FailedAdmin = "failed (admin)",
        /// A transient provider failure; the tokens are kept.
        FailedRetryable = "failed (retryable)",
        ReconnectRequired = "reconnect required",
        /// Revoked locally only: the provider offers no revocation.
        LocalOnly = "local only",
        /// Revocation at the provider failed; the tokens were deleted anyway.
        ProviderFailed = "provider failed",
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub at: i64,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    pub detail: String,
}

/// An event row as stored, kind and outcome as their strings: one written by a newer instance
/// (a kind or outcome this version does not know) is skipped by [`recent`], not an error for the
/// whole history.
#[derive(Queryable, Selectable)]
#[diesel(table_name = connection_events)]
struct StoredEvent {
    id: i64,
    user_id: i64,
    service: String,
    at: i64,
    kind: String,
    outcome: String,
    detail: String,
}

impl StoredEvent {
    fn read(self) -> Option<Event> {
        let (kind, outcome) = match (self.kind.parse::<EventKind>(), self.outcome.parse::<EventOutcome>()) {
            (Ok(kind), Ok(outcome)) => (kind, outcome),
            (Err(unknown), _) | (_, Err(unknown)) => {
                tracing::warn!(event_id = self.id, error = %unknown, "an event this version cannot show, skipped");
                return None;
            }
        };
        let StoredEvent { id, user_id, service, at, detail, .. } = self;
        Some(Event { id, user_id, service, at, kind, outcome, detail })
    }
}

/// A connection event. `detail` is shown to the user: never put a token or a raw provider body in it.
#[derive(Debug, Insertable)]
#[diesel(table_name = connection_events)]
pub struct NewEvent<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub at: i64,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    pub detail: &'a str,
}

pub fn insert(conn: &mut Conn, event: &NewEvent<'_>) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(connection_events::table).values(event).execute(conn)
    })
}

/// The newest `limit` events of a user's service, newest first.
pub fn recent(conn: &mut Conn, user_id: i64, service: &str, limit: i64) -> QueryResult<Vec<Event>> {
    crate::on_conn!(conn, conn => {
        connection_events::table
            .filter(connection_events::user_id.eq(user_id))
            .filter(connection_events::service.eq(service))
            .order((connection_events::at.desc(), connection_events::id.desc()))
            .limit(limit)
            .select(StoredEvent::as_select())
            .load(conn)
    })
    .map(|rows: Vec<StoredEvent>| rows.into_iter().filter_map(StoredEvent::read).collect())
}

/// Keep only the newest `keep` events of a user's service (by insertion order); how many were
/// deleted.
pub fn prune(conn: &mut Conn, user_id: i64, service: &str, keep: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        let oldest_kept: Option<i64> = connection_events::table
            .filter(connection_events::user_id.eq(user_id))
            .filter(connection_events::service.eq(service))
            .order(connection_events::id.desc())
            .offset(keep.max(1) - 1)
            .select(connection_events::id)
            .first(conn)
            .optional()?;
        match oldest_kept {
            Some(id) => diesel::delete(
                connection_events::table
                    .filter(connection_events::user_id.eq(user_id))
                    .filter(connection_events::service.eq(service))
                    .filter(connection_events::id.lt(id)),
            )
            .execute(conn),
            None => Ok(0),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{EventKind, EventOutcome};

    #[test]
    fn every_kind_and_outcome_is_stored_as_its_string() {
        let kinds: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["connect", "refresh", "revoke", "delete"]);
        let outcomes: Vec<_> = EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            outcomes,
            [
                "ok",
                "failed",
                "cancelled",
                "failed (admin)",
                "failed (retryable)",
                "reconnect required",
                "local only",
                "provider failed"
            ]
        );
        crate::db::text_enum::assert_text_round_trips!(EventKind);
        crate::db::text_enum::assert_text_round_trips!(EventOutcome);
    }
}

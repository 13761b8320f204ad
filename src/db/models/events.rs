use diesel::prelude::*;

use crate::db::schema::connection_events;
use crate::db::Conn;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = connection_events)]
pub struct Event {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub at: i64,
    pub kind: String,
    pub outcome: String,
    pub detail: String,
}

/// A connection event. `detail` is shown to the user: never put a token or a raw provider body in it.
#[derive(Debug, Insertable)]
#[diesel(table_name = connection_events)]
pub struct NewEvent<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub at: i64,
    pub kind: &'a str,
    pub outcome: &'a str,
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
            .select(Event::as_select())
            .load(conn)
    })
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

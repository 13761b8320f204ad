//! Webhook endpoints edited on `/admin/webhooks` (`webhook_endpoints`): overrides of configured
//! endpoints and endpoints added on the page. Secrets are stored sealed; `crate::webhooks` opens
//! them and decides what the rows mean.

use diesel::prelude::*;

use crate::db::schema::{webhook_deliveries, webhook_endpoints};
use crate::db::Conn;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_endpoints)]
pub struct StoredEndpoint {
    pub name: String,
    pub url: String,
    /// A JSON array of filters; `None`: every event.
    pub events: Option<String>,
    pub secret: Vec<u8>,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_until: Option<i64>,
    pub version: i64,
    /// Random, new with every write (see the migration).
    pub revision: String,
    pub updated_at: i64,
    pub updated_by: String,
}

pub fn all(conn: &mut Conn) -> QueryResult<Vec<StoredEndpoint>> {
    crate::on_conn!(conn, conn => {
        webhook_endpoints::table.order(webhook_endpoints::name.asc()).select(StoredEndpoint::as_select()).load(conn)
    })
}

/// What identifies the stored state of every row (name, version, revision): the worker reloads
/// only when it changed.
pub fn versions(conn: &mut Conn) -> QueryResult<Vec<(String, i64, String)>> {
    crate::on_conn!(conn, conn => {
        webhook_endpoints::table
            .order(webhook_endpoints::name.asc())
            .select((webhook_endpoints::name, webhook_endpoints::version, webhook_endpoints::revision))
            .load(conn)
    })
}

pub fn find(conn: &mut Conn, name: &str) -> QueryResult<Option<StoredEndpoint>> {
    crate::on_conn!(conn, conn => {
        webhook_endpoints::table.find(name).select(StoredEndpoint::as_select()).first(conn).optional()
    })
}

/// Insert `row` (its `version` is 1); false when a row of that name exists already.
pub fn insert(conn: &mut Conn, row: &StoredEndpoint) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(webhook_endpoints::table).values(row).on_conflict_do_nothing().execute(conn).map(|n| n == 1)
    })
}

/// Replace the row named `row.name` if it is still at version `expected` (a compare-and-swap:
/// an edit made from a stale page is refused); `row.version` must be `expected + 1`.
pub fn replace(conn: &mut Conn, expected: i64, row: &StoredEndpoint) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            webhook_endpoints::table
                .filter(webhook_endpoints::name.eq(&row.name))
                .filter(webhook_endpoints::version.eq(expected)),
        )
        .set((
            webhook_endpoints::url.eq(&row.url),
            webhook_endpoints::events.eq(&row.events),
            webhook_endpoints::secret.eq(&row.secret),
            webhook_endpoints::previous_secret.eq(&row.previous_secret),
            webhook_endpoints::previous_until.eq(row.previous_until),
            webhook_endpoints::version.eq(row.version),
            webhook_endpoints::revision.eq(&row.revision),
            webhook_endpoints::updated_at.eq(row.updated_at),
            webhook_endpoints::updated_by.eq(&row.updated_by),
        ))
        .execute(conn)
        .map(|n| n == 1)
    })
}

/// Delete the row named `name` if it is still at version `expected`.
pub fn delete(conn: &mut Conn, name: &str, expected: i64) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::delete(
            webhook_endpoints::table.filter(webhook_endpoints::name.eq(name)).filter(webhook_endpoints::version.eq(expected)),
        )
        .execute(conn)
        .map(|n| n == 1)
    })
}

/// Re-sealed secrets (vault key rotation) of the row as it was read (`revision`): an edit made
/// meanwhile (sealed under the active key already) wins; the version stays, so no page is stale.
pub fn set_ciphertexts(
    conn: &mut Conn,
    name: &str,
    revision: &str,
    secret: &[u8],
    previous: Option<&[u8]>,
) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        diesel::update(
            webhook_endpoints::table
                .filter(webhook_endpoints::name.eq(name))
                .filter(webhook_endpoints::revision.eq(revision)),
        )
        .set((webhook_endpoints::secret.eq(secret), webhook_endpoints::previous_secret.eq(previous)))
        .execute(conn)
        .map(|n| n == 1)
    })
}

/// Give up the pending deliveries to `endpoint` (it was deleted): they end `failed` with `why`.
pub fn fail_pending(conn: &mut Conn, endpoint: &str, why: &str, at: i64) -> QueryResult<usize> {
    use crate::db::models::webhooks::DeliveryStatus;
    crate::on_conn!(conn, conn => {
        diesel::update(
            webhook_deliveries::table
                .filter(webhook_deliveries::endpoint.eq(endpoint))
                .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending)),
        )
        .set((
            webhook_deliveries::status.eq(DeliveryStatus::Failed),
            webhook_deliveries::last_error.eq(why),
            webhook_deliveries::lease_until.eq(None::<i64>),
            webhook_deliveries::updated_at.eq(at),
        ))
        .execute(conn)
    })
}

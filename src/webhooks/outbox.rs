//! The outbox: events written in the transaction of the change they report, fanned out into one
//! delivery per matching endpoint, claimed by one instance at a time (a compare-and-swap on the
//! delivery's lease), and rescheduled with backoff after a failed attempt.

use serde::Serialize;

use super::{EventType, Origin, Webhooks};
use crate::db::models::connections::{Account, Connection};
use crate::db::models::users;
use crate::db::models::webhook_endpoints;
pub use crate::db::models::webhooks::ClaimScope;
use crate::db::models::webhooks::{self as rows, Attempted, Delivery, DeliveryStatus, Event, NewDelivery, NewEvent};
use crate::db::Conn;
use crate::util::{now, rfc3339};

/// Seconds after a failed attempt before the next one; after the last, the delivery is `failed`.
/// The first retry comes within 10 s; the whole schedule spans just under 24 hours.
pub const RETRY_DELAYS: &[i64] = &[2, 10, 60, 300, 1800, 3600, 7200, 14_400, 28_800, 28_800];

/// What an event says about a connection: the body's `data`. Never a token, code or secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventData {
    pub connection_id: i64,
    /// The username.
    pub user: String,
    pub service: String,
    /// The provider account (`{"id", "label"}`), when the provider says which it is.
    pub account: Option<Account>,
    /// The connection's status after the change (`active`, `reconnect_required`, `deleted`, …).
    pub status: String,
    /// Why, as a reason code (`invalid_grant`, …), when there is one.
    pub reason: Option<String>,
}

impl EventData {
    /// The data of `row` (read in the caller's transaction), with `status` and `reason`.
    pub fn of(conn: &mut Conn, row: &Connection, status: &str, reason: Option<&str>) -> diesel::QueryResult<EventData> {
        EventData::named(conn, row.id, row.user_id, &row.service, row.account(), status, reason)
    }

    /// The data of connection `connection_id` of `user_id` (whose username is read in the
    /// caller's transaction), with `status` and `reason`.
    pub fn named(
        conn: &mut Conn,
        connection_id: i64,
        user_id: i64,
        service: &str,
        account: Option<Account>,
        status: &str,
        reason: Option<&str>,
    ) -> diesel::QueryResult<EventData> {
        let user = users::find(conn, user_id)?.map(|u| u.username).unwrap_or_default();
        Ok(EventData {
            connection_id,
            user,
            service: service.to_string(),
            account,
            status: status.to_string(),
            reason: reason.map(str::to_string),
        })
    }
}

#[derive(Serialize)]
struct Body<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: &'a D,
}

/// Record an event in the outbox, inside the transaction that makes the change, so the event
/// exists exactly when the change does (a crash before the commit loses both, after it neither);
/// the worker delivers it to every endpoint whose `events` match. Called by the outbox projection
/// of `crate::changes` only: domain code records a `Change`. The returned id is
/// the `webhook-id` of every attempt.
pub fn record(conn: &mut Conn, event_type: EventType, data: &EventData) -> diesel::QueryResult<String> {
    insert(conn, event_type, data, None).map(|(_, msg_id)| msg_id)
}

/// Record an `audit.checkpoint` event: its `data` is the checkpoint as a checkpoint-file line
/// holds it (`seq`, `hash`, `at`, `key_id`, `signature`; no secret), so a receiver that stores
/// each `data` as a line has a file `tokenvault audit verify --checkpoint-file` reads.
pub fn record_audit_checkpoint(
    conn: &mut Conn,
    checkpoint: &crate::audit::checkpoint::Checkpoint,
) -> diesel::QueryResult<String> {
    insert(conn, EventType::AuditCheckpoint, checkpoint, None).map(|(_, msg_id)| msg_id)
}

/// What a `grant.*` event says about a grant: the body's `data`. Never a token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GrantData {
    pub grant_id: i64,
    /// The username.
    pub user: String,
    pub client_id: String,
    pub client_name: String,
    /// `null`: every service, also those connected later.
    pub services: Option<Vec<String>>,
    pub capabilities: Vec<String>,
    pub expires_at: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Why it was revoked (`revoked_by_user`, `code_reused`, …).
    pub reason: Option<String>,
}

/// Record a `grant.created` or `grant.revoked` event.
pub fn record_grant(conn: &mut Conn, event_type: EventType, data: &GrantData) -> diesel::QueryResult<String> {
    insert(conn, event_type, data, None).map(|(_, msg_id)| msg_id)
}

/// What a `provider.changed` event says: the provider, what was done, by whom (never a secret).
#[derive(Debug, Clone, Serialize)]
pub struct ProviderChangedData<'a> {
    pub provider: &'a str,
    pub action: &'a str,
    pub by: String,
    /// Keys set by an edit (names only; `client_secret` when a new one was sealed into the vault).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<&'a [String]>,
    /// The origin of the provider's authorize URL (after an add or edit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorize_origin: Option<&'a str>,
}

/// Record a `provider.changed` event (fanned out to every endpoint whose filter wants it).
pub fn record_provider_changed(conn: &mut Conn, data: &ProviderChangedData<'_>) -> diesel::QueryResult<String> {
    insert(conn, EventType::ProviderChanged, data, None).map(|(_, msg_id)| msg_id)
}

/// Record a `webhook.test` event for the endpoint `endpoint` only, ready to deliver.
pub fn record_test(conn: &mut Conn, endpoint: &str, by: &str) -> diesel::QueryResult<String> {
    #[derive(Serialize)]
    struct Test<'a> {
        endpoint: &'a str,
        requested_by: &'a str,
    }
    conn.transaction(|conn| {
        let at = now();
        let (event_id, msg_id) = insert(conn, EventType::Test, &Test { endpoint, requested_by: by }, Some(endpoint))?;
        rows::insert_delivery(conn, &new_delivery(event_id, endpoint, at))?;
        Ok(msg_id)
    })
}

fn insert<D: Serialize>(
    conn: &mut Conn,
    event_type: EventType,
    data: &D,
    target: Option<&str>,
) -> diesel::QueryResult<(i64, String)> {
    let at = now();
    let body = serde_json::to_string(&Body { kind: event_type.as_str(), timestamp: rfc3339(at), data })
        .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    let msg_id = format!("msg_{}", crate::util::random_token(18));
    let new =
        NewEvent { msg_id: &msg_id, event_type, body: &body, target, fanned_out: target.is_some(), created_at: at };
    let id = rows::insert_event(conn, &new)?;
    Ok((id, msg_id))
}

fn new_delivery(event_id: i64, endpoint: &str, at: i64) -> NewDelivery<'_> {
    NewDelivery {
        event_id,
        endpoint,
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: at,
        updated_at: at,
    }
}

/// Turn up to `limit` recorded events into deliveries to the endpoints that want them; how many
/// events. Idempotent (a delivery per event and endpoint at most), so an instance that repeats it
/// — or is killed half-way — does no harm. The marks and the deliveries are one transaction that
/// begins with a write (no SQLite read-to-write upgrade to fail under load).
pub fn fan_out(conn: &mut Conn, hooks: &Webhooks, limit: i64) -> diesel::QueryResult<usize> {
    let events = rows::unfanned(conn, limit)?;
    if events.is_empty() {
        return Ok(0);
    }
    let at = now();
    let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
    let endpoints = hooks.endpoints();
    conn.transaction(|conn| {
        rows::mark_fanned_out(conn, &ids)?;
        // An endpoint added on the page and deleted since this instance last reloaded gets
        // nothing (its deletion gave up its deliveries; none may follow).
        let stored: std::collections::HashSet<String> = if endpoints.iter().any(|e| e.origin == Origin::Added) {
            webhook_endpoints::versions(conn)?.into_iter().map(|(name, _, _)| name).collect()
        } else {
            Default::default()
        };
        let live = |ep: &&std::sync::Arc<super::Endpoint>| ep.origin != Origin::Added || stored.contains(&ep.name);
        for e in &events {
            for endpoint in endpoints.iter().filter(live).filter(|ep| ep.wants(e.event_type)) {
                rows::insert_delivery(conn, &new_delivery(e.id, &endpoint.name, at))?;
            }
        }
        Ok(events.len())
    })
}

/// A delivery this instance holds the lease of, until `lease_until`.
#[derive(Debug)]
pub struct Claimed {
    pub delivery: Delivery,
    pub event: Event,
    pub lease_until: i64,
}

/// Claim up to `limit` due deliveries for `lease` seconds: each is taken with a compare-and-swap on
/// its lease (`rows::claim`), so of several instances asking at once exactly one gets it.
pub fn claim(conn: &mut Conn, at: i64, lease: i64, limit: i64) -> diesel::QueryResult<Vec<Claimed>> {
    claim_in(conn, at, lease, ClaimScope::All, limit)
}

/// [`claim`], of the deliveries in `scope` only (one endpoint's, say).
pub fn claim_in(
    conn: &mut Conn,
    at: i64,
    lease: i64,
    scope: ClaimScope<'_>,
    limit: i64,
) -> diesel::QueryResult<Vec<Claimed>> {
    let ids = rows::claim(conn, at, at + lease, scope, limit)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let claimed = rows::with_events(conn, &ids)?;
    Ok(claimed.into_iter().map(|(delivery, event)| Claimed { delivery, event, lease_until: at + lease }).collect())
}

/// How an attempt went: the receiver's status code (2xx is success), or a transport failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Answered(u16),
    /// Timeout, refused connection, … (the text names no URL and no body).
    NoAnswer(String),
}

/// What to write after an attempt: `delivered` on a 2xx, else the next attempt after the schedule's
/// delay, or `failed` when the schedule is spent.
pub fn after_attempt(attempts_before: i64, result: &AttemptResult, at: i64) -> (DeliveryStatus, i64) {
    let attempts = attempts_before + 1;
    if matches!(result, AttemptResult::Answered(code) if (200..300).contains(code)) {
        return (DeliveryStatus::Delivered, at);
    }
    match RETRY_DELAYS.get((attempts - 1) as usize) {
        Some(delay) => (DeliveryStatus::Pending, at + delay),
        None => (DeliveryStatus::Failed, at),
    }
}

/// Record an attempt of a claimed delivery and release its lease; the status written, or `None`
/// when the lease had been lost (another instance owns the delivery now).
pub fn finish(
    conn: &mut Conn,
    c: &Claimed,
    result: &AttemptResult,
    at: i64,
) -> diesel::QueryResult<Option<DeliveryStatus>> {
    let (status, next_attempt_at) = after_attempt(c.delivery.attempts, result, at);
    let (code, error) = match result {
        AttemptResult::Answered(code) => (Some(i64::from(*code)), None),
        AttemptResult::NoAnswer(e) => (None, Some(e.as_str())),
    };
    let a = Attempted {
        status,
        attempts: c.delivery.attempts + 1,
        next_attempt_at,
        last_status_code: code,
        last_error: error,
        now: at,
    };
    Ok(rows::record_attempt(conn, c.delivery.id, c.lease_until, &a)?.then_some(status))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{after_attempt, claim, fan_out, finish, record, record_test, AttemptResult, EventData, RETRY_DELAYS};
    use crate::config::RawWebhook;
    use crate::db::models::webhooks::{self as rows, DeliveryStatus, EventType};
    use crate::db::models::{connections, users};
    use crate::db::Db;
    use crate::util::now;
    use crate::webhooks::Webhooks;

    fn hooks(spec: &[(&str, Option<&[&str]>)]) -> Webhooks {
        let raw = spec
            .iter()
            .map(|(name, events)| {
                let w = RawWebhook {
                    url: format!("https://{name}.example/hook"),
                    secret: crate::util::secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                    events: events.map(|e| e.iter().map(|s| s.to_string()).collect()),
                };
                (name.to_string(), w)
            })
            .collect::<BTreeMap<_, _>>();
        Webhooks::build(&raw).unwrap()
    }

    fn data() -> EventData {
        EventData {
            connection_id: 7,
            user: "ann".into(),
            service: "fake".into(),
            account: None,
            status: "active".into(),
            reason: Some("invalid_grant".into()),
        }
    }

    #[test]
    fn record_writes_the_body_and_fan_out_follows_the_filters() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let id = record(&mut conn, EventType::ConnectionRefreshFailed, &data()).unwrap();
        assert!(id.starts_with("msg_") && id.len() > 20, "{id}");
        let other = record(&mut conn, EventType::ConnectionDeleted, &data()).unwrap();
        assert_ne!(id, other, "every event has its own id");

        let hooks =
            hooks(&[("all", None), ("deletes", Some(&["connection.deleted"])), ("conn", Some(&["connection.*"]))]);
        assert_eq!(fan_out(&mut conn, &hooks, 100).unwrap(), 2);
        assert_eq!(fan_out(&mut conn, &hooks, 100).unwrap(), 0, "fanned out once");
        let names = |ep: &str| -> Vec<String> {
            rows::recent(&mut db.conn().unwrap(), ep, 10).unwrap().into_iter().map(|(_, e)| e.msg_id).collect()
        };
        assert_eq!(names("all"), [other.clone(), id.clone()]);
        assert_eq!(names("conn"), [other.clone(), id.clone()]);
        assert_eq!(names("deletes"), std::slice::from_ref(&other));

        let (_, event) = rows::recent(&mut conn, "deletes", 1).unwrap().remove(0);
        let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
        assert_eq!(body["type"], "connection.deleted");
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            body["data"],
            serde_json::json!({"connection_id": 7, "user": "ann", "service": "fake", "account": null,
                "status": "active", "reason": "invalid_grant"})
        );

        // A test event goes to the endpoint it names only, whatever the filters say.
        let test = record_test(&mut conn, "deletes", "root").unwrap();
        assert_eq!(fan_out(&mut conn, &hooks, 100).unwrap(), 0);
        assert_eq!(names("deletes")[0], test);
        assert!(!names("all").contains(&test));
    }

    #[test]
    fn record_rolls_back_with_the_change_it_reports() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let user_id = users::for_tests(&mut conn, "ann");
        let failed: Result<(), diesel::result::Error> = conn.transaction(|conn| {
            record(conn, EventType::ConnectionCreated, &data())?;
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(failed.is_err());
        assert_eq!(fan_out(&mut conn, &hooks(&[("all", None)]), 100).unwrap(), 0, "no event without its change");
        assert!(connections::find(&mut conn, user_id, "fake").unwrap().is_none());
    }

    #[test]
    fn a_delivery_is_claimed_once_and_retried_on_the_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let hooks = hooks(&[("all", None)]);
        let id = record(&mut conn, EventType::ConnectionCreated, &data()).unwrap();
        fan_out(&mut conn, &hooks, 100).unwrap();
        let t = now();
        let mine = claim(&mut conn, t, 60, 10).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].event.msg_id, id);
        assert!(claim(&mut db.conn().unwrap(), t, 60, 10).unwrap().is_empty(), "held by its lease");

        // A 500: retried after the first delay, under the same id.
        let status = finish(&mut conn, &mine[0], &AttemptResult::Answered(500), t).unwrap();
        assert_eq!(status, Some(DeliveryStatus::Pending));
        assert!(claim(&mut conn, t + RETRY_DELAYS[0] - 1, 60, 10).unwrap().is_empty(), "not before its time");
        let again = claim(&mut conn, t + RETRY_DELAYS[0], 60, 10).unwrap();
        assert_eq!((again.len(), again[0].event.msg_id.as_str(), again[0].delivery.attempts), (1, id.as_str(), 1));
        assert_eq!(again[0].delivery.last_status_code, Some(500));

        // An expired lease is taken over; the first holder's late answer is then not written.
        let later = t + RETRY_DELAYS[0] + 61;
        let taken_over = claim(&mut conn, later, 60, 10).unwrap();
        assert_eq!(taken_over.len(), 1);
        assert_eq!(finish(&mut conn, &again[0], &AttemptResult::Answered(200), later).unwrap(), None);
        let done = finish(&mut conn, &taken_over[0], &AttemptResult::Answered(204), later).unwrap();
        assert_eq!(done, Some(DeliveryStatus::Delivered));
        assert!(claim(&mut conn, later + 100_000, 60, 10).unwrap().is_empty(), "delivered: never again");
    }

    /// The worker claims each endpoint's deliveries on their own, for every endpoint name the
    /// table holds (configured or not).
    #[test]
    fn claims_take_one_endpoint_and_every_endpoint_name_is_listed() {
        use super::{claim_in, ClaimScope};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        assert!(rows::endpoint_names(&mut conn).unwrap().is_empty());
        for _ in 0..3 {
            record(&mut conn, EventType::ConnectionCreated, &data()).unwrap();
        }
        fan_out(&mut conn, &hooks(&[("b", None), ("a", None), ("gone", None)]), 100).unwrap();
        assert_eq!(rows::endpoint_names(&mut conn).unwrap(), ["a", "b", "gone"]);
        let t = now();
        let endpoints = |got: &[super::Claimed]| got.iter().map(|c| c.delivery.endpoint.clone()).collect::<Vec<_>>();
        let a = claim_in(&mut conn, t, 60, ClaimScope::Endpoint("a"), 2).unwrap();
        assert_eq!(endpoints(&a), ["a", "a"]);
        assert_eq!((a[0].delivery.event_id, a[1].delivery.event_id), (1, 2), "oldest first");
        let b = claim_in(&mut conn, t, 60, ClaimScope::Endpoint("b"), 10).unwrap();
        assert_eq!(endpoints(&b), ["b", "b", "b"]);
        let rest = claim(&mut conn, t, 60, 10).unwrap();
        let mut left = endpoints(&rest);
        left.sort();
        assert_eq!(left, ["a", "gone", "gone", "gone"], "the ones left");
        // Finished deliveries keep their endpoint's name listed (their lane is cheap to ask).
        for c in a.iter().chain(&b).chain(&rest) {
            finish(&mut conn, c, &AttemptResult::Answered(200), t).unwrap();
        }
        assert_eq!(rows::endpoint_names(&mut conn).unwrap(), ["a", "b", "gone"]);
    }

    /// Instances racing for the same deliveries (threads with their own connections here): each
    /// delivery is won exactly once, because the lease is re-checked in the claiming UPDATE.
    #[test]
    fn racing_claims_win_each_delivery_once() {
        const N: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let hooks = hooks(&[("all", None)]);
        {
            let mut conn = db.conn().unwrap();
            for _ in 0..N {
                record(&mut conn, EventType::ConnectionCreated, &data()).unwrap();
            }
            while fan_out(&mut conn, &hooks, 100).unwrap() > 0 {}
        }
        let t = now();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (db, barrier) = (db.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut conn = db.conn().unwrap();
                    barrier.wait();
                    let mut won = Vec::new();
                    loop {
                        let got = claim(&mut conn, t, 60, 3).unwrap();
                        if got.is_empty() {
                            return won;
                        }
                        won.extend(got.into_iter().map(|c| c.delivery.id));
                    }
                })
            })
            .collect();
        let mut all: Vec<i64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
        // A thread may give up early after losing races; what is left is claimed here.
        let mut conn = db.conn().unwrap();
        loop {
            let rest = claim(&mut conn, t, 60, 100).unwrap();
            if rest.is_empty() {
                break;
            }
            all.extend(rest.into_iter().map(|c| c.delivery.id));
        }
        let claimed = all.len();
        all.sort();
        all.dedup();
        assert_eq!((claimed, all.len()), (N, N), "every delivery claimed, none twice");
    }

    #[test]
    fn pruning_drops_old_finished_events_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        let hooks = hooks(&[("all", None)]);
        let (done, waiting) = (
            record(&mut conn, EventType::ConnectionCreated, &data()).unwrap(),
            record(&mut conn, EventType::ConnectionDeleted, &data()).unwrap(),
        );
        fan_out(&mut conn, &hooks, 100).unwrap();
        let t = now();
        for c in claim(&mut conn, t, 60, 10).unwrap() {
            let answer = if c.event.msg_id == done { 200 } else { 503 };
            finish(&mut conn, &c, &AttemptResult::Answered(answer), t).unwrap();
        }
        let unfanned = record(&mut conn, EventType::ConnectionRevoked, &data()).unwrap();
        let ids = |conn: &mut crate::db::Conn| -> Vec<String> {
            rows::recent(conn, "all", 10).unwrap().into_iter().map(|(_, e)| e.msg_id).collect()
        };
        assert_eq!(rows::prune(&mut conn, t).unwrap(), 0, "nothing is older than `before`");
        assert_eq!(rows::prune(&mut conn, t + 1).unwrap(), 1, "only the delivered event goes");
        assert_eq!(ids(&mut conn), [waiting], "the pending delivery stays");
        assert_eq!(fan_out(&mut conn, &hooks, 100).unwrap(), 1, "the event not yet fanned out stays");
        assert_eq!(ids(&mut conn)[0], unfanned);
    }

    #[test]
    fn the_schedule_starts_within_ten_seconds_grows_and_ends_within_a_day() {
        assert!(RETRY_DELAYS[0] <= 10);
        assert!(RETRY_DELAYS.windows(2).all(|w| w[0] <= w[1]));
        let total: i64 = RETRY_DELAYS.iter().sum();
        assert!(total > 20 * 3600 && total <= 24 * 3600, "{total}");
        let mut attempts = 0;
        let mut at = 0;
        let timeout = AttemptResult::NoAnswer("the request timed out".into());
        loop {
            let (status, next) = after_attempt(attempts, &timeout, at);
            attempts += 1;
            if status == DeliveryStatus::Failed {
                break;
            }
            assert_eq!(status, DeliveryStatus::Pending);
            at = next;
        }
        assert_eq!((attempts, at), (RETRY_DELAYS.len() as i64 + 1, total));
        assert_eq!(after_attempt(0, &AttemptResult::Answered(302), 5).0, DeliveryStatus::Pending, "no redirects");
        assert_eq!(after_attempt(3, &AttemptResult::Answered(200), 5), (DeliveryStatus::Delivered, 5));
    }
}

//! The delivery worker, a background job ([`DeliveryJob`], run by `crate::jobs` from liftoff to
//! shutdown; never for CLI commands): every `POLL_INTERVAL`, or at once when [`Webhooks::wake`] rings after a
//! commit, it fans recorded events out and claims the due deliveries; each is sent — signed, over
//! the one outbound client (timeouts, no redirects), reading at most `MAX_ANSWER_BYTES` of the
//! answer — by a task of its own. An instance that dies mid-delivery (or shuts down) leaves a
//! lease that runs out; another attempt follows under the same `webhook-id` (at least once).
//!
//! **Endpoints do not wait for each other.** Each endpoint is a lane ([`Lanes`]): at most
//! [`PER_ENDPOINT`] attempts in flight to it ([`MAX_IN_FLIGHT`] in all), its deliveries claimed
//! for it alone as soon as it has room — never after the slowest attempt of a batch — so an
//! endpoint that answers slowly, or accepts the connection and never answers, holds up its own
//! deliveries only. An endpoint whose attempt times out (`http_timeout`, or
//! `http_connect_timeout` for the connection) is paused: no new attempt for [`FIRST_PAUSE`],
//! doubling with each further timeout up to [`MAX_PAUSE`], then one attempt at a time until one
//! is answered (any status: the endpoint is back), when it gets its full room again. Its
//! deliveries wait in the outbox meanwhile, each never attempted before its own retry time
//! (`outbox::RETRY_DELAYS`). The pause is this instance's own (memory): another instance learns
//! of the stall by its own timeouts. Editing the endpoint on `/admin/webhooks` ends its pause.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rocket::tokio::task::{Id, JoinError, JoinSet};

use super::outbox::{self, AttemptResult, ClaimScope, Claimed};
use super::Webhooks;
use crate::db::models::webhooks as rows;
use crate::db::Db;
use crate::oauth::http::{HttpError, Outbound};
use crate::util::now;
use crate::webhooks::metrics::WebhookMetrics;

/// How often the outbox is read without a wake-up.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts in flight to one endpoint at most (while it answers).
pub const PER_ENDPOINT: usize = 16;
/// Attempts in flight to all endpoints together at most.
pub const MAX_IN_FLIGHT: usize = 128;
/// How long an endpoint gets no new attempt after its first timeout; doubled with each further
/// consecutive timeout, up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_secs(2);
/// The longest pause of an endpoint that keeps timing out.
pub const MAX_PAUSE: Duration = Duration::from_secs(60);
/// Events fanned out per transaction.
const FAN_OUT: i64 = 100;
/// How much of a receiver's answer is read (and then dropped): its status is what counts.
pub const MAX_ANSWER_BYTES: usize = 4096;
/// Finished events are kept this long for `/admin/webhooks`, seconds.
const KEEP_SECONDS: i64 = 7 * 86_400;
/// How often finished events older than that are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The worker's handles.
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub hooks: Arc<Webhooks>,
    pub http: Outbound,
    /// The client for endpoints set on the page while `webhook_private_urls` is off: it connects
    /// to public addresses only (`super::egress::PublicOnly`).
    pub public_http: Outbound,
    /// Attempts by endpoint and result, and their duration (`/metrics`).
    pub metrics: WebhookMetrics,
    /// Opens the secrets of endpoints edited on `/admin/webhooks`.
    pub cipher: Arc<crate::vault::Cipher>,
    /// Seconds a claimed delivery is ours: longer than a request can take (`http_timeout`, which
    /// bounds the whole request, + `http_connect_timeout` + 5 s), so a live instance never loses a
    /// lease mid-request; after a crash mid-delivery the next attempt waits this long.
    pub lease: i64,
}

/// How an attempt ended, for its endpoint's lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (whatever the status), or the attempt failed fast (refused
    /// connection, endpoint no longer configured, …): it is not stalling.
    Ended,
    /// The connection or the request timed out.
    TimedOut,
}

/// A change of an endpoint's state, to log once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It timed out (the `n`-th time in a row): no new attempt for `pause`.
    Paused { timeouts: u32, pause: Duration },
    /// It answered again after timing out.
    Resumed,
}

/// The pause after the `n`-th consecutive timeout (n ≥ 1).
pub fn pause_after(timeouts: u32) -> Duration {
    FIRST_PAUSE.saturating_mul(1 << timeouts.saturating_sub(1).min(16)).min(MAX_PAUSE)
}

/// What the worker knows of one endpoint.
#[derive(Debug)]
struct Lane {
    in_flight: usize,
    /// Consecutive timeouts; 0 while the endpoint answers.
    timeouts: u32,
    /// No new attempt before this (after a timeout).
    paused_until: Option<Instant>,
    /// When the last timeout was counted: an attempt started before it that times out as well
    /// is part of the same stall, not a further one.
    counted_at: Option<Instant>,
    /// It may have due deliveries not claimed yet (its last claim got all it asked for, or the
    /// outbox was read since).
    more: bool,
    /// The endpoint's version when the lane was made (an edit on the page starts afresh).
    version: i64,
}

impl Lane {
    fn new(version: i64) -> Lane {
        Lane { in_flight: 0, timeouts: 0, paused_until: None, counted_at: None, more: true, version }
    }

    /// Attempts it may have in flight at `now`: all its room while it answers, none while
    /// paused, one after a pause until an attempt is answered.
    fn limit(&self, now: Instant) -> usize {
        match (self.timeouts, self.paused_until) {
            (0, _) => PER_ENDPOINT,
            (_, Some(until)) if now < until => 0,
            _ => 1,
        }
    }

    /// How many more attempts it may start at `now`.
    fn room(&self, now: Instant) -> usize {
        self.limit(now).saturating_sub(self.in_flight)
    }

    /// Whether to claim for it now: it may have work and has room — any when idle, else half its
    /// limit (claims come in batches, not three queries per finished attempt).
    fn wants_claim(&self, now: Instant) -> usize {
        let room = self.room(now);
        let enough = self.in_flight == 0 || room >= self.limit(now).div_ceil(2);
        if self.more && room > 0 && enough {
            room
        } else {
            0
        }
    }
}

/// The lanes of the endpoints, by name: the bookkeeping of in-flight attempts and pauses, apart
/// from any I/O.
#[derive(Debug, Default)]
pub struct Lanes {
    lanes: HashMap<String, Lane>,
}

impl Lanes {
    fn lane(&mut self, name: &str, version: i64) -> &mut Lane {
        self.lanes.entry(name.to_string()).or_insert_with(|| Lane::new(version))
    }

    /// The endpoints in effect now (name, version): a lane for each; an edited endpoint starts
    /// afresh (unpaused); lanes of endpoints gone and idle are dropped. Every lane may have due
    /// deliveries again (the outbox was just read).
    pub fn sync<'a>(&mut self, endpoints: impl IntoIterator<Item = (&'a str, i64)>) {
        let mut seen = std::collections::HashSet::new();
        for (name, version) in endpoints {
            seen.insert(name.to_string());
            let lane = self.lane(name, version);
            if lane.version != version {
                let in_flight = lane.in_flight;
                *lane = Lane { in_flight, ..Lane::new(version) };
            }
        }
        self.lanes.retain(|name, lane| seen.contains(name) || lane.in_flight > 0);
        for lane in self.lanes.values_mut() {
            lane.more = true;
        }
    }

    /// How many deliveries to claim for each endpoint at `now`, with `in_flight` attempts running
    /// in all: those with room, in turn from `start` (so a shortage of total room is shared).
    pub fn to_claim(&self, now: Instant, in_flight: usize, start: usize) -> Vec<(String, usize)> {
        let mut total = MAX_IN_FLIGHT.saturating_sub(in_flight);
        let mut names: Vec<&String> = self.lanes.keys().collect();
        names.sort();
        let n = names.len().max(1);
        names.rotate_left(start % n);
        let mut out = Vec::new();
        for name in names {
            let want = self.lanes[name].wants_claim(now).min(total);
            if want > 0 {
                total -= want;
                out.push((name.clone(), want));
            }
        }
        out
    }

    /// `got` of the `asked` deliveries claimed for `name` are being attempted.
    pub fn claimed(&mut self, name: &str, asked: usize, got: usize) {
        let lane = self.lane(name, 0);
        lane.in_flight += got;
        lane.more = got >= asked;
    }

    /// An attempt to `name` started at `started` ended; `None` when its task failed. The change
    /// of the endpoint's state, if any.
    pub fn finished(&mut self, name: &str, started: Instant, outcome: Option<Outcome>, now: Instant) -> Option<Change> {
        let lane = self.lane(name, 0);
        lane.in_flight = lane.in_flight.saturating_sub(1);
        match outcome? {
            Outcome::TimedOut => {
                // Attempts already in flight when the endpoint was paused time out in turn: the
                // same stall, counted once.
                if lane.counted_at.is_some_and(|at| started < at) {
                    return None;
                }
                lane.timeouts += 1;
                let pause = pause_after(lane.timeouts);
                lane.paused_until = Some(now + pause);
                lane.counted_at = Some(now);
                lane.more = true;
                Some(Change::Paused { timeouts: lane.timeouts, pause })
            }
            Outcome::Ended if lane.timeouts > 0 => {
                lane.timeouts = 0;
                lane.paused_until = None;
                lane.counted_at = None;
                lane.more = true;
                Some(Change::Resumed)
            }
            Outcome::Ended => None,
        }
    }

    /// When the next pause of an endpoint with deliveries waiting ends.
    pub fn next_resume(&self, now: Instant) -> Option<Instant> {
        self.lanes.values().filter(|l| l.more).filter_map(|l| l.paused_until).filter(|t| *t > now).min()
    }

    /// The attempts in flight to `name`.
    pub fn in_flight(&self, name: &str) -> usize {
        self.lanes.get(name).map_or(0, |l| l.in_flight)
    }
}

/// The attempts running: a task each, with its endpoint and when it started. Dropping it (at
/// shutdown) aborts them; their leases run out.
#[derive(Default)]
struct Running {
    tasks: JoinSet<Outcome>,
    of: HashMap<Id, (String, Instant)>,
}

/// The job's name (metrics, logs).
pub const JOB: &str = "webhook_deliveries";

/// The delivery worker as a background job (`crate::jobs`): each run settles the attempts that
/// ended, reads the outbox (when woken, when the last read fanned out a full transaction, and
/// every poll interval) and claims for every endpoint with room. It runs again at once while
/// there is more to fan out, at a wake-up ([`Webhooks::wake`]) or the end of an attempt, and at
/// the next poll or the end of an endpoint's pause otherwise.
pub struct DeliveryJob {
    this: Arc<Worker>,
    every: Duration,
    lanes: Lanes,
    running: Running,
    read_outbox: bool,
    last_read: Instant,
    last_prune: Instant,
    turn: usize,
}

impl Worker {
    /// This worker as a background job reading the outbox every `every` without a wake-up.
    pub fn into_job(self, every: Duration) -> DeliveryJob {
        DeliveryJob {
            this: Arc::new(self),
            every,
            lanes: Lanes::default(),
            running: Running::default(),
            read_outbox: true,
            last_read: Instant::now(),
            last_prune: Instant::now(),
            turn: 0,
        }
    }
}

impl DeliveryJob {
    async fn round(&mut self) -> Result<crate::jobs::Next, String> {
        let (this, lanes, running) = (&self.this, &mut self.lanes, &mut self.running);
        let mut failed = Vec::new();
        while let Some(done) = running.tasks.try_join_next_with_id() {
            this.settle(lanes, running, done);
        }
        if self.read_outbox || self.last_read.elapsed() >= self.every {
            self.read_outbox = false;
            self.last_read = Instant::now();
            match this.read_outbox().await {
                Ok((fanned, names)) => {
                    // A full transaction of events: there may be more to fan out.
                    self.read_outbox = fanned as i64 >= FAN_OUT;
                    // A lane for every endpoint in effect, and for every name deliveries are
                    // kept for: one no longer configured has its deliveries attempted (and
                    // failed: "the endpoint is no longer configured") like any other.
                    let endpoints = this.hooks.endpoints();
                    let configured = endpoints.iter().map(|e| (e.name.as_str(), e.version));
                    let gone = names.iter().filter(|n| !endpoints.iter().any(|e| e.name == **n));
                    lanes.sync(configured.chain(gone.map(|n| (n.as_str(), 0))));
                }
                Err(e) => failed.push(format!("could not read the webhook outbox: {e}")),
            }
            if self.last_prune.elapsed() >= PRUNE_EVERY {
                self.last_prune = Instant::now();
                let before = now() - KEEP_SECONDS;
                if let Err(e) = this.db.run(move |conn| Ok(rows::prune(conn, before)?)).await {
                    tracing::warn!(error = %e, "could not prune delivered webhooks");
                }
            }
        }
        self.turn = self.turn.wrapping_add(1);
        if let Err(e) = this.claim(lanes, running, self.turn).await {
            failed.push(format!("could not claim webhook deliveries: {e}"));
        }
        if !failed.is_empty() {
            return Err(failed.join("; "));
        }
        if self.read_outbox {
            return Ok(crate::jobs::Next::Again);
        }
        let poll = self.last_read + self.every;
        Ok(crate::jobs::Next::At(lanes.next_resume(Instant::now()).map_or(poll, |t| t.min(poll))))
    }
}

#[rocket::async_trait]
impl crate::jobs::Job for DeliveryJob {
    fn name(&self) -> &'static str {
        JOB
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        self.round().await
    }

    /// A wake-up ([`Webhooks::wake`]: read the outbox) or an attempt that ended (its lane has room).
    fn woken(&mut self) -> crate::jobs::BoxFuture<'_, ()> {
        Box::pin(async move {
            let (this, lanes, running) = (&self.this, &mut self.lanes, &mut self.running);
            rocket::tokio::select! {
                _ = this.hooks.woken() => self.read_outbox = true,
                Some(done) = running.tasks.join_next_with_id() => this.settle(lanes, running, done),
            }
        })
    }
}

impl Worker {
    /// Pick up endpoint edits and fan recorded events out; how many events, and the endpoint
    /// names deliveries are kept for.
    async fn read_outbox(&self) -> crate::error::AppResult<(usize, Vec<String>)> {
        let (hooks, cipher) = (self.hooks.clone(), self.cipher.clone());
        self.db
            .run(move |conn| {
                hooks.reload(conn, &cipher)?;
                let fanned = outbox::fan_out(conn, &hooks, FAN_OUT)?;
                Ok((fanned, rows::endpoint_names(conn)?))
            })
            .await
    }

    /// Claim for every endpoint with room, and start the attempts.
    async fn claim(
        self: &Arc<Self>,
        lanes: &mut Lanes,
        running: &mut Running,
        turn: usize,
    ) -> crate::error::AppResult<()> {
        let wanted = lanes.to_claim(Instant::now(), running.tasks.len(), turn);
        if wanted.is_empty() {
            return Ok(());
        }
        let lease = self.lease;
        // What was claimed before a failed query is still attempted (its lease is taken).
        let (claimed, failed) = self
            .db
            .run(move |conn| {
                let at = now();
                let mut claimed = Vec::new();
                for (name, n) in wanted {
                    match outbox::claim_in(conn, at, lease, ClaimScope::Endpoint(&name), n as i64) {
                        Ok(got) => claimed.push((name, n, got)),
                        Err(e) => return Ok((claimed, Some(e))),
                    }
                }
                Ok((claimed, None))
            })
            .await?;
        for (name, asked, got) in claimed {
            lanes.claimed(&name, asked, got.len());
            for c in got {
                self.start(running, c);
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn start(self: &Arc<Self>, running: &mut Running, c: Claimed) {
        let (this, endpoint) = (self.clone(), c.delivery.endpoint.clone());
        let handle = running.tasks.spawn(async move { this.attempt(c).await });
        running.of.insert(handle.id(), (endpoint, Instant::now()));
    }

    /// Account for an attempt that ended, and log a change of its endpoint's state once.
    fn settle(&self, lanes: &mut Lanes, running: &mut Running, done: Result<(Id, Outcome), JoinError>) {
        let (id, outcome) = match done {
            Ok((id, outcome)) => (id, Some(outcome)),
            Err(e) => {
                tracing::error!(error = %e, "a webhook attempt task failed");
                (e.id(), None)
            }
        };
        let Some((endpoint, started)) = running.of.remove(&id) else { return };
        match lanes.finished(&endpoint, started, outcome, Instant::now()) {
            Some(Change::Paused { timeouts, pause }) => tracing::warn!(
                endpoint = %endpoint, timeouts, pause_seconds = pause.as_secs(),
                "webhook endpoint timed out: paused, then tried one delivery at a time until it answers"
            ),
            Some(Change::Resumed) => tracing::info!(endpoint = %endpoint, "webhook endpoint answers again: resumed"),
            None => {}
        }
    }

    async fn attempt(&self, c: Claimed) -> Outcome {
        let endpoint_name = c.delivery.endpoint.clone();
        let started = std::time::Instant::now();
        let result = match self.hooks.get(&endpoint_name) {
            // Its host passed check_public_host when it was loaded (or it is left out); a name
            // must also resolve to public addresses only.
            Some(endpoint) if endpoint.restricted => send(&self.public_http, &endpoint, &c).await,
            Some(endpoint) => send(&self.http, &endpoint, &c).await,
            // Configured when the event was fanned out, gone since (its table removed from the
            // configuration): nobody to send it to. (Deleting on the page fails them at once.)
            None => (AttemptResult::NoAnswer("the endpoint is no longer configured".into()), Outcome::Ended),
        };
        let (result, outcome) = result;
        let (msg_id, attempt) = (c.event.msg_id.clone(), c.delivery.attempts + 1);
        let r = result.clone();
        match self.db.run(move |conn| Ok(outbox::finish(conn, &c, &r, now())?)).await {
            Ok(Some(status)) => {
                // `delivered`; `pending`: it will be retried; `failed`: the last attempt failed.
                let outcome = match status {
                    rows::DeliveryStatus::Pending => "retry",
                    other => other.as_str(),
                };
                self.metrics.attempt(&endpoint_name, outcome, started);
                tracing::info!(
                    endpoint = %endpoint_name, webhook_id = %msg_id, attempt, status = %status, result = ?result,
                    "webhook attempt"
                )
            }
            Ok(None) => {
                tracing::warn!(endpoint = %endpoint_name, webhook_id = %msg_id, "webhook lease lost during delivery")
            }
            Err(e) => {
                tracing::warn!(endpoint = %endpoint_name, webhook_id = %msg_id, error = %e, "could not record a webhook attempt")
            }
        }
        outcome
    }
}

/// POST the event, signed for this attempt's timestamp.
async fn send(http: &Outbound, endpoint: &super::Endpoint, c: &Claimed) -> (AttemptResult, Outcome) {
    let timestamp = now();
    let signature = endpoint.sign(&c.event.msg_id, timestamp, &c.event.body);
    let request = http
        .client()
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &c.event.msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(c.event.body.clone());
    match http.send_streaming(request, usize::MAX).await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            // Read a little (so a short answer leaves the connection reusable), never more.
            let mut read = 0;
            while read < MAX_ANSWER_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => read += chunk.len(),
                    _ => break,
                }
            }
            (AttemptResult::Answered(status), Outcome::Ended)
        }
        Err(e @ HttpError::Timeout) => (AttemptResult::NoAnswer(e.to_string()), Outcome::TimedOut),
        Err(e) => (AttemptResult::NoAnswer(e.to_string()), Outcome::Ended),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{pause_after, Change, Lanes, Outcome, FIRST_PAUSE, MAX_IN_FLIGHT, MAX_PAUSE, PER_ENDPOINT};

    #[test]
    fn pauses_double_from_the_first_up_to_the_longest() {
        assert_eq!(pause_after(1), FIRST_PAUSE);
        assert_eq!(pause_after(2), FIRST_PAUSE * 2);
        assert_eq!(pause_after(3), FIRST_PAUSE * 4);
        assert!((1..200).map(pause_after).collect::<Vec<_>>().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pause_after(40), MAX_PAUSE);
        assert_eq!(pause_after(u32::MAX), MAX_PAUSE);
    }

    /// A stalling endpoint is paused, then probed one delivery at a time; the others keep their
    /// room throughout; an answer gives it all its room back.
    #[test]
    fn a_timing_out_endpoint_is_paused_alone_and_probed_until_it_answers() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        lanes.sync([("slow", 0), ("fast", 0)]);
        let asked = lanes.to_claim(t0, 0, 0);
        assert_eq!(asked, [("fast".to_string(), PER_ENDPOINT), ("slow".to_string(), PER_ENDPOINT)]);
        lanes.claimed("slow", PER_ENDPOINT, PER_ENDPOINT);
        lanes.claimed("fast", PER_ENDPOINT, 3);
        // fast got less than it asked: nothing more due until the outbox is read again.
        assert!(lanes.to_claim(t0, PER_ENDPOINT + 3, 0).is_empty());

        // fast answers; slow's first timeout pauses it; its other attempts, already in flight,
        // time out too without lengthening the pause.
        let t1 = t0 + Duration::from_secs(30);
        for _ in 0..3 {
            assert_eq!(lanes.finished("fast", t0, Some(Outcome::Ended), t1), None);
        }
        let change = lanes.finished("slow", t0, Some(Outcome::TimedOut), t1);
        assert_eq!(change, Some(Change::Paused { timeouts: 1, pause: FIRST_PAUSE }));
        for _ in 1..PER_ENDPOINT {
            assert_eq!(lanes.finished("slow", t0, Some(Outcome::TimedOut), t1), None);
        }
        assert_eq!((lanes.in_flight("slow"), lanes.in_flight("fast")), (0, 0));
        lanes.sync([("slow", 0), ("fast", 0)]);
        assert_eq!(lanes.to_claim(t1, 0, 0), [("fast".to_string(), PER_ENDPOINT)], "slow is paused, fast is not");
        assert_eq!(lanes.next_resume(t1), Some(t1 + FIRST_PAUSE));

        // After the pause: one attempt at a time.
        let t2 = t1 + FIRST_PAUSE;
        assert_eq!(lanes.to_claim(t2, 0, 0), [("fast".to_string(), PER_ENDPOINT), ("slow".to_string(), 1)]);
        lanes.claimed("slow", 1, 1);
        assert!(lanes.to_claim(t2, 1, 0).iter().all(|(name, _)| name != "slow"), "one probe at a time");
        // It times out again: a longer pause.
        let t3 = t2 + Duration::from_secs(30);
        let change = lanes.finished("slow", t2, Some(Outcome::TimedOut), t3);
        assert_eq!(change, Some(Change::Paused { timeouts: 2, pause: FIRST_PAUSE * 2 }));
        assert!(lanes.to_claim(t3 + FIRST_PAUSE, 0, 0).iter().all(|(name, _)| name != "slow"));
        let t4 = t3 + FIRST_PAUSE * 2;
        assert_eq!(lanes.to_claim(t4, 0, 0).iter().find(|(n, _)| n == "slow").map(|(_, k)| *k), Some(1));
        lanes.claimed("slow", 1, 1);
        // Answered (even with an error status): all its room again.
        assert_eq!(lanes.finished("slow", t4, Some(Outcome::Ended), t4), Some(Change::Resumed));
        assert_eq!(lanes.to_claim(t4, 0, 0).iter().find(|(n, _)| n == "slow").map(|(_, k)| *k), Some(PER_ENDPOINT));
    }

    #[test]
    fn an_edit_ends_a_pause_and_a_failed_task_frees_its_room() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        lanes.sync([("ep", 1)]);
        lanes.claimed("ep", 2, 2);
        assert!(lanes.finished("ep", t0, Some(Outcome::TimedOut), t0).is_some());
        assert_eq!(lanes.finished("ep", t0, None, t0), None, "a task that failed is not a timeout");
        assert_eq!(lanes.in_flight("ep"), 0);
        lanes.sync([("ep", 1)]);
        assert!(lanes.to_claim(t0, 0, 0).is_empty(), "paused");
        lanes.sync([("ep", 2)]);
        assert_eq!(lanes.to_claim(t0, 0, 0), [("ep".to_string(), PER_ENDPOINT)], "edited: afresh");
    }

    /// Claims come in batches: an endpoint with attempts in flight is claimed for again once
    /// half of its room is free; the total is capped and shared in turn.
    #[test]
    fn claims_are_batched_and_the_total_is_capped() {
        let t0 = Instant::now();
        let mut lanes = Lanes::default();
        lanes.sync([("ep", 0)]);
        lanes.claimed("ep", PER_ENDPOINT, PER_ENDPOINT);
        for _ in 0..PER_ENDPOINT / 2 - 1 {
            lanes.finished("ep", t0, Some(Outcome::Ended), t0);
        }
        assert!(lanes.to_claim(t0, 0, 0).is_empty());
        lanes.finished("ep", t0, Some(Outcome::Ended), t0);
        assert_eq!(lanes.to_claim(t0, 0, 0), [("ep".to_string(), PER_ENDPOINT / 2)]);

        let names: Vec<String> = (0..20).map(|i| format!("ep{i:02}")).collect();
        let mut many = Lanes::default();
        many.sync(names.iter().map(|n| (n.as_str(), 0)));
        let total = |claims: &[(String, usize)]| claims.iter().map(|(_, n)| n).sum::<usize>();
        assert_eq!(total(&many.to_claim(t0, 0, 0)), MAX_IN_FLIGHT);
        assert_eq!(total(&many.to_claim(t0, MAX_IN_FLIGHT - 5, 0)), 5);
        assert_eq!(many.to_claim(t0, MAX_IN_FLIGHT - 5, 3)[0].0, "ep03", "in turn");
    }
}

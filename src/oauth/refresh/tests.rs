//! The refresh core without HTTP or Rocket: a SQLite file, a real cipher, and a scripted provider
//! that counts its calls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{classify, health, AccessError, RefreshLocks, Refresher, TokenEndpoint};
use crate::cache::Caches;
use crate::config::{RawConfig, Settings};
use crate::db::models::connections::{self, Connection, ConnectionStatus, Refreshed, Which};
use crate::db::models::events::{self, EventKind, EventOutcome};
use crate::db::models::users;
use crate::db::schema::connections as schema;
use crate::db::Db;
use crate::oauth::access::fresh_token_with;
use crate::oauth::metrics::OauthMetrics;
use crate::oauth::providers::Provider;
use crate::oauth::store::{self, open_tokens, Tokens};
use crate::oauth::tokens::{TokenError, TokenSet};
use crate::util::{now, ExposeSecret, Secret};
use crate::vault::store::ClientCredentials;
use crate::vault::{Aad, Cipher};
use diesel::ExpressionMethods;

/// A provider whose token endpoint gives the scripted answers in order, after `delay`, and
/// records the refresh tokens it was sent.
#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<TokenSet, TokenError>>>,
    sent: Mutex<Vec<String>>,
    calls: AtomicUsize,
    delay: Duration,
}

impl Scripted {
    fn answering(answers: impl IntoIterator<Item = Result<TokenSet, TokenError>>) -> Scripted {
        Scripted { answers: Mutex::new(answers.into_iter().collect()), ..Default::default() }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn sent(&self) -> Vec<String> {
        self.sent.lock().unwrap().clone()
    }
}

#[rocket::async_trait]
impl TokenEndpoint for Scripted {
    async fn refresh(
        &self,
        _provider: &Provider,
        creds: &ClientCredentials,
        refresh_token: &Secret,
        _current_scopes: &[String],
    ) -> Result<TokenSet, TokenError> {
        assert_eq!(creds.client_id, "client-1", "the vault's client credentials are used");
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.sent.lock().unwrap().push(refresh_token.expose_secret().to_string());
        rocket::tokio::time::sleep(self.delay).await;
        self.answers.lock().unwrap().pop_front().expect("an answer was scripted for this call")
    }
}

fn tokens(access: &str, refresh: Option<&str>, expires_at: Option<i64>) -> TokenSet {
    TokenSet {
        access_token: Secret::from(access),
        refresh_token: refresh.map(Secret::from),
        token_type: "Bearer".into(),
        scopes: vec!["read".into()],
        expires_at,
        obtained_at: now() - 100,
        refresh_expires_at: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    settings: Settings,
    cipher: Arc<Cipher>,
    caches: Caches,
    locks: RefreshLocks,
    metrics: OauthMetrics,
    provider: Provider,
    user_id: i64,
}

impl Fixture {
    /// A user connected to the demo provider with AT-1/RT-1, already expired; with the client's
    /// credentials in the vault when `configured`.
    async fn new(configured: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
        let settings = Settings::resolve(&RawConfig::default(), "debug").unwrap();
        let cipher = Arc::new(Cipher::for_tests(5));
        let provider = crate::oauth::providers::demo(&settings);
        let mut conn = db.conn().unwrap();
        // The audit log starts before the first user, as at a server's first start.
        crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
        let user_id = users::for_tests(&mut conn, "ann");
        if configured {
            crate::vault::store::set(&mut conn, &cipher, &provider.client_id_path(), "client-1", "test").unwrap();
            crate::vault::store::set(&mut conn, &cipher, &provider.client_secret_path(), "secret-1", "test").unwrap();
        }
        drop(conn);
        let f = Fixture {
            _dir: dir,
            db,
            settings,
            cipher,
            caches: Caches::new(60),
            locks: RefreshLocks::default(),
            metrics: OauthMetrics::register(&crate::metrics::Metrics::new()),
            provider,
            user_id,
        };
        store::save(
            f.tokens(),
            store::Destination::only(user_id, "demo"),
            tokens("AT-1", Some("RT-1"), Some(now() - 1)),
        )
        .await
        .unwrap();
        f
    }

    fn tokens(&self) -> Tokens<'_> {
        Tokens { db: &self.db, cipher: &self.cipher, caches: &self.caches, events_kept: 50, webhooks: None, jobs: None }
    }

    fn with<'a>(&'a self, endpoint: &'a dyn TokenEndpoint) -> Refresher<'a> {
        Refresher {
            tokens: self.tokens(),
            endpoint,
            metrics: &self.metrics,
            locks: &self.locks,
            settings: &self.settings,
        }
    }

    async fn fresh(&self, endpoint: &dyn TokenEndpoint) -> Result<String, AccessError> {
        let token = fresh_token_with(&self.with(endpoint), Which::first(self.user_id), &self.provider).await?;
        Ok(token.access_token.expose_secret().to_string())
    }

    /// Change this connection's row behind the refresh core's back (as time passing would), and
    /// drop the cached copy.
    fn set<Q>(&self, change: impl FnOnce(schema::table) -> Q)
    where
        Q: diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> + diesel::query_builder::QueryId,
    {
        let mut conn = self.db.conn().unwrap();
        let crate::db::Conn::Sqlite(c) = &mut conn else { panic!("the unit tests run on SQLite") };
        diesel::query_dsl::methods::ExecuteDsl::<diesel::SqliteConnection>::execute(change(schema::table), &mut **c)
            .unwrap();
        self.caches.clear();
    }

    fn row(&self) -> Connection {
        connections::find(&mut self.db.conn().unwrap(), self.user_id, "demo").unwrap().expect("connected")
    }

    /// The stored (access, refresh) tokens, opened.
    fn stored(&self) -> (String, Option<String>) {
        let (a, r) = open_tokens(&self.cipher, &self.row()).unwrap();
        (a.expose_secret().to_string(), r.map(|r| r.expose_secret().to_string()))
    }

    /// The newest event: (outcome, detail).
    fn last_event(&self) -> (EventOutcome, String) {
        let e = events::recent(&mut self.db.conn().unwrap(), self.user_id, "demo", 1).unwrap().remove(0);
        assert_eq!(e.kind, EventKind::Refresh);
        (e.outcome, e.detail)
    }

    /// Another process takes the lease of the row as it is now, until `until`.
    fn lease_elsewhere(&self, until: i64) -> Connection {
        let row = self.row();
        let taken =
            connections::take_refresh_lease(&mut self.db.conn().unwrap(), row.id, row.version, now(), until, None);
        assert!(taken.unwrap(), "the other holder took the lease");
        row
    }
}

#[rocket::async_test]
async fn a_new_refresh_token_replaces_the_old_one_and_an_answer_without_one_keeps_it() {
    let f = Fixture::new(true).await;
    let before = f.row();
    let fake = Scripted::answering([
        Ok(tokens("AT-2", Some("RT-2"), Some(now() - 1))), // expired at once: the next use refreshes again
        Ok(tokens("AT-3", None, Some(now() + 3600))),
    ]);
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-2");
    let row = f.row();
    assert_eq!(row.version, before.version + 1, "both tokens in one write");
    assert_eq!(f.stored(), ("AT-2".into(), Some("RT-2".into())));
    assert_eq!(row.refresh_lease_until, None, "the lease ends with the write");
    assert_eq!(f.last_event(), (EventOutcome::Ok, "new refresh token stored".into()));
    let cached = f.caches.connections.get(&(f.user_id, "demo".into())).expect("the new row is cached")[0].clone();
    assert_eq!((cached.version, &cached.access_token), (row.version, &row.access_token));

    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-3");
    assert_eq!(f.stored(), ("AT-3".into(), Some("RT-2".into())), "no new refresh token: the old one is kept");
    assert_eq!(f.last_event(), (EventOutcome::Ok, "refresh token kept".into()));
    assert_eq!(fake.sent(), ["RT-1", "RT-2"]);
    // Not due any more: used as it is.
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-3");
    assert_eq!(fake.calls(), 2);
}

#[rocket::async_test]
async fn a_caller_that_loses_the_lease_waits_and_uses_the_holders_token() {
    let f = Fixture::new(true).await;
    let held = f.lease_elsewhere(now() + 30);
    let fake = Scripted::default(); // no answers: a call would panic
    let holder = async {
        // The other instance gets its answer and stores it under its lease.
        rocket::tokio::time::sleep(Duration::from_millis(300)).await;
        let access =
            f.cipher.seal_str("AT-theirs", Aad::AccessToken { user_id: f.user_id, service: "demo", account: "" });
        let r = Refreshed {
            access_token: &access,
            refresh_token: None,
            token_type: "Bearer",
            scopes: "read",
            expires_at: Some(now() + 3600),
            obtained_at: now(),
            refresh_token_expires_at: None,
        };
        // Another instance's write, through its own unit of work: this process learns of it from
        // the database.
        let subject = crate::changes::Subject::of(&held);
        let stored = crate::changes::write(&mut f.db.conn().unwrap(), &f.cipher, 50, |tx| {
            let stored = connections::store_refreshed(tx.conn(), held.at_version(), &r)?;
            tx.record(crate::changes::Change::ConnectionRefreshed { conn: subject, rotated: false, recovered: false })?;
            Ok(stored)
        })
        .unwrap()
        .recorded_only();
        assert!(stored);
    };
    let started = Instant::now();
    let (token, ()) = rocket::tokio::join!(f.fresh(&fake), holder);
    assert_eq!(token.unwrap(), "AT-theirs");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited for the holder");
    assert_eq!(fake.calls(), 0, "the provider is asked once, by the holder");
    assert_eq!(f.row().version, held.version + 1);
}

#[rocket::async_test]
async fn invalid_grant_marks_the_connection_reconnect_required_and_keeps_the_tokens_sealed() {
    let f = Fixture::new(true).await;
    let before = f.row();
    let fake = Scripted::answering([Err(TokenError::Rejected("invalid_grant".into()))]);
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::ReconnectRequired)));
    let row = f.row();
    assert_eq!((row.status, row.version, row.refresh_lease_until), (ConnectionStatus::ReconnectRequired, 2, None));
    assert_eq!((&row.access_token, &row.refresh_token), (&before.access_token, &before.refresh_token));
    assert_eq!(f.stored(), ("AT-1".into(), Some("RT-1".into())), "still sealed, and still opening");
    assert_eq!(row.status_reason.as_deref(), Some("invalid_grant"));
    assert_eq!(f.last_event(), (EventOutcome::ReconnectRequired, classify::INVALID_GRANT.detail.into()));
    // The cached row was dropped (the write's invalidation applied): the next use knows at once,
    // without asking the provider.
    assert!(f.caches.connections.get(&(f.user_id, "demo".into())).is_none(), "the stale row left the cache");
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::ReconnectRequired)));
    assert_eq!(fake.calls(), 1);
}

#[rocket::async_test]
async fn a_transient_failure_degrades_the_connection_with_its_attempt_and_next_attempt() {
    let f = Fixture::new(true).await;
    let before = f.row();
    let fake = Scripted::answering([Err(TokenError::Network("connection reset".into()))]);
    let at = now();
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::Provider(TokenError::Network(_)))));
    let row = f.row();
    assert_eq!(
        (row.status, row.attempts, row.status_reason.as_deref()),
        (ConnectionStatus::Degraded, 1, Some("network"))
    );
    let next = row.next_attempt_at.expect("a next attempt time");
    assert!((at + 30..=now() + 30).contains(&next), "the first backoff step is 30 s: {next} vs {at}");
    assert_eq!((row.version, row.refresh_lease_until), (before.version + 1, None), "the mark released the lease");
    assert_eq!(f.stored(), ("AT-1".into(), Some("RT-1".into())), "the tokens are kept");
    let (outcome, detail) = f.last_event();
    assert_eq!(outcome, EventOutcome::FailedRetryable, "the `failed (retryable)` event is kept");
    assert!(detail.contains("the tokens were kept and it will be retried (attempt 1, in 30 s)"), "{detail}");
    assert!(f.caches.connections.get(&(f.user_id, "demo".into())).is_none(), "the stale row left the cache");
}

#[rocket::async_test]
async fn requests_during_the_backoff_make_no_provider_call() {
    let f = Fixture::new(true).await;
    let fake = Scripted::answering([Err(TokenError::Rejected("temporarily_unavailable".into()))]);
    assert!(f.fresh(&fake).await.is_err());
    assert_eq!(f.row().status_reason.as_deref(), Some("temporarily_unavailable"));
    // The access token has expired: 20 requests (at once, then one by one) are told when to come
    // back, and the provider is not asked again.
    let answers = futures_util::future::join_all((0..10).map(|_| f.fresh(&fake))).await;
    for _ in 0..10 {
        assert!(matches!(f.fresh(&fake).await, Err(AccessError::BackingOff { retry_after: 28..=30 })));
    }
    assert!(answers.iter().all(|a| matches!(a, Err(AccessError::BackingOff { retry_after: 28..=30 }))), "{answers:?}");
    assert_eq!(fake.calls(), 1, "one provider call per backoff step");
    // Another instance cannot take the lease before the next attempt either.
    let row = f.row();
    let mut conn = f.db.conn().unwrap();
    assert!(!connections::take_refresh_lease(&mut conn, row.id, row.version, now(), now() + 5, None).unwrap());
    // The error says 503 with Retry-After = the seconds to the next attempt.
    let e = AccessError::BackingOff { retry_after: 29 }.into_app_error(&f.provider);
    assert_eq!((e.status().code, e.retry_after()), (503, Some(29)));
    // Degraded is not unusable: a token that is due but still valid is handed out as it is.
    f.set(|c| diesel::update(c).set(schema::expires_at.eq(now() + 20)));
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-1");
    assert_eq!(fake.calls(), 1);
}

#[rocket::async_test]
async fn the_next_success_makes_the_connection_active_again() {
    let f = Fixture::new(true).await;
    let fake = Scripted::answering([Err(TokenError::Timeout), Ok(tokens("AT-2", Some("RT-2"), Some(now() + 3600)))]);
    assert!(f.fresh(&fake).await.is_err());
    assert_eq!((f.row().status, f.row().status_reason.as_deref()), (ConnectionStatus::Degraded, Some("timeout")));
    // The backoff step has passed.
    f.set(|c| diesel::update(c).set(schema::next_attempt_at.eq(now() - 1)));
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-2");
    let row = f.row();
    assert_eq!(
        (row.status, row.status_reason, row.attempts, row.next_attempt_at),
        (ConnectionStatus::Active, None, 0, None)
    );
    assert_eq!(f.last_event().0, EventOutcome::Ok);
    let cached = f.caches.connections.get(&(f.user_id, "demo".into())).expect("the new row is cached")[0].clone();
    assert_eq!((cached.status, cached.attempts), (ConnectionStatus::Active, 0), "the cache says active too");
    assert_eq!(fake.calls(), 2);
}

#[rocket::async_test]
async fn the_backoff_grows_and_is_capped() {
    let f = Fixture::new(true).await;
    let fake = Scripted::answering((0..3).map(|_| Err(TokenError::Timeout)));
    let mut waits = Vec::new();
    for attempts_before in [0, 1, 30] {
        f.set(move |c| {
            diesel::update(c).set((schema::next_attempt_at.eq(now() - 1), schema::attempts.eq(attempts_before)))
        });
        let at = now();
        assert!(f.fresh(&fake).await.is_err());
        let row = f.row();
        assert_eq!(row.attempts, attempts_before + 1);
        waits.push(row.next_attempt_at.unwrap() - at);
    }
    // Each step and its jitter (the same every time for this connection and attempt).
    let id = f.row().id;
    let expected = [(30, 1), (60, 2), (3600, 31)].map(|(step, attempt)| step + health::jitter(step, id, attempt));
    for (wait, expected) in waits.iter().zip(expected) {
        assert!((expected - 1..=expected).contains(wait), "{waits:?} vs {expected}");
    }
}

#[rocket::async_test]
async fn a_429_with_retry_after_sets_the_next_attempt() {
    let f = Fixture::new(true).await;
    let fake = Scripted::answering([Err(TokenError::RateLimited(Some(600)))]);
    let at = now();
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::Provider(TokenError::RateLimited(Some(600))))));
    let row = f.row();
    assert_eq!((row.status, row.status_reason.as_deref()), (ConnectionStatus::Degraded, Some("rate_limited")));
    assert!((at + 600..=now() + 600).contains(&row.next_attempt_at.unwrap()), "Retry-After beats the 30 s step");
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::BackingOff { retry_after: 598..=600 })));
    assert_eq!(fake.calls(), 1);
}

#[rocket::async_test]
async fn refused_client_credentials_are_an_administrators_problem_not_a_degraded_connection() {
    let f = Fixture::new(true).await;
    let before = f.row();
    let fake = Scripted::answering([
        Err(TokenError::Rejected("invalid_client".into())),
        Ok(tokens("AT-2", Some("RT-2"), Some(now() + 3600))),
    ]);
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::ClientRejected(_))));
    let row = f.row();
    assert_eq!((row.status, row.version, row.refresh_lease_until), (ConnectionStatus::Active, before.version, None));
    assert_eq!(f.last_event().0, EventOutcome::FailedAdmin);
    // The lease was given back: the next use refreshes at once.
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-2");
    assert_eq!(fake.sent(), ["RT-1", "RT-1"]);
}

#[rocket::async_test]
async fn an_expired_refresh_token_needs_a_reconnect_without_a_provider_call() {
    let f = Fixture::new(true).await;
    let fake = Scripted::default(); // no answers: a call would panic
    f.set(|c| diesel::update(c).set(schema::refresh_token_expires_at.eq(now() - 1)));
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::ReconnectRequired)));
    let row = f.row();
    assert_eq!(
        (row.status, row.status_reason.as_deref()),
        (ConnectionStatus::ReconnectRequired, Some("refresh_token_expired"))
    );
    assert_eq!(f.last_event(), (EventOutcome::ReconnectRequired, classify::REFRESH_TOKEN_EXPIRED.detail.into()));
    assert_eq!(fake.calls(), 0);
}

#[rocket::async_test]
async fn a_refresh_token_expiry_the_provider_sends_is_stored_and_kept() {
    let f = Fixture::new(true).await;
    let with_expiry = |access: &str, refresh: Option<&str>, rt_expires: Option<i64>| TokenSet {
        refresh_expires_at: rt_expires,
        ..tokens(access, refresh, Some(now() - 1))
    };
    let in_6_days = now() + 6 * 86_400;
    let fake = Scripted::answering([
        Ok(with_expiry("AT-2", None, Some(in_6_days))),
        Ok(with_expiry("AT-3", None, None)),
        Ok(with_expiry("AT-4", Some("RT-4"), None)),
    ]);
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-2");
    assert_eq!(f.row().refresh_token_expires_at, Some(in_6_days));
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-3");
    assert_eq!(f.row().refresh_token_expires_at, Some(in_6_days), "the same refresh token: its expiry stays");
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-4");
    assert_eq!(f.row().refresh_token_expires_at, None, "a new refresh token of unknown lifetime");
}

#[rocket::async_test]
async fn a_lease_left_by_a_dead_process_blocks_until_it_expires() {
    let f = Fixture::new(true).await;
    // A process took the lease and died: nobody will store a result or release it.
    f.lease_elsewhere(now() + 1);
    let fake = Scripted::answering([Ok(tokens("AT-2", Some("RT-2"), Some(now() + 3600)))]);
    let started = Instant::now();
    assert_eq!(f.fresh(&fake).await.unwrap(), "AT-2");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for the lease to expire: {:?}", started.elapsed());
    assert_eq!(fake.calls(), 1);
    assert_eq!(f.stored(), ("AT-2".into(), Some("RT-2".into())));
    assert_eq!(f.row().refresh_lease_until, None);
}

#[rocket::async_test]
async fn concurrent_callers_in_one_process_make_one_refresh() {
    let f = Fixture::new(true).await;
    let fake = Scripted {
        delay: Duration::from_millis(200),
        ..Scripted::answering([Ok(tokens("AT-2", Some("RT-2"), Some(now() + 3600)))])
    };
    let callers = (0..20).map(|_| f.fresh(&fake));
    let tokens = futures_util::future::join_all(callers).await;
    assert!(tokens.iter().all(|t| matches!(t, Ok(t) if t == "AT-2")), "{tokens:?}");
    assert_eq!(fake.calls(), 1);
    assert_eq!(f.row().version, 2);
    // The 19 others were woken by the refresher's announcement and took its row from the cache;
    // they did not each lose the lease and re-read the database.
    assert!(f.caches.connections.stats().hits >= 19, "{:?}", f.caches.connections.stats());
}

#[rocket::async_test]
async fn without_client_credentials_nothing_is_sent_and_the_tokens_are_kept() {
    let f = Fixture::new(false).await;
    let fake = Scripted::default();
    assert!(matches!(f.fresh(&fake).await, Err(AccessError::NotConfigured)));
    assert_eq!(fake.calls(), 0);
    let row = f.row();
    assert_eq!((row.status, row.version, row.refresh_lease_until), (ConnectionStatus::Active, 1, None));
    assert_eq!(f.stored(), ("AT-1".into(), Some("RT-1".into())));
    let (outcome, detail) = f.last_event();
    assert_eq!(outcome, EventOutcome::FailedAdmin);
    assert!(detail.contains("no client credentials"), "{detail}");
}

//! The durable jobs queue (`tokenvault::jobs::queue`), on the test's backend (SQLite, or
//! PostgreSQL when TOKENVAULT_TEST_POSTGRES_URL is set): two workers never hold one job, a killed
//! worker's lease runs out and another worker takes the job, a job that keeps failing backs off
//! and ends dead — shown in /metrics — and a job is enqueued in its caller's transaction.

use crate::common;

use std::collections::HashSet;

use tokenvault::db::Db;
use tokenvault::jobs::queue::{self, Failed};

fn open() -> (tempfile::TempDir, common::TestDatabase, Db) {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db = Db::open(&database.url).expect("the test database opens");
    (dir, database, db)
}

const KIND: &str = "test.kind";

#[test]
fn two_workers_never_take_the_same_job() {
    let (_dir, database, db) = open();
    let now = tokenvault::util::now();
    {
        let mut conn = db.conn().unwrap();
        for i in 0..120 {
            queue::enqueue(&mut conn, KIND, &format!("job {i}"), 5, now).unwrap();
        }
        // Not due yet, and another kind: never claimed here.
        queue::enqueue(&mut conn, KIND, "later", 5, now + 60).unwrap();
        queue::enqueue(&mut conn, "test.other", "other", 5, now).unwrap();
    }
    // Two instances: a pool each, claiming at the same time.
    let workers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|worker| {
            let db = Db::open(&database.url).unwrap();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                loop {
                    let mut conn = db.conn().unwrap();
                    let got = queue::claim(&mut conn, &[KIND], worker, 30, 7, now).unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for job in &got {
                        assert_eq!(job.locked_by.as_deref(), Some(worker));
                        assert_eq!(job.attempts, 1);
                    }
                    mine.extend(got.into_iter().map(|j| j.id));
                }
            })
        })
        .collect();
    let claimed: Vec<Vec<i64>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let (a, b): (HashSet<i64>, HashSet<i64>) =
        (claimed[0].iter().copied().collect(), claimed[1].iter().copied().collect());
    assert_eq!(a.len() + b.len(), 120, "every due job once: {} + {}", a.len(), b.len());
    assert!(a.is_disjoint(&b), "no job in both: {:?}", a.intersection(&b).collect::<Vec<_>>());
    let mut conn = db.conn().unwrap();
    assert!(queue::claim(&mut conn, &[KIND], "c", 30, 100, now).unwrap().is_empty(), "all leased");
    assert_eq!(queue::claim(&mut conn, &["test.other"], "c", 30, 100, now).unwrap().len(), 1);
}

#[test]
fn a_killed_workers_lease_runs_out_and_another_worker_takes_the_job() {
    let (_dir, _database, db) = open();
    let now = tokenvault::util::now();
    let mut conn = db.conn().unwrap();
    let id = queue::enqueue(&mut conn, KIND, "payload", 5, now).unwrap();
    let held = queue::claim(&mut conn, &[KIND], "killed", 30, 10, now).unwrap();
    assert_eq!(held.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    // The worker dies here. While its lease runs, nobody else gets the job.
    assert!(queue::claim(&mut conn, &[KIND], "other", 30, 10, now + 29).unwrap().is_empty());
    let taken = queue::claim(&mut conn, &[KIND], "other", 30, 10, now + 30).unwrap();
    assert_eq!(taken.len(), 1, "the lease ran out");
    assert_eq!((taken[0].id, taken[0].attempts, taken[0].payload.as_str()), (id, 2, "payload"));
    // The dead worker coming back cannot finish or fail what it lost.
    assert!(!queue::complete(&mut conn, held[0].held(), "killed").unwrap());
    assert_eq!(
        queue::fail(&mut conn, held[0].held(), "killed", "late", queue::backoff, now + 31).unwrap(),
        Failed::NotHeld
    );
    assert!(queue::complete(&mut conn, taken[0].held(), "other").unwrap());
    assert!(tokenvault::db::models::jobs::all_of(&mut conn, KIND).unwrap().is_empty(), "done: the row is gone");
}

#[tokio::test]
async fn a_job_that_keeps_failing_backs_off_and_ends_dead_in_the_metrics() {
    let (_dir, _database, db) = open();
    let start = tokenvault::util::now();
    let mut conn = db.conn().unwrap();
    queue::enqueue(&mut conn, KIND, "payload", 3, start).unwrap();
    let mut now = start;
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let job = queue::claim(&mut conn, &[KIND], "w", 30, 10, now).unwrap().pop().expect("due");
        let failed = queue::fail(&mut conn, job.held(), "w", "the provider answered 503", queue::backoff, now).unwrap();
        if let Failed::RetryAt(at) = failed {
            assert!(queue::claim(&mut conn, &[KIND], "w", 30, 10, at - 1).unwrap().is_empty(), "not before its time");
            outcomes.push(Failed::RetryAt(at - now));
            now = at;
        } else {
            outcomes.push(failed);
        }
    }
    assert_eq!(outcomes, [Failed::RetryAt(60), Failed::RetryAt(120), Failed::Dead]);
    assert!(queue::claim(&mut conn, &[KIND], "w", 30, 10, now + 86_400).unwrap().is_empty(), "dead: never again");
    let rows = tokenvault::db::models::jobs::all_of(&mut conn, KIND).unwrap();
    assert_eq!(rows.len(), 1, "kept for the operator");
    assert_eq!((rows[0].attempts, rows[0].last_error.as_deref()), (3, Some("the provider answered 503")));
    assert!(rows[0].dead_at.is_some() && rows[0].locked_by.is_none());

    // What /metrics shows of it (the same figures the route reads at scrape time).
    queue::enqueue(&mut conn, KIND, "waiting", 3, start + 86_400).unwrap();
    let metrics = tokenvault::metrics::Metrics::new();
    let jobs = tokenvault::jobs::JobMetrics::register(&metrics);
    jobs.set_queues(&tokenvault::jobs::metrics::queues(&mut conn, tokenvault::util::now() + 50).unwrap());
    let text = metrics.render();
    assert!(text.contains("tokenvault_job_dead{job=\"test.kind\"} 1"), "{text}");
    assert!(text.contains("tokenvault_job_queue_depth{job=\"test.kind\"} 1"), "{text}");
    let oldest =
        text.lines().find(|l| l.starts_with("tokenvault_job_oldest_pending_seconds{job=\"test.kind\"}")).unwrap();
    let age: i64 = oldest.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((50..=60).contains(&age), "{oldest}");
}

#[test]
fn a_job_is_enqueued_in_its_callers_transaction() {
    let (_dir, _database, db) = open();
    let mut conn = db.conn().unwrap();
    let now = tokenvault::util::now();
    let rolled_back: Result<(), tokenvault::error::AppError> = conn.transaction(|c| {
        queue::enqueue(c, KIND, "rolled back", 3, now)?;
        Err(tokenvault::error::AppError::NotFound)
    });
    assert!(rolled_back.is_err());
    conn.transaction(|c| queue::enqueue(c, KIND, "committed", 3, now).map(|_| ())).unwrap();
    let payloads: Vec<String> =
        tokenvault::db::models::jobs::all_of(&mut conn, KIND).unwrap().into_iter().map(|j| j.payload).collect();
    assert_eq!(payloads, ["committed"]);
}

/// Revocations waiting in `token_revocations` when the jobs table arrives move into it: same
/// sealed bytes, attempts and due time, and the old table is gone.
#[test]
fn waiting_revocations_move_into_the_jobs_table() {
    use diesel::connection::SimpleConnection;
    let (_dir, database, db) = open();
    let postgres = database.is_postgres();
    {
        let mut conn = db.conn().unwrap();
        // The database as the step before left it (the step's down.sql, not recorded), with two rows.
        let down = if postgres {
            include_str!("../../migrations/postgres/2026-12-07-000200_jobs/down.sql")
        } else {
            include_str!("../../migrations/sqlite/2026-12-07-000200_jobs/down.sql")
        };
        let bytes = |hex: &str| if postgres { format!("'\\x{hex}'::bytea") } else { format!("X'{hex}'") };
        let sql = format!(
            "{down}; DELETE FROM __diesel_schema_migrations WHERE version = '20261207000200';
             INSERT INTO token_revocations (user_id, service, account_id, access_token, refresh_token, attempts, \
             next_attempt_at, created_at) VALUES (7, 'fake', '', {}, {}, 2, 1000, 900), \
             (8, 'github', 'acct', {}, NULL, 0, 1200, 1100);",
            bytes("00ABCDEF"),
            bytes("FF10"),
            bytes("0102")
        );
        tokenvault::on_conn!(&mut conn, c => c.batch_execute(&sql)).unwrap();
    }
    drop(db);
    let db = Db::open(&database.url).expect("the step runs again");
    let mut conn = db.conn().unwrap();
    let moved = tokenvault::db::models::revocations::all(&mut conn).unwrap();
    let seen: Vec<_> = moved
        .iter()
        .map(|r| {
            (
                r.user_id,
                r.service.as_str(),
                r.account_id.as_str(),
                r.access_token.clone(),
                r.refresh_token.clone(),
                r.attempts,
                r.max_attempts,
                r.next_attempt_at,
                r.created_at,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (7, "fake", "", vec![0x00, 0xab, 0xcd, 0xef], Some(vec![0xff, 0x10]), 2, 8, 1000, 900),
            (8, "github", "acct", vec![0x01, 0x02], None, 0, 8, 1200, 1100),
        ]
    );
    let old = tokenvault::on_conn!(&mut conn, c => c.batch_execute("SELECT 1 FROM token_revocations"));
    assert!(old.is_err(), "the old table is gone");
}

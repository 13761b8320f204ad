//! Durable queued work: the `jobs` table, with its claim and lease written once for every kind.
//!
//! [`enqueue`] takes the caller's connection, so a job is written in the transaction of the change
//! that calls for it (it exists exactly when the change does). A worker [`claim`]s due jobs of its
//! kinds with a lease of `lease` seconds (each claim counts as an attempt); then either
//! [`complete`]s one (the row goes) or [`fail`]s it: retried after [`backoff`], or dead once it has
//! had its `max_attempts` (the row is kept, counted in `tokenvault_job_dead{job}`). A worker that
//! dies holding a job leaves a lease that runs out; another worker then claims it.
//!
//! PostgreSQL claims with `FOR UPDATE SKIP LOCKED` (instances never wait on each other's claims);
//! SQLite (one instance) with the same single `UPDATE … RETURNING`, atomic there.

use crate::db::models::jobs::{self as rows, Held, JobRow, NewJob};
use crate::db::Conn;
use crate::error::AppResult;

/// Seconds before attempt `attempts + 1` after `attempts` failed ones: 1 minute, doubling, at
/// most 2 hours.
pub fn backoff(attempts: i64) -> i64 {
    (60i64 << (attempts - 1).clamp(0, 7)).min(7200)
}

/// Queue a job of `kind` with its `payload` (no secret in clear: seal it first), due at `run_at`,
/// given up after `max_attempts`. Its id.
pub fn enqueue(conn: &mut Conn, kind: &str, payload: &str, max_attempts: i64, run_at: i64) -> AppResult<i64> {
    let created_at = crate::util::now();
    Ok(rows::insert(conn, &NewJob { kind, payload, max_attempts, run_at, created_at })?)
}

/// Lease up to `limit` jobs of `kinds` due at `now` to `worker` for `lease` seconds.
pub fn claim(
    conn: &mut Conn,
    kinds: &[&str],
    worker: &str,
    lease: i64,
    limit: i64,
    now: i64,
) -> AppResult<Vec<JobRow>> {
    let mut claimed = Vec::new();
    for kind in kinds {
        let left = limit - claimed.len() as i64;
        if left <= 0 {
            break;
        }
        claimed.extend(rows::claim(conn, kind, worker, now, now + lease, left)?);
    }
    Ok(claimed)
}

/// `job` is done. False when `worker` no longer held it (its lease ran out and another took it).
pub fn complete(conn: &mut Conn, job: Held, worker: &str) -> AppResult<bool> {
    Ok(rows::delete_held(conn, job.id, worker)?)
}

/// What became of a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Tried again from this time.
    RetryAt(i64),
    /// It had its attempts: kept as dead.
    Dead,
    /// `worker` no longer held it.
    NotHeld,
}

/// `job`'s attempt failed with `error` (a reason, never a secret): retried after
/// `backoff(attempts)`, or dead after its last attempt.
pub fn fail(
    conn: &mut Conn,
    job: Held,
    worker: &str,
    error: &str,
    backoff: fn(i64) -> i64,
    now: i64,
) -> AppResult<Failed> {
    let retry_at = (job.attempts < job.max_attempts).then(|| now + backoff(job.attempts));
    if !rows::release_failed(conn, job.id, worker, error, retry_at, now)? {
        return Ok(Failed::NotHeld);
    }
    Ok(retry_at.map_or(Failed::Dead, Failed::RetryAt))
}

/// The figures of every kind with rows: waiting, oldest waiting's `created_at`, dead.
pub fn figures(conn: &mut Conn) -> AppResult<Vec<rows::KindFigures>> {
    Ok(rows::figures(conn)?)
}

/// A worker id for this process: unique per start, so a restarted process does not take its old
/// leases for its own.
pub fn worker_id() -> String {
    format!("{}-{}", std::process::id(), crate::util::random_token(6))
}

//! `jobs`: durable queued background work, the rows under `crate::jobs::queue` (which owns the
//! rules: leases, backoff, dead jobs). The claim is the one statement that differs by backend:
//! PostgreSQL skips the rows another transaction is claiming (`FOR UPDATE SKIP LOCKED`); SQLite
//! has one writer at a time, so the same `UPDATE … RETURNING` is atomic there as it stands.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::schema::jobs;
use crate::db::Conn;

/// A queued job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = jobs)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub payload: String,
    /// Attempts started (claims) so far, this one included once claimed.
    pub attempts: i64,
    pub max_attempts: i64,
    /// Due from then (unless leased).
    pub run_at: i64,
    pub locked_by: Option<String>,
    pub locked_until: Option<i64>,
    pub last_error: Option<String>,
    pub dead_at: Option<i64>,
    pub created_at: i64,
}

/// What a worker needs to finish or fail a job it claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub id: i64,
    /// Attempts started, the one held included.
    pub attempts: i64,
    pub max_attempts: i64,
}

impl JobRow {
    pub fn held(&self) -> Held {
        Held { id: self.id, attempts: self.attempts, max_attempts: self.max_attempts }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = jobs)]
pub struct NewJob<'a> {
    pub kind: &'a str,
    pub payload: &'a str,
    pub max_attempts: i64,
    pub run_at: i64,
    pub created_at: i64,
}

pub fn insert(conn: &mut Conn, new: &NewJob<'_>) -> QueryResult<i64> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(jobs::table).values(new).returning(jobs::id).get_result(conn)
    })
}

const CLAIM: &str = "UPDATE jobs SET locked_by = {1}, locked_until = {2}, attempts = attempts + 1 \
     WHERE id IN (SELECT id FROM jobs WHERE kind = {3} AND dead_at IS NULL AND run_at <= {4} \
     AND (locked_until IS NULL OR locked_until <= {4}) ORDER BY run_at, id LIMIT {5}{lock}) \
     RETURNING id, kind, payload, attempts, max_attempts, run_at, locked_by, locked_until, last_error, dead_at, \
     created_at";

/// The claim statement for a backend: `$n` placeholders and row locks on PostgreSQL, `?` on SQLite
/// (whose binds are positional: `now` is bound twice there).
fn claim_sql(postgres: bool) -> String {
    let mut sql = CLAIM.to_string();
    for n in 1..=5 {
        sql = sql.replace(&format!("{{{n}}}"), &if postgres { format!("${n}") } else { "?".into() });
    }
    sql.replace("{lock}", if postgres { " FOR UPDATE SKIP LOCKED" } else { "" })
}

/// Lease up to `limit` due jobs of `kind` to `worker` until `until`: each is counted as an attempt.
/// Two callers never get the same row while its lease runs.
pub fn claim(conn: &mut Conn, kind: &str, worker: &str, now: i64, until: i64, limit: i64) -> QueryResult<Vec<JobRow>> {
    match conn {
        Conn::Postgres(c) => diesel::sql_query(claim_sql(true))
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(until)
            .bind::<Text, _>(kind)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(&mut **c),
        Conn::Sqlite(c) => diesel::sql_query(claim_sql(false))
            .bind::<Text, _>(worker)
            .bind::<BigInt, _>(until)
            .bind::<Text, _>(kind)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(now)
            .bind::<BigInt, _>(limit)
            .load(&mut **c),
    }
}

/// The job `id` is done: its row goes — if `worker` still holds it. Whether it did.
pub fn delete_held(conn: &mut Conn, id: i64, worker: &str) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        let n = diesel::delete(jobs::table.filter(jobs::id.eq(id)).filter(jobs::locked_by.eq(worker))).execute(conn)?;
        Ok(n == 1)
    })
}

/// A failed attempt of `id` held by `worker`: released to run again at `retry_at`, or (None) dead
/// from `now`. Whether `worker` still held it.
pub fn release_failed(
    conn: &mut Conn,
    id: i64,
    worker: &str,
    error: &str,
    retry_at: Option<i64>,
    now: i64,
) -> QueryResult<bool> {
    crate::on_conn!(conn, conn => {
        let n = diesel::update(jobs::table.filter(jobs::id.eq(id)).filter(jobs::locked_by.eq(worker)))
            .set((
                jobs::locked_by.eq(None::<String>),
                jobs::locked_until.eq(None::<i64>),
                jobs::last_error.eq(error),
                jobs::run_at.eq(retry_at.unwrap_or(now)),
                jobs::dead_at.eq(if retry_at.is_some() { None } else { Some(now) }),
            ))
            .execute(conn)?;
        Ok(n == 1)
    })
}

/// One kind's figures: jobs waiting (not dead), the oldest one's `created_at`, dead jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindFigures {
    pub kind: String,
    pub waiting: i64,
    pub oldest: Option<i64>,
    pub dead: i64,
}

/// The figures of every kind with rows.
pub fn figures(conn: &mut Conn) -> QueryResult<Vec<KindFigures>> {
    let waiting: Vec<(String, i64, Option<i64>)> = crate::on_conn!(conn, conn => {
        jobs::table
            .filter(jobs::dead_at.is_null())
            .group_by(jobs::kind)
            .select((jobs::kind, diesel::dsl::count_star(), diesel::dsl::min(jobs::created_at)))
            .load(conn)
    })?;
    let dead: Vec<(String, i64)> = crate::on_conn!(conn, conn => {
        jobs::table
            .filter(jobs::dead_at.is_not_null())
            .group_by(jobs::kind)
            .select((jobs::kind, diesel::dsl::count_star()))
            .load(conn)
    })?;
    let mut out: Vec<KindFigures> =
        waiting.into_iter().map(|(kind, waiting, oldest)| KindFigures { kind, waiting, oldest, dead: 0 }).collect();
    for (kind, n) in dead {
        match out.iter_mut().find(|f| f.kind == kind) {
            Some(f) => f.dead = n,
            None => out.push(KindFigures { kind, waiting: 0, oldest: None, dead: n }),
        }
    }
    Ok(out)
}

/// Every row of `kind` (tests, the operator).
pub fn all_of(conn: &mut Conn, kind: &str) -> QueryResult<Vec<JobRow>> {
    crate::on_conn!(conn, conn => {
        jobs::table.filter(jobs::kind.eq(kind)).order(jobs::id.asc()).select(JobRow::as_select()).load(conn)
    })
}

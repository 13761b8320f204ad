//! Token revocations: tokens tokenvault replaced or threw away, to revoke at the provider (worked
//! by `oauth::retire`). They are jobs of kind [`KIND`] in the durable `jobs` table
//! (`crate::jobs::queue`, which claims, leases, retries and gives them up); this module is their
//! payload — who they were whose, and the sealed tokens, in hex — and the reads and writes key
//! rotation needs.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::db::models::jobs::{self as job_rows, JobRow};
use crate::db::schema::jobs;
use crate::db::Conn;

/// Their kind in the `jobs` table (also the `job` label of their metrics).
pub const KIND: &str = "token_revocations";

/// A token pair to revoke, sealed (`Aad::RetiredToken`).
#[derive(Debug)]
pub struct NewRevocation<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub account_id: &'a str,
    pub access_token: &'a [u8],
    pub refresh_token: Option<&'a [u8]>,
    pub next_attempt_at: i64,
    /// Attempts before it is given up.
    pub max_attempts: i64,
}

/// A queued revocation, from its job row.
#[derive(Debug, Clone)]
pub struct Revocation {
    /// The job's id.
    pub id: i64,
    pub user_id: i64,
    pub service: String,
    pub account_id: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    /// Attempts started so far.
    pub attempts: i64,
    pub max_attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

/// The job's payload (JSON; the migration from `token_revocations` writes the same shape).
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    user_id: i64,
    service: String,
    account_id: String,
    /// Hex of the sealed bytes (either case).
    access_token: String,
    refresh_token: Option<String>,
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

fn payload(user_id: i64, service: &str, account_id: &str, access: &[u8], refresh: Option<&[u8]>) -> String {
    serde_json::to_string(&Payload {
        user_id,
        service: service.to_string(),
        account_id: account_id.to_string(),
        access_token: crate::util::hex(access),
        refresh_token: refresh.map(crate::util::hex),
    })
    .expect("a payload serializes")
}

impl Revocation {
    /// The claim a worker holds on it.
    pub fn held(&self) -> job_rows::Held {
        job_rows::Held { id: self.id, attempts: self.attempts, max_attempts: self.max_attempts }
    }

    /// A job row of [`KIND`] read as a revocation; None when its payload does not parse.
    pub fn from_job(row: &JobRow) -> Option<Revocation> {
        let p: Payload = serde_json::from_str(&row.payload).ok()?;
        Some(Revocation {
            id: row.id,
            user_id: p.user_id,
            service: p.service,
            account_id: p.account_id,
            access_token: unhex(&p.access_token)?,
            refresh_token: match p.refresh_token {
                Some(r) => Some(unhex(&r)?),
                None => None,
            },
            attempts: row.attempts,
            max_attempts: row.max_attempts,
            next_attempt_at: row.run_at,
            created_at: row.created_at,
        })
    }
}

/// Queue one, on the caller's connection (in its transaction).
pub fn insert(conn: &mut Conn, new: &NewRevocation<'_>) -> crate::error::AppResult<i64> {
    let text = payload(new.user_id, new.service, new.account_id, new.access_token, new.refresh_token);
    crate::jobs::queue::enqueue(conn, KIND, &text, new.max_attempts, new.next_attempt_at)
}

/// Every one (given up ones too: they still hold sealed tokens), for key rotation and tests.
pub fn all(conn: &mut Conn) -> QueryResult<Vec<Revocation>> {
    Ok(job_rows::all_of(conn, KIND)?.iter().filter_map(Revocation::from_job).collect())
}

/// Key rotation: the tokens of `row` sealed again.
pub fn set_tokens(conn: &mut Conn, row: &Revocation, access: &[u8], refresh: Option<&[u8]>) -> QueryResult<usize> {
    let text = payload(row.user_id, &row.service, &row.account_id, access, refresh);
    crate::on_conn!(conn, conn => {
        diesel::update(jobs::table.filter(jobs::id.eq(row.id)).filter(jobs::kind.eq(KIND)))
            .set(jobs::payload.eq(&text))
            .execute(conn)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trips_in_either_case() {
        let bytes = [0u8, 1, 0xab, 0xff, 0x10];
        assert_eq!(super::unhex(&crate::util::hex(&bytes)).unwrap(), bytes);
        assert_eq!(super::unhex("00AbFF").unwrap(), [0, 0xab, 0xff]);
        assert_eq!(super::unhex("0"), None);
        assert_eq!(super::unhex("zz"), None);
    }
}

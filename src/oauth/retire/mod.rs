//! Revoking what tokenvault no longer keeps (issue 19): the tokens a reconnect, an add-account
//! answered by an account connected already or a scope upgrade replaced, and those a connect
//! obtained and then threw away (another account on a pinned reconnect, an id_token or account
//! call that failed, a connection deleted meanwhile). Left alone they would stay live at the
//! provider — valid for hours or months — though the user believes they are gone.
//!
//! A replaced pair is queued (a `token_revocations` job of `crate::jobs::queue`) **in the
//! transaction that swaps the tokens** (`store::save_new`), so it exists exactly when the new tokens are stored; a thrown-away pair is
//! queued right after the connect gives up on it ([`discard`]). The [`Worker`] (started with the
//! server) revokes them in the background with the provider's revocation call
//! (`revoke::call`): retried with exponential backoff ([`backoff`]) at most [`MAX_ATTEMPTS`]
//! times, then given up with an error in the log. Nothing is queued for a provider whose
//! revocation ends the account's whole grant (`revocation_ends_grant`, Google): that would end the
//! new tokens, or another connection's, too.
//!
//! The tokens are sealed under the vault cipher (`Aad::RetiredToken`) and re-sealed by key
//! rotation; no log line names a token (the provider call's failures carry a status or an HTTP
//! error, never a body or a URL). A revocation given up stays in the jobs table as dead
//! (`tokenvault_job_dead{job="token_revocations"}`).

pub mod pending;

use pending::aad;
pub use pending::{backoff, enqueue, replaced, MAX_ATTEMPTS};

use std::sync::Arc;
use std::time::Duration;

use crate::db::models::jobs::Held;
use crate::db::models::revocations::{self, Revocation};
use crate::db::Db;
use crate::error::AppResult;
use crate::jobs::queue::{self, Failed};
use crate::oauth::http::Outbound;
use crate::oauth::managed::LiveCatalog;
use crate::oauth::providers::{Provider, RevokeStyle};
use crate::oauth::revoke::{self, CallFailed, Token};
use crate::oauth::store::Tokens;
use crate::oauth::tokens;
use crate::util::{now, Secret};
use crate::vault::store::client_credentials;
use crate::vault::Cipher;

/// How often the queue is read without a wake-up (rows of other instances, retries coming due).
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Revocations worked (concurrently) per round.
const BATCH: i64 = 16;

/// Queue the tokens of an answer that is not stored (their own transaction), if `provider`'s are
/// revoked at all. A failure is logged, not returned: the caller is reporting another outcome.
pub async fn discard(store: Tokens<'_>, provider: &Provider, user_id: i64, access: &Secret, refresh: Option<&Secret>) {
    if !provider.revokes_retired_tokens() {
        return;
    }
    let (cipher, service) = (store.cipher.clone(), provider.name.clone());
    let (access, refresh) = (access.clone(), refresh.cloned());
    let queued = store
        .db
        .write(store.ledger(), move |tx| enqueue(tx, &cipher, (user_id, &service, ""), &access, refresh.as_ref()))
        .await;
    match queued {
        Ok(committed) => committed.settle(store.effects()),
        Err(e) => {
            tracing::error!(service = %provider.name, user_id, error = %e, "could not queue the revocation of tokens that were not stored")
        }
    }
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// Revoked, or found dead already: the row goes.
    Done,
    /// Nothing can be done (the provider is gone, the tokens do not open): the row goes.
    Dropped(String),
    /// Try again later.
    Failed(String),
}

/// The background worker (run as the [`RetireJob`] by `crate::jobs`).
#[derive(Clone)]
pub struct Worker {
    pub db: Db,
    pub cipher: Arc<Cipher>,
    pub http: Outbound,
    pub catalog: Arc<LiveCatalog>,
    /// Rung when a unit of work queued a job (`crate::changes::Effects::jobs`).
    pub queue: Arc<crate::jobs::Wake>,
    /// `default_token_lifetime` (a Dropbox refresh before its revocation).
    pub default_lifetime: i64,
    /// Seconds a claimed row is this instance's: longer than an attempt can take.
    pub lease: i64,
    /// This process's name on the leases it takes (`jobs::queue::worker_id`).
    pub worker: String,
}

/// The worker as a background job (`crate::jobs`): a round at start, at once again while rounds
/// come back full, at a wake-up ([`crate::jobs::Wake`], rung when a unit of work queued one) and every [`POLL_INTERVAL`] otherwise.
pub struct RetireJob {
    worker: Worker,
}

/// The job's name (metrics, logs).
pub const JOB: &str = revocations::KIND;

#[rocket::async_trait]
impl crate::jobs::Job for RetireJob {
    fn name(&self) -> &'static str {
        JOB
    }

    async fn run(&mut self, _stop: &tokio_util::sync::CancellationToken) -> Result<crate::jobs::Next, String> {
        match self.worker.round().await {
            Ok(n) if n as i64 >= BATCH => Ok(crate::jobs::Next::Again),
            Ok(_) => Ok(crate::jobs::Next::Idle),
            Err(e) => Err(format!("token revocation round failed: {e}")),
        }
    }

    fn woken(&mut self) -> crate::jobs::BoxFuture<'_, ()> {
        self.worker.queue.notified()
    }
}

impl Worker {
    /// This worker as a background job.
    pub fn into_job(self) -> RetireJob {
        RetireJob { worker: self }
    }

    /// One round: claim the due rows, attempt each (concurrently), record the outcomes. How many
    /// were attempted.
    pub async fn round(&self) -> AppResult<usize> {
        let (lease, worker) = (self.lease, self.worker.clone());
        let claimed: Vec<Revocation> = self
            .db
            .run(move |conn| {
                let mut claimed = Vec::new();
                for job in queue::claim(conn, &[revocations::KIND], &worker, lease, BATCH, now())? {
                    match Revocation::from_job(&job) {
                        Some(row) => claimed.push(row),
                        None => {
                            tracing::error!(job = job.id, "a queued token revocation cannot be read; given up");
                            let dead = Held { max_attempts: job.attempts, ..job.held() };
                            queue::fail(conn, dead, &worker, "unreadable payload", backoff, now())?;
                        }
                    }
                }
                Ok(claimed)
            })
            .await?;
        let n = claimed.len();
        let attempts = claimed.into_iter().map(|row| async move {
            let outcome = self.attempt(&row).await;
            (row, outcome)
        });
        for (row, outcome) in futures_util::future::join_all(attempts).await {
            self.record(row, outcome).await?;
        }
        Ok(n)
    }

    async fn record(&self, row: Revocation, outcome: Attempt) -> AppResult<()> {
        let (service, user_id, attempts) = (row.service.as_str(), row.user_id, row.attempts);
        match &outcome {
            Attempt::Done => {
                tracing::info!(service, user_id, "a token tokenvault no longer keeps was revoked at the provider")
            }
            Attempt::Dropped(why) => {
                tracing::error!(service, user_id, reason = %why, "a token tokenvault no longer keeps cannot be revoked; it stays valid at the provider until it expires")
            }
            Attempt::Failed(why) if attempts >= MAX_ATTEMPTS => {
                tracing::error!(service, user_id, attempts, reason = %why, "gave up revoking a token tokenvault no longer keeps; it stays valid at the provider until it expires")
            }
            Attempt::Failed(why) => {
                tracing::warn!(service, user_id, attempts, reason = %why, "revoking a token tokenvault no longer keeps failed; retrying later")
            }
        }
        let (held, worker) = (row.held(), self.worker.clone());
        self.db
            .run(move |conn| {
                let kept = match outcome {
                    Attempt::Failed(why) => queue::fail(conn, held, &worker, &why, backoff, now())? != Failed::NotHeld,
                    _ => queue::complete(conn, held, &worker)?,
                };
                if !kept {
                    tracing::warn!(service = %row.service, user_id, "a token revocation outlived its lease; another attempt follows");
                }
                Ok(())
            })
            .await
    }

    /// Revoke one row's tokens in the provider's style.
    async fn attempt(&self, row: &Revocation) -> Attempt {
        // A disabled provider's replaced tokens are still revoked.
        let Some(provider) = self.catalog.current().get_any(&row.service) else {
            return Attempt::Dropped("the provider is no longer configured".into());
        };
        if !provider.revokes_retired_tokens() {
            return Attempt::Dropped("the provider's tokens are no longer revoked one by one".into());
        }
        let (user_id, service, account) = (row.user_id, row.service.as_str(), row.account_id.as_str());
        let opened =
            self.cipher.open(&row.access_token, aad(user_id, service, account, "access_token")).and_then(|access| {
                let refresh = match &row.refresh_token {
                    Some(r) => Some(self.cipher.open(r, aad(user_id, service, account, "refresh_token"))?),
                    None => None,
                };
                Ok((access, refresh))
            });
        let Ok((access, refresh)) = opened else {
            return Attempt::Dropped("the queued tokens could not be decrypted".into());
        };
        let (cipher, svc) = (self.cipher.clone(), row.service.clone());
        let creds = match self.db.run(move |conn| client_credentials(conn, &cipher, &svc)).await {
            Ok(Some(creds)) => creds,
            Ok(None) => return Attempt::Failed("tokenvault has no client credentials for this provider".into()),
            Err(e) => return Attempt::Failed(e.user_message()),
        };
        let gone = |e: &CallFailed| {
            // GitHub answers 404 for a token it does not know (revoked, or expired unused).
            provider.revoke_style == RevokeStyle::Github && e.status == Some(404)
        };
        let result = match (provider.revoke_style, refresh.as_ref()) {
            // Dropbox (and the bearer style) revoke with a valid access token: get one.
            (RevokeStyle::Dropbox | RevokeStyle::Bearer, Some(refresh)) => {
                match tokens::refresh(&self.http, &provider, &creds, refresh, self.default_lifetime, &[]).await {
                    Ok(fresh) => revoke::call(&self.http, &provider, &creds, Token::Access(&fresh.access_token)).await,
                    // The refresh token is dead already: nothing is live.
                    Err(e) if e.is_invalid_grant() => return Attempt::Done,
                    Err(e) => return Attempt::Failed(format!("refreshing before the revocation: {e}")),
                }
            }
            (RevokeStyle::Rfc7009 | RevokeStyle::Json, Some(refresh)) => {
                revoke::call(&self.http, &provider, &creds, Token::Refresh(refresh)).await
            }
            _ => revoke::call(&self.http, &provider, &creds, Token::Access(&access)).await,
        };
        match result {
            Ok(()) => Attempt::Done,
            Err(e) if gone(&e) => Attempt::Done,
            Err(e) => Attempt::Failed(e.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::tokens::TokenSet;

    fn set(access: &str, refresh: Option<&str>) -> TokenSet {
        TokenSet {
            access_token: Secret::from(access),
            refresh_token: refresh.map(Secret::from),
            token_type: "bearer".into(),
            scopes: Vec::new(),
            expires_at: None,
            obtained_at: 0,
            refresh_expires_at: None,
        }
    }

    #[test]
    fn what_a_new_token_set_retires() {
        let (a1, r1) = (Secret::from("AT-1"), Secret::from("RT-1"));
        assert!(replaced(&a1, Some(&r1), &set("AT-2", Some("RT-2"))), "a new refresh token");
        assert!(replaced(&a1, Some(&r1), &set("AT-2", None)), "none: the old one would be lost, not kept");
        assert!(!replaced(&a1, Some(&r1), &set("AT-2", Some("RT-1"))), "the same grant goes on");
        assert!(replaced(&a1, None, &set("AT-2", None)), "GitHub: a new access token");
        assert!(!replaced(&a1, None, &set("AT-1", None)), "the same access token");
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_two_hours() {
        let waits: Vec<i64> = (1..=MAX_ATTEMPTS).map(backoff).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3840, 7200]);
        assert_eq!(backoff(0), 60);
        assert_eq!(backoff(40), 7200);
    }
}

//! The queue side of revocation, which the token store calls inside the transaction that swaps
//! tokens: whether new tokens retire old ones ([`replaced`]) and the sealed job that says so
//! ([`enqueue`]). It imports nothing of `oauth` but the token set: the store depends on it, not
//! on the worker that revokes (`super`), which calls the provider.

use crate::changes::Tx;
use crate::db::models::revocations::{self, NewRevocation};
use crate::error::AppResult;
use crate::jobs::queue;
use crate::oauth::tokens::TokenSet;
use crate::util::{now, ExposeSecret, Secret};
use crate::vault::{Aad, Cipher};

/// Attempts before a revocation is given up (the last about two hours after the first, with
/// [`backoff`]).
pub const MAX_ATTEMPTS: i64 = 8;

/// Seconds before attempt `attempts + 1` after `attempts` failed ones: 1 minute, doubling, at
/// most 2 hours.
pub fn backoff(attempts: i64) -> i64 {
    queue::backoff(attempts)
}

/// Whether writing `new` over a row that held `old_access`/`old_refresh` retires the old ones:
/// not when the grant goes on in the new tokens (the provider answered with the same refresh
/// token or — without one — the same access token).
pub fn replaced(old_access: &Secret, old_refresh: Option<&Secret>, new: &TokenSet) -> bool {
    let same = |a: &Secret, b: Option<&Secret>| b.is_some_and(|b| a.expose_secret() == b.expose_secret());
    match old_refresh {
        Some(old) => !same(old, new.refresh_token.as_ref()),
        None => !same(old_access, Some(&new.access_token)),
    }
}

pub(super) fn aad<'a>(user_id: i64, service: &'a str, account: &'a str, column: &'a str) -> Aad<'a> {
    Aad::RetiredToken { user_id, service, account, column }
}

/// Queue `access` (and `refresh`) of the user's `account` at `service` for revocation; call inside
/// the transaction that drops them.
pub fn enqueue(
    tx: &mut Tx<'_>,
    cipher: &Cipher,
    (user_id, service, account): (i64, &str, &str),
    access: &Secret,
    refresh: Option<&Secret>,
) -> AppResult<()> {
    let sealed_access = cipher.seal_str(access.expose_secret(), aad(user_id, service, account, "access_token"));
    let sealed_refresh =
        refresh.map(|r| cipher.seal_str(r.expose_secret(), aad(user_id, service, account, "refresh_token")));
    revocations::insert(
        tx.conn(),
        &NewRevocation {
            user_id,
            service,
            account_id: account,
            access_token: &sealed_access,
            refresh_token: sealed_refresh.as_deref(),
            next_attempt_at: now(),
            max_attempts: MAX_ATTEMPTS,
        },
    )?;
    tx.job_queued();
    Ok(())
}

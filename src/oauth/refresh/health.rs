//! A connection's health between refreshes: the reason codes of `degraded` and
//! `reconnect_required`, and the capped exponential backoff of a degraded connection (pure
//! functions; the state is stored by `outcome`).
//!
//! A transient failure (5xx, timeout, network, garbage, 429) makes the connection `degraded` with
//! attempt `n` and a next attempt `backoff(n)` later (30 s, 60 s, 120 s … at most an hour), or
//! later still when the provider's `Retry-After` says so. Until then no instance gets the refresh
//! lease (`connections::take_refresh_lease` checks `next_attempt_at`), so the provider is asked at
//! most once per backoff step whatever the traffic; callers get the stored token while it is
//! valid, else a 503 with `Retry-After` (`AccessError::BackingOff`). The next success makes it
//! `active` again, reason and attempts cleared.

use crate::db::models::connections::{Connection, ConnectionStatus};
use crate::oauth::tokens::TokenError;

/// The first step of the backoff, in seconds.
pub const BACKOFF_BASE: i64 = 30;
/// The longest step.
pub const BACKOFF_CAP: i64 = 3600;
/// The longest `Retry-After` honoured (a provider asking for more is retried after a day).
pub const RETRY_AFTER_CAP: i64 = 86_400;

/// `status_reason` of a connection that needs a reconnect.
pub mod reason {
    pub const INVALID_GRANT: &str = "invalid_grant";
    pub const NO_REFRESH_TOKEN: &str = "no_refresh_token";
    pub const REFRESH_TOKEN_EXPIRED: &str = "refresh_token_expired";
    /// The grant was revoked at the provider (a provider that says so apart from
    /// `invalid_grant`; reserved for the webhooks' `connection.revoked`).
    pub const REVOKED: &str = "revoked";
}

/// The wait after the `attempt`-th failure in a row (1-based): doubling from [`BACKOFF_BASE`],
/// at most [`BACKOFF_CAP`].
pub fn backoff(attempt: i64) -> i64 {
    let doublings = attempt.saturating_sub(1).clamp(0, 20) as u32;
    BACKOFF_BASE.saturating_mul(1i64 << doublings).min(BACKOFF_CAP)
}

/// Up to a tenth more than `step`, different for each connection and attempt (a provider's outage
/// degrades many connections at once: without it they would all come back in the same second),
/// but the same every time it is computed for them (no randomness to make a test or a retry
/// unpredictable).
pub fn jitter(step: i64, connection_id: i64, attempt: i64) -> i64 {
    // splitmix64 of (id, attempt): a well-spread value from two small integers.
    let mut z = (connection_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (attempt as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let spread = (step / 10).max(0) as u64;
    if spread == 0 {
        return 0;
    }
    (z % (spread + 1)) as i64
}

/// When connection `connection_id`'s next attempt may be made after its `attempt`-th failure at
/// `now`: the backoff with its [`jitter`], or the provider's `Retry-After` (at most
/// [`RETRY_AFTER_CAP`]) when that is longer.
pub fn next_attempt_at(now: i64, attempt: i64, error: &TokenError, connection_id: i64) -> i64 {
    let retry_after = match error {
        TokenError::RateLimited(Some(secs)) => i64::try_from(*secs).unwrap_or(i64::MAX).min(RETRY_AFTER_CAP),
        _ => 0,
    };
    let step = backoff(attempt);
    now.saturating_add(step.saturating_add(jitter(step, connection_id, attempt)).max(retry_after))
}

/// The `status_reason` of a degraded connection: what went wrong, as a code (an OAuth error code
/// the provider sent is already sanitised by `tokens::sanitize_code`).
pub fn transient_reason(error: &TokenError) -> String {
    match error {
        TokenError::Rejected(code) => code.clone(),
        TokenError::GrantRevoked => "invalid_grant".into(),
        TokenError::Timeout => "timeout".into(),
        TokenError::Network(_) => "network".into(),
        TokenError::InvalidResponse(_) => "invalid_response".into(),
        TokenError::RateLimited(_) => "rate_limited".into(),
    }
}

/// Seconds until a degraded connection may be refreshed again (`None`: it may now, or it is not
/// degraded).
pub fn wait(row: &Connection, now: i64) -> Option<u64> {
    if row.status != ConnectionStatus::Degraded {
        return None;
    }
    let next = row.next_attempt_at?;
    (next > now).then(|| (next - now) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_and_is_capped() {
        let steps: Vec<i64> = (1..=9).map(backoff).collect();
        assert_eq!(steps, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(0), 30);
        assert_eq!(backoff(i64::MAX), BACKOFF_CAP, "no overflow");
        assert_eq!(backoff(-3), 30);
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let t = 1_000_000;
        let at = |attempt, e: &TokenError| next_attempt_at(t, attempt, e, 7) - t;
        let j = |step, attempt| jitter(step, 7, attempt);
        assert_eq!(at(1, &TokenError::Timeout), 30 + j(30, 1));
        assert_eq!(at(1, &TokenError::RateLimited(Some(120))), 120);
        assert_eq!(at(3, &TokenError::RateLimited(Some(5))), 120 + j(120, 3), "the backoff is longer");
        assert_eq!(at(1, &TokenError::RateLimited(None)), 30 + j(30, 1));
        assert_eq!(at(1, &TokenError::RateLimited(Some(u64::MAX))), RETRY_AFTER_CAP);
    }

    #[test]
    fn jitter_spreads_connections_over_a_tenth_of_the_step() {
        let waits: Vec<i64> = (1..=1000).map(|id| jitter(3600, id, 5)).collect();
        assert!(waits.iter().all(|w| (0..=360).contains(w)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 300, "1000 connections land on {} different seconds", distinct.len());
        assert_eq!(jitter(3600, 42, 5), jitter(3600, 42, 5), "the same for the same connection and attempt");
        assert_eq!(jitter(5, 42, 1), 0, "no jitter on steps under 10 s");
    }

    #[test]
    fn reasons_are_codes() {
        assert_eq!(
            transient_reason(&TokenError::Rejected("temporarily_unavailable".into())),
            "temporarily_unavailable"
        );
        assert_eq!(transient_reason(&TokenError::Timeout), "timeout");
        assert_eq!(transient_reason(&TokenError::Network("reset by 10.0.0.1".into())), "network");
        assert_eq!(transient_reason(&TokenError::InvalidResponse("at `x`".into())), "invalid_response");
        assert_eq!(transient_reason(&TokenError::RateLimited(Some(3))), "rate_limited");
    }

    #[test]
    fn only_a_degraded_connection_waits() {
        let mut row = Connection::for_tests(1, "demo");
        row.next_attempt_at = Some(110);
        assert_eq!(wait(&row, 100), None, "active");
        row.status = ConnectionStatus::Degraded;
        assert_eq!(wait(&row, 100), Some(10));
        assert_eq!(wait(&row, 110), None, "due");
        row.status = ConnectionStatus::ReconnectRequired;
        assert_eq!(wait(&row, 100), None);
    }
}

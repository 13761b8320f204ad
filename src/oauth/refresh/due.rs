//! When a refresh is due: proactively (the margin) or after a 401 (the cooldown).

/// Whether a token obtained at `obtained_at` and expiring at `expires_at` (`None`: never) is due
/// for a proactive refresh at `now`: when it expires within `refresh_margin` seconds, the margin
/// being at most half of its lifetime — a 20 s token is refreshed after 10 s, not on every use.
pub fn refresh_due(obtained_at: i64, expires_at: Option<i64>, refresh_margin: i64, now: i64) -> bool {
    let Some(expires_at) = expires_at else { return false };
    let half_life = expires_at.saturating_sub(obtained_at).max(0) / 2;
    expires_at.saturating_sub(refresh_margin.min(half_life)) <= now
}

/// Whether a 401 may be answered with a refresh at `now`, the connection's last refresh after a
/// 401 having been attempted at `last_attempt` (`None`: never since it was made): only if that was
/// at least `cooldown` seconds ago. A newer one (in any instance) got the token the provider
/// refuses now, and another would be refused the same way.
pub fn may_refresh_after_401(last_attempt: Option<i64>, cooldown: i64, now: i64) -> bool {
    last_attempt.is_none_or(|t| t <= cooldown_bound(cooldown, now))
}

/// The latest refresh attempt that still allows a refresh after a 401 at `now`.
pub(super) fn cooldown_bound(cooldown: i64, now: i64) -> i64 {
    now.saturating_sub(cooldown)
}

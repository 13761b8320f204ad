//! Login throttling per client IP and per account (GCRA rate limits from `governor`), answered
//! with the same 429 whichever limit was hit and whether or not the account exists.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub struct LoginThrottle {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_account: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginThrottle")
    }
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least 1"))
}

impl LoginThrottle {
    pub fn new(per_ip: u32, per_account: u32) -> LoginThrottle {
        LoginThrottle {
            per_ip: RateLimiter::keyed(per_minute(per_ip)),
            per_account: RateLimiter::keyed(per_minute(per_account)),
        }
    }

    fn tidy(&self) {
        if self.per_ip.len() > 50_000 {
            self.per_ip.retain_recent();
        }
        if self.per_account.len() > 50_000 {
            self.per_account.retain_recent();
        }
    }

    /// Whether this sign-in attempt may go ahead. Both limits are charged.
    pub fn allow_login(&self, ip: Option<IpAddr>, username: &str) -> bool {
        self.tidy();
        let ip_ok = ip.map(|ip| self.per_ip.check_key(&ip).is_ok()).unwrap_or(true);
        let account_ok = self.per_account.check_key(&username.trim().to_lowercase()).is_ok();
        ip_ok && account_ok
    }

    /// Whether a sign-up from this IP may go ahead (charged to the per-IP limit).
    pub fn allow_signup(&self, ip: Option<IpAddr>) -> bool {
        self.tidy();
        ip.map(|ip| self.per_ip.check_key(&ip).is_ok()).unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_and_per_account() {
        let t = LoginThrottle::new(4, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| t.allow_login(Some(ip), "alice")));
        assert!(!t.allow_login(Some(other), "Alice"), "per account, whatever the IP or case");
        assert!(t.allow_login(Some(ip), "bob"));
        assert!(!t.allow_login(Some(ip), "carol"), "per IP, whatever the account");
    }
}

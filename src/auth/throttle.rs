//! Login throttling: a limit per client address (every attempt), a limit per account (failed
//! attempts: charged before the password check, given back on success), and — for browsers that
//! signed in to that account before and carry its device cookie (`auth::device`) — a limit per
//! device on its own failures instead of the account's (OWASP "Slow Down Online Guessing Attacks
//! with Device Cookies"). Refusals are the same 429 whichever limit was hit and whether or not the
//! account exists.
//!
//! The state is bounded whatever clients send:
//! - keys are short: the caller refuses usernames longer than `accounts::MAX_USERNAME_LEN` before
//!   calling in, usernames are normalised (`accounts::throttle_key`), IPv6 addresses count per /64
//!   (one customer's network), IPv4-mapped IPv6 as the IPv4 address;
//! - each map has a hard capacity. When a map is full, only entries that are back to their full
//!   allowance — indistinguishable from an absent entry — are evicted, so eviction can never reset
//!   a bucket that is in use, let alone one that is limited. If nothing can be evicted, a new key is
//!   refused (fail closed) rather than let through unthrottled;
//! - the per-address limit is checked first: an address over its limit never creates per-account
//!   or per-device state, and never reaches the password hasher.
//!
//! Every refusal and every device-cookie decision is logged with the client address and a short
//! hash of the normalised username (never the username or the password).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(60);
/// How often a full map may be swept for evictable entries (a sweep is O(capacity)).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why an attempt is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key's allowance is used up.
    Limited,
    /// The map is full of entries in use; no state can be created for a new key.
    Full,
}

/// GCRA ("leaky bucket as a meter") rate limits for many keys, in one bounded map. An entry holds
/// the key's theoretical arrival time (TAT); an entry whose TAT is in the past is at its full
/// allowance and may be dropped without changing any decision.
struct Limiter<K> {
    state: Mutex<LimiterState<K>>,
    /// Time one attempt costs: `PERIOD / per_period`.
    cost: Duration,
    /// How far the TAT may run ahead of now and still allow an attempt: `PERIOD - cost`.
    tolerance: Duration,
    capacity: usize,
}

struct LimiterState<K> {
    map: HashMap<K, Instant>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(per_period: u32, capacity: usize) -> Limiter<K> {
        let cost = PERIOD / per_period.max(1);
        Limiter {
            state: Mutex::new(LimiterState { map: HashMap::new(), last_sweep: None }),
            cost,
            tolerance: PERIOD.saturating_sub(cost),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charge one attempt to `key`.
    fn check(&self, key: &K, now: Instant) -> Result<(), Refusal> {
        let mut state = self.lock();
        let tat = match state.map.get(key) {
            Some(tat) => (*tat).max(now),
            None => {
                if state.map.len() >= self.capacity && !Self::sweep(&mut state, now) {
                    return Err(Refusal::Full);
                }
                now
            }
        };
        if tat.saturating_duration_since(now) > self.tolerance {
            return Err(Refusal::Limited);
        }
        state.map.insert(key.clone(), tat + self.cost);
        Ok(())
    }

    /// Whether `key`'s allowance is used up, without charging it.
    fn is_limited(&self, key: &K, now: Instant) -> bool {
        self.lock().map.get(key).is_some_and(|tat| tat.saturating_duration_since(now) > self.tolerance)
    }

    /// Give back one attempt charged to `key` (it turned out not to count).
    fn refund(&self, key: &K, now: Instant) {
        let mut state = self.lock();
        if let Some(tat) = state.map.get_mut(key) {
            match tat.checked_sub(self.cost) {
                Some(earlier) if earlier > now => *tat = earlier,
                _ => {
                    state.map.remove(key);
                }
            }
        }
    }

    fn forget(&self, key: &K) {
        self.lock().map.remove(key);
    }

    /// Drop the entries back at their full allowance (TAT not in the future); whether room was
    /// made. At most once per `SWEEP_EVERY`, so a map full of live entries costs no more than that.
    fn sweep(state: &mut LimiterState<K>, now: Instant) -> bool {
        if state.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY) {
            return false;
        }
        state.last_sweep = Some(now);
        let before = state.map.len();
        state.map.retain(|_, tat| *tat > now);
        state.map.len() < before
    }

    fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// The address a client is counted under: IPv4 as is, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// A short, stable hash of a normalised username for the log: correlates attempts on one account
/// without writing the username down.
pub fn user_tag(username_key: &str) -> String {
    crate::util::sha256_hex(&format!("tokenvault login throttle\0{username_key}"))[..16].to_string()
}

/// What the browser's device cookie says about this sign-in (see `auth::device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceClaim {
    /// No device cookie.
    None,
    /// A genuine device cookie for this username, with its nonce.
    Known(String),
    /// A device cookie that does not open, is expired, or names another username.
    Invalid,
}

/// How an admitted attempt is to be charged if it fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Charged to the account's limit already (a browser without a valid device cookie).
    Account,
    /// A trusted device: a failure is charged to this device only.
    Device(String),
}

pub struct LoginThrottle {
    per_ip: Limiter<IpAddr>,
    per_account: Limiter<String>,
    /// Failures per device cookie nonce; a nonce whose allowance is used up is locked out (its
    /// cookie counts as no cookie) until it has recovered.
    per_device: Limiter<String>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginThrottle")
    }
}

/// Map sizes, for `/metrics` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleSizes {
    pub addresses: usize,
    pub accounts: usize,
    pub devices: usize,
}

fn shown(ip: Option<IpAddr>) -> String {
    ip.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into())
}

impl LoginThrottle {
    /// `per_ip` sign-in and sign-up attempts per address per minute, `per_account` per username per
    /// minute (and per device, on its failures); at most `capacity` entries per map.
    pub fn new(per_ip: u32, per_account: u32, capacity: usize) -> LoginThrottle {
        LoginThrottle {
            per_ip: Limiter::new(per_ip, capacity),
            per_account: Limiter::new(per_account, capacity),
            per_device: Limiter::new(per_account, capacity),
        }
    }

    pub fn sizes(&self) -> ThrottleSizes {
        ThrottleSizes { addresses: self.per_ip.len(), accounts: self.per_account.len(), devices: self.per_device.len() }
    }

    /// Charge an attempt (sign-in, sign-up, password check) to the client's address. Call it
    /// before anything else is looked at.
    pub fn check_address(&self, ip: Option<IpAddr>, what: &str) -> Result<(), Refusal> {
        let Some(ip) = ip else { return Ok(()) };
        self.per_ip.check(&address_key(ip), Instant::now()).inspect_err(|refusal| {
            tracing::warn!(client = %ip, ?refusal, attempt = what, "throttle: refused by the per-address limit");
        })
    }

    /// Decide whether a sign-in attempt for `username_key` (normalised, at most
    /// `MAX_USERNAME_LEN` bytes) may go on to the password check, after [`Self::check_address`]
    /// passed. A browser with a genuine, not locked-out device cookie for this account is spared
    /// the account's limit; any other is charged to it.
    pub fn admit(&self, ip: Option<IpAddr>, username_key: &str, device: DeviceClaim) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let user = user_tag(username_key);
        let client = shown(ip);
        match device {
            DeviceClaim::Known(nonce) if !self.per_device.is_limited(&nonce, now) => {
                tracing::info!(%client, %user, "throttle: known device, spared the per-account limit");
                return Ok(Admission::Device(nonce));
            }
            DeviceClaim::Known(_) => {
                tracing::warn!(%client, %user, "throttle: device cookie locked out after failures; treated as none");
            }
            DeviceClaim::Invalid => {
                tracing::warn!(%client, %user, "throttle: invalid device cookie; treated as none");
            }
            DeviceClaim::None => {}
        }
        match self.per_account.check(&username_key.to_string(), now) {
            Ok(()) => Ok(Admission::Account),
            Err(refusal) => {
                tracing::warn!(%client, %user, ?refusal, "throttle: refused by the per-account limit");
                Err(refusal)
            }
        }
    }

    /// Record that an admitted attempt failed (wrong password or unknown user).
    pub fn failed(&self, ip: Option<IpAddr>, username_key: &str, admission: &Admission) {
        if let Admission::Device(nonce) = admission {
            let (client, user) = (shown(ip), user_tag(username_key));
            let now = Instant::now();
            match self.per_device.check(nonce, now) {
                Ok(()) if self.per_device.is_limited(nonce, now) => {
                    tracing::warn!(%client, %user, "throttle: device cookie locked out after its failures")
                }
                Ok(()) => tracing::info!(%client, %user, "throttle: failure charged to the device"),
                // Only a genuine cookie for this account gets here, so its holder knew the
                // password before: not counting one failure does not open the account to guessing.
                Err(refusal) => tracing::warn!(%client, %user, ?refusal, "throttle: device failure not recorded"),
            }
        }
    }

    /// Record that an admitted attempt was not checked after all (the hasher was busy): it does
    /// not count against the account.
    pub fn unchecked(&self, username_key: &str, admission: &Admission) {
        if let Admission::Account = admission {
            self.per_account.refund(&username_key.to_string(), Instant::now());
        }
    }

    /// Record a successful sign-in: the account's limit counts failures only, so the attempt is
    /// given back; a device's failures are forgotten (it gets a new cookie).
    pub fn succeeded(&self, username_key: &str, admission: &Admission) {
        match admission {
            Admission::Account => self.per_account.refund(&username_key.to_string(), Instant::now()),
            Admission::Device(nonce) => self.per_device.forget(nonce),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn limits_per_address_and_per_account() {
        let t = LoginThrottle::new(4, 3, 100);
        assert!((0..3).all(|_| t.check_address(ip("10.0.0.1"), "t").is_ok()
            && t.admit(ip("10.0.0.1"), "alice", DeviceClaim::None).is_ok()));
        assert_eq!(t.admit(ip("10.0.0.2"), "alice", DeviceClaim::None), Err(Refusal::Limited), "per account");
        assert!(t.check_address(ip("10.0.0.1"), "t").is_ok());
        assert_eq!(t.check_address(ip("10.0.0.1"), "t"), Err(Refusal::Limited), "per address");
        assert!(t.check_address(ip("10.0.0.2"), "t").is_ok(), "another address has its own allowance");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(address_key("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
        let t = LoginThrottle::new(2, 10, 100);
        assert!(t.check_address(ip("2001:db8::1"), "t").is_ok());
        assert!(t.check_address(ip("2001:db8::ffff:2"), "t").is_ok());
        assert_eq!(t.check_address(ip("2001:db8::3"), "t"), Err(Refusal::Limited), "one /64, one allowance");
        assert!(t.check_address(ip("2001:db8:0:1::1"), "t").is_ok());
        assert_eq!(t.sizes().addresses, 2);
    }

    #[test]
    fn capacity_is_hard_and_eviction_never_resets_a_bucket_in_use() {
        let l: Limiter<String> = Limiter::new(2, 3);
        let t0 = Instant::now();
        // The victim's bucket is used up.
        assert!(l.check(&"victim".into(), t0).is_ok() && l.check(&"victim".into(), t0).is_ok());
        assert_eq!(l.check(&"victim".into(), t0), Err(Refusal::Limited));
        // An attacker fills the rest and then floods new keys: refused, the map stays at capacity.
        assert!(l.check(&"a".into(), t0).is_ok() && l.check(&"b".into(), t0).is_ok());
        for i in 0..1000 {
            assert_eq!(l.check(&format!("new{i}"), t0 + Duration::from_millis(i)), Err(Refusal::Full));
        }
        assert_eq!(l.len(), 3);
        // Later, `a` and `b` are back to full allowance (each used one of two) and may go; the
        // victim, limited twice over, is still limited and is kept.
        let t1 = t0 + Duration::from_secs(31);
        assert!(l.check(&"c".into(), t1).is_ok(), "room made by evicting recovered entries");
        assert_eq!(l.len(), 2, "victim + c");
        assert!(l.check(&"victim".into(), t0 + Duration::from_secs(29)).is_err(), "the victim is still limited");
    }

    #[test]
    fn a_sweep_keeps_every_entry_whose_allowance_is_not_full() {
        let l: Limiter<u32> = Limiter::new(10, 2);
        let t0 = Instant::now();
        assert!(l.check(&1, t0).is_ok()); // TAT t0+6 s
        assert!(l.check(&2, t0).is_ok());
        // 5 s later both entries are still partly used: nothing may be evicted.
        assert_eq!(l.check(&3, t0 + Duration::from_secs(5)), Err(Refusal::Full));
        // Once one has recovered (and a second has passed since the last sweep), there is room.
        assert!(l.check(&3, t0 + Duration::from_secs(7)).is_ok());
        assert_eq!(l.len(), 1, "only 3: 1 and 2 had recovered fully");
    }

    #[test]
    fn an_address_over_its_limit_creates_no_per_account_state() {
        let t = LoginThrottle::new(2, 5, 100);
        let mut admitted = 0;
        for i in 0..50 {
            if t.check_address(ip("10.9.9.9"), "t").is_ok() {
                assert!(t.admit(ip("10.9.9.9"), &format!("user{i}"), DeviceClaim::None).is_ok());
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2);
        assert_eq!(t.sizes(), ThrottleSizes { addresses: 1, accounts: 2, devices: 0 });
    }

    #[test]
    fn a_known_device_is_limited_only_on_its_own_failures() {
        let t = LoginThrottle::new(100, 3, 100);
        // The account is under attack from elsewhere: its allowance is gone.
        for _ in 0..3 {
            let a = t.admit(ip("10.0.0.9"), "victim", DeviceClaim::None).unwrap();
            t.failed(ip("10.0.0.9"), "victim", &a);
        }
        assert_eq!(t.admit(ip("10.0.0.8"), "victim", DeviceClaim::None), Err(Refusal::Limited));
        assert_eq!(t.admit(ip("10.0.0.8"), "victim", DeviceClaim::Invalid), Err(Refusal::Limited));
        // The owner's device is spared ...
        let owner = DeviceClaim::Known("nonce-1".into());
        assert_eq!(t.admit(ip("10.0.0.1"), "victim", owner.clone()), Ok(Admission::Device("nonce-1".into())));
        // ... until it fails on its own as often as the account's limit allows.
        for _ in 0..3 {
            let a = t.admit(ip("10.0.0.1"), "victim", owner.clone()).unwrap();
            t.failed(ip("10.0.0.1"), "victim", &a);
        }
        assert_eq!(t.admit(ip("10.0.0.1"), "victim", owner.clone()), Err(Refusal::Limited), "locked out device");
        // Another device of the owner is not affected; a success forgets a device's failures.
        let other = DeviceClaim::Known("nonce-2".into());
        let a = t.admit(ip("10.0.0.2"), "victim", other).unwrap();
        t.failed(ip("10.0.0.2"), "victim", &a);
        t.succeeded("victim", &a);
        assert_eq!(t.sizes().devices, 1);
    }

    #[test]
    fn the_account_limit_counts_failures_only() {
        let t = LoginThrottle::new(100, 2, 100);
        for _ in 0..5 {
            let a = t.admit(ip("10.0.0.1"), "alice", DeviceClaim::None).unwrap();
            t.succeeded("alice", &a);
        }
        assert_eq!(t.sizes().accounts, 0, "successes leave nothing behind");
        let a = t.admit(ip("10.0.0.1"), "alice", DeviceClaim::None).unwrap();
        t.failed(ip("10.0.0.1"), "alice", &a);
        assert!(t.admit(ip("10.0.0.1"), "alice", DeviceClaim::None).is_ok());
        assert_eq!(t.admit(ip("10.0.0.1"), "alice", DeviceClaim::None), Err(Refusal::Limited));
    }
}

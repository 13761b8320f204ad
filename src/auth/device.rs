//! Device cookies (OWASP "Slow Down Online Guessing Attacks with Device Cookies"): after a
//! successful sign-in the browser gets a long-lived private cookie (encrypted and authenticated
//! with `secret_key`) binding the normalised username and a random nonce. A later sign-in to that
//! account from that browser is limited only by that device's own failures
//! (`throttle::LoginThrottle::admit`), so guesses from elsewhere cannot lock its owner out.

use rocket::http::{Cookie, CookieJar};

use crate::auth::session;
use crate::auth::throttle::DeviceClaim;
use crate::config::Settings;
use crate::util::{now, random_token};

pub const DEVICE_COOKIE: &str = "tv_device";
/// How long a device cookie is honoured after the sign-in that issued it.
pub const DEVICE_COOKIE_TTL: i64 = 180 * 24 * 3600;
const VERSION: &str = "v1";

fn encode(username_key: &str, nonce: &str, issued_at: i64) -> String {
    format!("{VERSION}|{username_key}|{nonce}|{issued_at}")
}

/// What the (decrypted) cookie value says about a sign-in as `username_key` at `now`.
fn judge(value: &str, username_key: &str, now: i64) -> DeviceClaim {
    let mut parts = value.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next().and_then(|t| t.parse::<i64>().ok()), parts.next()) {
        (Some(VERSION), Some(user), Some(nonce), Some(issued), None)
            if user == username_key && !nonce.is_empty() && issued <= now && now - issued <= DEVICE_COOKIE_TTL =>
        {
            DeviceClaim::Known(nonce.to_string())
        }
        _ => DeviceClaim::Invalid,
    }
}

/// The browser's device cookie as a claim on `username_key`. A cookie that is present but does
/// not open (tampered, another key) is `Invalid`, like one for another account or an old one.
pub fn claim(cookies: &CookieJar<'_>, username_key: &str) -> DeviceClaim {
    match cookies.get_private(DEVICE_COOKIE) {
        Some(c) => judge(c.value(), username_key, now()),
        None if cookies.get(DEVICE_COOKIE).is_some() => DeviceClaim::Invalid,
        None => DeviceClaim::None,
    }
}

/// Give the browser a fresh device cookie for `username_key` (after a successful sign-in).
pub fn issue(cookies: &CookieJar<'_>, settings: &Settings, username_key: &str) {
    let mut c = session::cookie(DEVICE_COOKIE, encode(username_key, &random_token(16), now()), settings);
    c.set_max_age(rocket::time::Duration::seconds(DEVICE_COOKIE_TTL));
    cookies.add_private(c);
}

/// Drop a device cookie that did not open (so it is not presented again).
pub fn remove_invalid(cookies: &CookieJar<'_>) {
    if cookies.get_private(DEVICE_COOKIE).is_none() && cookies.get(DEVICE_COOKIE).is_some() {
        cookies.remove(Cookie::build(DEVICE_COOKIE).path("/"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_known_only_for_its_own_account_and_lifetime() {
        let t = 1_000_000_000;
        let v = encode("alice", "n0nce", t);
        assert_eq!(judge(&v, "alice", t + 10), DeviceClaim::Known("n0nce".into()));
        assert_eq!(judge(&v, "bob", t + 10), DeviceClaim::Invalid);
        assert_eq!(judge(&v, "alice", t + DEVICE_COOKIE_TTL + 1), DeviceClaim::Invalid);
        assert_eq!(judge(&v, "alice", t - 10), DeviceClaim::Invalid, "issued in the future");
        assert_eq!(judge("v1|alice||1", "alice", t), DeviceClaim::Invalid);
        assert_eq!(judge(&format!("{v}|extra"), "alice", t), DeviceClaim::Invalid);
        assert_eq!(judge("garbage", "alice", t), DeviceClaim::Invalid);
    }
}

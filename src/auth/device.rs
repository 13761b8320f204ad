//! Device cookies (OWASP "Slow Down Online Guessing Attacks with Device Cookies"): after a
//! successful sign-in the browser gets a long-lived private cookie (encrypted and authenticated
//! with `secret_key`) binding the account — its canonical username, its user id and its password
//! epoch — and a random nonce. A later sign-in to that account from that browser is limited only
//! by that device's own failures (`throttle::LoginThrottle::admit`), so guesses from elsewhere
//! cannot lock its owner out.
//!
//! A cookie counts only for the account it was issued for: the name is checked before the
//! account is looked up ([`presented`]), the user id and password epoch after
//! ([`Presented::claim`]). So another account's cookie never counts (not even one of an account
//! since renamed, or deleted and signed up again under the same name), and a password change —
//! which bumps the epoch — voids every cookie issued before it. Cookies of the first format
//! (`v1`, bound to the name only) count as none.

use rocket::http::{Cookie, CookieJar};

use crate::auth::session;
use crate::auth::throttle::DeviceClaim;
use crate::config::Settings;
use crate::util::{now, random_token};

pub const DEVICE_COOKIE: &str = "tv_device";
/// How long a device cookie is honoured after the sign-in that issued it.
pub const DEVICE_COOKIE_TTL: i64 = 180 * 24 * 3600;
const VERSION: &str = "v2";

/// The account a device cookie is issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Account {
    pub user_id: i64,
    pub password_epoch: i64,
}

impl From<&crate::db::models::users::User> for Account {
    fn from(u: &crate::db::models::users::User) -> Account {
        Account { user_id: u.id, password_epoch: u.password_epoch }
    }
}

fn encode(username_key: &str, account: Account, nonce: &str, issued_at: i64) -> String {
    format!("{VERSION}|{username_key}|{}|{}|{nonce}|{issued_at}", account.user_id, account.password_epoch)
}

/// What the browser presents, judged before the account is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    /// No device cookie.
    None,
    /// A cookie that does not open, is expired, of an old format, or names another username.
    Invalid,
    /// A genuine, unexpired cookie naming this username; it counts once the account it names
    /// turns out to be this one ([`Presented::claim`]).
    For { account: Account, nonce: String },
}

impl Presented {
    /// Whether the cookie names the username being signed in to: only then is the account
    /// worth looking up before the throttle decides.
    pub fn names_account(&self) -> bool {
        matches!(self, Presented::For { .. })
    }

    /// The claim on `account` (the account the username names now; `None`: no such account).
    pub fn claim(self, account: Option<Account>) -> DeviceClaim {
        match self {
            Presented::None => DeviceClaim::None,
            Presented::For { account: bound, nonce } if Some(bound) == account => DeviceClaim::Known(nonce),
            Presented::Invalid | Presented::For { .. } => DeviceClaim::Invalid,
        }
    }
}

/// What the (decrypted) cookie value says about a sign-in as `username_key` at `now`.
fn judge(value: &str, username_key: &str, now: i64) -> Presented {
    let parts: Vec<&str> = value.split('|').collect();
    let [VERSION, user, user_id, epoch, nonce, issued] = parts[..] else { return Presented::Invalid };
    let (Ok(user_id), Ok(password_epoch), Ok(issued)) = (user_id.parse(), epoch.parse(), issued.parse::<i64>()) else {
        return Presented::Invalid;
    };
    if user != username_key || nonce.is_empty() || issued > now || now - issued > DEVICE_COOKIE_TTL {
        return Presented::Invalid;
    }
    Presented::For { account: Account { user_id, password_epoch }, nonce: nonce.to_string() }
}

/// The browser's device cookie, for a sign-in to `username_key` (a canonical username). A
/// cookie that is present but does not open (tampered, another key) is `Invalid`, like one for
/// another username or an old one.
pub fn presented(cookies: &CookieJar<'_>, username_key: &str) -> Presented {
    match cookies.get_private(DEVICE_COOKIE) {
        Some(c) => judge(c.value(), username_key, now()),
        None if cookies.get(DEVICE_COOKIE).is_some() => Presented::Invalid,
        None => Presented::None,
    }
}

/// Give the browser a fresh device cookie for the account `username_key` names (after a
/// successful sign-in, a sign-up or a password change).
pub fn issue(cookies: &CookieJar<'_>, settings: &Settings, username_key: &str, account: Account) {
    let value = encode(username_key, account, &random_token(16), now());
    let mut c = session::cookie(DEVICE_COOKIE, value, settings);
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

    const ALICE: Account = Account { user_id: 7, password_epoch: 2 };

    fn known(nonce: &str) -> Presented {
        Presented::For { account: ALICE, nonce: nonce.into() }
    }

    #[test]
    fn a_cookie_is_known_only_for_its_own_username_and_lifetime() {
        let t = 1_000_000_000;
        let v = encode("alice", ALICE, "n0nce", t);
        assert_eq!(judge(&v, "alice", t + 10), known("n0nce"));
        assert_eq!(judge(&v, "bob", t + 10), Presented::Invalid);
        assert_eq!(judge(&v, "alice", t + DEVICE_COOKIE_TTL + 1), Presented::Invalid);
        assert_eq!(judge(&v, "alice", t - 10), Presented::Invalid, "issued in the future");
        assert_eq!(judge("v2|alice|7|2||1", "alice", t), Presented::Invalid);
        assert_eq!(judge("v2|alice|x|2|n|1", "alice", t), Presented::Invalid);
        assert_eq!(judge(&format!("{v}|extra"), "alice", t), Presented::Invalid);
        assert_eq!(judge("garbage", "alice", t), Presented::Invalid);
        // The first format named the lower-cased username only: the owner of `ALICE` held
        // cookies that counted for `alice` (issue 19). It counts as none now.
        assert_eq!(judge("v1|alice|n0nce|1000", "alice", t), Presented::Invalid);
    }

    #[test]
    fn a_cookie_counts_only_for_the_account_and_password_it_was_issued_under() {
        assert_eq!(known("n").claim(Some(ALICE)), DeviceClaim::Known("n".into()));
        // Another account under the same name (renamed, or deleted and signed up again).
        assert_eq!(known("n").claim(Some(Account { user_id: 8, ..ALICE })), DeviceClaim::Invalid);
        // The password changed since.
        assert_eq!(known("n").claim(Some(Account { password_epoch: 3, ..ALICE })), DeviceClaim::Invalid);
        assert_eq!(known("n").claim(None), DeviceClaim::Invalid, "no such account (any more)");
        assert_eq!(Presented::Invalid.claim(Some(ALICE)), DeviceClaim::Invalid);
        assert_eq!(Presented::None.claim(Some(ALICE)), DeviceClaim::None);
    }
}

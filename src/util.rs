//! Small helpers shared by every layer: time, randomness, hashing, secrets.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `n` bytes from the operating system's CSPRNG, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let s = URL_SAFE_NO_PAD.encode(&bytes);
    bytes.zeroize();
    s
}

/// `n` random bytes, standard base64 (for keys).
pub fn random_key_b64(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let s = STANDARD.encode(&bytes);
    bytes.zeroize();
    s
}

/// Hex SHA-256 of a value, used to index secrets (session ids, states, codes) without storing them.
pub fn sha256_hex(value: &str) -> String {
    hex(&Sha256::digest(value.as_bytes()))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A space-separated scope string (as stored and as OAuth sends it) as a list.
pub fn scope_list(scopes: &str) -> Vec<String> {
    scopes.split(' ').filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` after it when it was cut:
/// for values a client chose (a path, a name) in a log line, whose size the client must not set.
pub fn capped(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &s[..end]))
}

/// Constant-time comparison of two strings.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text.trim()).ok()
}

/// A secret string: never printed by `Debug` (there is no `Display`), wiped from memory on drop,
/// read only through [`ExposeSecret::expose_secret`] where the value leaves for its legitimate
/// destination. (`secrecy`'s `SecretString`, under the name the code has always used.)
pub use secrecy::{ExposeSecret, SecretString as Secret};

/// A [`Secret`] made from `value`, leaving no copy behind: the secret gets an allocation of exactly
/// its length and `value`'s buffer (spare capacity included) is wiped. `Secret::from(String)`
/// alone would reallocate a string with spare capacity (a decrypted token always has some: its
/// buffer held the ciphertext) and free the old buffer with the secret still in it.
pub fn secret(value: impl Into<String>) -> Secret {
    let mut value = value.into();
    let exact: Box<str> = Box::from(value.as_str());
    value.zeroize();
    Secret::from(exact)
}

/// "in 5 minutes", "3 hours ago", for timestamps shown on pages.
pub fn relative_time(at: i64, now: i64) -> String {
    let delta = at - now;
    let abs = delta.unsigned_abs();
    let (n, unit) = match abs {
        0..=59 => return if delta > 0 { "in a few seconds".into() } else { "just now".into() },
        60..=3569 => ((abs + 30) / 60, "minute"),
        3570..=84_599 => ((abs + 1800) / 3600, "hour"),
        _ => ((abs + 43_200) / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    if delta >= 0 {
        format!("in {n} {unit}{plural}")
    } else {
        format!("{n} {unit}{plural} ago")
    }
}

/// An absolute UTC time for `title` attributes and tables.
pub fn format_utc(at: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| "-".into())
}

/// RFC 3339 UTC time, for JSON.
pub fn rfc3339(at: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Where a database URL points, without its password (for logs and errors).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_cuts_at_a_character_boundary() {
        assert_eq!(capped("/short", 256), "/short");
        assert_eq!(capped(&"a".repeat(300), 256), format!("{}…", "a".repeat(256)));
        // 'é' is two bytes: a cut inside it moves back to before it.
        assert_eq!(capped("aé", 2), "a…");
    }

    #[test]
    fn scopes_and_hex() {
        assert_eq!(scope_list(" read  write "), vec!["read", "write"]);
        assert!(scope_list("").is_empty());
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(sha256_hex("").len(), 64);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("AT-CANARY-1");
        assert!(!format!("{s:?}").contains("CANARY"), "{s:?}");
        assert!(format!("{s:?}").contains("REDACTED"));
        assert_eq!(s.expose_secret(), "AT-CANARY-1");
    }

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let a = random_token(32);
        let b = random_token(32);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative_time(100, 100), "just now");
        assert_eq!(relative_time(130, 100), "in a few seconds");
        assert_eq!(relative_time(100, 130), "just now");
        assert_eq!(relative_time(100 + 120, 100), "in 2 minutes");
        assert_eq!(relative_time(100, 100 + 3600), "1 hour ago");
        assert_eq!(relative_time(100 + 3 * 86_400, 100), "in 3 days");
        assert_eq!(relative_time(120, 0), "in 2 minutes", "rounded, not floored");
        assert_eq!(relative_time(3599, 0), "in 1 hour");
    }

    #[test]
    fn times_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(86_400), "1970-01-02 00:00:00 UTC");
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}

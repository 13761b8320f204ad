//! Arbitrary strings as a `next` return path.
//!
//! Invariants for every accepted value: it is returned unchanged; it starts with exactly one `/`
//! (also after percent-decoding); it has no `\` and no control or whitespace character; joined to
//! any base URL of this site it stays on that origin (no host change, no user info). Whether Rocket
//! can send it as a `Location` is the `safe_next_redirect` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use tokenvault::web::safe_next;
use url::Url;

const BASES: [&str; 3] =
    ["http://tokenvault.invalid/", "https://vault.example.com:8443/a/b/c", "http://127.0.0.1:8000/services/x?y=1#z"];

fn check_prefix(form: &str, what: &str, input: &str) {
    assert!(form.starts_with('/'), "{what} of {input:?} does not start with /");
    assert!(!form.starts_with("//") && !form.starts_with("/\\"), "{what} of {input:?} starts with // or /\\");
}

fuzz_target!(|data: &[u8]| {
    let Ok(next) = std::str::from_utf8(data) else { return };
    let Some(accepted) = safe_next(next) else { return };
    assert_eq!(accepted, next);
    check_prefix(&accepted, "the value", next);
    assert!(!accepted.contains('\\'), "{next:?} has a backslash");
    assert!(!accepted.chars().any(|c| c.is_control() || c.is_whitespace()), "{next:?}");
    let decoded = percent_decode_str(&accepted).decode_utf8_lossy();
    check_prefix(&decoded, "the percent-decoded value", next);
    assert!(!decoded.contains('\\'), "{next:?} decodes to a backslash");
    for base in BASES {
        let base = Url::parse(base).unwrap();
        let joined = base.join(&accepted).unwrap_or_else(|e| panic!("{next:?} does not join {base}: {e}"));
        assert_eq!(joined.origin(), base.origin(), "{next:?} leaves the origin: {joined}");
        assert!(joined.username().is_empty() && joined.password().is_none(), "{next:?} adds user info");
    }
});

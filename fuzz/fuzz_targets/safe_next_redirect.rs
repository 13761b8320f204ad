//! Arbitrary strings as a `next` return path, as the handlers use it: `Redirect::to(next)`.
//!
//! Invariant: every value `safe_next` accepts is a URI reference Rocket can parse, since
//! `Redirect::to` answers 500 Internal Server Error for one it cannot (`/login?next=…` for a
//! signed-in user, and the redirect after signing in).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rocket::http::uri::Reference;
use tokenvault::web::safe_next;

fuzz_target!(|data: &[u8]| {
    let Ok(next) = std::str::from_utf8(data) else { return };
    if let Some(accepted) = safe_next(next) {
        assert!(Reference::parse_owned(accepted).is_ok(), "Rocket cannot redirect to {next:?}");
    }
});

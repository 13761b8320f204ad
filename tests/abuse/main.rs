//! Regression tests for the attacks of issue 10 ("hold up under attack and faults"): each row of
//! that table has a test here that fails without its fix. Attacks that need distinct client
//! addresses run the real binary (`common::server`) and bind their clients to 127.0.0.N — the
//! whole 127.0.0.0/8 is loopback — instead of trusting a header.
//!
//! One module per area, so the pieces can grow independently. `usernames` holds issue 19's item 6
//! (one account per name whatever its case, device cookies bound to the account).

// The `it` binary uses all of `common` (its dead-code check covers it); this one uses a part.
#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;
mod hardening;
mod login;
mod proxy;
mod sessions;
mod usernames;

//! Arbitrary bytes as the query string of an OAuth callback.
//!
//! Invariants: `CallbackParams::parse` never panics; it agrees with a plain re-parse of the query
//! (each read parameter kept once, every `state` kept, `duplicated` exactly when a read parameter
//! repeats); its `Display` (used in logs) depends on the code and the states only through whether
//! they are there, so it never shows their values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenvault::oauth::flow::CallbackParams;

/// Another value than `v`, of the same emptiness.
fn other_than(v: &str) -> String {
    if v.is_empty() {
        String::new()
    } else if v == "Z" {
        "Y".into()
    } else {
        "Z".into()
    }
}

fuzz_target!(|data: &[u8]| {
    // Rocket hands the handler the raw query as `&str`; invalid UTF-8 never gets that far, but its
    // lossy form still makes a useful query.
    let query = String::from_utf8_lossy(data);
    let params = CallbackParams::parse(&query);

    // Model: the same query read with `url`'s form parser.
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let last = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let count = |name: &str| pairs.iter().filter(|(k, _)| k == name).count();
    assert_eq!(params.code, last("code"));
    assert_eq!(params.error, last("error"));
    assert_eq!(params.error_description, last("error_description"));
    assert_eq!(params.iss, last("iss"));
    let states: Vec<String> = pairs.iter().filter(|(k, _)| k == "state").map(|(_, v)| v.clone()).collect();
    assert_eq!(params.states, states);
    let repeated = ["code", "state", "error", "error_description", "iss"].iter().any(|n| count(n) > 1);
    assert_eq!(params.duplicated, repeated, "query {query:?}");

    // Display is a function of (code present, number of states, error) only.
    let shown = params.to_string();
    let mut twin = CallbackParams::parse(&query);
    twin.code = params.code.as_deref().map(other_than);
    twin.states = params.states.iter().map(|s| other_than(s)).collect();
    let twin_shown = twin.to_string();
    assert_eq!(shown, twin_shown, "Display depends on the code or state values");
    // So a code (or state) that shows up is only a coincidence with the fixed text or the error
    // code: it shows up just the same with other values in its place.
    for secret in params.code.iter().chain(params.states.iter()).filter(|s| !s.is_empty()) {
        assert!(
            !shown.contains(secret.as_str()) || twin_shown.contains(secret.as_str()),
            "Display shows a secret value {secret:?}: {shown}"
        );
    }
});

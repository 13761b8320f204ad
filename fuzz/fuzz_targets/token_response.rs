//! Arbitrary bytes as a token endpoint's response body.
//!
//! Invariants: parsing never panics, nor do the accessors or re-serialising; the `Debug` output of
//! a parsed response (what a `{:?}` in a log line would print) does not depend on the access or
//! refresh token values — checked by parsing the same document with other token values — so it
//! never contains them; a long canary access token never shows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oauth2::TokenResponse as _;
use serde_json::Value;
use tokenvault::oauth::tokens::LenientTokenResponse;

/// Replace the token strings of a token-response document (an object, or the array form serde
/// also accepts for structs) by other values; `None` when there is nothing to replace.
fn with_other_tokens(doc: &Value) -> Option<Value> {
    let swap = |v: &mut Value, tag: &str| {
        if let Value::String(s) = v {
            *s = format!("{tag}-{}", s.len());
        }
    };
    let mut doc = doc.clone();
    match &mut doc {
        Value::Object(map) => {
            for (key, tag) in [("access_token", "OTHER-AT"), ("refresh_token", "OTHER-RT")] {
                if let Some(v) = map.get_mut(key) {
                    swap(v, tag);
                }
            }
        }
        Value::Array(items) => {
            if let Some(v) = items.get_mut(0) {
                swap(v, "OTHER-AT");
            }
            if let Some(v) = items.get_mut(3) {
                swap(v, "OTHER-RT");
            }
        }
        _ => return None,
    }
    Some(doc)
}

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = serde_json::from_slice::<LenientTokenResponse>(data) else { return };
    let access = resp.access_token().secret().clone();
    let refresh = resp.refresh_token().map(|r| r.secret().clone());
    let _ = (resp.token_type(), resp.expires_in(), resp.scopes());
    let _ = serde_json::to_vec(&resp);
    let shown = format!("{resp:?}");

    // The same response with other token values prints the same, so a token that shows up is
    // only a coincidence with the fixed text or another field: it shows up with the other values
    // too. Both documents go through `Value` and back, so a float `expires_in` is rounded the same
    // way in both (serde_json's float parsing does not round-trip every float exactly).
    // (Not every parsed response is a `Value`: serde skips unknown members without checking their
    // escapes, so `{"x":"\ud800",…}` parses as a response but not as a `Value`.)
    let Ok(doc) = serde_json::from_slice::<Value>(data) else { return };
    if let Some(twin_doc) = with_other_tokens(&doc) {
        let reparse = |v: &Value| serde_json::from_slice::<LenientTokenResponse>(&serde_json::to_vec(v).unwrap());
        if let (Ok(control), Ok(twin)) = (reparse(&doc), reparse(&twin_doc)) {
            let (control_shown, twin_shown) = (format!("{control:?}"), format!("{twin:?}"));
            assert_eq!(control_shown, twin_shown, "Debug depends on the token values");
            for secret in std::iter::once(&access).chain(refresh.iter()).filter(|s| !s.is_empty()) {
                assert!(!control_shown.contains(secret.as_str()) || twin_shown.contains(secret.as_str()), "{shown}");
            }
        }
    }

    // With long canary tokens in place of the fuzzed ones: never printed.
    if let Value::Object(mut map) = doc {
        map.insert("access_token".into(), Value::String("AT-CANARY-fuzz-0123456789".into()));
        map.insert("refresh_token".into(), Value::String("RT-CANARY-fuzz-0123456789".into()));
        if let Ok(canary) = serde_json::from_value::<LenientTokenResponse>(Value::Object(map)) {
            let out = format!("{canary:?}");
            assert!(!out.contains("CANARY-fuzz"), "Debug shows a token: {out}");
        }
    }
});

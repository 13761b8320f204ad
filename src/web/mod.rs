//! The web layer shared by every page: the page context, flash messages, request ids,
//! security headers, request logging, and reading form and query fields once (`fields`).

pub mod cors;
mod error_page;
mod fairings;
pub mod fields;
mod flash;
mod page;

pub use error_page::{render_error, wants_json, RETRY_AFTER_SECS};
pub use fairings::{traced, RequestLog, SecurityHeaders, FORM_ACTION_HEADER};
pub use flash::{Flash, FLASH_COOKIE};
pub use page::{FlashView, Layout, Nav, Page};

use std::fmt;

/// A short random id for each request, sent as `X-Request-Id`, printed on error pages and in logs.
#[derive(Debug, Clone)]
pub struct RequestId(String);

impl RequestId {
    pub fn new() -> RequestId {
        RequestId(crate::util::random_token(9))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `next` is a safe same-origin path to send a user to after login or a flow (at most
/// 2048 bytes: an OAuth authorization request with a metadata-document `client_id` is long).
///
/// Accepts only absolute paths on this site: no scheme, no host, no `//` or `/\` prefix (also when
/// percent-encoded), no control characters or whitespace, no backslashes, no `..` segments.
pub fn safe_next(next: &str) -> Option<String> {
    if next.is_empty() || next.len() > 2048 || !next.starts_with('/') {
        return None;
    }
    if next.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return None;
    }
    // Only what Rocket can send back as a Location: an origin-form URI (path and query, ASCII,
    // no fragment, no `"<>{}|^` and the like).
    if rocket::http::uri::Origin::parse(next).is_err() {
        return None;
    }
    // The whole value percent-decoded (not form-decoded: that would stop at the first `&`).
    let decoded = percent_encoding::percent_decode_str(next).decode_utf8_lossy().into_owned();
    for candidate in [next, decoded.as_str()] {
        if candidate.starts_with("//")
            || candidate.starts_with("/\\")
            || candidate.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\')
            || candidate.split(['/', '?', '#']).any(|seg| seg == "..")
        {
            return None;
        }
    }
    let base = url::Url::parse("http://tokenvault.invalid/").expect("static url");
    let joined = base.join(next).ok()?;
    if joined.origin() != base.origin() {
        return None;
    }
    Some(next.to_string())
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn safe_next_accepts_local_paths() {
        assert_eq!(safe_next("/settings/oauth2").as_deref(), Some("/settings/oauth2"));
        assert_eq!(safe_next("/services/demo/account?x=1").as_deref(), Some("/services/demo/account?x=1"));
        assert_eq!(safe_next("/").as_deref(), Some("/"));
    }

    #[test]
    fn safe_next_rejects_open_redirect_payloads() {
        for bad in [
            "",
            "//evil.example",
            "/\\evil.example",
            "/%2F%2Fevil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "https://evil.example",
            "http:evil.example",
            "evil.example",
            " /x",
            "/\t/evil.example",
            "/%09/evil.example",
            "/x\n",
            "/../..//evil.example",
            "/a/%2e%2e/b",
            "javascript:alert(1)",
            "\\\\evil.example",
            "/a&%5Cb",
            "/a&%0D%0ASet-Cookie:x=1",
            "/a&/%2e%2e/b",
            "/a#b",
            "/é",
            "/a<b",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?} must be rejected");
        }
    }
}

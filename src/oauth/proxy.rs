//! The authenticated proxy: `ANY /api/v1/services/<service>/proxy/<path..>` forwards to the
//! service's `api_base_url` with the user's token (refresh on 401, one retry) and streams the
//! answer back. Only URLs under the configured base can be reached.

use url::Url;

use crate::app::AppState;
use crate::oauth::access::AccessError;
use crate::oauth::account::send_with_token;
use crate::oauth::providers::Provider;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and framing, set by each side itself: never passed on
/// in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Request headers never forwarded besides those: the caller's own credentials and cookies, and
/// what would tell the provider about the caller.
const DROP_REQUEST: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "proxy-authorization",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "origin",
    "referer",
    "accept-encoding",
];

/// Response headers never passed back besides those: the provider's cookies and its policies
/// for its own origin.
const DROP_RESPONSE: &[&str] = &["set-cookie", "strict-transport-security", "content-security-policy", "alt-svc"];

/// Whether a request header (any case) may be forwarded to the provider.
pub fn forwards_request_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !HOP_BY_HOP.contains(&name.as_str()) && !DROP_REQUEST.contains(&name.as_str())
}

/// The request headers to forward: without those above, nor those the request's `Connection`
/// header names as hop-by-hop (RFC 9110 §7.6.1).
pub fn forwardable_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let named: Vec<String> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    headers
        .iter()
        .filter(|(k, _)| forwards_request_header(k) && !named.contains(&k.to_ascii_lowercase()))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a provider's response header (any case) may be passed back.
pub fn returns_response_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !HOP_BY_HOP.contains(&name.as_str()) && !DROP_RESPONSE.contains(&name.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("this service has no API base URL configured")]
    NoBase,
    #[error("the path is not allowed")]
    BadPath,
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// `base` joined with the path segments (already percent-decoded, as Rocket gives them; each is
/// encoded again as one segment) and the raw query; `None` if the result would leave the base
/// (dot segments, slashes or backslashes inside a segment, empty segments).
pub fn target_url(base: &Url, segments: &[&str], query: Option<&str>) -> Option<Url> {
    let mut url = base.clone();
    {
        let mut path = url.path_segments_mut().ok()?;
        path.pop_if_empty();
        for seg in segments {
            if seg.is_empty() || *seg == "." || *seg == ".." || seg.contains(['/', '\\']) {
                return None;
            }
            path.push(seg);
        }
    }
    url.set_query(query);
    let base_path = base.path().trim_end_matches('/');
    let ok =
        url.origin() == base.origin() && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")));
    ok.then_some(url)
}

pub struct Forward<'a> {
    pub method: reqwest::Method,
    pub segments: Vec<&'a str>,
    pub query: Option<&'a str>,
    /// From [`forwardable_headers`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Forward the call; the provider's answer with its body unread.
pub async fn forward(
    app: &AppState,
    user_id: i64,
    provider: &Provider,
    req: Forward<'_>,
) -> Result<reqwest::Response, ProxyError> {
    let base = provider.api_base_url.as_ref().ok_or(ProxyError::NoBase)?;
    let url = target_url(base, &req.segments, req.query).ok_or(ProxyError::BadPath)?;
    let headers = req.headers;
    let body = req.body;
    let method = req.method;
    let limit = app.settings.proxy_max_response_bytes;
    let response = send_with_token(app, user_id, provider, limit, |client, token| {
        let mut builder = client.request(method.clone(), url.clone());
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder = builder.bearer_auth(token.expose());
        if !body.is_empty() {
            builder = builder.body(body.clone());
        }
        builder
    })
    .await?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::{forwardable_headers, forwards_request_header, returns_response_header, target_url};
    use url::Url;

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        for h in ["Authorization", "cookie", "Connection", "Transfer-Encoding", "X-Forwarded-For", "Host"] {
            assert!(!forwards_request_header(h), "{h}");
        }
        assert!(forwards_request_header("Content-Type") && forwards_request_header("Dropbox-API-Arg"));
        for h in ["Set-Cookie", "connection", "Content-Length", "Strict-Transport-Security"] {
            assert!(!returns_response_header(h), "{h}");
        }
        assert!(returns_response_header("Content-Type") && returns_response_header("ETag"));
        let h = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("X-Keep", "2"), ("authorization", "Bearer k")];
        assert_eq!(forwardable_headers(&h), vec![("X-Keep".to_string(), "2".to_string())]);
    }

    #[test]
    fn only_urls_under_the_base_are_built() {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        let ok = target_url(&base, &["users", "me"], Some("a=1")).unwrap();
        assert_eq!(ok.as_str(), "https://api.example.com/v1/users/me?a=1");
        let root = Url::parse("https://api.dropboxapi.com").unwrap();
        assert_eq!(
            target_url(&root, &["2", "users", "get_current_account"], None).unwrap().as_str(),
            "https://api.dropboxapi.com/2/users/get_current_account"
        );
        // Segments arrive decoded: `%2e%2e` is `..`, `%2F%2Fevil.example` is `//evil.example`.
        for bad in [vec![".."], vec!["."], vec!["a", "..", ".."], vec!["//evil.example"], vec![""], vec!["a\\.."]] {
            assert!(target_url(&base, &bad, None).is_none(), "{bad:?}");
        }
        // Encoded once, exactly: a literal `%` stays a `%`, a space is `%20`, dots inside are fine.
        let u = target_url(&base, &["100%", "a b", ".well-known", "%2e%2e"], None).unwrap();
        assert_eq!(u.as_str(), "https://api.example.com/v1/100%25/a%20b/.well-known/%252e%252e");
        // Anything that looks like a URL stays a path segment under the base.
        let u = target_url(&base, &["https:", "evil.example"], None);
        assert!(u.is_none() || u.unwrap().host_str() == Some("api.example.com"));
        let u = target_url(&base, &["@evil.example"], None).unwrap();
        assert_eq!(u.host_str(), Some("api.example.com"));
    }
}

//! The authenticated proxy: `ANY /api/v1/services/<service>/proxy/<path..>` forwards to the
//! service's `api_base_url` with the user's token (refresh on 401, one retry) and streams the
//! answer back. Only URLs under the configured base can be reached; headers pass by allowlist in
//! both directions, and a provider's redirect is never handed on as a `Location`.

use crate::util::ExposeSecret;
use url::Url;

use crate::db::models::connections::Which;
use crate::error::AppError;
use crate::oauth::access::{Access, AccessError};
use crate::oauth::account::{credentials_if, send_with_token};
use crate::oauth::providers::Provider;
use crate::oauth::tokens::TokenError;

/// Request headers forwarded to the provider (any case): content negotiation, the body's type,
/// conditional and range requests, and the provider-specific argument headers of the presets'
/// APIs. Nothing else is: not the caller's credentials, cookies, `Host`, `Origin`, `Referer`,
/// `User-Agent`, `X-Forwarded-*` or any other header (README, "The API proxy").
pub const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "content-encoding",
    "content-language",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
    "cache-control",
    "prefer",
    // Dropbox
    "dropbox-api-arg",
    "dropbox-api-select-user",
    "dropbox-api-select-admin",
    "dropbox-api-path-root",
    // GitHub
    "x-github-api-version",
    // Microsoft Graph
    "consistencylevel",
    // Notion (its `api_headers` default, which a caller may override)
    "notion-version",
    // Google resumable uploads
    "x-goog-upload-protocol",
    "x-goog-upload-command",
    "x-goog-upload-offset",
    "x-goog-upload-header-content-type",
    "x-goog-upload-header-content-length",
];

/// Response headers passed back to the caller (any case): the body's description, caching
/// validators, pagination, rate limits and the presets' result headers. Never `Set-Cookie`,
/// CORS (`Access-Control-*`), `Clear-Site-Data`, `Refresh`, `Location` (see [`upstream_location`]),
/// security policies for the provider's origin, framing or anything else not listed.
pub const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "retry-after",
    "link",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-used",
    "x-ratelimit-resource",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    // Dropbox (download endpoints put the file's metadata here)
    "dropbox-api-result",
];

/// Where a provider's redirect target is handed to the caller instead of `Location`.
pub const UPSTREAM_LOCATION: &str = "X-Upstream-Location";

/// Whether a request header (any case) may be forwarded to the provider.
pub fn forwards_request_header(name: &str) -> bool {
    REQUEST_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The request headers to forward: those on [`REQUEST_HEADERS`], less any the request's
/// `Connection` header names as hop-by-hop (RFC 9110 §7.6.1).
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
    RESPONSE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether `url` is `base` or under it (same origin, path below the base's).
fn under_base(base: &Url, url: &Url) -> bool {
    let base_path = base.path().trim_end_matches('/');
    url.origin() == base.origin() && (url.path() == base_path || url.path().starts_with(&format!("{base_path}/")))
}

/// A provider's `Location` (resolved against the URL it answered), as the caller may see it in
/// [`UPSTREAM_LOCATION`]: only when it stays under `base`, without userinfo or fragment; `None`
/// otherwise. It is never passed on as `Location`, which a client would follow with its
/// tokenvault key.
pub fn upstream_location(base: &Url, answered: &Url, location: &str) -> Option<String> {
    let mut target = answered.join(location).ok()?;
    target.set_fragment(None);
    if !target.username().is_empty() || target.password().is_some() || !under_base(base, &target) {
        return None;
    }
    Some(target.to_string())
}

/// The headers of a provider's answer to pass back: those on [`RESPONSE_HEADERS`], plus
/// [`UPSTREAM_LOCATION`] for a `Location` under `base`.
pub fn returned_headers(base: &Url, answered: &Url, headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        if returns_response_header(name.as_str()) {
            out.push((name.as_str().to_string(), value.to_string()));
        } else if name == reqwest::header::LOCATION {
            if let Some(target) = upstream_location(base, answered, value) {
                out.push((UPSTREAM_LOCATION.to_string(), target));
            }
        }
    }
    out
}

/// Whether the raw (still percent-encoded) request path is one the proxy refuses before decoding
/// it: a `;` (path parameters, which some servers strip or reinterpret), an encoded dot (`%2e`,
/// either case, in any segment: servers disagree on whether `%2e%2e` is `..`), or a backslash,
/// raw or encoded (`%5c`), which some servers take for a slash.
pub fn refused_raw_path(raw: &str) -> bool {
    let lower = raw.to_ascii_lowercase();
    lower.contains(';') || lower.contains('\\') || lower.contains("%2e") || lower.contains("%5c")
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

impl ProxyError {
    /// The API's error for each case (a provider's unreadable answer has a code of its own).
    pub fn into_app_error(self, provider: &Provider) -> AppError {
        match self {
            ProxyError::NoBase => AppError::NoApiBase(provider.service()),
            ProxyError::BadPath => AppError::BadPath,
            ProxyError::Access(AccessError::Provider(e @ TokenError::InvalidResponse(_))) => {
                AppError::ProviderResponseTooLarge { service: provider.service(), detail: e.to_string() }
            }
            ProxyError::Access(e) => e.into_app_error(provider),
        }
    }
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
    under_base(base, &url).then_some(url)
}

/// A request path typed by a person (the console's path field, a preset's example): the raw path
/// as the proxy would receive it after `/proxy/`, its segments percent-decoded as Rocket decodes
/// them, the query (normalised as the URL carries it) and the provider URL they make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Typed {
    pub raw_path: String,
    pub segments: Vec<String>,
    pub query: Option<String>,
    pub url: Url,
}

impl Typed {
    /// The path and query after `/proxy/`, encoded as the provider receives them (for a curl line).
    pub fn proxy_suffix(&self, base: &Url) -> String {
        let base_path = base.path().trim_end_matches('/');
        let path = self.url.path().strip_prefix(base_path).unwrap_or("").trim_start_matches('/');
        path.to_string()
    }
}

/// Read `text` (`/files/list?limit=2`, or `files/list`) as a path under `base`, with `more_query`
/// (`k=v&…`) after its own query. Refused as the proxy refuses a path ([`refused_raw_path`],
/// [`target_url`]) and more: a URL (`https://…`), `//host`, a fragment, an empty segment.
pub fn typed_target(base: &Url, text: &str, more_query: Option<&str>) -> Result<Typed, ProxyError> {
    let text = text.trim();
    if text.contains("://") || text.starts_with("//") || text.contains('#') {
        return Err(ProxyError::BadPath);
    }
    let (path, own_query) = match text.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (text, None),
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    // A trailing slash is dropped, as Rocket drops it from the proxy's own path.
    let raw_path = path.strip_suffix('/').unwrap_or(path).to_string();
    if refused_raw_path(&raw_path) {
        return Err(ProxyError::BadPath);
    }
    let segments = if raw_path.is_empty() {
        Vec::new()
    } else {
        raw_path
            .split('/')
            .map(|s| rocket::http::RawStr::new(s).percent_decode().map(|d| d.into_owned()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|_| ProxyError::BadPath)?
    };
    let parts: Vec<&str> =
        [own_query, more_query].into_iter().flatten().map(|q| q.trim_matches('&')).filter(|q| !q.is_empty()).collect();
    let joined = parts.join("&");
    let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let url = target_url(base, &refs, (!joined.is_empty()).then_some(joined.as_str())).ok_or(ProxyError::BadPath)?;
    Ok(Typed { raw_path, segments, query: url.query().map(str::to_string), url })
}

/// The body of a provider's answer, read up to `limit` bytes: `Err` with the bytes read so far
/// when it is longer (the proxy cuts such an answer off) or the read failed.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, (Vec<u8>, String)> {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > limit => {
                return Err((bytes, format!("the provider's answer exceeds the proxy size cap ({limit} bytes)")));
            }
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return Ok(bytes),
            Err(e) => return Err((bytes, format!("reading the provider's answer failed: {}", e.without_url()))),
        }
    }
}

pub struct Forward<'a> {
    pub method: reqwest::Method,
    /// The request's path as it arrived (percent-encoded), checked with [`refused_raw_path`].
    pub raw_path: &'a str,
    pub segments: Vec<&'a str>,
    pub query: Option<&'a str>,
    /// From [`forwardable_headers`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The provider's answer: its body unread, and the headers to pass back ([`returned_headers`]).
pub struct Answer {
    pub response: reqwest::Response,
    pub headers: Vec<(String, String)>,
}

/// Forward the call (refused before anything is sent if the path is not allowed).
pub async fn forward(
    ctx: &Access<'_>,
    which: Which,
    provider: &Provider,
    req: Forward<'_>,
) -> Result<Answer, ProxyError> {
    if refused_raw_path(req.raw_path) {
        return Err(ProxyError::BadPath);
    }
    let base = provider.api_base_url.as_ref().ok_or(ProxyError::NoBase)?;
    let url = target_url(base, &req.segments, req.query).ok_or(ProxyError::BadPath)?;
    let headers = req.headers;
    let body = req.body;
    let method = req.method;
    let limit = ctx.settings.api.proxy_max_response_bytes;
    // The provider's own headers (`api_headers`), unless the caller sent one of the same name.
    let creds = credentials_if(provider.needs_client_id(), ctx, provider).await?;
    let own: Vec<(String, String)> = provider
        .api_headers(creds.as_ref().map(|c| c.client_id.as_str()))
        .into_iter()
        .filter(|(name, _)| !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name)))
        .collect();
    let response = send_with_token(ctx, which, provider, limit, |client, token| {
        let mut builder = client.request(method.clone(), url.clone());
        for (k, v) in headers.iter().chain(&own) {
            builder = builder.header(k.as_str(), v.as_str());
        }
        builder = provider.token_header.apply(builder, token.expose_secret());
        if !body.is_empty() {
            builder = builder.body(body.clone());
        }
        builder
    })
    .await?;
    let headers = returned_headers(base, response.url(), response.headers());
    Ok(Answer { response, headers })
}

#[cfg(test)]
mod tests {
    use super::{
        forwardable_headers, forwards_request_header, refused_raw_path, returned_headers, returns_response_header,
        target_url, typed_target, upstream_location,
    };
    use url::Url;

    #[test]
    fn only_listed_headers_pass_in_either_direction() {
        for h in [
            "Authorization",
            "cookie",
            "Connection",
            "Transfer-Encoding",
            "X-Forwarded-For",
            "Forwarded",
            "X-Real-IP",
            "Host",
            "Origin",
            "Referer",
            "User-Agent",
            "X-Custom-Arg",
            "X-HTTP-Method-Override",
        ] {
            assert!(!forwards_request_header(h), "{h}");
        }
        for h in ["Content-Type", "accept", "If-None-Match", "Range", "Dropbox-API-Arg", "X-GitHub-Api-Version"] {
            assert!(forwards_request_header(h), "{h}");
        }
        for h in [
            "Set-Cookie",
            "connection",
            "Content-Length",
            "Strict-Transport-Security",
            "Content-Security-Policy",
            "Access-Control-Allow-Origin",
            "access-control-allow-credentials",
            "Clear-Site-Data",
            "Refresh",
            "Location",
            "Content-Location",
            "X-Provider-Header",
            "X-Request-Id",
        ] {
            assert!(!returns_response_header(h), "{h}");
        }
        for h in ["Content-Type", "ETag", "Link", "Retry-After", "X-RateLimit-Remaining", "Dropbox-API-Result"] {
            assert!(returns_response_header(h), "{h}");
        }
        let h = [
            ("Connection", "keep-alive, Accept-Language"),
            ("Accept-Language", "fr"),
            ("Accept", "application/json"),
            ("X-Keep", "2"),
            ("authorization", "Bearer k"),
        ];
        assert_eq!(forwardable_headers(&h), vec![("Accept".to_string(), "application/json".to_string())]);
    }

    #[test]
    fn a_redirect_target_is_offered_only_under_the_base() {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        let answered = Url::parse("https://api.example.com/v1/files/a?x=1").unwrap();
        let loc = |l: &str| upstream_location(&base, &answered, l);
        assert_eq!(loc("/v1/files/b?y=2#frag").as_deref(), Some("https://api.example.com/v1/files/b?y=2"));
        assert_eq!(loc("b").as_deref(), Some("https://api.example.com/v1/files/b"));
        assert_eq!(loc("https://api.example.com/v1").as_deref(), Some("https://api.example.com/v1"));
        for off in [
            "https://evil.example/v1/files",
            "//evil.example/v1",
            "/v10/files",
            "/other",
            "../../token",
            "http://api.example.com/v1/files",
            "https://user:pw@api.example.com/v1/files",
            "https://api.example.com:444/v1/files",
            "javascript:alert(1)",
        ] {
            assert_eq!(loc(off), None, "{off}");
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("location", "/v1/files/b".parse().unwrap());
        headers.insert("set-cookie", "s=1".parse().unwrap());
        headers.insert("etag", "\"v2\"".parse().unwrap());
        let mut out = returned_headers(&base, &answered, &headers);
        out.sort();
        assert_eq!(
            out,
            vec![
                ("X-Upstream-Location".to_string(), "https://api.example.com/v1/files/b".to_string()),
                ("etag".to_string(), "\"v2\"".to_string()),
            ]
        );
        headers.insert("location", "https://evil.example/".parse().unwrap());
        assert_eq!(returned_headers(&base, &answered, &headers).len(), 1, "only the ETag");
    }

    #[test]
    fn ambiguous_raw_paths_are_refused() {
        for bad in [
            "/api/v1/services/fake/proxy/a;b",
            "/api/v1/services/fake/proxy/a/%2e%2e/b",
            "/api/v1/services/fake/proxy/%2E%2E",
            "/api/v1/services/fake/proxy/a/.%2e",
            "/api/v1/services/fake/proxy/a/%2Ewell-known",
            "/api/v1/services/fake/proxy/a\\b",
            "/api/v1/services/fake/proxy/a%5cb",
            "/api/v1/services/fake/proxy/a%5C..",
        ] {
            assert!(refused_raw_path(bad), "{bad}");
        }
        for ok in [
            "/api/v1/services/fake/proxy/files/list%20all",
            "/api/v1/services/fake/proxy/.well-known/x",
            "/api/v1/services/fake/proxy/100%25",
            "/api/v1/services/fake/proxy/a%2541",
            "/api/v1/services/fake/proxy/v1.2/file.tar.gz",
        ] {
            assert!(!refused_raw_path(ok), "{ok}");
        }
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

    #[test]
    fn typed_paths_stay_under_the_base_as_the_proxy_keeps_them() {
        let base = Url::parse("https://api.example.com/v1").unwrap();
        let t = typed_target(&base, "/files/list%20all?limit=2", Some("q=a b&")).unwrap();
        assert_eq!(t.url.as_str(), "https://api.example.com/v1/files/list%20all?limit=2&q=a%20b");
        assert_eq!(t.segments, ["files", "list all"]);
        assert_eq!((t.raw_path.as_str(), t.query.as_deref()), ("files/list%20all", Some("limit=2&q=a%20b")));
        assert_eq!(t.proxy_suffix(&base), "files/list%20all");
        assert_eq!(typed_target(&base, "user/", None).unwrap().url.as_str(), "https://api.example.com/v1/user");
        assert_eq!(typed_target(&base, "/", None).unwrap().url.as_str(), "https://api.example.com/v1");
        assert_eq!(typed_target(&base, "", Some("")).unwrap().query, None);
        for bad in [
            "../token",
            "/a/../../token",
            "https://evil.example/v1/user",
            "//evil.example/v1",
            "/v1//x",
            "a/%2e%2e/b",
            "a/..%2Fb",
            "a%2F..%2F..%2Ftoken",
            "a;b",
            "a\\b",
            "a#frag",
            "a/%ff",
        ] {
            assert!(typed_target(&base, bad, None).is_err(), "{bad}");
        }
    }
}

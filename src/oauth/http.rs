//! The one outbound HTTP client: connect and total timeouts, no redirects followed, a size cap on
//! response bodies, and errors that never carry a URL or a body. Calls to a provider whose
//! endpoints were set in the app go through a second client whose name resolution keeps only the
//! addresses the egress rule allows ([`Outbound::for_provider`], `crate::oauth::managed::Egress`):
//! checked when the connection is made, so a name that resolves to a private address (or starts
//! to, DNS rebinding) is refused.

use std::sync::Arc;
use std::time::Duration;

use crate::config::HttpLimits;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the request timed out")]
    Timeout,
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the response was larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Other(String),
    /// HTTP 429 Too Many Requests, with its `Retry-After` in seconds when it is a number.
    #[error("rate limited (429)")]
    RateLimited(Option<u64>),
}

/// The seconds of a `Retry-After` header given as a number (an HTTP date is not trusted: clocks).
pub fn retry_after_secs(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

fn classify(e: reqwest::Error) -> HttpError {
    let e = e.without_url();
    if e.is_timeout() {
        HttpError::Timeout
    } else if e.is_connect() {
        // The innermost cause says why (refused, unreachable, or the egress rule's resolver):
        // never a URL or a body.
        let mut cause = std::error::Error::source(&e);
        while let Some(inner) = cause.and_then(|c| c.source()) {
            cause = Some(inner);
        }
        HttpError::Connect(match cause {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        })
    } else {
        HttpError::Other(e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Outbound {
    client: reqwest::Client,
    max_body: usize,
    /// The client for providers set in the app (`None`: this one, any address allowed).
    set_in_app: Option<Arc<Outbound>>,
}

impl Outbound {
    /// The client; providers set in the app reach public addresses only.
    pub fn new(limits: &HttpLimits) -> Result<Outbound, String> {
        Outbound::with_egress(limits, crate::oauth::managed::Egress { private_urls: false, loopback: false })
    }

    /// The client; providers set in the app reach the addresses `egress` allows.
    pub fn with_egress(limits: &HttpLimits, egress: crate::oauth::managed::Egress) -> Result<Outbound, String> {
        let mut outbound = Outbound::build(limits, |b| b)?;
        if let Some(resolver) = egress.resolver() {
            outbound.set_in_app = Some(Arc::new(Outbound::with_resolver(limits, Arc::new(resolver))?));
        }
        Ok(outbound)
    }

    /// The client for calls to `provider`: the checked one when its endpoints were set in the app.
    pub fn for_provider(&self, provider: &crate::oauth::providers::Provider) -> &Outbound {
        if provider.set_in_app {
            self.set_in_app()
        } else {
            self
        }
    }

    /// The client for endpoints set in the app (a provider's, its issuer's discovery, the Test
    /// button's checks).
    pub fn set_in_app(&self) -> &Outbound {
        self.set_in_app.as_deref().unwrap_or(self)
    }

    /// The same client with its own name resolution (e.g. one that refuses private addresses).
    pub fn with_resolver<R: reqwest::dns::Resolve + 'static>(
        limits: &HttpLimits,
        resolver: Arc<R>,
    ) -> Result<Outbound, String> {
        // No proxy from the environment: a proxy would resolve the name itself, past the resolver.
        Outbound::build(limits, |b| b.dns_resolver(resolver).no_proxy())
    }

    fn build(
        limits: &HttpLimits,
        customize: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Result<Outbound, String> {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(limits.connect_timeout))
            .timeout(Duration::from_secs(limits.timeout))
            .user_agent(concat!("tokenvault/", env!("CARGO_PKG_VERSION")));
        let client = customize(builder).build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Outbound { client, max_body: limits.max_response_bytes, set_in_app: None })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Send a request; the answer's body is left unread (for streaming). A declared length over
    /// `limit` is refused before anything is read.
    pub async fn send_streaming(
        &self,
        request: reqwest::RequestBuilder,
        limit: usize,
    ) -> Result<reqwest::Response, HttpError> {
        let response = request.send().await.map_err(classify)?;
        if response.content_length().is_some_and(|len| len as usize > limit) {
            return Err(HttpError::TooLarge(limit));
        }
        Ok(response)
    }

    /// Send a request and read at most `max_body` bytes of the answer.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), HttpError> {
        let mut response = request.send().await.map_err(classify)?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(len) = response.content_length() {
            if len as usize > self.max_body {
                return Err(HttpError::TooLarge(self.max_body));
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > self.max_body {
                return Err(HttpError::TooLarge(self.max_body));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }

    /// The HTTP function handed to the `oauth2` crate.
    ///
    /// An `error` member in a 200 JSON body (GitHub answers errors that way) is turned into a 400
    /// so that it is treated as the error it is.
    pub async fn execute_oauth(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request).map_err(|e| HttpError::Other(e.without_url().to_string()))?;
        let builder = reqwest::RequestBuilder::from_parts(self.client.clone(), request);
        let (status, headers, body) = self.send(builder).await?;
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            // Whatever the body says, the provider's answer is "not now": the refresh core backs
            // off for at least `Retry-After`.
            return Err(HttpError::RateLimited(retry_after_secs(&headers)));
        }
        let mut status =
            oauth2::http::StatusCode::from_u16(status.as_u16()).map_err(|e| HttpError::Other(e.to_string()))?;
        if status == oauth2::http::StatusCode::OK && has_error_member(&body) {
            status = oauth2::http::StatusCode::BAD_REQUEST;
        }
        let mut response = oauth2::http::Response::builder().status(status);
        for (name, value) in headers.iter() {
            response = response.header(name.as_str(), value.as_bytes());
        }
        response.body(body).map_err(|e| HttpError::Other(e.to_string()))
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for Outbound {
    type Error = HttpError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(self.execute_oauth(request))
    }
}

fn has_error_member(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").map(|e| e.is_string()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_member_detection() {
        assert!(super::has_error_member(br#"{"error":"bad_verification_code"}"#));
        assert!(!super::has_error_member(br#"{"access_token":"x"}"#));
        assert!(!super::has_error_member(b"<html>"));
    }
}

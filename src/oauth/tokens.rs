//! Talking to a provider's token endpoint through the `oauth2` crate: a lenient token-response
//! type (`expires_in` as a string, `token_type` in any case, scopes comma-separated or as an
//! array), the provider's request and response shapes (a JSON request, tokens nested in the
//! answer), the code exchange, and errors sorted into what the user and the refresh logic need
//! to know.

use crate::util::ExposeSecret;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken, TokenResponse as _, TokenUrl,
};
use rocket::http::Status;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::AppError;
use crate::oauth::http::{HttpError, Outbound};
use crate::oauth::providers::{ClientAuth, Provider, TokenRequest};
use crate::util::{now, Secret};
use crate::vault::store::ClientCredentials;

/// A token response that accepts what real providers send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LenientTokenResponse {
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "de_expires_in")]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(default, rename = "scope", deserialize_with = "de_scopes")]
    scopes: Option<Vec<Scope>>,
    /// The refresh token's lifetime, where a provider says it (Microsoft Entra, GitHub Apps:
    /// `refresh_token_expires_in`; Keycloak: `refresh_expires_in`).
    #[serde(default, deserialize_with = "de_expires_in")]
    refresh_token_expires_in: Option<u64>,
    #[serde(default, deserialize_with = "de_expires_in")]
    refresh_expires_in: Option<u64>,
    /// OpenID Connect's id_token (a JWS), verified by `oauth::id_token` on connect.
    #[serde(default)]
    id_token: Option<String>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn de_expires_in<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrString {
        Num(u64),
        Float(f64),
        Str(String),
    }
    match Option::<NumOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrString::Num(n)) => Ok(Some(n)),
        Some(NumOrString::Float(f)) if f >= 0.0 && f.is_finite() => Ok(Some(f as u64)),
        Some(NumOrString::Float(_)) => Err(serde::de::Error::custom("expires_in is negative")),
        Some(NumOrString::Str(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// `scope` as a string of scopes separated by spaces or commas, or as an array of them (Twitch).
fn de_scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Scope>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        String(String),
        List(Vec<String>),
    }
    let words = match Option::<StringOrList>::deserialize(d)? {
        None => return Ok(None),
        Some(StringOrList::String(s)) => vec![s],
        Some(StringOrList::List(list)) => list,
    };
    Ok(Some(
        words
            .iter()
            .flat_map(|w| w.split([' ', ',']))
            .filter(|x| !x.is_empty())
            .map(|x| Scope::new(x.to_string()))
            .collect(),
    ))
}

impl oauth2::TokenResponse for LenientTokenResponse {
    type TokenType = BasicTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_in.map(std::time::Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    LenientTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A provider's answer, ready to store.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub token_type: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub obtained_at: i64,
    /// When the refresh token expires, if the provider said (`refresh_token_expires_in` or
    /// `refresh_expires_in`; 0 — Keycloak's "no expiry" — counts as not said).
    pub refresh_expires_at: Option<i64>,
}

/// Why a token request failed. Never holds a token, a code or a raw response body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The provider answered with an OAuth error code (`invalid_grant`, `invalid_client`…).
    #[error("the provider refused the request ({0})")]
    Rejected(String),
    /// `invalid_grant` whose description says the grant was revoked (Google: "Token has been
    /// expired or revoked.", Dropbox, the demo provider).
    #[error("the provider refused the request (invalid_grant: revoked)")]
    GrantRevoked,
    #[error("the provider did not answer in time")]
    Timeout,
    #[error("the provider could not be reached: {0}")]
    Network(String),
    #[error("the provider's answer was not a valid token response: {0}")]
    InvalidResponse(String),
    /// HTTP 429, with the seconds of its `Retry-After` (when it sent a number).
    #[error("the provider asked tokenvault to slow down (429)")]
    RateLimited(Option<u64>),
}

impl TokenError {
    /// `invalid_grant`: the grant (code or refresh token) is dead; the user must reconnect.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, TokenError::Rejected(code) if code == "invalid_grant")
            || matches!(self, TokenError::GrantRevoked)
    }

    /// `invalid_client`/`unauthorized_client`: the app's credentials are wrong (an admin's problem).
    pub fn is_client_error(&self) -> bool {
        matches!(self, TokenError::Rejected(code) if code == "invalid_client" || code == "unauthorized_client")
    }

    /// The page shown to the user, naming the provider and never the raw answer.
    pub fn to_app_error(&self, provider: &Provider) -> AppError {
        let name = &provider.display_name;
        let (status, message) = match self {
            TokenError::Timeout => (Status::GatewayTimeout, format!("{name} did not answer in time. Please try again.")),
            TokenError::RateLimited(_) => {
                (Status::ServiceUnavailable, format!("{name} asked tokenvault to slow down. Please try again later."))
            }
            TokenError::Network(_) => (Status::BadGateway, format!("{name} could not be reached. Please try again later.")),
            TokenError::InvalidResponse(_) => {
                (Status::BadGateway, format!("{name} sent an answer tokenvault could not understand. Please try again later."))
            }
            TokenError::Rejected(_) if self.is_client_error() => {
                return AppError::ClientRejected {
                    message: format!(
                        "{name} did not accept tokenvault's client credentials. An administrator needs to check them."
                    ),
                    detail: format!("{}: {self}", provider.name),
                }
            }
            TokenError::GrantRevoked => (
                Status::BadGateway,
                format!("{name} says the authorization was revoked. Please connect again."),
            ),
            TokenError::Rejected(_) if self.is_invalid_grant() => (
                Status::BadGateway,
                format!("{name} did not accept the authorization (it may have expired or been used already). Please connect again."),
            ),
            TokenError::Rejected(code) => (Status::BadGateway, format!("{name} refused the request ({code}).")),
        };
        AppError::Upstream { status, message, detail: format!("{}: {self}", provider.name) }
    }
}

/// A provider's `error` code as we may show and log it: OAuth error codes are lowercase words
/// joined by underscores (RFC 6749 §5.2, §4.1.2.1); anything else — markup, or a provider that
/// echoes a token or code in the field — becomes `unknown_error` rather than being passed on.
pub(crate) fn sanitize_code(code: &str) -> String {
    let code = code.trim();
    if !code.is_empty() && code.len() <= 64 && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        code.to_string()
    } else {
        "unknown_error".into()
    }
}

fn map_error(e: RequestTokenError<HttpError, BasicErrorResponse>) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let code = sanitize_code(r.error().as_ref());
            let revoked = r.error_description().is_some_and(|d| d.to_ascii_lowercase().contains("revoked"));
            if code == "invalid_grant" && revoked {
                TokenError::GrantRevoked
            } else {
                TokenError::Rejected(code)
            }
        }
        RequestTokenError::Request(HttpError::Timeout) => TokenError::Timeout,
        RequestTokenError::Request(HttpError::Connect(msg)) => TokenError::Network(msg),
        RequestTokenError::Request(HttpError::TooLarge(n)) => {
            TokenError::InvalidResponse(format!("larger than {n} bytes"))
        }
        RequestTokenError::Request(HttpError::Other(msg)) => TokenError::Network(msg),
        RequestTokenError::Request(HttpError::RateLimited(after)) => TokenError::RateLimited(after),
        // The raw body inside `Parse` is dropped here, on purpose.
        RequestTokenError::Parse(err, _body) => TokenError::InvalidResponse(format!("at `{}`", err.path())),
        RequestTokenError::Other(msg) => TokenError::InvalidResponse(msg.chars().take(120).collect()),
    }
}

/// The HTTP client handed to the `oauth2` crate for one provider's token requests: it sends them
/// as the provider wants them (`token_request = "json"`, `api_headers`) and reads the tokens where
/// the provider puts them (`token_response_root`).
struct TokenHttp<'a> {
    http: &'a Outbound,
    provider: &'a Provider,
    client_id: &'a str,
}

impl TokenHttp<'_> {
    fn adapt(&self, mut request: oauth2::HttpRequest) -> Result<oauth2::HttpRequest, HttpError> {
        use oauth2::http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
        if self.provider.token_request == TokenRequest::Json {
            let fields: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(request.body())
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect();
            *request.body_mut() = serde_json::to_vec(&fields).map_err(|e| HttpError::Other(e.to_string()))?;
            request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in self.provider.api_headers(Some(self.client_id)) {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| HttpError::Other(e.to_string()))?;
            let value = HeaderValue::from_str(&value).map_err(|e| HttpError::Other(e.to_string()))?;
            request.headers_mut().insert(name, value);
        }
        Ok(request)
    }
}

impl<'c> oauth2::AsyncHttpClient<'c> for TokenHttp<'_> {
    type Error = HttpError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let mut response = self.http.execute_oauth(self.adapt(request)?).await?;
            if let Some(root) = &self.provider.token_response_root {
                if let Some(body) = token_object_at(response.body(), root) {
                    *response.body_mut() = body;
                }
            }
            Ok(response)
        })
    }
}

/// The object at JSON pointer `root` of a token response, when it holds an `access_token` (Slack's
/// user token in `authed_user`); `None` leaves the answer as it is (a refresh answer has its
/// tokens at the top).
fn token_object_at(body: &[u8], root: &str) -> Option<Vec<u8>> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let inner = json.pointer(root)?;
    inner.get("access_token")?.as_str()?;
    serde_json::to_vec(inner).ok()
}

fn client(
    provider: &Provider,
    creds: &ClientCredentials,
    redirect_uri: Option<&str>,
    token_url: &url::Url,
) -> Result<TokenClient, TokenError> {
    let mut client = oauth2::Client::new(ClientId::new(creds.client_id.clone()))
        .set_token_uri(TokenUrl::from_url(token_url.clone()))
        .set_auth_type(match provider.client_auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Post => AuthType::RequestBody,
        });
    if let Some(secret) = &creds.client_secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
    }
    if let Some(uri) = redirect_uri {
        let uri = RedirectUrl::new(uri.to_string()).map_err(|e| TokenError::InvalidResponse(e.to_string()))?;
        client = client.set_redirect_uri(uri);
    }
    Ok(client)
}

fn into_token_set(
    resp: LenientTokenResponse,
    provider: &Provider,
    default_lifetime: i64,
    requested: &[String],
) -> Result<TokenSet, TokenError> {
    if resp.access_token().secret().is_empty() {
        return Err(TokenError::InvalidResponse("empty access_token".into()));
    }
    let obtained_at = now();
    let expires_at = match resp.expires_in {
        Some(secs) => Some(obtained_at.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX / 2))),
        None if provider.tokens_expire => Some(obtained_at + provider.token_lifetime.unwrap_or(default_lifetime)),
        None => None,
    };
    let token_type = match resp.token_type() {
        BasicTokenType::Bearer => "Bearer".to_string(),
        BasicTokenType::Mac => "MAC".to_string(),
        BasicTokenType::Extension(other) => other.clone(),
    };
    let refresh_lifetime = resp.refresh_token_expires_in.or(resp.refresh_expires_in).filter(|s| *s > 0);
    let refresh_expires_at =
        refresh_lifetime.map(|secs| obtained_at.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX / 2)));
    let scopes = match resp.scopes() {
        Some(s) => s.iter().map(|s| s.to_string()).collect(),
        None => requested.to_vec(),
    };
    Ok(TokenSet {
        access_token: crate::util::secret(resp.access_token().secret().clone()),
        refresh_token: resp
            .refresh_token()
            .map(|r| crate::util::secret(r.secret().clone()))
            .filter(|r| !r.expose_secret().is_empty()),
        token_type,
        scopes,
        expires_at,
        obtained_at,
        refresh_expires_at,
    })
}

/// How a request of the client's own (revocation, introspection) carries its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFormat {
    Form,
    Json,
}

/// `request` with `fields` as its body and the client's authentication as the provider wants it:
/// HTTP Basic with the id and secret form-encoded first (RFC 6749 §2.3.1), or `client_id` and
/// `client_secret` among the fields.
pub(crate) fn client_authenticated(
    request: reqwest::RequestBuilder,
    provider: &Provider,
    creds: &ClientCredentials,
    mut fields: Vec<(&'static str, String)>,
    format: BodyFormat,
) -> reqwest::RequestBuilder {
    let request = match provider.client_auth {
        ClientAuth::Basic => {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let secret = creds.client_secret.as_ref().map(|s| enc(s.expose_secret()));
            request.basic_auth(enc(&creds.client_id), secret)
        }
        ClientAuth::Post => {
            fields.push(("client_id", creds.client_id.clone()));
            if let Some(s) = &creds.client_secret {
                fields.push(("client_secret", s.expose_secret().to_string()));
            }
            request
        }
    };
    match format {
        BodyFormat::Form => request.form(&fields),
        BodyFormat::Json => {
            let body: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
            request.json(&body)
        }
    }
}

/// An authorization code to exchange, with what the authorization that got it sent.
pub struct CodeGrant<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    /// The PKCE verifier, for a provider that takes one.
    pub verifier: Option<&'a Secret>,
    /// The scopes the authorization asked for: granted when the answer does not say.
    pub requested: &'a [String],
}

/// Exchange an authorization code at the provider's token endpoint. With the tokens, the
/// id_token if any.
pub async fn exchange_code(
    http: &Outbound,
    provider: &Provider,
    creds: &ClientCredentials,
    grant: CodeGrant<'_>,
    default_lifetime: i64,
) -> Result<(TokenSet, Option<Secret>), TokenError> {
    let client = client(provider, creds, Some(grant.redirect_uri), &provider.token_url)?;
    let mut request = client.exchange_code(AuthorizationCode::new(grant.code.to_string()));
    if let Some(v) = grant.verifier {
        request = request.set_pkce_verifier(PkceCodeVerifier::new(v.expose_secret().to_string()));
    }
    let http = TokenHttp { http: http.for_provider(provider), provider, client_id: &creds.client_id };
    let response = request.request_async(&http).await.map_err(map_error)?;
    let id_token = response.id_token.clone().map(crate::util::secret);
    // An answer without `scope` granted what was asked for (RFC 6749 §5.1).
    Ok((into_token_set(response, provider, default_lifetime, grant.requested)?, id_token))
}

/// Use a refresh token at the provider's token endpoint.
pub async fn refresh(
    http: &Outbound,
    provider: &Provider,
    creds: &ClientCredentials,
    refresh_token: &Secret,
    default_lifetime: i64,
    current_scopes: &[String],
) -> Result<TokenSet, TokenError> {
    let client = client(provider, creds, None, provider.refresh_url())?;
    let token = RefreshToken::new(refresh_token.expose_secret().to_string());
    let http = TokenHttp { http: http.for_provider(provider), provider, client_id: &creds.client_id };
    let response = client.exchange_refresh_token(&token).request_async(&http).await.map_err(map_error)?;
    into_token_set(response, provider, default_lifetime, current_scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LenientTokenResponse, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn lenient_parsing() {
        let r = parse(r#"{"access_token":"a","token_type":"BEARER","expires_in":"3600","scope":"repo,gist"}"#).unwrap();
        assert_eq!(r.expires_in, Some(3600));
        assert_eq!(r.token_type, BasicTokenType::Bearer);
        assert_eq!(r.scopes.as_ref().unwrap().len(), 2);
        let r = parse(r#"{"access_token":"a","token_type":"bearer"}"#).unwrap();
        assert_eq!(r.expires_in, None);
        let r = parse(r#"{"access_token":"a"}"#).unwrap();
        assert_eq!(r.token_type, BasicTokenType::Bearer);
        let r = parse(r#"{"access_token":"a","token_type":"bearer","expires_in":14399.0,"scope":"a b"}"#).unwrap();
        assert_eq!(r.expires_in, Some(14399));
        assert!(parse(r#"{"access_token":123,"token_type":"bearer"}"#).is_err());
        assert!(parse(r#"{"access_token":"a","expires_in":"soon"}"#).is_err());
        assert!(parse(r#"{"token_type":"bearer"}"#).is_err());
        let r = parse(r#"{"access_token":"a","refresh_token_expires_in":"518400"}"#).unwrap();
        assert_eq!((r.refresh_token_expires_in, r.refresh_expires_in), (Some(518400), None));
        let r = parse(r#"{"access_token":"a","refresh_expires_in":1800}"#).unwrap();
        assert_eq!(r.refresh_expires_in, Some(1800));
    }

    #[test]
    fn the_refresh_token_expiry_is_made_absolute() {
        let provider = crate::oauth::providers::demo(
            &crate::config::Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap(),
        );
        let set = |json: &str| into_token_set(parse(json).unwrap(), &provider, 3600, &[]).unwrap();
        let s = set(r#"{"access_token":"a","refresh_token_expires_in":518400}"#);
        assert_eq!(s.refresh_expires_at, Some(s.obtained_at + 518400));
        let s = set(r#"{"access_token":"a","refresh_expires_in":"1800"}"#);
        assert_eq!(s.refresh_expires_at, Some(s.obtained_at + 1800));
        // Keycloak's 0 means "does not expire"; not said at all is unknown.
        assert_eq!(set(r#"{"access_token":"a","refresh_expires_in":0}"#).refresh_expires_at, None);
        assert_eq!(set(r#"{"access_token":"a"}"#).refresh_expires_at, None);
    }

    #[test]
    fn scopes_may_come_as_an_array() {
        let r = parse(r#"{"access_token":"a","scope":["user:read:email","chat:read"]}"#).unwrap();
        let scopes: Vec<String> = r.scopes.unwrap().iter().map(|s| s.to_string()).collect();
        assert_eq!(scopes, ["user:read:email", "chat:read"]);
        assert_eq!(parse(r#"{"access_token":"a","scope":[]}"#).unwrap().scopes.unwrap().len(), 0);
        assert!(parse(r#"{"access_token":"a","scope":[1]}"#).is_err());
    }

    #[test]
    fn tokens_are_read_from_the_configured_object_when_it_has_them() {
        let slack = br#"{"ok":true,"access_token":"xoxb-bot","token_type":"bot","scope":"commands",
            "authed_user":{"id":"U1","scope":"users.profile:read,chat:write","access_token":"xoxp-user","token_type":"user"}}"#;
        let inner: serde_json::Value =
            serde_json::from_slice(&token_object_at(slack, "/authed_user").unwrap()).unwrap();
        assert_eq!(inner["access_token"], "xoxp-user");
        let set = parse(&String::from_utf8(token_object_at(slack, "/authed_user").unwrap()).unwrap()).unwrap();
        assert_eq!(set.scopes.unwrap().len(), 2, "the user token's scopes, comma-separated");
        // A refresh answer has its tokens at the top: left alone; so is an object without a token.
        assert_eq!(
            token_object_at(br#"{"ok":true,"access_token":"xoxe.xoxp-1","refresh_token":"r"}"#, "/authed_user"),
            None
        );
        assert_eq!(token_object_at(br#"{"authed_user":{"id":"U1"}}"#, "/authed_user"), None);
        assert_eq!(token_object_at(b"not json", "/authed_user"), None);
    }

    #[test]
    fn token_requests_are_sent_as_the_provider_wants_them() {
        let settings = crate::config::Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap();
        let http = Outbound::new(&settings.http).unwrap();
        let mut provider = crate::oauth::providers::demo(&settings);
        let form = || {
            oauth2::http::Request::builder()
                .header("content-type", "application/x-www-form-urlencoded")
                .body(b"grant_type=authorization_code&code=c%2B1&redirect_uri=https%3A%2F%2Fa.example%2Fcb".to_vec())
                .unwrap()
        };
        let adapt = |p: &Provider| TokenHttp { http: &http, provider: p, client_id: "cid" }.adapt(form()).unwrap();
        let plain = adapt(&provider);
        assert_eq!(plain.body(), form().body(), "a form stays a form");
        provider.token_request = TokenRequest::Json;
        provider.api_headers =
            vec![("notion-version".into(), "2025-09-03".into()), ("client-id".into(), "{client_id}".into())];
        let json = adapt(&provider);
        assert_eq!(json.headers()["content-type"], "application/json");
        assert_eq!(json.headers()["notion-version"], "2025-09-03");
        assert_eq!(json.headers()["client-id"], "cid");
        let body: serde_json::Value = serde_json::from_slice(json.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"grant_type": "authorization_code", "code": "c+1", "redirect_uri": "https://a.example/cb"})
        );
    }

    #[test]
    fn debug_output_hides_tokens() {
        let r = parse(r#"{"access_token":"AT-CANARY-1","refresh_token":"RT-CANARY-1"}"#).unwrap();
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
    }

    #[test]
    fn error_classes() {
        assert!(TokenError::Rejected("invalid_grant".into()).is_invalid_grant());
        assert!(TokenError::Rejected("invalid_client".into()).is_client_error());
        assert!(!TokenError::Timeout.is_invalid_grant());
        assert_eq!(sanitize_code(" invalid_grant "), "invalid_grant");
        for bad in [
            "<script>",
            "\"'",
            "",
            "RT-CANARY-0123abcd",
            "ghr_1B4a2e77838347a7E420ce178F2E7c6912E169246c34E1",
            "x".repeat(65).as_str(),
        ] {
            assert_eq!(sanitize_code(bad), "unknown_error", "{bad}");
        }
    }
}

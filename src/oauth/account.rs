//! Calling a provider's API with a user's token: fresh token first, one refresh and one retry
//! after a 401. Used by the account-info page (and any later caller).

use crate::util::ExposeSecret;
use rocket::http::Status;

use crate::db::models::connections::{Account, Which};
use crate::error::AppError;
use crate::oauth::access::{fresh_token, refresh_after_401, Access, AccessError, FreshToken};
use crate::oauth::http::{HttpError, Outbound};
use crate::oauth::providers::{AccountMethod, AccountStyle, Provider};
use crate::oauth::tokens::{client_authenticated, BodyFormat, TokenError};
use crate::util::Secret;
use crate::vault::store::{client_credentials, ClientCredentials};
use url::Url;

/// A provider's answer, read with the size cap.
#[derive(Debug)]
pub struct ProviderResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

pub fn http_error(e: HttpError) -> AccessError {
    AccessError::Provider(match e {
        HttpError::Timeout => TokenError::Timeout,
        HttpError::Connect(m) | HttpError::Other(m) => TokenError::Network(m),
        HttpError::TooLarge(n) => TokenError::InvalidResponse(format!("larger than {n} bytes")),
        HttpError::RateLimited(after) => TokenError::RateLimited(after),
    })
}

/// Like [`call_with_token`], but the final answer's body is left unread for streaming (at most
/// `limit` bytes may be declared).
pub async fn send_with_token<B>(
    ctx: &Access<'_>,
    which: Which,
    provider: &Provider,
    limit: usize,
    build: B,
) -> Result<reqwest::Response, AccessError>
where
    B: Fn(&reqwest::Client, &Secret) -> reqwest::RequestBuilder,
{
    let http = ctx.http.for_provider(provider);
    let token = fresh_token(ctx, which, provider).await?;
    let response = http.send_streaming(build(http.client(), &token.access_token), limit).await.map_err(http_error)?;
    if response.status().as_u16() != 401 {
        return Ok(response);
    }
    let Some(token) = retry_token(ctx, Which::id(which.user_id, token.connection_id), provider, token.version).await?
    else {
        return Ok(response);
    };
    drop(response);
    http.send_streaming(build(http.client(), &token.access_token), limit).await.map_err(http_error)
}

/// After a 401 to the token of `version`: the token to retry with (see [`refresh_after_401`]), or
/// `None` to pass the 401 on.
async fn retry_token(
    ctx: &Access<'_>,
    which: Which,
    provider: &Provider,
    version: i64,
) -> Result<Option<FreshToken>, AccessError> {
    let token = refresh_after_401(ctx, which, provider, version).await?;
    let user_id = which.user_id;
    match &token {
        Some(t) => {
            tracing::info!(service = %provider.name, user_id, version = t.version, "the provider answered 401: retrying once with a newer token")
        }
        None => {
            tracing::info!(service = %provider.name, user_id, "the provider answered 401 to a token issued moments ago: not refreshing it again (refresh_cooldown)")
        }
    }
    Ok(token)
}

/// Send a request built by `build` with the user's access token; after a 401, refresh once (unless
/// the token was obtained within `refresh_cooldown`) and retry once. The caller sees the final
/// answer (a second 401 included).
pub async fn call_with_token<B>(
    ctx: &Access<'_>,
    which: Which,
    provider: &Provider,
    build: B,
) -> Result<ProviderResponse, AccessError>
where
    B: Fn(&reqwest::Client, &Secret) -> reqwest::RequestBuilder,
{
    let http = ctx.http.for_provider(provider);
    let token = fresh_token(ctx, which, provider).await?;
    let (status, headers, body) = http.send(build(http.client(), &token.access_token)).await.map_err(http_error)?;
    if status.as_u16() != 401 {
        return Ok(ProviderResponse { status: status.as_u16(), headers, body });
    }
    let Some(token) = retry_token(ctx, Which::id(which.user_id, token.connection_id), provider, token.version).await?
    else {
        return Ok(ProviderResponse { status: status.as_u16(), headers, body });
    };
    let (status, headers, body) = http.send(build(http.client(), &token.access_token)).await.map_err(http_error)?;
    Ok(ProviderResponse { status: status.as_u16(), headers, body })
}

/// The account call's result, ready for the page.
#[derive(Debug)]
pub struct AccountInfo {
    pub json: serde_json::Value,
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

fn field(json: &serde_json::Value, pointer: Option<&str>) -> Option<String> {
    match json.pointer(pointer?)? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The most of an account id or label that is kept (longer ones are cut, on a char boundary).
const ACCOUNT_ID_MAX: usize = 255;
const ACCOUNT_LABEL_MAX: usize = 200;

fn clean(text: String, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect::<String>().trim().to_string()
}

/// The account of an account-API answer: the id at `account_id_pointer`, the label at
/// `account_label_pointer` (else the email, else the name). `None` without an id.
pub fn account_of(provider: &Provider, json: &serde_json::Value) -> Option<Account> {
    let f = &provider.account_fields;
    let id = clean(field(json, f.id.as_deref())?, ACCOUNT_ID_MAX);
    if id.is_empty() {
        return None;
    }
    let label = field(json, f.label.as_deref())
        .or_else(|| field(json, f.email.as_deref()))
        .or_else(|| field(json, f.name.as_deref()))
        .map(|l| clean(l, ACCOUNT_LABEL_MAX))
        .filter(|l| !l.is_empty());
    Some(Account { id, label })
}

/// The account call for `token` as the provider wants it: `GET` or `POST` (with `account_body`
/// as JSON) authenticated by the token as API calls are, or RFC 7662 introspection of the token
/// with the client's authentication (`account_style = "introspect"`); with the `api_headers`.
pub fn account_request(
    client: &reqwest::Client,
    provider: &Provider,
    url: Url,
    token: &Secret,
    creds: Option<&ClientCredentials>,
) -> reqwest::RequestBuilder {
    let request = match (provider.account_style, creds) {
        (AccountStyle::Introspect, Some(creds)) => client_authenticated(
            client.post(url),
            provider,
            creds,
            vec![("token", token.expose_secret().to_string()), ("token_type_hint", "access_token".into())],
            BodyFormat::Form,
        ),
        _ => {
            let request = match provider.account_method {
                AccountMethod::Get => client.get(url),
                // Dropbox's RPC endpoints take POST with no body at all; GraphQL APIs a query.
                AccountMethod::Post => match &provider.account_body {
                    Some(body) => {
                        client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone())
                    }
                    None => client.post(url),
                },
            };
            provider.token_header.apply(request, token.expose_secret())
        }
    };
    with_api_headers(request.header(reqwest::header::ACCEPT, "application/json"), provider, creds)
}

/// `request` with the provider's `api_headers` (those naming the client id only when `creds` is given).
pub fn with_api_headers(
    mut request: reqwest::RequestBuilder,
    provider: &Provider,
    creds: Option<&ClientCredentials>,
) -> reqwest::RequestBuilder {
    for (name, value) in provider.api_headers(creds.map(|c| c.client_id.as_str())) {
        request = request.header(name, value);
    }
    request
}

/// The client credentials when `needed` (`{client_id}` in the provider's `api_headers`, an
/// introspecting account call); `None` otherwise, with no database read (the proxy's hot path).
pub async fn credentials_if(
    needed: bool,
    ctx: &Access<'_>,
    provider: &Provider,
) -> Result<Option<ClientCredentials>, AccessError> {
    if !needed {
        return Ok(None);
    }
    let (cipher, name) = (ctx.tokens.cipher.clone(), provider.name.clone());
    let creds =
        ctx.tokens.db.run(move |conn| client_credentials(conn, &cipher, &name)).await.map_err(AccessError::App)?;
    creds.map(Some).ok_or(AccessError::NotConfigured)
}

/// Whether the provider tells which account a token is for (an account API and where its id is).
pub fn identifies(provider: &Provider) -> bool {
    provider.account_url.is_some() && provider.account_fields.id.is_some()
}

/// Which account a token just obtained is for, from the provider's account API (`Ok(None)` when
/// the provider does not say: see [`identifies`]). Nothing is stored by this call; a provider
/// that cannot answer fails the connection (the caller stores nothing then either), since tokens
/// of an unknown account could replace another account's.
pub async fn identify(
    http: &Outbound,
    provider: &Provider,
    creds: &ClientCredentials,
    access_token: &Secret,
) -> Result<Option<Account>, AppError> {
    let Some(url) = provider.account_url.clone().filter(|_| identifies(provider)) else {
        return Ok(None);
    };
    let http = http.for_provider(provider);
    let request = account_request(http.client(), provider, url, access_token, Some(creds));
    let name = &provider.display_name;
    let failed = |detail: String| AppError::Upstream {
        status: Status::BadGateway,
        message: format!(
            "tokenvault could not learn which {name} account you authorized, so nothing was stored. Please try again."
        ),
        detail: format!("{}: identifying the account: {detail}", provider.name),
    };
    let (status, _, body) = http.send(request).await.map_err(|e| failed(e.to_string()))?;
    if !status.is_success() {
        return Err(failed(format!("the account API answered {}", status.as_u16())));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| failed("the account API's answer is not JSON".into()))?;
    account_of(provider, &json).map(Some).ok_or_else(|| failed("the answer has no account id".into()))
}

/// Fetch the user's account at the provider.
pub async fn fetch_account(ctx: &Access<'_>, which: Which, provider: &Provider) -> Result<AccountInfo, AccessError> {
    let Some(url) = provider.account_url.clone() else {
        return Err(AccessError::App(AppError::NotFound));
    };
    let introspects = provider.account_style == AccountStyle::Introspect;
    let creds = credentials_if(provider.needs_client_id() || introspects, ctx, provider).await?;
    let response = call_with_token(ctx, which, provider, |client, token| {
        account_request(client, provider, url.clone(), token, creds.as_ref())
    })
    .await?;
    let name = &provider.display_name;
    let upstream = |message: String, detail: String| {
        AccessError::App(AppError::Upstream { status: Status::BadGateway, message, detail })
    };
    match response.status {
        200..=299 => {}
        401 => {
            return Err(upstream(
                format!("{name} refused tokenvault's access even after renewing it. Try reconnecting."),
                format!("{}: 401 after refresh", provider.name),
            ))
        }
        status => {
            return Err(upstream(
                format!("{name} answered with an error (HTTP {status}). Please try again later."),
                format!("{}: account call answered {status}", provider.name),
            ))
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&response.body).map_err(|_| {
        upstream(
            format!("{name} sent an answer tokenvault could not read."),
            format!("{}: account answer is not JSON", provider.name),
        )
    })?;
    let f = &provider.account_fields;
    let (id, name, email) =
        (field(&json, f.id.as_deref()), field(&json, f.name.as_deref()), field(&json, f.email.as_deref()));
    let json = without_tokens(json, &stored_tokens(ctx, which, &provider.name).await?);
    Ok(AccountInfo { id, name, email, json })
}

/// Keys whose values are token material wherever they are in an account answer (an
/// introspection answer, HubSpot's, carries the token it describes).
const TOKEN_KEYS: [&str; 5] = ["token", "access_token", "refresh_token", "signed_access_token", "id_token"];

/// The connection's access and refresh tokens as stored now (after any refresh the call made).
async fn stored_tokens(ctx: &Access<'_>, which: Which, service: &str) -> Result<Vec<String>, AccessError> {
    let service = service.to_string();
    let row =
        ctx.tokens.db.run(move |conn| Ok(crate::db::models::connections::find_which(conn, which, &service)?)).await;
    let Some(row) = row.map_err(AccessError::App)? else { return Ok(Vec::new()) };
    let (access, refresh) = crate::oauth::store::open_tokens(ctx.tokens.cipher, &row).map_err(AccessError::App)?;
    Ok([Some(access), refresh].into_iter().flatten().map(|t| t.expose_secret().to_string()).collect())
}

/// `json` without token material, at any depth: the [`TOKEN_KEYS`] and any string equal to one
/// of `tokens` (dropped from objects and arrays alike). What every caller shows (the account page,
/// `/api/v1`, MCP `get_account`) goes through here.
pub fn without_tokens(json: serde_json::Value, tokens: &[String]) -> serde_json::Value {
    use serde_json::Value;
    let secret = |v: &Value| matches!(v, Value::String(s) if tokens.iter().any(|t| !t.is_empty() && t == s));
    match json {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, v)| !TOKEN_KEYS.contains(&k.as_str()) && !secret(v))
                .map(|(k, v)| (k, without_tokens(v, tokens)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().filter(|v| !secret(v)).map(|v| without_tokens(v, tokens)).collect())
        }
        other if secret(&other) => Value::Null,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::{field, without_tokens};

    #[test]
    fn token_material_is_stripped_at_any_depth() {
        let v = serde_json::json!({
            "user": "ann", "token": "AT-1", "hub_id": 7,
            "details": {"signed_access_token": {"expiresAt": 1}, "echo": "AT-1", "refresh_token": "x", "keep": "k"},
            "list": ["RT-1", "fine", {"id_token": "j", "access_token": "a"}],
        });
        let out = without_tokens(v, &["AT-1".into(), "RT-1".into()]);
        let want = serde_json::json!({"user": "ann", "hub_id": 7, "details": {"keep": "k"}, "list": ["fine", {}]});
        assert_eq!(out, want);
        assert_eq!(without_tokens(serde_json::json!("AT-1"), &["AT-1".into()]), serde_json::Value::Null);
        assert_eq!(without_tokens(serde_json::json!({"a": ""}), &[String::new()]), serde_json::json!({"a": ""}));
    }

    #[test]
    fn fields_from_pointers() {
        let v = serde_json::json!({"id": 42, "name": {"display_name": "Ann"}, "email": ""});
        assert_eq!(field(&v, Some("/id")).as_deref(), Some("42"));
        assert_eq!(field(&v, Some("/name/display_name")).as_deref(), Some("Ann"));
        assert_eq!(field(&v, Some("/email")), None);
        assert_eq!(field(&v, None), None);
    }
}

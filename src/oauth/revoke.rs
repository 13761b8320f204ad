//! Disconnecting: revoke at the provider where it can be done (RFC 7009, a JSON body, a call
//! authenticated by the access token, GitHub's own variant), then always delete the local tokens.
//! [`call`] is the provider call, also used by `oauth::retire` for the tokens tokenvault replaced
//! or threw away.

use crate::db::models::connections::{self, Which};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::error::{AppError, AppResult};
use crate::oauth::access::{fresh_token, Access, AccessError};
use crate::oauth::http::Outbound;
use crate::oauth::providers::{Provider, RevokeMethod, RevokeStyle};
use crate::oauth::store::{self, open_tokens};
use crate::oauth::tokens::{client_authenticated, sanitize_code, BodyFormat};
use crate::util::{ExposeSecret, Secret};
use crate::vault::store::{client_credentials, ClientCredentials};

/// What happened at the provider.
#[derive(Debug, PartialEq, Eq)]
pub enum Revoked {
    /// The provider confirmed the revocation.
    AtProvider,
    /// The provider offers no revocation: only the local tokens were deleted.
    NotSupported,
    /// The provider call failed (the reason, safe to show); the local tokens were deleted anyway.
    ProviderFailed(String),
}

/// The token a revocation call names. RFC 7009 takes either (the refresh token ends the grant's
/// access tokens too, §2.1); the Dropbox, bearer and GitHub styles take an access token.
#[derive(Clone, Copy)]
pub enum Token<'a> {
    Refresh(&'a Secret),
    Access(&'a Secret),
}

/// Why a revocation call did not succeed: the provider's HTTP status when it answered, and words
/// safe to show and log (never a token: HTTP errors carry no URL or body).
#[derive(Debug)]
pub struct CallFailed {
    pub status: Option<u16>,
    pub reason: String,
}

impl From<String> for CallFailed {
    fn from(reason: String) -> Self {
        CallFailed { status: None, reason }
    }
}

impl From<&str> for CallFailed {
    fn from(reason: &str) -> Self {
        CallFailed { status: None, reason: reason.to_string() }
    }
}

/// Call `provider`'s revocation endpoint for `token`, in its style. `Ok` only on a 2xx answer
/// whose body does not say the call failed.
pub async fn call(
    http: &Outbound,
    provider: &Provider,
    creds: &ClientCredentials,
    token: Token<'_>,
) -> Result<(), CallFailed> {
    let http = http.for_provider(provider);
    let client = http.client();
    let url = || provider.revoke_url.clone().ok_or("no revocation endpoint is configured");
    let named = |token: Token<'_>| match token {
        Token::Refresh(r) => (r.expose_secret().to_string(), "refresh_token"),
        Token::Access(a) => (a.expose_secret().to_string(), "access_token"),
    };
    let mut request = match (provider.revoke_style, token) {
        (RevokeStyle::None, _) => return Err("the provider offers no revocation".into()),
        (RevokeStyle::Rfc7009, token) => {
            let (token, hint) = named(token);
            let fields = vec![("token", token), ("token_type_hint", hint.to_string())];
            client_authenticated(client.post(url()?), provider, creds, fields, BodyFormat::Form)
        }
        (RevokeStyle::Json, token) => {
            let fields = vec![("token", named(token).0)];
            client_authenticated(client.post(url()?), provider, creds, fields, BodyFormat::Json)
                .header(reqwest::header::ACCEPT, "application/json")
        }
        (RevokeStyle::Dropbox | RevokeStyle::Bearer | RevokeStyle::Github, Token::Refresh(_)) => {
            return Err("this provider revokes with an access token".into())
        }
        // Revoked with a valid access token (Dropbox's also ends its refresh token).
        (RevokeStyle::Dropbox | RevokeStyle::Bearer, Token::Access(access)) => {
            let method = match provider.revoke_method {
                RevokeMethod::Post => reqwest::Method::POST,
                RevokeMethod::Delete => reqwest::Method::DELETE,
            };
            provider.token_header.apply(client.request(method, url()?), access.expose_secret())
        }
        (RevokeStyle::Github, Token::Access(access)) => {
            let template = provider
                .revoke_url
                .clone()
                .unwrap_or_else(|| "https://api.github.com/applications/{client_id}/token".into());
            let client_id: String = url::form_urlencoded::byte_serialize(creds.client_id.as_bytes()).collect();
            let url = template.replace("{client_id}", &client_id);
            let secret = creds.client_secret.as_ref().map(|s| s.expose_secret().to_string());
            client
                .delete(url)
                .basic_auth(&creds.client_id, secret)
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .json(&serde_json::json!({ "access_token": access.expose_secret() }))
        }
    };
    for (name, value) in provider.api_headers(Some(&creds.client_id)) {
        request = request.header(name, value);
    }
    let (status, _, body) = http.send(request).await.map_err(|e| CallFailed::from(e.to_string()))?;
    if !status.is_success() {
        let code = status.as_u16();
        return Err(CallFailed { status: Some(code), reason: format!("the provider answered HTTP {code}") });
    }
    match refused_in_body(&body) {
        Some(code) => Err(format!("the provider answered that it did not revoke ({code})").into()),
        None => Ok(()),
    }
}

/// A successful status whose JSON body says the call failed (Slack answers HTTP 200 with
/// `{"ok": false, "error": "invalid_auth"}`): the error code, made safe to show.
fn refused_in_body(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let failed =
        json.get("ok") == Some(&serde_json::Value::Bool(false)) || json.get("error").is_some_and(|e| e.is_string());
    failed.then(|| sanitize_code(json.get("error").and_then(|e| e.as_str()).unwrap_or("")))
}

async fn call_provider(ctx: &Access<'_>, which: Which, provider: &Provider) -> Result<(), String> {
    let svc = provider.name.clone();
    let cipher = ctx.tokens.cipher.clone();
    let (row, creds) = ctx
        .tokens
        .db
        .run(move |conn| Ok((connections::find_which(conn, which, &svc)?, client_credentials(conn, &cipher, &svc)?)))
        .await
        .map_err(|e| e.user_message())?;
    let row = row.ok_or("the connection is gone")?;
    let creds = creds.ok_or("tokenvault has no client credentials for this provider")?;
    let (access, refresh) =
        open_tokens(ctx.tokens.cipher, &row).map_err(|_| "the stored tokens could not be decrypted".to_string())?;
    let token = match provider.revoke_style {
        RevokeStyle::None => return Ok(()),
        // Revoking the refresh token ends the whole grant (RFC 7009 §2.1).
        RevokeStyle::Rfc7009 | RevokeStyle::Json => refresh.as_ref().map_or(Token::Access(&access), Token::Refresh),
        RevokeStyle::Dropbox | RevokeStyle::Bearer => {
            // A valid access token: refreshed first if it has expired.
            let token = fresh_token(ctx, which, provider).await.map_err(|e| {
                // An administrator's problem is logged as one (a page error would be, by the
                // responder; here the revocation only reports it).
                if matches!(e, AccessError::NotConfigured | AccessError::ClientRejected(_)) {
                    tracing::error!(service = %provider.name, error = %e, "cannot revoke: the client credentials are missing or rejected");
                }
                e.into_app_error(provider).user_message()
            })?;
            return call(ctx.http, provider, &creds, Token::Access(&token.access_token)).await.map_err(|e| e.reason);
        }
        RevokeStyle::Github => Token::Access(&access),
    };
    call(ctx.http, provider, &creds, token).await.map_err(|e| e.reason)
}

/// Revoke at the provider if it can be done, then delete the local tokens whatever happened.
pub async fn revoke_and_delete(ctx: &Access<'_>, which: Which, provider: &Provider) -> AppResult<Revoked> {
    let svc = provider.name.clone();
    let found = ctx.tokens.db.run(move |conn| Ok(connections::find_which(conn, which, &svc)?)).await?;
    let Some(row) = found else {
        return Err(AppError::NotFound);
    };
    // This row from here on (not whichever is first by the time the provider answered).
    let which = Which::id(which.user_id, row.id);
    let outcome = if provider.can_revoke() {
        match call_provider(ctx, which, provider).await {
            Ok(()) => Revoked::AtProvider,
            Err(reason) => {
                tracing::warn!(service = %provider.name, reason = %reason, "revocation at the provider failed");
                Revoked::ProviderFailed(reason)
            }
        }
    } else {
        Revoked::NotSupported
    };
    let (event_outcome, detail) = match &outcome {
        Revoked::AtProvider => (EventOutcome::Ok, "revoked at the provider; tokens deleted".to_string()),
        Revoked::NotSupported => {
            (EventOutcome::LocalOnly, "the provider offers no revocation; tokens deleted".to_string())
        }
        Revoked::ProviderFailed(r) => (EventOutcome::ProviderFailed, format!("{r}; tokens deleted anyway")),
    };
    store::delete(ctx.tokens, which, &provider.name, EventKind::Revoke, event_outcome, detail).await?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::refused_in_body;

    #[test]
    fn a_successful_status_can_still_say_it_failed() {
        assert_eq!(refused_in_body(br#"{"ok":false,"error":"invalid_auth"}"#).as_deref(), Some("invalid_auth"));
        assert_eq!(refused_in_body(br#"{"ok":false}"#).as_deref(), Some("unknown_error"));
        assert_eq!(refused_in_body(br#"{"error":"<b>RT-CANARY-1</b>"}"#).as_deref(), Some("unknown_error"));
        assert_eq!(refused_in_body(br#"{"ok":true,"revoked":true}"#), None);
        assert_eq!(refused_in_body(b"null"), None, "Dropbox answers null");
        assert_eq!(refused_in_body(b""), None);
        assert_eq!(refused_in_body(br#"{"status":"success"}"#), None, "Zoom");
    }
}

//! Disconnecting: revoke at the provider where it can be done (RFC 7009, a JSON body, a call
//! authenticated by the access token, GitHub's own variant), then always delete the local tokens.

use crate::db::models::connections::{self, Which};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::error::{AppError, AppResult};
use crate::oauth::access::{fresh_token, Access, AccessError};
use crate::oauth::providers::{Provider, RevokeMethod, RevokeStyle};
use crate::oauth::store::{self, open_tokens};
use crate::oauth::tokens::{client_authenticated, sanitize_code, BodyFormat};
use crate::util::ExposeSecret;
use crate::vault::store::client_credentials;

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
    let client = ctx.http.client();
    // Revoking the refresh token ends the whole grant (RFC 7009 §2.1).
    let (token, hint) = match &refresh {
        Some(r) => (r.expose_secret().to_string(), "refresh_token"),
        None => (access.expose_secret().to_string(), "access_token"),
    };
    let url = || provider.revoke_url.clone().ok_or("no revocation endpoint is configured");
    let mut request = match provider.revoke_style {
        RevokeStyle::None => return Ok(()),
        RevokeStyle::Rfc7009 => client_authenticated(
            client.post(url()?),
            provider,
            &creds,
            vec![("token", token), ("token_type_hint", hint.to_string())],
            BodyFormat::Form,
        ),
        RevokeStyle::Json => {
            client_authenticated(client.post(url()?), provider, &creds, vec![("token", token)], BodyFormat::Json)
                .header(reqwest::header::ACCEPT, "application/json")
        }
        RevokeStyle::Dropbox | RevokeStyle::Bearer => {
            let url = url()?;
            // Revoked with a valid access token (Dropbox's also ends the refresh token).
            let token = fresh_token(ctx, which, provider).await.map_err(|e| {
                // An administrator's problem is logged as one (a page error would be, by the
                // responder; here the revocation only reports it).
                if matches!(e, AccessError::NotConfigured | AccessError::ClientRejected(_)) {
                    tracing::error!(service = %provider.name, error = %e, "cannot revoke: the client credentials are missing or rejected");
                }
                e.into_app_error(provider).user_message()
            })?;
            let method = match provider.revoke_method {
                RevokeMethod::Post => reqwest::Method::POST,
                RevokeMethod::Delete => reqwest::Method::DELETE,
            };
            provider.token_header.apply(client.request(method, url), token.access_token.expose_secret())
        }
        RevokeStyle::Github => {
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
    let (status, _, body) = ctx.http.send(request).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("the provider answered HTTP {}", status.as_u16()));
    }
    match refused_in_body(&body) {
        Some(code) => Err(format!("the provider answered that it did not revoke ({code})")),
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

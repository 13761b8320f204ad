//! Disconnecting: revoke at the provider where it can be done (RFC 7009, or Dropbox's and
//! GitHub's own variants), then always delete the local tokens.

use crate::db::models::connections::{self, Which};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::error::{AppError, AppResult};
use crate::oauth::access::{fresh_token, Access, AccessError};
use crate::oauth::providers::{ClientAuth, Provider, RevokeStyle};
use crate::oauth::store::{self, open_tokens};
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
    let request = match provider.revoke_style {
        RevokeStyle::None => return Ok(()),
        RevokeStyle::Rfc7009 => {
            let url = provider.revoke_url.clone().ok_or("no revocation endpoint is configured")?;
            // Revoking the refresh token ends the whole grant (RFC 7009 §2.1).
            let (token, hint) = match &refresh {
                Some(r) => (r.expose_secret().to_string(), "refresh_token"),
                None => (access.expose_secret().to_string(), "access_token"),
            };
            let mut form = vec![("token", token), ("token_type_hint", hint.to_string())];
            let request = client.post(url);
            match provider.client_auth {
                ClientAuth::Basic => {
                    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                    let secret = creds.client_secret.as_ref().map(|s| enc(s.expose_secret()));
                    request.basic_auth(enc(&creds.client_id), secret).form(&form)
                }
                ClientAuth::Post => {
                    form.push(("client_id", creds.client_id.clone()));
                    if let Some(s) = &creds.client_secret {
                        form.push(("client_secret", s.expose_secret().to_string()));
                    }
                    request.form(&form)
                }
            }
        }
        RevokeStyle::Dropbox => {
            let url = provider.revoke_url.clone().ok_or("no revocation endpoint is configured")?;
            // Dropbox revokes with a valid access token (which also ends the refresh token).
            let token = fresh_token(ctx, which, provider).await.map_err(|e| {
                // An administrator's problem is logged as one (a page error would be, by the
                // responder; here the revocation only reports it).
                if matches!(e, AccessError::NotConfigured | AccessError::ClientRejected(_)) {
                    tracing::error!(service = %provider.name, error = %e, "cannot revoke: the client credentials are missing or rejected");
                }
                e.into_app_error(provider).user_message()
            })?;
            client.post(url).bearer_auth(token.access_token.expose_secret())
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
    let (status, _, _) = ctx.http.send(request).await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the provider answered HTTP {}", status.as_u16()))
    }
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

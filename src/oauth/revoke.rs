//! Disconnecting: revoke at the provider where it can be done (RFC 7009, or Dropbox's and
//! GitHub's own variants), then always delete the local tokens. [`call`] is the provider call,
//! also used by `oauth::retire` for the tokens tokenvault replaced or threw away.

use crate::db::models::connections::{self, Which};
use crate::db::models::events::{EventKind, EventOutcome};
use crate::error::{AppError, AppResult};
use crate::oauth::access::{fresh_token, Access, AccessError};
use crate::oauth::http::Outbound;
use crate::oauth::providers::{ClientAuth, Provider, RevokeStyle};
use crate::oauth::store::{self, open_tokens};
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
/// access tokens too, §2.1); Dropbox and GitHub take an access token.
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

/// Call `provider`'s revocation endpoint for `token`, in its style. `Ok` only on a 2xx answer.
pub async fn call(
    http: &Outbound,
    provider: &Provider,
    creds: &ClientCredentials,
    token: Token<'_>,
) -> Result<(), CallFailed> {
    let client = http.client();
    let request = match (provider.revoke_style, token) {
        (RevokeStyle::None, _) => return Err("the provider offers no revocation".into()),
        (RevokeStyle::Rfc7009, token) => {
            let url = provider.revoke_url.clone().ok_or("no revocation endpoint is configured")?;
            let (token, hint) = match token {
                Token::Refresh(r) => (r.expose_secret().to_string(), "refresh_token"),
                Token::Access(a) => (a.expose_secret().to_string(), "access_token"),
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
        (RevokeStyle::Dropbox | RevokeStyle::Github, Token::Refresh(_)) => {
            return Err("this provider revokes with an access token".into())
        }
        // Dropbox revokes with a valid access token (which also ends its refresh token).
        (RevokeStyle::Dropbox, Token::Access(access)) => {
            let url = provider.revoke_url.clone().ok_or("no revocation endpoint is configured")?;
            client.post(url).bearer_auth(access.expose_secret())
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
    let (status, _, _) = http.send(request).await.map_err(|e| CallFailed::from(e.to_string()))?;
    if status.is_success() {
        Ok(())
    } else {
        let code = status.as_u16();
        Err(CallFailed { status: Some(code), reason: format!("the provider answered HTTP {code}") })
    }
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
        RevokeStyle::Rfc7009 => refresh.as_ref().map_or(Token::Access(&access), Token::Refresh),
        RevokeStyle::Dropbox => {
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

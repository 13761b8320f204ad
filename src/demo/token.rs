//! The token endpoint (`authorization_code` with PKCE S256, `refresh_token` with rotation) and
//! RFC 7009 revocation, both behind client authentication.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rocket::form::{Form, FromForm};
use rocket::http::Status;
use rocket::request::{FromRequest, Outcome, Request};
use rocket::serde::json::{json, Json, Value};
use rocket::{post, routes, Route, State};
use sha2::{Digest, Sha256};

use super::{demo_client, registered_redirect, FailureSwitch, OAuthError};
use crate::db::models::demo::{self as model, DemoToken, KIND_ACCESS, KIND_REFRESH};
use crate::db::Conn;
use crate::error::AppResult;
use crate::state::AppState;
use crate::util::{ct_eq, now, random_token, sha256_hex};

pub(super) fn routes() -> Vec<Route> {
    routes![token, revoke]
}

/// Client credentials from HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts) or the body.
pub struct BasicAuth(Option<(String, String)>);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for BasicAuth {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        let parsed = req.headers().get_one("Authorization").and_then(|h| {
            let encoded = h.strip_prefix("Basic ")?;
            let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            let unescape =
                |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
            Some((unescape(id)?, unescape(secret)?))
        });
        Outcome::Success(BasicAuth(parsed))
    }
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct TokenRequest {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn authenticate(
    app: &AppState,
    basic: &BasicAuth,
    body_id: Option<&str>,
    body_secret: Option<&str>,
) -> Result<String, OAuthError> {
    let (id, secret) = match (&basic.0, body_id, body_secret) {
        (Some((id, secret)), _, _) => (id.clone(), secret.clone()),
        (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        _ => return Err(OAuthError(Status::Unauthorized, "invalid_client", "client authentication is required")),
    };
    let (expected_id, expected_secret) = demo_client(app).await?;
    if ct_eq(&id, &expected_id) && ct_eq(&secret, &expected_secret) {
        Ok(id)
    } else {
        Err(OAuthError(Status::Unauthorized, "invalid_client", "unknown client or wrong secret"))
    }
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let valid_chars = verifier.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    (43..=128).contains(&verifier.len())
        && valid_chars
        && ct_eq(&URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())), challenge)
}

/// How a successful token answer is shaped (the console's switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Normal,
    OmitExpiresIn,
    RefreshTokenExpiresIn,
}

fn issue_tokens(conn: &mut Conn, grant_id: i64, scopes: &str, lifetime: i64, shape: Shape) -> AppResult<Value> {
    let access = format!("demo-at-{}", random_token(24));
    let refresh = format!("demo-rt-{}", random_token(24));
    model::insert_token(
        conn,
        &DemoToken {
            token_hash: sha256_hex(&access),
            grant_id,
            kind: KIND_ACCESS.into(),
            used: false,
            expires_at: Some(now() + lifetime),
        },
    )?;
    model::insert_token(
        conn,
        &DemoToken {
            token_hash: sha256_hex(&refresh),
            grant_id,
            kind: KIND_REFRESH.into(),
            used: false,
            expires_at: None,
        },
    )?;
    let mut answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "refresh_token": refresh,
        "scope": scopes,
    });
    match shape {
        Shape::Normal => {}
        Shape::OmitExpiresIn => {
            answer.as_object_mut().map(|o| o.remove("expires_in"));
        }
        Shape::RefreshTokenExpiresIn => answer["refresh_token_expires_in"] = json!(super::REFRESH_TOKEN_LIFETIME),
    }
    Ok(answer)
}

#[post("/oauth2/token", data = "<form>")]
async fn token(
    app: &State<AppState>,
    switch: &State<FailureSwitch>,
    basic: BasicAuth,
    form: Form<TokenRequest>,
) -> Result<Json<Value>, OAuthError> {
    let f = form.into_inner();
    let client_id = authenticate(app, &basic, f.client_id.as_deref(), f.client_secret.as_deref()).await?;
    let shape = injected(app, switch).await?;
    match f.grant_type.as_deref() {
        Some("authorization_code") => authorization_code(app, f, client_id, shape).await,
        Some("refresh_token") => refresh_token(app, f, client_id, shape).await,
        _ => Err(OAuthError(Status::BadRequest, "unsupported_grant_type", "use authorization_code or refresh_token")),
    }
}

/// The failure the demo console queued for the next token request, if any: an error answered
/// now, a slow answer, or an odd shape of the tokens issued.
async fn injected(app: &AppState, switch: &FailureSwitch) -> Result<Shape, OAuthError> {
    let injected = |status, error| OAuthError(status, error, "failure injected from the demo console");
    match switch.take().as_deref() {
        Some("omit_expires_in") => Ok(Shape::OmitExpiresIn),
        Some("refresh_token_expires_in") => Ok(Shape::RefreshTokenExpiresIn),
        Some("rate_limited") => Err(injected(Status::TooManyRequests, "slow_down")),
        Some("invalid_grant") => Err(injected(Status::BadRequest, "invalid_grant")),
        Some("slow") => {
            rocket::tokio::time::sleep(std::time::Duration::from_secs(app.settings.http.timeout + 2)).await;
            Ok(Shape::Normal)
        }
        Some(_) => Err(injected(Status::ServiceUnavailable, "temporarily_unavailable")),
        None => Ok(Shape::Normal),
    }
}

fn invalid_grant() -> OAuthError {
    OAuthError(Status::BadRequest, "invalid_grant", "the grant is invalid, expired or used")
}

/// A code (once, unexpired, for this client and redirect_uri, with its PKCE verifier) for a new grant's tokens.
async fn authorization_code(
    app: &AppState,
    f: TokenRequest,
    client_id: String,
    shape: Shape,
) -> Result<Json<Value>, OAuthError> {
    let lifetime = app.settings.demo.token_lifetime;
    let code = f.code.unwrap_or_default();
    let verifier = f.code_verifier.unwrap_or_default();
    let redirect_uri = f.redirect_uri.unwrap_or_default();
    if !registered_redirect(app, &redirect_uri) {
        return Err(OAuthError(Status::BadRequest, "invalid_grant", "the redirect_uri is not registered"));
    }
    let result = app
        .db
        .run(move |conn| {
            let Some(code) = model::take_code(conn, &sha256_hex(&code))? else { return Ok(None) };
            let valid = code.expires_at > now()
                && code.client_id == client_id
                && code.redirect_uri == redirect_uri
                && pkce_ok(&verifier, &code.code_challenge);
            if !valid {
                return Ok(None);
            }
            let grant = model::create_grant(conn, &client_id, &code.account, &code.scopes, now())?;
            issue_tokens(conn, grant.id, &grant.scopes, lifetime, shape).map(Some)
        })
        .await?;
    result.map(Json).ok_or_else(invalid_grant)
}

/// A refresh token (rotated: one use each; a reused one ends its grant) for new tokens.
async fn refresh_token(
    app: &AppState,
    f: TokenRequest,
    client_id: String,
    shape: Shape,
) -> Result<Json<Value>, OAuthError> {
    let lifetime = app.settings.demo.token_lifetime;
    let refresh = f.refresh_token.unwrap_or_default();
    let result = app
        .db
        .run(move |conn| {
            let hash = sha256_hex(&refresh);
            let Some((token, grant)) = model::find_token(conn, &hash)? else { return Ok(Err(false)) };
            if token.kind != KIND_REFRESH || grant.client_id != client_id {
                return Ok(Err(false));
            }
            if grant.revoked {
                return Ok(Err(true));
            }
            if !model::mark_used(conn, &hash)? {
                // A rotated refresh token came back: assume it leaked and end the whole grant.
                model::revoke_grant(conn, grant.id)?;
                return Ok(Err(false));
            }
            issue_tokens(conn, grant.id, &grant.scopes, lifetime, shape).map(Ok)
        })
        .await?;
    // As Google and Dropbox do, the description says when the user revoked the grant.
    let revoked = || OAuthError(Status::BadRequest, "invalid_grant", "the grant was revoked");
    result.map(Json).map_err(|was_revoked| if was_revoked { revoked() } else { invalid_grant() })
}

/// No `Debug`: it carries a secret (a token, code, password or CSRF token).
#[derive(FromForm)]
pub struct RevokeRequest {
    token: Option<String>,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// RFC 7009: revoking any token of a grant ends the grant. Unknown tokens are not an error.
#[post("/oauth2/revoke", data = "<form>")]
async fn revoke(app: &State<AppState>, basic: BasicAuth, form: Form<RevokeRequest>) -> Result<Status, OAuthError> {
    let f = form.into_inner();
    let client_id = authenticate(app, &basic, f.client_id.as_deref(), f.client_secret.as_deref()).await?;
    let token = f.token.unwrap_or_default();
    app.db
        .run(move |conn| {
            if let Some((_, grant)) = model::find_token(conn, &sha256_hex(&token))? {
                if grant.client_id == client_id {
                    model::revoke_grant(conn, grant.id)?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_check() {
        let verifier = "a".repeat(43);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert!(pkce_ok(&verifier, &challenge));
        assert!(!pkce_ok(&"b".repeat(43), &challenge));
        assert!(!pkce_ok("short", &challenge));
        assert!(!pkce_ok(&verifier, &verifier)); // `plain` is not accepted
    }
}

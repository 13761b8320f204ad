//! The authorization-code flow: the Redirector's `start` and the Callback's `finish`.
//!
//! `state` is 256 random bits, stored only as a SHA-256 hash, bound to the session, the user,
//! the service, the PKCE verifier (sealed) and the return path, valid for `flow_ttl` seconds, and
//! deleted on the first callback that names it — whatever that callback says.

use std::sync::Arc;

use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use rocket::request::{FromRequest, Outcome, Request};
use url::Url;

use crate::auth::CurrentUser;
use crate::config::Settings;
use crate::db::models::events::{EventKind, EventOutcome};
use crate::db::models::flows::{self, Flow};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::oauth::access::Access;
use crate::oauth::providers::Provider;
use crate::oauth::{store, tokens};
use crate::util::{now, random_token, sha256_hex, Secret};
use crate::vault::store::client_credentials;
use crate::vault::{Aad, Cipher};

/// Starting (or finishing) a flow for a provider without client credentials. The Redirector's
/// page says so and offers no button, so a POST anyway is the request's fault: 400, with the words
/// of [`AppError::NotConfigured`] (which a refresh without credentials answers: 503).
pub(crate) fn not_configured(provider: &Provider) -> AppError {
    let words = AppError::NotConfigured { service: provider.service(), client_id_path: provider.client_id_path() };
    AppError::BadRequest(words.user_message())
}

/// Create a flow for `user` and return the provider's authorize URL to send the browser to.
pub async fn start(
    db: &Db,
    cipher: &Arc<Cipher>,
    settings: &Settings,
    user: &CurrentUser,
    provider: &Provider,
    return_to: &str,
) -> AppResult<Url> {
    let (c, name) = (cipher.clone(), provider.name.clone());
    let creds =
        db.run(move |conn| client_credentials(conn, &c, &name)).await?.ok_or_else(|| not_configured(provider))?;

    let state = random_token(32);
    let state_hash = sha256_hex(&state);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(64);
    let redirect_uri = settings.redirect_uri(&provider.name);
    let flow = Flow {
        pkce_verifier: cipher.seal_str(verifier.secret(), Aad::PkceVerifier { state_hash: &state_hash }),
        state_hash,
        session_hash: user.session_hash.clone(),
        user_id: user.id,
        service: provider.name.clone(),
        redirect_uri: redirect_uri.clone(),
        return_to: return_to.to_string(),
        created_at: now(),
        expires_at: now() + settings.flow_ttl,
    };
    let keep = settings.max_pending_flows_per_user;
    db.run(move |conn| {
        conn.transaction(|conn| {
            flows::delete_expired(conn, now())?;
            flows::insert(conn, &flow)?;
            // Bounded per user: the oldest pending requests go first.
            flows::delete_oldest_beyond(conn, flow.user_id, &flow.state_hash, keep)?;
            Ok(())
        })
    })
    .await?;

    let client = BasicClient::new(ClientId::new(creds.client_id.clone()))
        .set_auth_uri(AuthUrl::from_url(provider.authorize_url.clone()))
        .set_redirect_uri(RedirectUrl::new(redirect_uri).map_err(AppError::internal)?);
    let mut request = client
        .authorize_url(|| CsrfToken::new(state))
        .add_scopes(provider.scopes.iter().map(|s| Scope::new(s.clone())));
    if provider.pkce {
        request = request.set_pkce_challenge(challenge);
    }
    for (key, value) in &provider.authorize_params {
        request = request.add_extra_param(key.as_str(), value.as_str());
    }
    let (url, _) = request.url();
    Ok(url)
}

/// The query of a callback, with every parameter given at most once. Its `Debug` and `Display`
/// never show the code or the state.
#[derive(Default)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub states: Vec<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
    /// A parameter we read appeared more than once (`state=a&state=b`).
    pub duplicated: bool,
}

impl CallbackParams {
    pub fn parse(query: &str) -> CallbackParams {
        let mut p = CallbackParams::default();
        let mut seen = std::collections::HashSet::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "code" => &mut p.code,
                "state" => {
                    p.states.push(value.into_owned());
                    if !seen.insert("state") {
                        p.duplicated = true;
                    }
                    continue;
                }
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                "iss" => &mut p.iss,
                _ => continue,
            };
            if slot.is_some() {
                p.duplicated = true;
            }
            *slot = Some(value.into_owned());
        }
        p
    }
}

impl std::fmt::Display for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "callback(code: {}, states: {}, error: {:?})", self.code.is_some(), self.states.len(), self.error)
    }
}

impl std::fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

#[rocket::async_trait]
impl<'r> FromRequest<'r> for CallbackParams {
    type Error = std::convert::Infallible;

    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(CallbackParams::parse(req.uri().query().map(|q| q.as_str()).unwrap_or("")))
    }
}

/// How a callback ended when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    Connected { return_to: String },
    Cancelled,
}

fn rejected(message: &str) -> AppError {
    AppError::BadRequest(format!("{message} Nothing was changed. Please start again from the service's page."))
}

/// Provider error text, made safe to show: printable, at most 200 characters.
/// A provider's `error_description`, to show: printable, at most 200 characters, and without the
/// authorization code if the provider echoed it (the page and the log never carry a code).
fn describe(description: Option<&str>, code: Option<&str>) -> String {
    let mut text: String = description.unwrap_or("").chars().filter(|c| !c.is_control()).collect();
    if let Some(code) = code.filter(|c| c.len() >= 4) {
        text = text.replace(code, "[code]");
    }
    text.chars().take(200).collect::<String>().trim().to_string()
}

/// Handle the provider's redirect back: check the state, then exchange the code and store tokens
/// (through `ctx`'s token store, outbound client and metrics; the refresh locks are not used).
pub async fn finish(
    ctx: &Access<'_>,
    user: Option<&CurrentUser>,
    provider: &Provider,
    params: CallbackParams,
) -> AppResult<Finished> {
    // Consume every state the callback names, first of all, so none can be replayed.
    let hashes: Vec<String> = params.states.iter().filter(|s| !s.is_empty()).map(|s| sha256_hex(s)).collect();
    let taken = ctx
        .tokens
        .db
        .run(move |conn| {
            let mut taken = Vec::new();
            for h in &hashes {
                if let Some(flow) = flows::take(conn, h)? {
                    taken.push(flow);
                }
            }
            Ok(taken)
        })
        .await?;
    if params.duplicated {
        return Err(rejected("The provider's answer was malformed (a parameter appeared twice)."));
    }
    if params.states.is_empty() || params.states[0].is_empty() {
        return Err(rejected("The provider's answer had no state."));
    }
    let Some(flow) = taken.into_iter().next() else {
        return Err(rejected("This authorization answer is unknown, expired or was already used."));
    };
    let Some(user) = user else {
        return Err(rejected("You are not signed in any more."));
    };
    if flow.user_id != user.id || flow.session_hash != user.session_hash {
        return Err(rejected("This authorization answer belongs to another session."));
    }
    if flow.service != provider.name {
        return Err(rejected("This authorization answer was meant for another service."));
    }
    if flow.expires_at <= now() {
        return Err(rejected("This authorization request expired."));
    }
    if let Some(iss) = &params.iss {
        if !provider.issuer_matches(iss) {
            return Err(rejected("The answer came from an unexpected issuer."));
        }
    }
    let user_id = user.id;
    let service = provider.name.clone();
    if let Some(error) = &params.error {
        let error = error.clone();
        let svc = service.clone();
        let outcome = if error == "access_denied" { EventOutcome::Cancelled } else { EventOutcome::Failed };
        let detail = format!("authorization: {}", crate::oauth::tokens::sanitize_code(&error));
        let keep = ctx.tokens.events_kept;
        ctx.tokens
            .db
            .run(move |conn| store::record_event(conn, keep, user_id, &svc, EventKind::Connect, outcome, &detail))
            .await?;
        if error == "access_denied" {
            return Ok(Finished::Cancelled);
        }
        let description = describe(params.error_description.as_deref(), params.code.as_deref());
        let mut message = format!("{} could not authorize tokenvault.", provider.display_name);
        if !description.is_empty() {
            message.push_str(&format!(" It said: “{description}”"));
        }
        return Err(AppError::Upstream {
            status: rocket::http::Status::BadGateway,
            message,
            detail: format!("{service}: authorization error"),
        });
    }
    let Some(code) = params.code.filter(|c| !c.is_empty()) else {
        return Err(rejected("The provider's answer had no authorization code."));
    };

    let verifier: Secret =
        ctx.tokens.cipher.open(&flow.pkce_verifier, Aad::PkceVerifier { state_hash: &flow.state_hash })?;
    let cipher = ctx.tokens.cipher.clone();
    let svc = service.clone();
    let creds = ctx
        .tokens
        .db
        .run(move |conn| client_credentials(conn, &cipher, &svc))
        .await?
        .ok_or_else(|| not_configured(provider))?;
    let verifier = provider.pkce.then_some(&verifier);
    let started = std::time::Instant::now();
    let exchanged = tokens::exchange_code(
        ctx.http,
        provider,
        &creds,
        &flow.redirect_uri,
        &code,
        verifier,
        ctx.settings.default_token_lifetime,
    )
    .await;
    ctx.metrics.token_endpoint(&provider.name, "authorization_code", started);
    match exchanged {
        Ok(token_set) => {
            store::save(ctx.tokens, user_id, &service, token_set, EventKind::Connect).await?;
            Ok(Finished::Connected { return_to: flow.return_to })
        }
        Err(e) => {
            let detail = format!("code exchange: {e}");
            let keep = ctx.tokens.events_kept;
            ctx.tokens
                .db
                .run(move |conn| {
                    store::record_event(
                        conn,
                        keep,
                        user_id,
                        &service,
                        EventKind::Connect,
                        EventOutcome::Failed,
                        &detail,
                    )
                })
                .await?;
            Err(e.to_app_error(provider))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_params_detect_duplicates() {
        let p = CallbackParams::parse("code=c&state=s&scope=x+y");
        assert_eq!(p.code.as_deref(), Some("c"));
        assert_eq!(p.states, vec!["s".to_string()]);
        assert!(!p.duplicated);
        assert!(CallbackParams::parse("state=a&state=b").duplicated);
        assert!(CallbackParams::parse("code=a&code=b&state=s").duplicated);
        let p = CallbackParams::parse("error=access_denied&state=s&error_description=No%20way");
        assert_eq!(p.error.as_deref(), Some("access_denied"));
        assert_eq!(p.error_description.as_deref(), Some("No way"));
    }

    #[test]
    fn display_never_shows_the_code() {
        let p = CallbackParams::parse("code=SECRETCODE&state=STATE");
        for shown in [format!("{p}"), format!("{p:?}")] {
            assert!(!shown.contains("SECRETCODE") && !shown.contains("STATE"), "{shown}");
        }
    }

    #[test]
    fn descriptions_are_truncated_and_cleaned() {
        assert_eq!(describe(Some("a\u{0}b\nc"), None), "abc");
        assert_eq!(describe(Some(&"x".repeat(500)), None).len(), 200);
        assert_eq!(describe(None, None), "");
        assert_eq!(describe(Some("code CODE-CANARY-1234 was bad"), Some("CODE-CANARY-1234")), "code [code] was bad");
    }
}

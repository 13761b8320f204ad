//! The authorization-code flow: the Redirector's `start` and the Callback's `finish`.
//!
//! `state` is 256 random bits, stored only as a SHA-256 hash, bound to the session, the user,
//! the service, the PKCE verifier (sealed) and the return path, valid for `flow_ttl` seconds, and
//! deleted on the first callback that names it — whatever that callback says.

use std::sync::Arc;

use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl};
use rocket::request::{FromRequest, Outcome, Request};
use url::Url;

use crate::auth::CurrentUser;
use crate::changes::Change;
use crate::config::Settings;
use crate::db::models::connections::{self, Account, Connection, Which};
use crate::db::models::flows::{self, Flow};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::oauth::access::Access;
use crate::oauth::account::identify;
use crate::oauth::providers::Provider;
use crate::oauth::store::Destination;
use crate::oauth::tokens::TokenSet;
use crate::oauth::{id_token, retire, store, tokens};
use crate::util::{now, random_token, sha256_hex, Secret};
use crate::vault::store::{client_credentials, ClientCredentials};
use crate::vault::{Aad, Cipher};

/// Starting (or finishing) a flow for a provider without client credentials. The Redirector's
/// page says so and offers no button, so a POST anyway is the request's fault: 400, with the words
/// of [`AppError::NotConfigured`] (which a refresh without credentials answers: 503).
pub(crate) fn not_configured(provider: &Provider) -> AppError {
    let words = AppError::NotConfigured { service: provider.service(), client_id_path: provider.client_id_path() };
    AppError::BadRequest(words.user_message())
}

/// What an authorization is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// Reconnect (or upgrade) this connection of the user: the provider must answer with its
    /// account, or nothing is stored.
    pub connection: Option<i64>,
    /// Add another account (rather than reconnect the one connection there is).
    pub add_account: bool,
    /// More scopes to ask for (an upgrade: the grant's scopes and these).
    pub more_scopes: Vec<String>,
}

/// The scopes to ask for: the provider's, those `row` was granted or asked for, and `more` —
/// each of which must be one the provider offers (`scopes` or `optional_scopes`).
pub fn scopes_for(provider: &Provider, row: Option<&Connection>, more: &[String]) -> AppResult<Vec<String>> {
    let mut scopes = provider.scopes.clone();
    if let Some(row) = row {
        scopes.extend(row.granted());
        scopes.extend(row.requested());
    }
    for s in more {
        if !provider.scopes.contains(s) && !provider.optional_scopes.contains(s) {
            return Err(AppError::BadRequest(format!(
                "{} does not offer the permission “{}” here.",
                provider.display_name,
                s.chars().filter(|c| !c.is_control()).take(100).collect::<String>()
            )));
        }
        scopes.push(s.clone());
    }
    let mut seen = std::collections::HashSet::new();
    scopes.retain(|s| seen.insert(s.clone()));
    Ok(scopes)
}

/// Create a flow for `user` and return the provider's authorize URL to send the browser to.
pub async fn start(
    db: &Db,
    cipher: &Arc<Cipher>,
    settings: &Settings,
    user: &CurrentUser,
    provider: &Provider,
    return_to: &str,
    intent: &Intent,
) -> AppResult<Url> {
    let (c, name, uid, target, add_account) =
        (cipher.clone(), provider.name.clone(), user.id, intent.connection, intent.add_account);
    let (creds, row) = db
        .run(move |conn| {
            let row = match target {
                Some(id) => Some(connections::find_which(conn, Which::id(uid, id), &name)?.ok_or(AppError::NotFound)?),
                // The plain button with one connection reconnects it (see `destination`): ask
                // for what it has, not less.
                None if !add_account => {
                    let mut rows = connections::list_for(conn, uid, &name)?;
                    if rows.len() == 1 {
                        rows.pop()
                    } else {
                        None
                    }
                }
                None => None,
            };
            Ok((client_credentials(conn, &c, &name)?, row))
        })
        .await?;
    let creds = creds.ok_or_else(|| not_configured(provider))?;
    let scopes = scopes_for(provider, row.as_ref(), &intent.more_scopes)?;
    let request = AuthRequest::new(provider, intent, scopes);
    let flow = Flow {
        pkce_verifier: cipher
            .seal_str(request.verifier.secret(), Aad::PkceVerifier { state_hash: &request.state_hash }),
        state_hash: request.state_hash.clone(),
        session_hash: user.session_hash.clone(),
        user_id: user.id,
        service: provider.name.clone(),
        redirect_uri: settings.redirect_uri(&provider.name),
        return_to: return_to.to_string(),
        created_at: now(),
        expires_at: now() + settings.flows.ttl,
        connection_id: intent.connection,
        add_account: request.add_account,
        scopes: Some(request.scopes.join(" ")),
        nonce_hash: request.nonce.as_deref().map(sha256_hex),
    };
    let url = request.url(provider, &creds, flow.redirect_uri.clone())?;
    let keep = settings.flows.max_pending_per_user;
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
    Ok(url)
}

/// One authorization request: its fresh secrets (state, PKCE, OpenID nonce) and what it asks.
struct AuthRequest {
    state: String,
    state_hash: String,
    /// OpenID Connect: the id_token must carry this back (replay of another sign-in's token).
    nonce: Option<String>,
    challenge: PkceCodeChallenge,
    verifier: oauth2::PkceCodeVerifier,
    scopes: Vec<String>,
    add_account: bool,
    upgrading: bool,
}

impl AuthRequest {
    fn new(provider: &Provider, intent: &Intent, scopes: Vec<String>) -> AuthRequest {
        let state = random_token(32);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256_len(64);
        AuthRequest {
            state_hash: sha256_hex(&state),
            state,
            nonce: provider.verifies_id_token().then(|| random_token(32)),
            challenge,
            verifier,
            scopes,
            add_account: intent.add_account && intent.connection.is_none(),
            upgrading: !intent.more_scopes.is_empty(),
        }
    }

    /// The provider's authorize URL for this request.
    fn url(self, provider: &Provider, creds: &ClientCredentials, redirect_uri: String) -> AppResult<Url> {
        let client = BasicClient::new(ClientId::new(creds.client_id.clone()))
            .set_auth_uri(AuthUrl::from_url(provider.authorize_url.clone()))
            .set_redirect_uri(RedirectUrl::new(redirect_uri).map_err(AppError::internal)?);
        let mut request = client.authorize_url(|| CsrfToken::new(self.state));
        if !self.scopes.is_empty() {
            // Joined as the provider wants them (`scope_separator`), under its parameter (`scope_param`).
            request =
                request.add_extra_param(provider.scope_param.as_str(), self.scopes.join(&provider.scope_separator));
        }
        if provider.pkce {
            request = request.set_pkce_challenge(self.challenge);
        }
        for (key, value) in authorize_extras(provider, self.add_account, self.upgrading) {
            request = request.add_extra_param(key, value);
        }
        if let Some(nonce) = &self.nonce {
            request = request.add_extra_param("nonce", nonce.as_str());
        }
        if self.upgrading && provider.incremental_auth {
            // Keep what was granted before (Google's incremental authorization).
            request = request.add_extra_param("include_granted_scopes", "true");
        }
        Ok(request.url().0)
    }
}

/// The provider's extra authorize parameters for this request: its `authorize_params`, plus its
/// `add_account_params` on a "Connect another account" flow (what makes it show its account
/// chooser), plus `prompt=consent` when upgrading an OpenID Connect provider's connection (so it
/// shows the new scopes rather than answering from an earlier consent). Each name once: `prompt`
/// values are space-separated lists (OpenID Connect Core §3.1.2.1), so two are merged; for any
/// other name the later value wins.
pub fn authorize_extras(provider: &Provider, add_account: bool, upgrading: bool) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = Vec::new();
    let consent = [("prompt".to_string(), "consent".to_string())];
    let added: &[(String, String)] = if add_account { &provider.add_account_params } else { &[] };
    let upgrade: &[(String, String)] = if upgrading && provider.verifies_id_token() { &consent } else { &[] };
    for (key, value) in provider.authorize_params.iter().chain(added).chain(upgrade) {
        match params.iter_mut().find(|(k, _)| k == key) {
            Some((_, prompt)) if key == "prompt" => {
                for word in value.split(' ').filter(|w| !w.is_empty()) {
                    if !prompt.split(' ').any(|w| w == word) {
                        prompt.push(' ');
                        prompt.push_str(word);
                    }
                }
            }
            Some((_, old)) => *old = value.clone(),
            None => params.push((key.clone(), value.clone())),
        }
    }
    params
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
    Connected {
        return_to: String,
        connection_id: i64,
        /// "Connect another account" was answered for an account connected already: its
        /// connection was renewed, and the page must say so.
        already_connected: bool,
    },
    Cancelled,
    /// Reconnecting connection `connection_id` (of `expected`), the provider answered for another
    /// account (`got`; `None`: it did not say which): nothing was stored.
    AccountMismatch {
        connection_id: i64,
        expected: Option<Account>,
        got: Option<Account>,
        return_to: String,
    },
}

/// Where the tokens of an authorization go (see [`Intent`]): a connection reconnected in place
/// (the same account, or one whose account was not known), the connection of that account, or a
/// new one — or, reconnecting a connection of another account, nowhere.
pub fn destination(
    flow: &Flow,
    rows: &[Connection],
    account: Option<Account>,
    requested: Vec<String>,
) -> Result<Destination, (i64, Option<Account>, Option<Account>)> {
    let mut to = Destination {
        user_id: flow.user_id,
        service: flow.service.clone(),
        account: account.clone(),
        into: None,
        requested,
        retire_replaced: false,
    };
    // Reconnecting: the row named, or the only one there is when not adding another account.
    let pinned = match flow.connection_id {
        Some(id) => match rows.iter().find(|c| c.id == id) {
            Some(row) => Some(row),
            None => {
                // The row being reconnected is gone: storing fails (409), it does not quietly
                // become another account's connection.
                to.into = Some(id);
                return Ok(to);
            }
        },
        None if !flow.add_account && rows.len() == 1 => rows.first(),
        None => None,
    };
    let Some(row) = pinned else { return Ok(to) };
    let got = account.as_ref().map(|a| a.id.as_str()).unwrap_or("");
    if row.account_id.is_empty() {
        // An account not known yet: this authorization names it — unless it is one connected
        // already as another row, which then gets the tokens.
        if got.is_empty() || !rows.iter().any(|c| c.id != row.id && c.account_id == got) {
            to.into = Some(row.id);
        }
        return Ok(to);
    }
    if row.account_id == got {
        to.into = Some(row.id);
        return Ok(to);
    }
    Err((row.id, row.account(), account))
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

/// Record a failed connect in the service's history.
async fn connect_failed(ctx: &Access<'_>, user_id: i64, service: &str, detail: String) -> AppResult<()> {
    ctx.tokens.record(Change::ConnectRefused { user_id, service: service.to_string(), cancelled: false, detail }).await
}

/// Handle the provider's redirect back, in four steps: the state consumed (its flow, checked),
/// the provider's answer read (a code, a cancel or an error), the code exchanged, and the
/// answer's account identified and its tokens stored ([`settle`]). Tokens obtained and not
/// stored are revoked.
pub async fn finish(
    ctx: &Access<'_>,
    user: Option<&CurrentUser>,
    provider: &Provider,
    params: CallbackParams,
) -> AppResult<Finished> {
    let flow = take_flow(ctx, user, provider, &params).await?;
    let Some(code) = code_of(ctx, provider, &flow, params).await? else { return Ok(Finished::Cancelled) };
    let (creds, answer) = exchange(ctx, provider, &flow, &code).await?;
    let kept = (answer.tokens.access_token.clone(), answer.tokens.refresh_token.clone());
    let user_id = flow.user_id;
    let settled = settle(ctx, provider, &creds, flow, answer).await;
    if !matches!(settled, Ok(Finished::Connected { .. })) {
        // Obtained and not stored (another account, a refused id_token, …): still live at the
        // provider, so revoked too.
        retire::discard(ctx.tokens, provider, user_id, &kept.0, kept.1.as_ref()).await;
    }
    settled
}

/// Step 1: consume every state the callback names, first of all, so none can be replayed; then
/// the flow of the first, if it is this session's, for this service, and not expired.
async fn take_flow(
    ctx: &Access<'_>,
    user: Option<&CurrentUser>,
    provider: &Provider,
    params: &CallbackParams,
) -> AppResult<Flow> {
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
    if params.iss.as_deref().is_some_and(|iss| !provider.issuer_matches(iss)) {
        return Err(rejected("The answer came from an unexpected issuer."));
    }
    Ok(flow)
}

/// Step 2: the provider's answer — its code, `None` when the user said no (recorded), or its
/// error (recorded, and shown with its description).
async fn code_of(
    ctx: &Access<'_>,
    provider: &Provider,
    flow: &Flow,
    params: CallbackParams,
) -> AppResult<Option<String>> {
    let (user_id, service) = (flow.user_id, provider.name.clone());
    if let Some(error) = &params.error {
        let cancelled = error == "access_denied";
        let detail = format!("authorization: {}", crate::oauth::tokens::sanitize_code(error));
        ctx.tokens.record(Change::ConnectRefused { user_id, service: service.clone(), cancelled, detail }).await?;
        if cancelled {
            return Ok(None);
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
    match params.code.filter(|c| !c.is_empty()) {
        Some(code) => Ok(Some(code)),
        None => Err(rejected("The provider's answer had no authorization code.")),
    }
}

/// Step 3: the code exchanged at the provider's token endpoint (with the flow's PKCE verifier),
/// timed; a failure is recorded in the service's history.
async fn exchange(
    ctx: &Access<'_>,
    provider: &Provider,
    flow: &Flow,
    code: &str,
) -> AppResult<(ClientCredentials, Answer)> {
    let verifier: Secret =
        ctx.tokens.cipher.open(&flow.pkce_verifier, Aad::PkceVerifier { state_hash: &flow.state_hash })?;
    let (cipher, service) = (ctx.tokens.cipher.clone(), provider.name.clone());
    let creds = ctx
        .tokens
        .db
        .run(move |conn| client_credentials(conn, &cipher, &service))
        .await?
        .ok_or_else(|| not_configured(provider))?;
    let requested = flow.scopes.as_deref().map(crate::util::scope_list).unwrap_or_else(|| provider.scopes.clone());
    let grant = tokens::CodeGrant {
        code,
        redirect_uri: &flow.redirect_uri,
        verifier: provider.pkce.then_some(&verifier),
        requested: &requested,
    };
    let started = std::time::Instant::now();
    let exchanged =
        tokens::exchange_code(ctx.http, provider, &creds, grant, ctx.settings.refresh.default_token_lifetime).await;
    ctx.metrics.token_endpoint(&provider.name, "authorization_code", started);
    match exchanged {
        Ok((tokens, id_token)) => Ok((creds, Answer { tokens, id_token, requested })),
        Err(e) => {
            connect_failed(ctx, flow.user_id, &provider.name, format!("code exchange: {e}")).await?;
            Err(e.to_app_error(provider))
        }
    }
}

/// A token endpoint's answer to a code exchange, and what the flow asked for.
struct Answer {
    tokens: TokenSet,
    id_token: Option<Secret>,
    requested: Vec<String>,
}

/// Step 4: which account the answer is for, and where its tokens go: stored (a connection made, renewed
/// or reconnected), or — another account on a pinned reconnect — nowhere.
async fn settle(
    ctx: &Access<'_>,
    provider: &Provider,
    creds: &ClientCredentials,
    flow: Flow,
    answer: Answer,
) -> AppResult<Finished> {
    let (user_id, service) = (flow.user_id, provider.name.clone());
    let account = if provider.verifies_id_token() {
        let account = id_token::verify(
            ctx.http,
            provider,
            &creds.client_id,
            answer.id_token.as_ref(),
            flow.nonce_hash.as_deref(),
        )
        .await?;
        Some(account)
    } else {
        identify(ctx.http, provider, creds, &answer.tokens.access_token).await?
    };
    let svc = service.clone();
    let rows = ctx.tokens.db.run(move |conn| Ok(connections::list_for(conn, user_id, &svc)?)).await?;
    let mut to = match destination(&flow, &rows, account, answer.requested) {
        Ok(to) => to,
        Err((connection_id, expected, got)) => {
            let detail = format!(
                "reconnect refused: the provider answered for another account ({})",
                got.as_ref().and_then(|a| a.label.clone()).unwrap_or_else(|| "unknown".into())
            );
            connect_failed(ctx, user_id, &service, detail).await?;
            return Ok(Finished::AccountMismatch { connection_id, expected, got, return_to: flow.return_to });
        }
    };
    // The tokens this replaces (a reconnect, an upgrade, an account connected again) are revoked
    // once the new ones are stored — unless one revocation would end the whole grant.
    to.retire_replaced = provider.revokes_retired_tokens();
    let already_connected = flow.add_account
        && to.into.is_none()
        && to.account.as_ref().is_some_and(|a| rows.iter().any(|r| r.account_id == a.id));
    let connection_id = store::save(ctx.tokens, to, answer.tokens).await?;
    Ok(Finished::Connected { return_to: flow.return_to, connection_id, already_connected })
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

    fn flow(connection_id: Option<i64>, add_account: bool) -> Flow {
        Flow {
            state_hash: "h".into(),
            session_hash: "s".into(),
            user_id: 1,
            service: "fake".into(),
            pkce_verifier: Vec::new(),
            redirect_uri: String::new(),
            return_to: String::new(),
            created_at: 0,
            expires_at: 0,
            connection_id,
            add_account,
            scopes: None,
            nonce_hash: None,
        }
    }

    fn row(id: i64, account: &str) -> Connection {
        Connection { id, account_id: account.into(), ..Connection::for_tests(1, "fake") }
    }

    fn acct(id: &str) -> Option<Account> {
        Some(Account { id: id.into(), label: None })
    }

    /// Where an authorization's tokens go, for every kind of flow and every state of the rows.
    #[test]
    fn destinations_pin_reconnects_to_their_account() {
        let into = |r: Result<Destination, _>| r.map(|d| d.into).map_err(|(id, _, _)| id);
        // First connect, and "another account": stored by account (insert or the same one's row).
        assert_eq!(into(destination(&flow(None, false), &[], acct("a"), vec![])), Ok(None));
        assert_eq!(into(destination(&flow(None, true), &[row(5, "a")], acct("b"), vec![])), Ok(None));
        // The plain button with one connection reconnects it: the same account, or refused.
        assert_eq!(into(destination(&flow(None, false), &[row(5, "a")], acct("a"), vec![])), Ok(Some(5)));
        assert_eq!(into(destination(&flow(None, false), &[row(5, "a")], acct("b"), vec![])), Err(5));
        // Naming the row: the same.
        let rows = [row(5, "a"), row(6, "b")];
        assert_eq!(into(destination(&flow(Some(6), false), &rows, acct("b"), vec![])), Ok(Some(6)));
        assert_eq!(into(destination(&flow(Some(6), false), &rows, acct("a"), vec![])), Err(6));
        assert_eq!(into(destination(&flow(Some(6), false), &rows, None, vec![])), Err(6), "unknown is not the same");
        // Several rows, the plain button: stored by account.
        assert_eq!(into(destination(&flow(None, false), &rows, acct("c"), vec![])), Ok(None));
        // A row whose account was not known learns it — unless that account has a row already.
        let legacy = [row(5, "")];
        assert_eq!(into(destination(&flow(None, false), &legacy, acct("a"), vec![])), Ok(Some(5)));
        let both = [row(5, ""), row(6, "a")];
        assert_eq!(into(destination(&flow(Some(5), false), &both, acct("a"), vec![])), Ok(None));
        assert_eq!(into(destination(&flow(Some(5), false), &both, None, vec![])), Ok(Some(5)));
        // A row that vanished meanwhile: aimed at it, so the write finds nothing (409).
        assert_eq!(into(destination(&flow(Some(9), false), &rows, acct("b"), vec![])), Ok(Some(9)));
    }

    #[test]
    fn scopes_are_the_union_and_only_offered_ones() {
        let settings = Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap();
        let mut p = crate::oauth::providers::demo(&settings);
        p.scopes = vec!["read".into()];
        p.optional_scopes = vec!["write".into()];
        let granted = Connection { scopes: "read extra".into(), ..Connection::for_tests(1, "fake") };
        assert_eq!(scopes_for(&p, Some(&granted), &["write".into()]).unwrap(), ["read", "extra", "write"]);
        assert_eq!(scopes_for(&p, None, &[]).unwrap(), ["read"]);
        assert!(scopes_for(&p, None, &["root".into()]).is_err());
    }

    #[test]
    fn add_account_and_upgrade_parameters_join_the_providers_own() {
        let preset = |name: &str| {
            let cfg = crate::oauth::providers::ProviderConfig { preset: Some(name.into()), ..Default::default() };
            crate::oauth::providers::resolve(name, &cfg).unwrap()
        };
        let map = |p: Vec<(String, String)>| p.into_iter().collect::<std::collections::BTreeMap<_, _>>();
        let google = preset("google");
        let plain = map(authorize_extras(&google, false, false));
        assert_eq!((plain["prompt"].as_str(), plain["access_type"].as_str()), ("consent", "offline"));
        let added = authorize_extras(&google, true, false);
        assert_eq!(added.iter().filter(|(k, _)| k == "prompt").count(), 1, "one prompt parameter");
        assert_eq!(map(added)["prompt"], "consent select_account");
        assert_eq!(map(authorize_extras(&google, false, true))["prompt"], "consent", "consent once");
        let dropbox = map(authorize_extras(&preset("dropbox"), true, false));
        assert_eq!(
            (dropbox["force_reauthentication"].as_str(), dropbox["token_access_type"].as_str()),
            ("true", "offline")
        );
        assert!(!map(authorize_extras(&preset("dropbox"), false, false)).contains_key("force_reauthentication"));
        assert_eq!(map(authorize_extras(&preset("github"), true, false))["prompt"], "select_account");
        // An upgrade asks an OpenID provider for consent again; others are asked as before.
        let settings = Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap();
        let mut oidc = crate::oauth::providers::demo(&settings);
        assert!(authorize_extras(&oidc, true, true).is_empty(), "the demo provider: nothing extra");
        oidc.jwks_url = Some(Url::parse("https://issuer.example/jwks").unwrap());
        oidc.scopes = vec!["openid".into()];
        assert_eq!(authorize_extras(&oidc, false, true), [("prompt".to_string(), "consent".to_string())]);
        assert!(authorize_extras(&oidc, false, false).is_empty());
    }

    #[test]
    fn descriptions_are_truncated_and_cleaned() {
        assert_eq!(describe(Some("a\u{0}b\nc"), None), "abc");
        assert_eq!(describe(Some(&"x".repeat(500)), None).len(), 200);
        assert_eq!(describe(None, None), "");
        assert_eq!(describe(Some("code CODE-CANARY-1234 was bad"), Some("CODE-CANARY-1234")), "code [code] was bad");
    }
}

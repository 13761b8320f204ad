//! A scriptable OAuth 2.0 provider on a real HTTP port (wiremock). It checks client
//! authentication, the redirect_uri, single-use codes and PKCE S256, issues recognisable canary
//! tokens (`AT-CANARY-…`, `RT-CANARY-…`), rotates refresh tokens and revokes the whole family when
//! a rotated one is replayed. Every request is recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::{CLIENT_ID, CLIENT_SECRET, PUBLIC_URL};

#[derive(Default)]
pub struct State {
    /// code → PKCE challenge; removed when redeemed.
    codes: HashMap<String, String>,
    pub enforce_pkce: bool,
    /// `expires_in` to send (`None`: leave it out).
    pub expires_in: Option<serde_json::Value>,
    pub rotate_refresh_tokens: bool,
    issued: u64,
    /// refresh token → still valid?
    refresh_tokens: HashMap<String, bool>,
    /// access tokens currently valid.
    pub access_tokens: Vec<String>,
    /// Responses to use for the next token calls, before the normal behaviour.
    script: VecDeque<ResponseTemplate>,
    /// The account API answers 401 whatever the token.
    pub account_always_401: bool,
    /// Delay of successful refresh answers (to make concurrent requests overlap).
    pub refresh_delay: Option<std::time::Duration>,
    /// Refresh responses leave out `refresh_token` (Dropbox, Google).
    pub omit_refresh_token: bool,
    /// The app's `public_url` when a test sets another than `PUBLIC_URL` (the expected
    /// `redirect_uri` is built from it).
    pub public_url: Option<String>,
    /// The service name the app knows this provider by, when not `fake` (the expected
    /// `redirect_uri` is `<public_url>/services/<service>/callback`).
    pub service: Option<String>,
    /// The account the user is signed in to at the provider: tokens issued for a code belong to
    /// it (`None`: [`FakeProvider::default_account`]); refreshed ones to their refresh token's.
    pub account: Option<serde_json::Value>,
    /// token (access or refresh) → the account it belongs to.
    token_accounts: HashMap<String, serde_json::Value>,
    /// The authorize parameter (name, and a value among its space-separated values) that makes
    /// the fake show its account chooser (default `prompt=select_account`); without it, an
    /// authorization answers for the session's account (`account`), as providers with a live
    /// session do.
    pub chooser: Option<(String, String)>,
    /// The account the person picks when the chooser is shown (`None`: the session's); picking
    /// one signs the session in to it.
    pub chooser_pick: Option<serde_json::Value>,
    /// code → the account it was issued for at the authorize step ([`FakeProvider::authorize`]).
    code_accounts: HashMap<String, serde_json::Value>,
    /// The revocation endpoints answer 503 (down for a while).
    pub revoke_unavailable: bool,
    /// access token → the refresh token it came with (or was refreshed from): Dropbox's
    /// revocation by access token ends that refresh token too.
    access_parent: HashMap<String, String>,
    /// The `scope` the token endpoint answers with (`None`: `read write`; `Some("")`: none).
    pub grant_scope: Option<String>,
    /// Code exchanges answer with an id_token signed by the fixture key (served at `/jwks`),
    /// for `sub` = the account's `sub`, with the nonce the code was issued for.
    pub id_tokens: bool,
    /// Spoil the next id_tokens: `"aud"`, `"iss"`, `"nonce"`, `"expired"`, `"signature"`,
    /// `"audiences"` (ours and another, no `azp`), `"azp"` (both, `azp` the other client),
    /// `"azp-alone"` (ours only, `azp` another client) — or shape them without spoiling them:
    /// `"audiences-azp-ours"` (both audiences, `azp` ours).
    pub id_token_fault: Option<&'static str>,
    /// code → the `nonce` of its authorization request.
    nonces: HashMap<String, String>,
    /// The fake's own URL (the id_token's `iss`).
    issuer: String,
    /// Refresh any refresh token it did not issue (connections a benchmark seeded directly),
    /// without rotating it, and keep no record of the tokens issued for them (bounded memory).
    pub accept_any_refresh: bool,
    /// Reshape each successful token answer as a provider with its own shape would send it
    /// (Slack's user token inside `authed_user`, Twitch's `scope` array).
    pub reshape_tokens: Option<fn(serde_json::Value) -> serde_json::Value>,
}

impl State {
    /// Sign in to account `n` at the provider: the account API then answers for it (id
    /// `fake-user-<n>`, email `user<n>@fake.example`) for tokens issued from now on.
    pub fn sign_in_as(&mut self, n: u32) {
        self.account = Some(FakeProvider::account_json(n));
    }

    /// At the account chooser (when the authorization request asks for it), pick account `n`.
    pub fn choose(&mut self, n: u32) {
        self.chooser_pick = Some(FakeProvider::account_json(n));
    }
}

#[derive(Clone)]
pub struct FakeProvider {
    server: Arc<MockServer>,
    pub state: Arc<Mutex<State>>,
}

fn error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": code}))
}

/// The fields of a request body: form-encoded, or a JSON object of strings (Notion's token requests).
pub fn form(req: &Request) -> HashMap<String, String> {
    let json = req
        .headers
        .get("content-type")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if json {
        let fields: HashMap<String, serde_json::Value> = serde_json::from_slice(&req.body).unwrap_or_default();
        return fields.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect();
    }
    url::form_urlencoded::parse(&req.body).into_owned().collect()
}

/// The access token a request carries: `Authorization: Bearer …`, a bare `Authorization` value
/// (monday.com) or `X-Shopify-Access-Token`.
pub fn token_of(req: &Request) -> Option<String> {
    let header = |name: &str| req.headers.get(name).and_then(|h| h.to_str().ok()).map(str::to_string);
    match header("authorization") {
        Some(a) => Some(a.strip_prefix("Bearer ").map(str::to_string).unwrap_or(a)),
        None => header("x-shopify-access-token"),
    }
}

fn basic_ok(req: &Request) -> bool {
    let Some(h) = req.headers.get("authorization").and_then(|h| h.to_str().ok()) else { return false };
    let Some(b) = h.strip_prefix("Basic ") else { return false };
    let Ok(decoded) = STANDARD.decode(b) else { return false };
    let text = String::from_utf8_lossy(&decoded).to_string();
    let unescape = |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().unwrap().1.into_owned();
    match text.split_once(':') {
        Some((id, secret)) => unescape(id) == CLIENT_ID && unescape(secret) == CLIENT_SECRET,
        None => false,
    }
}

struct TokenEndpoint(Arc<Mutex<State>>);

impl Respond for TokenEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().unwrap();
        if let Some(scripted) = st.script.pop_front() {
            return scripted;
        }
        let f = form(req);
        let body_auth = f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && f.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
        if !basic_ok(req) && !body_auth {
            return error(401, "invalid_client");
        }
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = f.get("code").cloned().unwrap_or_default();
                let Some(challenge) = st.codes.remove(&code) else { return error(400, "invalid_grant") };
                let public_url = st.public_url.as_deref().unwrap_or(PUBLIC_URL);
                let service = st.service.as_deref().unwrap_or("fake");
                if f.get("redirect_uri").map(String::as_str)
                    != Some(&format!("{public_url}/services/{service}/callback"))
                {
                    return error(400, "invalid_grant");
                }
                if st.enforce_pkce {
                    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                    if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge {
                        return error(400, "invalid_grant");
                    }
                }
                let account = st
                    .code_accounts
                    .remove(&code)
                    .or_else(|| st.account.clone())
                    .unwrap_or_else(|| FakeProvider::account_json(1));
                let nonce = st.nonces.remove(&code);
                let id_token = st.id_tokens.then(|| id_token(&st, &account, nonce));
                let mut body = issue_body(&mut st, account);
                if let Some(t) = id_token {
                    body["id_token"] = json!(t);
                }
                if let Some(reshape) = st.reshape_tokens {
                    body = reshape(body);
                }
                ResponseTemplate::new(200).set_body_json(body)
            }
            Some("refresh_token") => {
                let rt = f.get("refresh_token").cloned().unwrap_or_default();
                if st.accept_any_refresh && !st.refresh_tokens.contains_key(&rt) {
                    st.issued += 1;
                    let n = st.issued;
                    return ResponseTemplate::new(200).set_body_json(json!({
                        "access_token": format!("AT-CANARY-{n}"), "token_type": "bearer", "expires_in": 3600,
                        "scope": "read write"
                    }));
                }
                match st.refresh_tokens.get(&rt).copied() {
                    Some(true) => {
                        if st.rotate_refresh_tokens && !st.omit_refresh_token {
                            st.refresh_tokens.insert(rt.clone(), false);
                        }
                        let account =
                            st.token_accounts.get(&rt).cloned().unwrap_or_else(|| FakeProvider::account_json(1));
                        let body = issue_body(&mut st, account);
                        if body.get("refresh_token").is_none() {
                            let access = body["access_token"].as_str().unwrap_or_default().to_string();
                            st.access_parent.insert(access, rt.clone());
                        }
                        let body = match st.reshape_tokens {
                            Some(reshape) => reshape(body),
                            None => body,
                        };
                        let response = ResponseTemplate::new(200).set_body_json(body);
                        match st.refresh_delay {
                            Some(d) => response.set_delay(d),
                            None => response,
                        }
                    }
                    Some(false) => {
                        // Replay of a rotated refresh token: revoke the whole family.
                        for v in st.refresh_tokens.values_mut() {
                            *v = false;
                        }
                        st.access_tokens.clear();
                        error(400, "invalid_grant")
                    }
                    None => error(400, "invalid_grant"),
                }
            }
            _ => error(400, "unsupported_grant_type"),
        }
    }
}

fn issue_body(st: &mut State, account: serde_json::Value) -> serde_json::Value {
    st.issued += 1;
    let n = st.issued;
    let access = format!("AT-CANARY-{n}-{}", uuidish());
    let refresh = format!("RT-CANARY-{n}-{}", uuidish());
    st.access_tokens.push(access.clone());
    st.token_accounts.insert(access.clone(), account.clone());
    let scope = st.grant_scope.clone().unwrap_or_else(|| "read write".into());
    let mut body = json!({"access_token": access, "token_type": "bearer"});
    if !scope.is_empty() {
        body["scope"] = json!(scope);
    }
    let give_refresh = !st.omit_refresh_token && (st.rotate_refresh_tokens || st.refresh_tokens.is_empty());
    if give_refresh {
        st.refresh_tokens.insert(refresh.clone(), true);
        st.token_accounts.insert(refresh.clone(), account);
        st.access_parent.insert(access.clone(), refresh.clone());
        body["refresh_token"] = json!(refresh);
    }
    if let Some(e) = &st.expires_in {
        body["expires_in"] = e.clone();
    }
    body
}

/// The fixture key (tests/fixtures/oidc-test-key.pem, P-256) and its public half as a JWK.
const ID_TOKEN_KEY: &[u8] = include_bytes!("../fixtures/oidc-test-key.pem");
const ID_TOKEN_X: &str = "YBIYt2d8I_jDPlMiKLa7XgfQ8Z-9fpvgLdEYIqQBB8Y";
const ID_TOKEN_Y: &str = "JEJuMkTE7b97N2VE2IRv9rsTldvOqhG_SOYxlPFHRBU";

fn id_token(st: &State, account: &serde_json::Value, nonce: Option<String>) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let fault = st.id_token_fault;
    let mut claims = json!({
        "iss": if fault == Some("iss") { "https://elsewhere.example".to_string() } else { st.issuer.clone() },
        "aud": if fault == Some("aud") { "another-client" } else { CLIENT_ID },
        "sub": account["sub"],
        "email": account["email"],
        "iat": now,
        "exp": if fault == Some("expired") { now - 3600 } else { now + 600 },
    });
    // Several audiences, with or without an authorized party (`azp`).
    match fault {
        Some("audiences") => claims["aud"] = json!([CLIENT_ID, "another-client"]),
        Some("azp") => {
            claims["aud"] = json!([CLIENT_ID, "another-client"]);
            claims["azp"] = json!("another-client");
        }
        Some("azp-alone") => claims["azp"] = json!("another-client"),
        Some("audiences-azp-ours") => {
            claims["aud"] = json!([CLIENT_ID, "another-client"]);
            claims["azp"] = json!(CLIENT_ID);
        }
        _ => {}
    }
    if let Some(n) = nonce {
        claims["nonce"] = json!(if fault == Some("nonce") { "another-nonce".to_string() } else { n });
    }
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("fake-1".into());
    let token = encode(&header, &claims, &EncodingKey::from_ec_pem(ID_TOKEN_KEY).unwrap()).unwrap();
    if fault == Some("signature") {
        // Someone else's claims under this signature.
        let forged =
            encode(&header, &json!({"sub": "admin"}), &EncodingKey::from_ec_pem(ID_TOKEN_KEY).unwrap()).unwrap();
        let p: Vec<&str> = token.split('.').collect();
        return format!("{}.{}.{}", p[0], forged.split('.').nth(1).unwrap(), p[2]);
    }
    token
}

fn uuidish() -> String {
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `/api/…`: echoes what it received (for the proxy), if the bearer token is valid.
struct ApiEndpoint(Arc<Mutex<State>>);

impl Respond for ApiEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let st = self.0.lock().unwrap();
        let token = token_of(req);
        if !token.is_some_and(|t| st.access_tokens.contains(&t)) {
            return error(401, "invalid_token");
        }
        if req.url.path() == "/api/big" {
            return ResponseTemplate::new(200).set_body_raw(vec![b'x'; 64 * 1024], "application/octet-stream");
        }
        if req.url.path() == "/api/big-json" {
            // 2 MiB of JSON: 2^17 strings of 13 digits, 16 bytes each with their quotes and comma.
            let mut body = vec![b'['];
            for i in 0..(1 << 17) {
                body.extend_from_slice(format!("{}\"{i:013}\"", if i == 0 { "" } else { "," }).as_bytes());
            }
            body.push(b']');
            return ResponseTemplate::new(200).set_body_raw(body, "application/json");
        }
        let headers: HashMap<String, String> =
            req.headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        ResponseTemplate::new(201)
            .insert_header("X-Provider-Header", "kept")
            .insert_header("Set-Cookie", "provider_session=abc")
            .set_body_json(json!({
                "method": req.method.as_str(),
                "path": req.url.path(),
                "query": req.url.query(),
                "body": String::from_utf8_lossy(&req.body),
                "headers": headers,
            }))
    }
}

/// The revocation endpoints, which revoke one token (and what it carries) at a time, as RFC 7009
/// allows: RFC 7009 (`/revoke`: form `token`, client authentication), Dropbox's
/// (`/dropbox-revoke`: the access token as Bearer ends it and its refresh token) and GitHub's
/// (`DELETE /applications/<id>/token`: JSON `access_token`).
struct RevokeEndpoint(Arc<Mutex<State>>);

impl Respond for RevokeEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let mut st = self.0.lock().unwrap();
        if st.revoke_unavailable {
            return error(503, "temporarily_unavailable");
        }
        let revoke = |st: &mut State, token: &str| {
            if let Some(live) = st.refresh_tokens.get_mut(token) {
                *live = false;
            }
            st.access_tokens.retain(|a| a != token);
        };
        match req.url.path() {
            "/revoke" => {
                let f = form(req);
                let body_auth = f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && f.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
                if !basic_ok(req) && !body_auth {
                    return error(401, "invalid_client");
                }
                revoke(&mut st, f.get("token").map(String::as_str).unwrap_or_default());
                ResponseTemplate::new(200)
            }
            "/dropbox-revoke" => {
                let bearer = req
                    .headers
                    .get("authorization")
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.strip_prefix("Bearer "));
                let Some(access) = bearer.filter(|t| st.access_tokens.iter().any(|a| a == t)).map(str::to_string)
                else {
                    return error(401, "invalid_access_token");
                };
                revoke(&mut st, &access);
                if let Some(parent) = st.access_parent.get(&access).cloned() {
                    revoke(&mut st, &parent);
                }
                ResponseTemplate::new(200).set_body_raw("null", "application/json")
            }
            _ => {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
                revoke(&mut st, body["access_token"].as_str().unwrap_or_default());
                ResponseTemplate::new(204)
            }
        }
    }
}

struct AccountEndpoint(Arc<Mutex<State>>);

impl Respond for AccountEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let st = self.0.lock().unwrap();
        if st.account_always_401 {
            return error(401, "invalid_token");
        }
        match token_of(req) {
            Some(t) if st.access_tokens.contains(&t) => ResponseTemplate::new(200)
                .set_body_json(st.token_accounts.get(&t).cloned().unwrap_or_else(|| FakeProvider::account_json(1))),
            _ => error(401, "invalid_token"),
        }
    }
}

/// `POST /graphql`: a GraphQL API answering `{ <field> { … } }` with the token's account under
/// `data.<field>` (Linear's `viewer`, monday.com's `me`, Shopify's `shop`); anything else is a
/// GraphQL error.
struct GraphqlEndpoint(Arc<Mutex<State>>);

impl Respond for GraphqlEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let st = self.0.lock().unwrap();
        let Some(account) = token_of(req).and_then(|t| st.token_accounts.get(&t).cloned()) else {
            return error(401, "invalid_token");
        };
        let query = serde_json::from_slice::<serde_json::Value>(&req.body)
            .ok()
            .and_then(|b| b["query"].as_str().map(str::to_string))
            .unwrap_or_default();
        let field = query.trim().trim_start_matches('{').split_whitespace().next().unwrap_or("").to_string();
        if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphabetic()) {
            return ResponseTemplate::new(200).set_body_json(json!({"errors": [{"message": "Syntax Error"}]}));
        }
        ResponseTemplate::new(200).set_body_json(json!({"data": {field: account}}))
    }
}

/// `POST /introspect`: RFC 7662 with client authentication (Basic or in the form), describing the
/// token's account as HubSpot does (`hub_id`, `user`, `hub_domain`).
struct IntrospectEndpoint(Arc<Mutex<State>>);

impl Respond for IntrospectEndpoint {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let st = self.0.lock().unwrap();
        let f = form(req);
        let body_auth = f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && f.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET);
        if !basic_ok(req) && !body_auth {
            return error(401, "invalid_client");
        }
        let token = f.get("token").cloned().unwrap_or_default();
        match st.token_accounts.get(&token).filter(|_| st.access_tokens.contains(&token)) {
            Some(account) => ResponseTemplate::new(200).set_body_json(json!({
                "active": true,
                "token_use": "access_token",
                "hub_id": account["id"],
                "user": account["email"],
                "hub_domain": format!("{}.hubspot.example", account["login"].as_str().unwrap_or("x")),
                // HubSpot's answer names the token it describes.
                "token": token,
                "signed_access_token": {"token": token, "expiresAt": 1},
                "scopes": [token.clone(), "oauth".to_string()],
            })),
            None => ResponseTemplate::new(200).set_body_json(json!({"active": false})),
        }
    }
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        FakeProvider::start_on(MockServer::start().await).await
    }

    /// One that keeps no record of the requests it answers (see `Builder::unrecorded_fake`).
    pub async fn start_unrecorded() -> FakeProvider {
        FakeProvider::start_on(MockServer::builder().disable_request_recording().start().await).await
    }

    async fn start_on(server: MockServer) -> FakeProvider {
        let state = Arc::new(Mutex::new(State {
            enforce_pkce: true,
            expires_in: Some(json!(3600)),
            rotate_refresh_tokens: true,
            chooser: Some(("prompt".into(), "select_account".into())),
            ..State::default()
        }));
        Mock::given(method("POST")).and(path("/token")).respond_with(TokenEndpoint(state.clone())).mount(&server).await;
        // A separate refresh endpoint (Figma's), answering as the token endpoint does.
        Mock::given(method("POST"))
            .and(path("/refresh"))
            .respond_with(TokenEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/graphql"))
            .respond_with(GraphqlEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/introspect"))
            .respond_with(IntrospectEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(path("/account")).respond_with(AccountEndpoint(state.clone())).mount(&server).await;
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": ID_TOKEN_X, "y": ID_TOKEN_Y, "kid": "fake-1", "use": "sig", "alg": "ES256"}]});
        Mock::given(path("/jwks")).respond_with(ResponseTemplate::new(200).set_body_json(jwks)).mount(&server).await;
        state.lock().unwrap().issuer = server.uri();
        Mock::given(wiremock::matchers::path_regex("^/api/"))
            .respond_with(ApiEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/revoke"))
            .respond_with(RevokeEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/dropbox-revoke"))
            .respond_with(RevokeEndpoint(state.clone()))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(wiremock::matchers::path_regex("^/applications/[^/]+/token$"))
            .respond_with(RevokeEndpoint(state.clone()))
            .mount(&server)
            .await;
        FakeProvider { server: Arc::new(server), state }
    }

    /// The account API's answer for account `n`, with the fields every preset points at (`id`,
    /// Dropbox's `account_id`, Google's `sub`, GitHub's `login`, Microsoft's `userPrincipalName`).
    pub fn account_json(n: u32) -> serde_json::Value {
        let email = if n == 1 { "fake@example.com".to_string() } else { format!("user{n}@fake.example") };
        json!({
            "id": format!("fake-user-{n}"),
            "account_id": format!("dbid:fake-{n}"),
            "sub": format!("sub-{n}"),
            "login": format!("fake{n}"),
            "userPrincipalName": email,
            "name": if n == 1 { "Fake User".to_string() } else { format!("Fake User {n}") },
            "email": email,
            // The same for every account (a label two accounts share).
            "team": "Fake Team",
        })
    }

    /// The `nonce` of the authorization request `code` answers (the id_token carries it back).
    pub fn remember_nonce(&self, code: &str, nonce: &str) {
        self.state.lock().unwrap().nonces.insert(code.to_string(), nonce.to_string());
    }

    /// The account (`id`) a token the fake issued belongs to.
    pub fn account_of(&self, token: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.token_accounts.get(token).and_then(|a| a["id"].as_str()).map(str::to_string)
    }

    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Answer more paths (a test's own revocation endpoint…).
    pub async fn mount(&self, mock: Mock) {
        mock.mount(&self.server).await;
    }

    /// A code the provider will accept once, for a flow whose PKCE challenge is `challenge`.
    pub fn issue_code(&self, challenge: &str) -> String {
        let code = format!("CODE-CANARY-{}", uuidish());
        self.state.lock().unwrap().codes.insert(code.clone(), challenge.to_string());
        code
    }

    /// The person at the fake's authorize page, approving the request `url` (the Redirector's
    /// redirect): a code for its PKCE challenge (and `nonce`), issued for the session's account —
    /// or, when the request asks for the account chooser and a pick is set, for that account.
    pub fn authorize(&self, url: &url::Url) -> String {
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let code = self.issue_code(q.get("code_challenge").map(String::as_str).unwrap_or_default());
        if let Some(nonce) = q.get("nonce") {
            self.remember_nonce(&code, nonce);
        }
        let mut st = self.state.lock().unwrap();
        let shown =
            st.chooser.as_ref().is_some_and(|(k, v)| q.get(k).is_some_and(|given| given.split(' ').any(|w| w == v)));
        if shown {
            if let Some(pick) = st.chooser_pick.clone() {
                st.account = Some(pick);
            }
        }
        if let Some(account) = st.account.clone() {
            st.code_accounts.insert(code.clone(), account);
        }
        code
    }

    /// Answer the next token call with `response` instead of the normal behaviour.
    pub fn script(&self, response: ResponseTemplate) {
        self.state.lock().unwrap().script.push_back(response);
    }

    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Every request the fake has received.
    pub async fn all_requests(&self) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default()
    }

    pub async fn requests_to(&self, p: &str) -> Vec<Request> {
        self.server.received_requests().await.unwrap_or_default().into_iter().filter(|r| r.url.path() == p).collect()
    }

    pub async fn token_calls(&self) -> usize {
        self.requests_to("/token").await.len()
    }

    /// Token calls with `grant_type=refresh_token` at `path` (`/token`, or `/refresh`).
    pub async fn refresh_calls_to(&self, p: &str) -> usize {
        self.requests_to(p)
            .await
            .iter()
            .filter(|r| form(r).get("grant_type").map(String::as_str) == Some("refresh_token"))
            .count()
    }

    /// Token calls with `grant_type=refresh_token`.
    pub async fn refresh_calls(&self) -> usize {
        self.refresh_calls_to("/token").await
    }

    /// Make every current access token invalid (as if revoked or expired at the provider).
    pub fn invalidate_access_tokens(&self) {
        self.state.lock().unwrap().access_tokens.clear();
    }
}

impl FakeProvider {
    /// Whether the provider would accept `refresh_token` now (issued, and neither rotated away nor
    /// revoked with its family).
    pub fn refresh_token_valid(&self, refresh_token: &str) -> bool {
        self.state.lock().unwrap().refresh_tokens.get(refresh_token).copied().unwrap_or(false)
    }

    /// Every refresh token the provider would still accept (issued, neither rotated away nor
    /// revoked), sorted.
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        let mut live: Vec<String> = st.refresh_tokens.iter().filter(|(_, v)| **v).map(|(k, _)| k.clone()).collect();
        live.sort();
        live
    }

    /// Whether the provider's API would accept `access_token` now.
    pub fn access_token_valid(&self, access_token: &str) -> bool {
        self.state.lock().unwrap().access_tokens.iter().any(|a| a == access_token)
    }
}

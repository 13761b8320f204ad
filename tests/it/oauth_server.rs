//! tokenvault as an OAuth 2.1 authorization server for its own API (issue 22): discovery,
//! registration (dynamic, by an administrator, Client ID Metadata Documents), the consent page,
//! PKCE, the token endpoint's rotation and reuse detection, revocation and introspection, and
//! `/api/v1` accepting the access tokens within their grant — with each attack of the issue.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rocket::http::{ContentType, Header, Status};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{self, builder, Agent, TestApp, PUBLIC_URL};

pub(crate) const REDIRECT: &str = "http://127.0.0.1:7777/callback";

pub(crate) fn pkce() -> (String, String) {
    let verifier = format!("v{}", tokenvault::util::random_token(40));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// POST JSON without cookies; status and JSON answer.
async fn post_json(app: &TestApp, uri: &str, body: Value, from: &str) -> (Status, Value) {
    let res = app
        .client
        .post(uri.to_string())
        .header(ContentType::JSON)
        .remote(format!("{from}:40000").parse().unwrap())
        .body(body.to_string())
        .dispatch()
        .await;
    let status = res.status();
    let text = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A form POST without cookies (a client's request to the token endpoint), with extra headers.
async fn post_form(app: &TestApp, uri: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> (Status, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let mut req = app.client.post(uri.to_string()).header(ContentType::Form).body(body);
    for (k, v) in headers {
        req = req.header(Header::new(k.to_string(), v.to_string()));
    }
    let res = req.dispatch().await;
    let status = res.status();
    let text = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// GET with a bearer token; status, JSON answer and `WWW-Authenticate`.
async fn api(app: &TestApp, method: &str, uri: &str, token: &str) -> (Status, Value, Option<String>) {
    let req = match method {
        "POST" => app.client.post(uri.to_string()).body("{}"),
        _ => app.client.get(uri.to_string()),
    };
    let res = req.header(Header::new("Authorization", format!("Bearer {token}"))).dispatch().await;
    let status = res.status();
    let challenge = res.headers().get_one("WWW-Authenticate").map(str::to_string);
    let text = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)), challenge)
}

/// Register a public client dynamically with these redirect URIs; its client_id.
pub(crate) async fn register(app: &TestApp, redirects: &[&str]) -> String {
    let (status, body) = post_json(
        app,
        "/oauth/register",
        json!({"client_name": "Test Agent", "redirect_uris": redirects, "token_endpoint_auth_method": "none"}),
        "127.0.0.1",
    )
    .await;
    assert_eq!(status, Status::Created, "{body}");
    assert!(body.get("client_secret").is_none(), "a public client has no secret");
    body["client_id"].as_str().unwrap().to_string()
}

/// An authorization request's URL.
pub(crate) fn authorize_url(
    client_id: &str,
    redirect: &str,
    challenge: Option<&str>,
    extra: &[(&str, &str)],
) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code").append_pair("client_id", client_id).append_pair("redirect_uri", redirect);
    q.append_pair("state", "st-123");
    if let Some(c) = challenge {
        q.append_pair("code_challenge", c).append_pair("code_challenge_method", "S256");
    }
    for (k, v) in extra {
        q.append_pair(k, v);
    }
    format!("/oauth/authorize?{}", q.finish())
}

/// The hidden and checked fields of the consent form, as the browser would send them.
pub(crate) fn consent_fields(page: &str) -> Vec<(String, String)> {
    let form = &page[page.find(r#"id="grant-form""#).expect("the consent form")..];
    let form = &form[..form.find("</form>").unwrap()];
    let mut fields = Vec::new();
    let input = regex::Regex::new(r#"<input ([^>]*)>"#).unwrap();
    let attr = |tag: &str, name: &str| {
        regex::Regex::new(&format!(r#"{name}="([^"]*)""#)).unwrap().captures(tag).map(|c| c[1].to_string())
    };
    for cap in input.captures_iter(form) {
        let tag = &cap[1];
        let (Some(name), value) = (attr(tag, "name"), attr(tag, "value").unwrap_or_default()) else { continue };
        let kind = attr(tag, "type").unwrap_or_default();
        if (kind == "checkbox" || kind == "radio") && !tag.contains(" checked") {
            continue;
        }
        let value = value.replace("&amp;", "&").replace("&#x3D;", "=").replace("&#x2F;", "/").replace("&quot;", "\"");
        fields.push((name, value));
    }
    let lifetime = regex::Regex::new(r#"<option value="([^"]+)" selected>"#).unwrap();
    fields.push(("lifetime".into(), lifetime.captures(form).expect("a default lifetime")[1].to_string()));
    fields
}

/// The query of a redirect to the client.
pub(crate) fn query_of(location: &str) -> BTreeMap<String, String> {
    url::Url::parse(location).unwrap().query_pairs().into_owned().collect()
}

/// Open the consent page and allow with its defaults (changed by `change`); the code.
pub(crate) async fn consent(
    agent: &Agent<'_>,
    url: &str,
    change: impl FnOnce(&mut Vec<(String, String)>),
) -> (String, BTreeMap<String, String>) {
    let page = agent.fetch(url).await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    let mut fields = consent_fields(&page.text);
    change(&mut fields);
    fields.push(("decision".into(), "allow".into()));
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = agent.post_form("/oauth/authorize", &pairs).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    let location = r.location.unwrap();
    let q = query_of(&location);
    (q.get("code").cloned().unwrap_or_default(), q)
}

pub(crate) async fn exchange(
    app: &TestApp,
    client_id: &str,
    code: &str,
    verifier: &str,
    extra: &[(&str, &str)],
) -> (Status, Value) {
    let mut fields = vec![
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ];
    fields.extend_from_slice(extra);
    post_form(app, "/oauth/token", &fields, &[]).await
}

async fn refresh(app: &TestApp, client_id: &str, refresh_token: &str) -> (Status, Value) {
    let fields = [("grant_type", "refresh_token"), ("client_id", client_id), ("refresh_token", refresh_token)];
    post_form(app, "/oauth/token", &fields, &[]).await
}

/// A user `alice` with the fake connected, a registered client, and a whole flow done: the
/// client id and the token answer.
async fn granted(app: &TestApp, alice: &Agent<'_>, scope: &str) -> (String, Value) {
    let client_id = register(app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let (code, _) =
        consent(alice, &authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", scope)]), |_| {}).await;
    let (status, tokens) = exchange(app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    (client_id, tokens)
}

#[tokio::test]
async fn discovery_consent_pkce_tokens_and_the_api() {
    let app = builder().start().await;
    // Discovery: RFC 8414 (and the OpenID path), RFC 9728 for each resource.
    let meta: Value =
        serde_json::from_str(&app.agent().fetch("/.well-known/oauth-authorization-server").await.text).unwrap();
    assert_eq!(meta["issuer"], PUBLIC_URL);
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    for scope in ["connections:read", "proxy:read", "proxy:write", "token:read", "service:fake"] {
        assert!(meta["scopes_supported"].as_array().unwrap().contains(&json!(scope)), "{scope}");
    }
    let oidc: Value = serde_json::from_str(&app.agent().fetch("/.well-known/openid-configuration").await.text).unwrap();
    assert_eq!(oidc["token_endpoint"], format!("{PUBLIC_URL}/oauth/token"));
    for (path, resource) in [("/api/v1", "/api/v1"), ("/mcp", "/mcp"), ("", "/api/v1")] {
        let doc = app.agent().fetch(&format!("/.well-known/oauth-protected-resource{path}")).await;
        let doc: Value = serde_json::from_str(&doc.text).unwrap();
        assert_eq!(doc["resource"], format!("{PUBLIC_URL}{resource}"));
        assert_eq!(doc["authorization_servers"], json!([PUBLIC_URL]));
    }
    // A 401 says where the resource's metadata is.
    let (status, _, challenge) = api(&app, "GET", "/api/v1/connections", "tvat_nope").await;
    assert_eq!(status, Status::Unauthorized);
    let metadata = format!(r#"resource_metadata="{PUBLIC_URL}/.well-known/oauth-protected-resource/api/v1""#);
    assert_eq!(challenge, Some(format!(r#"Bearer error="invalid_token", {metadata}"#)));
    let bare = app.client.get("/api/v1/connections").dispatch().await;
    assert_eq!(bare.status(), Status::Unauthorized);
    let expected = format!("Bearer {metadata}");
    assert_eq!(bare.headers().get_one("WWW-Authenticate"), Some(expected.as_str()), "no credentials: no error code");

    let client_id = register(&app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "connections:read proxy:read")]);
    // Signed out: the sign-in page, then back here.
    let anon = app.agent().fetch(&url).await;
    assert_eq!(anon.status, Status::SeeOther);
    assert!(anon.location.as_deref().unwrap().starts_with("/login?next=%2Foauth%2Fauthorize"), "{:?}", anon.location);

    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let page = alice.fetch(&url).await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    for id in ["grant-form", "grant-allow", "grant-deny", "grant-client", "grant-services"] {
        assert!(page.text.contains(&format!(r#"id="{id}""#)), "#{id}");
    }
    assert!(
        page.text.contains("Test Agent") && page.text.contains("<code class=\"grant-redirect-host\">127.0.0.1</code>")
    );
    let csp = page.header("Content-Security-Policy").unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("form-action http://127.0.0.1:7777 'self'"),
        "{csp}"
    );
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert!(page.header("X-Tokenvault-Form-Action").is_none(), "the internal header is not sent");
    let defaults = consent_fields(&page.text);
    let has = |k: &str, v: &str| defaults.iter().any(|(a, b)| a == k && b == v);
    assert!(has("capabilities", "connections:read") && has("capabilities", "proxy:read"));
    assert!(!has("capabilities", "proxy:write") && !has("capabilities", "token:read"), "least privilege");
    assert!(has("service_mode", "all") && has("lifetime", "30d"), "{defaults:?}");

    let (code, q) = consent(&alice, &url, |_| {}).await;
    assert_eq!((q["state"].as_str(), q["iss"].as_str()), ("st-123", PUBLIC_URL), "state returned, RFC 9207 iss");
    assert!(code.starts_with("tvac_"));
    let (status, tokens) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 3600);
    assert_eq!(tokens["scope"], "connections:read proxy:read");
    let access = tokens["access_token"].as_str().unwrap();
    let (status, body, _) = api(&app, "GET", "/api/v1/connections", access).await;
    assert_eq!(status, Status::Ok, "{body}");
    assert_eq!(body[0]["service"], "fake");
    let (status, body, _) = api(&app, "GET", "/api/v1/services/fake/proxy/files", access).await;
    assert!(status.class().is_success(), "proxy:read allows a GET: {body}");

    // Refresh: a new pair; the old access token keeps working until it expires.
    let (status, again) = refresh(&app, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, Status::Ok, "{again}");
    assert_ne!(again["refresh_token"], tokens["refresh_token"], "rotated");
    let (status, _, _) = api(&app, "GET", "/api/v1/connections", again["access_token"].as_str().unwrap()).await;
    assert_eq!(status, Status::Ok);
    // Audited, sent as a webhook event, last use shown; no token stored or shown in the clear.
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.created'"), 1);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.tokens_issued'"), 2);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_events WHERE event_type = 'grant.created'"), 1);
    let settings = alice.fetch("/settings/apps").await;
    assert!(
        settings.text.contains(r#"id="connected-apps""#)
            && settings.text.contains(&format!(r#"data-client="{client_id}""#))
    );
    assert!(settings.text.contains(r#"id="settings-apps""#));
    let bytes = String::from_utf8_lossy(&app.database_bytes()).to_string();
    for secret in [access, tokens["refresh_token"].as_str().unwrap(), code.as_str()] {
        assert!(!bytes.contains(secret), "stored hashed only");
        assert!(!settings.text.contains(secret));
    }
}

/// A client registered by an administrator (public); its client_id.
pub(crate) fn admin_client(app: &TestApp, redirects: &[&str]) -> String {
    let uris: Vec<String> = redirects.iter().map(|r| r.to_string()).collect();
    let registration = tokenvault::authz::clients::Registration {
        kind: tokenvault::db::models::authz::ClientKind::Admin,
        name: "Backend",
        redirect_uris: &uris,
        confidential: false,
        by: tokenvault::changes::Actor::System,
        address: None,
    };
    let mut conn = app.db.conn().unwrap();
    let registered = tokenvault::changes::write_no_history(&mut conn, &app.cipher, |tx| {
        tokenvault::authz::clients::register(tx, registration)
    })
    .unwrap();
    registered.recorded_only().client.client_id
}

/// An error of the authorization request goes back to the redirect URI only for a client an
/// administrator registered; a dynamically registered client (anyone's) gets tokenvault's error
/// page, with no redirect (no open redirector, RFC 9700 §4.11.2), signed in or not.
#[tokio::test]
async fn request_errors_go_back_only_to_administrators_clients() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let anonymous = app.agent();
    let dynamic = register(&app, &[REDIRECT]).await;
    let bad_pkce = |cid: &str| authorize_url(cid, REDIRECT, None, &[]);
    let bad_scope = |cid: &str| authorize_url(cid, REDIRECT, Some(&challenge_of()), &[("scope", "nope:nope")]);
    let bad_type = |cid: &str| authorize_url(cid, REDIRECT, Some(&challenge_of()), &[]).replace("=code&", "=token&");
    for (url, error) in [
        (bad_pkce(&dynamic), "invalid_request"),
        (bad_scope(&dynamic), "invalid_scope"),
        (bad_type(&dynamic), "unsupported_response_type"),
    ] {
        for who in [&alice, &anonymous] {
            let r = who.fetch(&url).await;
            assert_eq!((r.status, r.location.as_deref()), (Status::BadRequest, None), "{error}: {}", r.text);
            assert!(r.text.contains(error), "{error}: {}", r.text);
            assert!(!r.text.contains("127.0.0.1:7777"), "no link to the redirect URI: {}", r.text);
        }
    }
    let admin = admin_client(&app, &[REDIRECT]);
    let r = anonymous.fetch(&bad_pkce(&admin)).await;
    assert_eq!(r.status, Status::SeeOther);
    let q = query_of(r.location.as_deref().unwrap());
    assert!(r.location.as_deref().unwrap().starts_with(REDIRECT));
    assert_eq!(
        (q["error"].as_str(), q["state"].as_str(), q["iss"].as_str()),
        ("invalid_request", "st-123", PUBLIC_URL)
    );
    let r = alice.fetch(&bad_scope(&admin)).await;
    assert_eq!(
        (r.status, query_of(r.location.as_deref().unwrap())["error"].as_str()),
        (Status::SeeOther, "invalid_scope")
    );
}

#[tokio::test]
async fn pkce_is_required_and_checked() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let admin = admin_client(&app, &[REDIRECT]);
    // No challenge: the error goes back to the (verified) redirect URI of an administrator's
    // client, with state and iss; a dynamic client's is shown here.
    let r = alice.fetch(&authorize_url(&client_id, REDIRECT, None, &[])).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::BadRequest, None));
    let r = alice.fetch(&authorize_url(&admin, REDIRECT, None, &[])).await;
    assert_eq!(r.status, Status::SeeOther);
    let q = query_of(r.location.as_deref().unwrap());
    assert_eq!(
        (q["error"].as_str(), q["state"].as_str(), q["iss"].as_str()),
        ("invalid_request", "st-123", PUBLIC_URL)
    );
    let plain = alice
        .fetch(&format!(
            "{}&code_challenge={}&code_challenge_method=plain",
            authorize_url(&admin, REDIRECT, None, &[]),
            "a".repeat(43)
        ))
        .await;
    assert_eq!(query_of(plain.location.as_deref().unwrap())["error"], "invalid_request", "plain is refused");

    let (verifier, challenge) = pkce();
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[]);
    let (code, _) = consent(&alice, &url, |_| {}).await;
    let (status, body) = post_form(
        &app,
        "/oauth/token",
        &[("grant_type", "authorization_code"), ("client_id", &client_id), ("code", &code), ("redirect_uri", REDIRECT)],
        &[],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_request")), "no verifier: {body}");
    let (code, _) = consent(&alice, &url, |_| {}).await;
    let (wrong, _) = pkce();
    let (status, body) = exchange(&app, &client_id, &code, &wrong, &[]).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    // Wrong guesses (a verifier, another client, another redirect URI) do not spend the code.
    let other = register(&app, &[REDIRECT]).await;
    let (status, body) = exchange(&app, &other, &code, &verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    let redirect = [("redirect_uri", "http://127.0.0.1:7777/other")];
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id.as_str()),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, _) = post_form(&app, "/oauth/token", &[&fields[..], &redirect[..]].concat(), &[]).await;
    assert_eq!(status, Status::BadRequest);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_codes WHERE used_at IS NOT NULL"), 0);
    let (status, tokens) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok, "the honest client's code still works: {tokens}");
    let (status, _) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::BadRequest, "used once: spent (and the grant revoked)");
    // Each refusal is audited (batched): the error and why, never the code.
    // (Identical refusals in one batch are coalesced into one entry with a count.)
    let refused = |why: &str| {
        format!("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'oauth.refused' AND detail LIKE '%{why}%'")
    };
    let whys = ["PKCE is required", "code_verifier is required", "code_verifier does not match", "already used"];
    for _ in 0..50 {
        if whys.iter().all(|w| app.count(&refused(w)) > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for why in whys {
        assert!(app.count(&refused(why)) > 0, "{why} audited");
    }
    assert_eq!(app.count(&format!("SELECT COUNT(*) AS n FROM audit_log WHERE detail LIKE '%{code}%'")), 0);
}

#[tokio::test]
async fn the_redirect_uri_must_be_exact_but_for_a_loopback_port() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let client_id = register(&app, &[REDIRECT, "https://agent.example/cb"]).await;
    let (_, challenge) = pkce();
    for bad in [
        "http://127.0.0.1:7777/callback/x",
        "http://127.0.0.1:7777/callbacK",
        "http://127.0.0.2:7777/callback",
        "http://localhost:7777/callback",
        "https://agent.example/cb?x=1",
        "https://agent.example.evil/cb",
        "https://evil.example/cb",
    ] {
        let r = alice.fetch(&authorize_url(&client_id, bad, Some(&challenge), &[])).await;
        assert_eq!(r.status, Status::BadRequest, "{bad}");
        assert!(r.location.is_none(), "never a redirect to an unverified URI: {bad}");
        assert!(r.text.contains("redirect URI"), "{bad}");
    }
    let unknown = alice.fetch(&authorize_url("tvcl_unknown", REDIRECT, Some(&challenge), &[])).await;
    assert_eq!((unknown.status, unknown.location), (Status::BadRequest, None));
    // RFC 8252 §7.3: a native app's loopback port may vary.
    let r = alice.fetch(&authorize_url(&client_id, "http://127.0.0.1:51234/callback", Some(&challenge), &[])).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    // The token request must name the same redirect URI.
    let (verifier, challenge) = pkce();
    let (code, _) = consent(&alice, &authorize_url(&client_id, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let fields = [
        ("grant_type", "authorization_code"),
        ("client_id", client_id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", "https://agent.example/cb"),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, body) = post_form(&app, "/oauth/token", &fields, &[]).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
}

/// A failed token request does not mark a dynamic registration used: never used, it is still
/// swept when its day is over.
#[tokio::test]
async fn a_failed_token_request_does_not_keep_an_unused_registration() {
    let app = builder().start().await;
    let idle = register(&app, &[REDIRECT]).await;
    let (status, _) = exchange(&app, &idle, "tvac_guess", &"a".repeat(43), &[]).await;
    assert_eq!(status, Status::BadRequest);
    assert_eq!(refresh(&app, &idle, "tvrt_guess").await.0, Status::BadRequest);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_clients WHERE last_used_at IS NOT NULL"), 0);
    app.exec("UPDATE authz_clients SET expires_at = 1");
    tokenvault::authz::tokens::sweep(&mut app.db.conn().unwrap(), tokenvault::util::now()).unwrap();
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_clients"), 0, "swept");
}

#[tokio::test]
async fn a_code_used_twice_revokes_what_the_first_use_issued() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let (code, _) = consent(&alice, &authorize_url(&client_id, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let (status, first) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok);
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Ok);
    let (status, body) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")));
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized, "revoked");
    assert_eq!(refresh(&app, &client_id, first["refresh_token"].as_str().unwrap()).await.0, Status::BadRequest);
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.revoked' AND detail LIKE '%code_reused%'"),
        1
    );
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_events WHERE event_type = 'grant.revoked'"), 1);
}

#[tokio::test]
async fn a_token_is_good_only_for_its_resource() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let mcp = format!("{PUBLIC_URL}/mcp");
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[("resource", &mcp)]);
    let (code, _) = consent(&alice, &url, |_| {}).await;
    // Asking for another resource than the code's: RFC 8707 invalid_target.
    let api_resource = format!("{PUBLIC_URL}/api/v1");
    let (code2, _) = consent(&alice, &url, |_| {}).await;
    let (status, body) = exchange(&app, &client_id, &code2, &verifier, &[("resource", &api_resource)]).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_target")), "{body}");
    let (status, tokens) = exchange(&app, &client_id, &code, &verifier, &[("resource", &mcp)]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    let (status, _, challenge) =
        api(&app, "GET", "/api/v1/connections", tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(status, Status::Unauthorized, "a token for /mcp is refused at /api/v1");
    assert!(challenge.unwrap().contains("resource_metadata="));
    // Not ours at all: invalid_target, shown here (a dynamic client), back to an administrator's.
    let foreign = [("resource", "https://x.example/")];
    let r = alice.fetch(&authorize_url(&client_id, REDIRECT, Some(&challenge_of()), &foreign)).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::BadRequest, None));
    assert!(r.text.contains("invalid_target"), "{}", r.text);
    let admin = admin_client(&app, &[REDIRECT]);
    let r = alice.fetch(&authorize_url(&admin, REDIRECT, Some(&challenge_of()), &foreign)).await;
    assert_eq!(query_of(r.location.as_deref().unwrap())["error"], "invalid_target");
}

fn challenge_of() -> String {
    pkce().1
}

/// Concurrent refreshes with one refresh token give the same answers on SQLite and PostgreSQL
/// (the suite runs on PostgreSQL when `TOKENVAULT_TEST_POSTGRES_URL` is set): the token held
/// while each runs, the first rotates it and the others are honest retries within the grace —
/// every one 200, never a database error — and only the last answer's refresh token stays live.
#[tokio::test]
async fn concurrent_refreshes_of_one_token_are_taken_one_at_a_time() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let (client_id, first) = granted(&app, &alice, "connections:read").await;
    let rt = first["refresh_token"].as_str().unwrap();
    let answers = futures_util::future::join_all((0..6).map(|_| refresh(&app, &client_id, rt))).await;
    for (status, body) in &answers {
        assert_eq!(*status, Status::Ok, "{body}");
    }
    let live =
        "SELECT COUNT(*) AS n FROM authz_tokens WHERE kind = 'refresh' AND revoked_at IS NULL AND rotated_at IS NULL";
    assert_eq!(app.count(live), 1, "one live refresh token: the last retry's");
}

#[tokio::test]
async fn a_replayed_rotated_refresh_token_revokes_the_grant_after_the_grace() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (client_id, first) = granted(&app, &alice, "connections:read").await;
    let r1 = first["refresh_token"].as_str().unwrap().to_string();
    let (status, second) = refresh(&app, &client_id, &r1).await;
    assert_eq!(status, Status::Ok);
    // An honest retry within the grace: a new pair, and the pair of the first use is revoked.
    let (status, retry) = refresh(&app, &client_id, &r1).await;
    assert_eq!(status, Status::Ok, "{retry}");
    assert_eq!(
        api(&app, "GET", "/api/v1/connections", second["access_token"].as_str().unwrap()).await.0,
        Status::Unauthorized
    );
    let live = retry["access_token"].as_str().unwrap();
    assert_eq!(api(&app, "GET", "/api/v1/connections", live).await.0, Status::Ok);
    // Past the grace it is a replay: the whole grant ends.
    app.exec("UPDATE authz_tokens SET rotated_at = rotated_at - 120 WHERE rotated_at IS NOT NULL");
    let (status, body) = refresh(&app, &client_id, &r1).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    assert_eq!(api(&app, "GET", "/api/v1/connections", live).await.0, Status::Unauthorized, "the grant is revoked");
    assert_eq!(refresh(&app, &client_id, retry["refresh_token"].as_str().unwrap()).await.0, Status::BadRequest);
    assert_eq!(
        app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.revoked' AND detail LIKE '%refresh_token_replayed%'"),
        1
    );
    // Another client cannot use this client's refresh token.
    let other = register(&app, &[REDIRECT]).await;
    let (status, body) = refresh(&app, &other, retry["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")));
}

/// The grace for an honest retry is no way around reuse detection: an attacker who replays a
/// stolen refresh token within the grace gets a pair, but the grant ends as soon as the client
/// presents the refresh token the retry replaced; and a replay after the client has already used
/// what the first refresh gave it ends the grant at once.
#[tokio::test]
async fn a_replay_within_the_grace_does_not_outlive_the_clients_next_refresh() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let token = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_string();
    let replayed = || {
        app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.revoked' AND detail LIKE '%refresh_token_replayed%'")
    };

    // The client refreshes; an attacker replays the same refresh token within the grace.
    let (client_id, first) = granted(&app, &alice, "connections:read").await;
    let r1 = token(&first, "refresh_token");
    let (_, client) = refresh(&app, &client_id, &r1).await;
    let (status, attacker) = refresh(&app, &client_id, &r1).await;
    assert_eq!(status, Status::Ok, "within the grace it looks like a retry");
    assert_eq!(api(&app, "GET", "/api/v1/connections", &token(&attacker, "access_token")).await.0, Status::Ok);
    // The client presents the refresh token it was given: reuse — the whole grant ends.
    let (status, body) = refresh(&app, &client_id, &token(&client, "refresh_token")).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    assert_eq!(
        api(&app, "GET", "/api/v1/connections", &token(&attacker, "access_token")).await.0,
        Status::Unauthorized,
        "the attacker's pair died with the grant"
    );
    assert_eq!(refresh(&app, &client_id, &token(&attacker, "refresh_token")).await.0, Status::BadRequest);
    assert_eq!(replayed(), 1);

    // The client refreshes twice within the grace; a replay of the first refresh token then finds
    // its answer used already: the grant ends at once, and no second chain is born.
    let (client_id, first) = granted(&app, &alice, "connections:read").await;
    let r1 = token(&first, "refresh_token");
    let (_, second) = refresh(&app, &client_id, &r1).await;
    let (_, third) = refresh(&app, &client_id, &token(&second, "refresh_token")).await;
    assert_eq!(api(&app, "GET", "/api/v1/connections", &token(&third, "access_token")).await.0, Status::Ok);
    let (status, body) = refresh(&app, &client_id, &r1).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    assert_eq!(api(&app, "GET", "/api/v1/connections", &token(&third, "access_token")).await.0, Status::Unauthorized);
    assert_eq!(replayed(), 2);
}

#[tokio::test]
async fn a_grant_acts_for_its_user_only() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let bob = app.user("bob").await;
    bob.connect("fake").await;
    let bobs =
        app.count("SELECT c.id AS n FROM connections c JOIN users u ON u.id = c.user_id WHERE u.username = 'bob'");
    let (_, tokens) = granted(&app, &alice, "connections:read proxy:read token:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    let (status, body, _) =
        api(&app, "GET", &format!("/api/v1/services/fake/proxy/files?connection={bobs}"), access).await;
    assert_eq!((status, body["error"].as_str()), (Status::NotFound, Some("not_connected")), "{body}");
    let (status, body, _) = api(&app, "GET", "/api/v1/connections", access).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(body.as_array().unwrap().len(), 1, "alice's only: {body}");
    assert_ne!(body[0]["connection_id"], json!(bobs));
}

#[tokio::test]
async fn a_proxy_call_outside_the_grant_is_refused_with_the_scope_to_ask_for() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (_, tokens) = granted(&app, &alice, "proxy:read service:fake").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(tokens["scope"], "proxy:read service:fake");
    assert!(api(&app, "GET", "/api/v1/services/fake/proxy/files", access).await.0.class().is_success());
    let (status, body, challenge) = api(&app, "POST", "/api/v1/services/fake/proxy/files", access).await;
    assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("forbidden_scope")), "{body}");
    assert_eq!(body["scope"], "proxy:write service:fake");
    let challenge = challenge.unwrap();
    assert!(
        challenge.starts_with(r#"Bearer error="insufficient_scope", scope="proxy:write service:fake""#),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="));
    let (status, body, _) = api(&app, "GET", "/api/v1/services/demo/proxy/x", access).await;
    assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("forbidden_scope")), "another service");
    let (status, _, _) = api(&app, "GET", "/api/v1/services/fake/token", access).await;
    assert_eq!(status, Status::Forbidden, "token:read was not granted");
    let posts = app
        .fake
        .all_requests()
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().starts_with("/api"));
    assert_eq!(posts.count(), 0, "nothing reached the provider");
}

#[tokio::test]
async fn token_read_is_never_ticked_by_default_and_the_user_can_narrow_the_grant() {
    let app = builder().demo().start().await;
    let alice = app.user("alice").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let (verifier, challenge) = pkce();
    let url =
        authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "token:read proxy:write service:fake")]);
    let page = alice.fetch(&url).await;
    let defaults = consent_fields(&page.text);
    assert!(!defaults.iter().any(|(k, v)| k == "capabilities" && v == "token:read"), "{defaults:?}");
    assert!(defaults.iter().any(|(k, v)| k == "service_mode" && v == "some"));
    assert!(defaults.iter().any(|(k, v)| k == "services" && v == "fake"));
    assert!(page.text.contains("dangerous"));
    // The user narrows write to read.
    let (code, _) = consent(&alice, &url, |f| {
        for (k, v) in f.iter_mut() {
            if k == "capabilities" && v == "proxy:write" {
                *v = "proxy:read".into();
            }
        }
    })
    .await;
    let (_, tokens) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(tokens["scope"], "proxy:read service:fake");
    // Nothing allowed: the page again, 422, with why; nothing granted.
    let page = alice.fetch(&url).await;
    let none: Vec<(String, String)> =
        consent_fields(&page.text).into_iter().filter(|(k, _)| k != "capabilities").collect();
    let mut none: Vec<(&str, &str)> = none.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    none.push(("decision", "allow"));
    let r = alice.post_form("/oauth/authorize", &none).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::UnprocessableEntity, None));
    assert!(r.text.contains(r#"id="grant-error""#) && r.text.contains(r#"id="grant-form""#), "{}", r.text);
    // Deny: access_denied back to the client, nothing granted.
    let page = alice.fetch(&url).await;
    let mut fields = consent_fields(&page.text);
    fields.push(("decision".into(), "deny".into()));
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = alice.post_form("/oauth/authorize", &pairs).await;
    let q = query_of(r.location.as_deref().unwrap());
    assert_eq!((q["error"].as_str(), q["state"].as_str()), ("access_denied", "st-123"));
    assert!(!q.contains_key("code"));
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants"), 1);
}

#[tokio::test]
async fn the_consent_form_is_csrf_protected_and_refuses_framing() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let client_id = register(&app, &[REDIRECT]).await;
    let (_, challenge) = pkce();
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[]);
    let page = alice.fetch(&url).await;
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert!(page.header("Content-Security-Policy").unwrap().contains("frame-ancestors 'none'"));
    let mut fields = consent_fields(&page.text);
    fields.push(("decision".into(), "allow".into()));
    let without: Vec<(&str, &str)> =
        fields.iter().filter(|(k, _)| k != "csrf_token").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = alice.post_form("/oauth/authorize", &without).await;
    assert_eq!((r.status, r.location), (Status::Forbidden, None), "no token: refused");
    let forged: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| if k == "csrf_token" { (k.as_str(), "forged") } else { (k.as_str(), v.as_str()) })
        .collect();
    assert_eq!(alice.post_form("/oauth/authorize", &forged).await.status, Status::Forbidden);
    let all: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cross = alice.post_with("/oauth/authorize", &all, &[("Origin", "https://evil.example")]).await;
    assert_eq!(cross.status, Status::Forbidden, "another origin");
    // Another user's session cannot use alice's form.
    let mallory = app.user("mallory").await;
    assert_eq!(mallory.post_form("/oauth/authorize", &all).await.status, Status::Forbidden);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants"), 0);
}

#[tokio::test]
async fn revoking_on_connected_apps_stops_the_tokens_and_revocation_and_introspection_work() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (client_id, tokens) = granted(&app, &alice, "connections:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    let page = alice.fetch("/settings/apps").await.text;
    let id = regex::Regex::new(r#"id="revoke-grant-(\d+)""#).unwrap().captures(&page).unwrap()[1].to_string();
    assert!(page.contains(&format!(r#"<tr data-grant="{id}" data-client="{client_id}">"#)));
    let mallory = app.user("mallory").await;
    let csrf = mallory.csrf("/settings/apps").await;
    let r = mallory.post_form(&format!("/settings/apps/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::NotFound, "another user's grant");
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Ok);
    let csrf = common::csrf_from(&page);
    let r = alice.post_form(&format!("/settings/apps/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized);
    assert!(alice.fetch("/settings/apps").await.text.contains(r#"id="no-connected-apps""#));
    // An ended grant is deleted, with its tokens, a while after it ended.
    tokenvault::authz::tokens::sweep(&mut app.db.conn().unwrap(), tokenvault::util::now()).unwrap();
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants"), 1, "kept for a while");
    app.exec("UPDATE authz_grants SET revoked_at = 1");
    tokenvault::authz::tokens::sweep(&mut app.db.conn().unwrap(), tokenvault::util::now()).unwrap();
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants"), 0);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_tokens"), 0);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_events WHERE event_type = 'grant.revoked'"), 1);

    // A confidential client registered by an administrator: RFC 7009 and RFC 7662.
    app.exec("UPDATE users SET is_admin = TRUE WHERE username = 'alice'");
    let csrf = alice.csrf("/admin/oauth-clients").await;
    let r = alice
        .post_form(
            "/admin/oauth-clients",
            &[("csrf_token", &csrf), ("name", "Backend"), ("redirect_uris", REDIRECT), ("confidential", "true")],
        )
        .await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let cid = regex::Regex::new(r#"id="new-client-id">([^<]+)<"#).unwrap().captures(&r.text).unwrap()[1].to_string();
    let secret =
        regex::Regex::new(r#"id="new-client-secret">([^<]+)<"#).unwrap().captures(&r.text).unwrap()[1].to_string();
    let (verifier, challenge) = pkce();
    let (code, _) = consent(&alice, &authorize_url(&cid, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let (status, body) = exchange(&app, &cid, &code, &verifier, &[]).await;
    assert_eq!((status, body["error"].as_str()), (Status::Unauthorized, Some("invalid_client")), "no secret");
    let (code, _) = consent(&alice, &authorize_url(&cid, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{cid}:{secret}")));
    let fields = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, tokens) = post_form(&app, "/oauth/token", &fields, &[("Authorization", &basic)]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    let (status, info) = post_form(&app, "/oauth/introspect", &[("token", access)], &[("Authorization", &basic)]).await;
    assert_eq!(status, Status::Ok);
    assert_eq!((info["active"].as_bool(), info["username"].as_str()), (Some(true), Some("alice")), "{info}");
    assert_eq!(info["aud"], format!("{PUBLIC_URL}/api/v1"));
    let public = register(&app, &[REDIRECT]).await;
    let (status, _) = post_form(&app, "/oauth/introspect", &[("token", access), ("client_id", &public)], &[]).await;
    assert_eq!(status, Status::Unauthorized, "introspection is for confidential clients");
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let (status, _) = post_form(&app, "/oauth/revoke", &[("token", refresh_token)], &[("Authorization", &basic)]).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized, "its grant ended");
    let (_, info) = post_form(&app, "/oauth/introspect", &[("token", access)], &[("Authorization", &basic)]).await;
    assert_eq!(info, json!({"active": false}));
}

#[tokio::test]
async fn dynamic_registration_is_checked_rate_limited_and_can_be_turned_off() {
    let app = builder().start().await;
    for bad in [json!({"redirect_uris": ["http://agent.example/cb"]}), json!({"redirect_uris": []}), json!({})] {
        let (status, body) = post_json(&app, "/oauth/register", bad.clone(), "192.0.2.9").await;
        assert_eq!(status, Status::BadRequest, "{bad}: {body}");
    }
    for _ in 0..7 {
        let (status, _) = post_json(&app, "/oauth/register", json!({"redirect_uris": [REDIRECT]}), "192.0.2.9").await;
        assert_eq!(status, Status::Created);
    }
    let (status, body) = post_json(&app, "/oauth/register", json!({"redirect_uris": [REDIRECT]}), "192.0.2.9").await;
    assert_eq!((status, body["error"].as_str()), (Status::TooManyRequests, Some("too_many_requests")));
    let (status, _) = post_json(&app, "/oauth/register", json!({"redirect_uris": [REDIRECT]}), "192.0.2.10").await;
    assert_eq!(status, Status::Created, "per address");
    // Unused registrations expire.
    app.exec("UPDATE authz_clients SET expires_at = 1");
    let removed = tokenvault::authz::tokens::sweep(&mut app.db.conn().unwrap(), tokenvault::util::now()).unwrap();
    assert_eq!(removed, 8);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_clients"), 0);

    let off = builder().set("oauth_dynamic_registration", false).start().await;
    let (status, _) = post_json(&off, "/oauth/register", json!({"redirect_uris": [REDIRECT]}), "127.0.0.1").await;
    assert_eq!(status, Status::NotFound);
    let meta: Value =
        serde_json::from_str(&off.agent().fetch("/.well-known/oauth-authorization-server").await.text).unwrap();
    assert!(meta.get("registration_endpoint").is_none());
    let none = builder().set("oauth_server", false).start().await;
    assert_eq!(none.agent().fetch("/.well-known/oauth-authorization-server").await.status, Status::NotFound);
    assert_eq!(none.agent().fetch("/oauth/authorize?client_id=x").await.status, Status::NotFound);
}

/// A Client ID Metadata Document served by the test on loopback (allowed: `debug` turns
/// `webhook_private_urls` on).
async fn document_server(body: impl Fn(&str) -> ResponseSpec) -> (wiremock::MockServer, String) {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    let url = format!("{}/client.json", server.uri());
    let spec = body(&url);
    let mut template = ResponseTemplate::new(200).set_body_raw(spec.body, "application/json");
    if let Some(d) = spec.delay {
        template = template.set_delay(d);
    }
    template = template.insert_header("Cache-Control", "max-age=600");
    Mock::given(method("GET")).and(path("/client.json")).respond_with(template).mount(&server).await;
    (server, url)
}

struct ResponseSpec {
    body: String,
    delay: Option<std::time::Duration>,
}

fn doc(client_id: &str, name: &str) -> String {
    json!({"client_id": client_id, "client_name": name, "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
        .to_string()
}

#[tokio::test]
async fn client_id_metadata_documents_are_fetched_checked_and_cached() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    let (server, url) = document_server(|u| ResponseSpec { body: doc(u, "Doc Agent"), delay: None }).await;
    let (verifier, challenge) = pkce();
    let page = alice.fetch(&authorize_url(&url, REDIRECT, Some(&challenge), &[])).await;
    assert_eq!(page.status, Status::Ok, "{}", page.text);
    assert!(page.text.contains("Doc Agent") && page.text.contains("metadata document"));
    let (code, _) = consent(&alice, &authorize_url(&url, REDIRECT, Some(&challenge), &[]), |_| {}).await;
    let (status, tokens) = exchange(&app, &url, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    assert_eq!(server.received_requests().await.unwrap().len(), 1, "cached per its Cache-Control");
    // A stale cached document without a grant is swept; one with a grant stays.
    let (_s, unused) = document_server(|u| ResponseSpec { body: doc(u, "Unused"), delay: None }).await;
    assert_eq!(alice.fetch(&authorize_url(&unused, REDIRECT, Some(&challenge), &[])).await.status, Status::Ok);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_clients"), 2);
    app.exec("UPDATE authz_clients SET expires_at = 1");
    tokenvault::authz::tokens::sweep(&mut app.db.conn().unwrap(), tokenvault::util::now()).unwrap();
    assert_eq!(app.text("SELECT client_id AS t FROM authz_clients"), url, "the granted one stays");
    let (status, _) = refresh(&app, &url, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, Status::Ok, "and keeps working");

    // Its client_id is not its URL.
    let (_s, mismatch) =
        document_server(|_| ResponseSpec { body: doc("https://other.example/c.json", "X"), delay: None }).await;
    let r = alice.fetch(&authorize_url(&mismatch, REDIRECT, Some(&challenge), &[])).await;
    assert_eq!((r.status, r.location.is_none()), (Status::BadRequest, true));
    assert!(r.text.contains("client_id is not its URL"), "{}", r.text);
    // A failure is remembered for a minute: asked again, it is refused without a fetch.
    let again = alice.fetch(&authorize_url(&mismatch, REDIRECT, Some(&challenge), &[])).await;
    assert!(again.status == Status::BadRequest && again.text.contains("client_id is not its URL"));
    assert_eq!(_s.received_requests().await.unwrap().len(), 1, "fetched once");
    // Too large.
    let (_s, large) = document_server(|u| ResponseSpec {
        body: json!({"client_id": u, "client_name": "y".repeat(6000), "redirect_uris": [REDIRECT]}).to_string(),
        delay: None,
    })
    .await;
    let r = alice.fetch(&authorize_url(&large, REDIRECT, Some(&challenge), &[])).await;
    assert_eq!(r.status, Status::BadRequest);
    assert!(r.text.contains("larger than"), "{}", r.text);
    // Too slow (the test's http_timeout is 3 s).
    let (_s, slow) =
        document_server(|u| ResponseSpec { body: doc(u, "Slow"), delay: Some(std::time::Duration::from_secs(5)) })
            .await;
    let r = alice.fetch(&authorize_url(&slow, REDIRECT, Some(&challenge), &[])).await;
    assert_eq!(r.status, Status::BadRequest);
    assert!(r.text.contains("did not arrive in time"), "{}", r.text);

    // Where private addresses are not allowed for metadata documents, a loopback document is
    // refused before any request — private webhook URLs do not allow them.
    let strict =
        builder().set("webhook_private_urls", true).set("oauth_client_metadata_private_urls", false).start().await;
    let bob = strict.user("bob").await;
    let (server, url) = document_server(|u| ResponseSpec { body: doc(u, "Doc Agent"), delay: None }).await;
    let r = bob.fetch(&authorize_url(&url, REDIRECT, Some(&challenge), &[])).await;
    assert_eq!((r.status, r.location.is_none()), (Status::BadRequest, true));
    assert!(server.received_requests().await.unwrap().is_empty(), "never fetched");
}

/// Cached metadata-document clients without a grant are capped (the least recently used go);
/// the administrators' client list is paged.
#[tokio::test]
async fn document_clients_are_capped_and_the_client_list_is_paged() {
    use tokenvault::db::models::authz::{self as model, ClientKind, NewClient};
    let app = builder().start().await;
    let mut conn = app.db.conn().unwrap();
    for (id, created) in
        [("https://a.example/c.json", 10), ("https://b.example/c.json", 20), ("https://c.example/c.json", 30)]
    {
        let new = NewClient {
            client_id: id,
            kind: ClientKind::Metadata,
            name: "doc",
            redirect_uris: REDIRECT,
            secret_hash: None,
            created_at: created,
            expires_at: Some(tokenvault::util::now() + 600),
            registered_from: None,
        };
        model::insert_client(&mut conn, &new).unwrap();
    }
    let used = model::find_client(&mut conn, "https://a.example/c.json").unwrap().unwrap();
    model::touch_client(&mut conn, used.id, 100).unwrap();
    assert_eq!(model::evict_unused_documents(&mut conn, 3).unwrap(), 0);
    assert_eq!(model::evict_unused_documents(&mut conn, 2).unwrap(), 1);
    assert!(model::find_client(&mut conn, "https://b.example/c.json").unwrap().is_none(), "least recently used");
    assert_eq!(model::evict_unused_documents(&mut conn, 1).unwrap(), 1);
    assert!(model::find_client(&mut conn, "https://a.example/c.json").unwrap().is_some(), "the last used stays");
    let admin = admin_client(&app, &[REDIRECT]);
    assert_eq!(model::evict_unused_documents(&mut conn, 0).unwrap(), 1);
    assert!(model::find_client(&mut conn, &admin).unwrap().is_some(), "only documents' clients are evicted");

    for _ in 0..tokenvault::routes::apps::CLIENTS_PER_PAGE {
        admin_client(&app, &[REDIRECT]);
    }
    let root = app.user("alice").await;
    app.exec("UPDATE users SET is_admin = TRUE WHERE username = 'alice'");
    let first = root.fetch("/admin/oauth-clients").await;
    assert_eq!(first.status, Status::Ok);
    let rows = |text: &str| text.matches("<tr data-client=").count();
    assert_eq!(rows(&first.text) as i64, tokenvault::routes::apps::CLIENTS_PER_PAGE);
    assert!(first.text.contains(r#"id="oauth-clients-older""#) && !first.text.contains("oauth-clients-newer"));
    let second = root.fetch("/admin/oauth-clients?page=2").await;
    assert_eq!(rows(&second.text), 1, "the oldest, on the second page");
    assert!(second.text.contains(&admin), "the first registered is last");
    assert!(second.text.contains(r#"id="oauth-clients-newer""#) && !second.text.contains("oauth-clients-older"));
}

/// Where `.ci/run` installs panva's `oauth4webapi` (or `TOKENVAULT_OAUTH4WEBAPI`), when it and
/// `node` are there; otherwise the test is skipped — or fails under `TOKENVAULT_REQUIRE_BROWSER=1`
/// (CI), as the browser tests do.
fn oauth4webapi() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TOKENVAULT_OAUTH4WEBAPI").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/node-oauth-client/node_modules/oauth4webapi")
    });
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if node && dir.join("build/index.js").is_file() {
        return Some(dir);
    }
    let missing = if node { format!("no oauth4webapi in {}", dir.display()) } else { "no node".into() };
    if std::env::var("TOKENVAULT_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!("the oauth4webapi test cannot run: {missing} (.ci/run installs it); TOKENVAULT_REQUIRE_BROWSER=1");
    }
    eprintln!("oauth4webapi test skipped: {missing} (run .ci/run, or npm install --prefix target/node-oauth-client oauth4webapi)");
    None
}

/// A real third-party OAuth client — panva's `oauth4webapi`, run by Node.js — against the real
/// binary: RFC 8414 discovery, PKCE S256, the consent page (posted by this test as the user's
/// browser), the RFC 9207 `iss` and `state` checks, the code exchange with a `resource`, and a
/// refresh; its access token then works at `/api/v1`.
#[tokio::test]
async fn a_real_third_party_client_completes_the_flow() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Some(module) = oauth4webapi() else { return };
    let fake = common::FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    {
        let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
        let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
        let mut conn = db.conn().unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
    }
    let server = common::server::start(common::server::Options {
        log_filter: "warn",
        public_url_is_base: true,
        ..common::server::Options::new(&database.url, &fake.uri(), dir.path())
    })
    .await;
    let base = server.base.clone();
    // (No connection: the fake provider knows only the tests' usual public URL for its callback.)
    let http = common::server::browser();
    common::server::sign_up(&http, &base, "alice").await;
    let registered: Value = http
        .post(format!("{base}/oauth/register"))
        .json(&json!({"client_name": "oauth4webapi", "redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/oauth4webapi_client.mjs");
    let mut child = tokio::process::Command::new("node")
        .arg(script)
        .args([&base, client_id, REDIRECT, &format!("{base}/api/v1"), "connections:read proxy:read"])
        .env("OAUTH4WEBAPI", &module)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let next = |prefix: &'static str, line: Option<String>| {
        line.and_then(|l| l.strip_prefix(prefix).map(str::to_string)).unwrap_or_else(|| panic!("no {prefix}line"))
    };
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await;
    let authorize = next("AUTHORIZE ", read.expect("the client answers in time").unwrap());
    assert!(authorize.starts_with(&format!("{base}/oauth/authorize?")), "discovered: {authorize}");
    // The user's browser: the consent page, Allow.
    let page = http.get(&authorize).send().await.unwrap().text().await.unwrap();
    let mut fields = consent_fields(&page);
    fields.push(("decision".into(), "allow".into()));
    let allowed = http.post(format!("{base}/oauth/authorize")).form(&fields).send().await.unwrap();
    assert_eq!(allowed.status().as_u16(), 303);
    let callback = allowed.headers()["location"].to_str().unwrap().to_string();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{callback}\n").as_bytes()).await.unwrap();
    drop(stdin);
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await;
    let line = read.expect("the client finishes in time").unwrap();
    if line.is_none() {
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut err).await.unwrap();
        panic!("oauth4webapi failed: {err}");
    }
    let result: Value = serde_json::from_str(&next("RESULT ", line)).unwrap();
    assert_eq!(result["rotated"], true, "{result}");
    assert_eq!(result["scope"], "connections:read proxy:read");
    let access = result["access_token"].as_str().unwrap();
    let listed = http
        .get(format!("{base}/api/v1/connections"))
        .header("Authorization", format!("Bearer {access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status().as_u16(), 200);
    assert_eq!(listed.json::<Value>().await.unwrap(), json!([]));
    let first = result["first_access_token"].as_str().unwrap();
    let status = |token: String| {
        let http = http.clone();
        let url = format!("{base}/api/v1/services/fake/token");
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(first.to_string()).await, 403, "token:read was not asked for");
}

#[tokio::test]
async fn an_administrator_sees_and_revokes_any_grant() {
    let app = builder().start().await;
    let admin = app.user("root").await; // the first user of a `debug` instance is an administrator
    let bob = app.user("bob").await;
    let (_, tokens) = granted(&app, &bob, "connections:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(bob.fetch("/admin/oauth-clients").await.status, Status::Forbidden, "administrators only");
    let page = admin.fetch("/admin/oauth-clients").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="all-grants""#) && page.text.contains("<td>bob</td>"), "{}", page.text);
    assert!(page.text.contains("dynamic registration"));
    let id =
        regex::Regex::new(r#"id="admin-revoke-grant-(\d+)""#).unwrap().captures(&page.text).unwrap()[1].to_string();
    let csrf = common::csrf_from(&bob.fetch("/settings/apps").await.text);
    let r = bob.post_form(&format!("/admin/oauth-clients/grants/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::Forbidden, "not by a user");
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Ok);
    let csrf = common::csrf_from(&page.text);
    let r = admin.post_form(&format!("/admin/oauth-clients/grants/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized);
    assert_eq!(
        app.count(
            "SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.revoked' AND detail LIKE '%revoked_by_admin%'"
        ),
        1
    );
    // A refused registration form answers 422 with the message.
    let csrf = admin.csrf("/admin/oauth-clients").await;
    let r = admin
        .post_form(
            "/admin/oauth-clients",
            &[("csrf_token", &csrf), ("name", "Bad"), ("redirect_uris", "http://x.example/cb")],
        )
        .await;
    assert_eq!(r.status, Status::UnprocessableEntity);
    assert!(r.text.contains(r#"id="oauth-client-error""#));
}

/// A password change ends the user's grants as it ends sessions and API keys (issue 22): their
/// access tokens are refused at `/api/v1` and `/mcp`, their refresh tokens at the token endpoint,
/// and each grant's end is recorded with the reason.
#[tokio::test]
async fn a_password_change_ends_every_grant_and_its_tokens() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (client_id, tokens) = granted(&app, &alice, "connections:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let mcp = crate::mcp::mcp_token_at(&app, &alice, "connections:read", PUBLIC_URL).await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let mcp_status = || async {
        let req = app.client.post("/mcp").header(ContentType::JSON).body(initialize.to_string());
        let req = req.header(Header::new("Accept", "application/json, text/event-stream"));
        req.header(Header::new("Authorization", format!("Bearer {mcp}"))).dispatch().await.status()
    };
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Ok);
    assert_eq!(mcp_status().await, Status::Ok);
    let csrf = alice.csrf("/settings/password").await;
    let new = "a brand new password";
    let fields = [
        ("csrf_token", csrf.as_str()),
        ("current_password", common::PASSWORD),
        ("new_password", new),
        ("new_password_confirm", new),
    ];
    let r = alice.post_form("/settings/password", &fields).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized);
    assert_eq!(mcp_status().await, Status::Unauthorized);
    let (status, body) = refresh(&app, &client_id, refresh_token).await;
    assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("invalid_grant")), "{body}");
    assert!(alice.fetch("/settings/apps").await.text.contains(r#"id="no-connected-apps""#));
    let revoked = "SELECT COUNT(*) AS n FROM webhook_events \
                   WHERE event_type = 'grant.revoked' AND body LIKE '%\"reason\":\"password_changed\"%'";
    assert_eq!(app.count(revoked), 2, "one grant.revoked per grant, with its reason");
}

/// An administrator deletes a client on `/admin/oauth-clients` (CSRF-protected): every grant of it
/// is revoked in the same unit of work, so its tokens are refused at `/api/v1` and `/mcp` at once;
/// registering and deleting clients are audited (`client.registered`, `client.deleted`, and one
/// `grant.revoked` per grant) without any secret.
#[tokio::test]
async fn an_administrator_deletes_a_client_and_its_tokens_stop_at_once() {
    let app = builder().start().await;
    let admin = app.user("root").await;
    let bob = app.user("bob").await;
    // A confidential client registered on the page (its secret must never be audited).
    let csrf = admin.csrf("/admin/oauth-clients").await;
    let fields =
        [("csrf_token", csrf.as_str()), ("name", "Backend"), ("redirect_uris", REDIRECT), ("confidential", "true")];
    let r = admin.post_form("/admin/oauth-clients", &fields).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let secret =
        regex::Regex::new(r#"id="new-client-secret">([^<]+)<"#).unwrap().captures(&r.text).unwrap()[1].to_string();
    // A dynamically registered client, with two grants of bob's: one for /api/v1, one for /mcp.
    let (client_id, tokens) = granted(&app, &bob, "connections:read").await;
    let api_token = tokens["access_token"].as_str().unwrap().to_string();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_string();
    let (verifier, challenge) = pkce();
    let mcp = format!("{PUBLIC_URL}/mcp");
    let url =
        authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "connections:read"), ("resource", &mcp)]);
    let (code, _) = consent(&bob, &url, |_| {}).await;
    let (_, tokens) = exchange(&app, &client_id, &code, &verifier, &[("resource", &mcp)]).await;
    let mcp_token = tokens["access_token"].as_str().unwrap().to_string();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let mcp_status = |token: String| {
        let req = app.client.post("/mcp").header(ContentType::JSON).body(initialize.clone());
        async move { req.header(Header::new("Authorization", format!("Bearer {token}"))).dispatch().await.status() }
    };
    assert_eq!(api(&app, "GET", "/api/v1/connections", &api_token).await.0, Status::Ok);
    assert_eq!(mcp_status(mcp_token.clone()).await, Status::Ok);

    // The page lists each client with its delete button.
    let page = admin.fetch("/admin/oauth-clients").await;
    let row = regex::Regex::new(&format!(r#"<tr data-client="{client_id}" data-oauth-client="(\d+)">"#)).unwrap();
    let pk = row.captures(&page.text).unwrap_or_else(|| panic!("{}", page.text))[1].to_string();
    assert!(page.text.contains(&format!(r#"id="delete-client-{pk}""#)));
    let delete = format!("/admin/oauth-clients/{pk}/delete");
    // Not without the CSRF token, not by a user who is not an administrator.
    let r = admin.post_form(&delete, &[("csrf_token", "forged")]).await;
    assert_ne!(r.status, Status::SeeOther);
    let bob_csrf = common::csrf_from(&bob.fetch("/settings/apps").await.text);
    assert_eq!(bob.post_form(&delete, &[("csrf_token", &bob_csrf)]).await.status, Status::Forbidden);
    assert_eq!(api(&app, "GET", "/api/v1/connections", &api_token).await.0, Status::Ok, "still live");
    let csrf = common::csrf_from(&page.text);
    let r = admin.post_form(&delete, &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    assert_eq!(admin.post_form(&delete, &[("csrf_token", &csrf)]).await.status, Status::NotFound, "gone");

    // Its tokens are refused at once, everywhere; its refresh token too.
    assert_eq!(api(&app, "GET", "/api/v1/connections", &api_token).await.0, Status::Unauthorized);
    assert_eq!(mcp_status(mcp_token).await, Status::Unauthorized);
    assert_eq!(refresh(&app, &client_id, &refresh_token).await.0, Status::Unauthorized, "the client is unknown now");
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants"), 0);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_tokens"), 0);
    assert!(!admin.fetch("/admin/oauth-clients").await.text.contains(&client_id));

    // Audited: two registrations (the administrator's, the dynamic one), the deletion with the
    // two grants it revoked, each revocation; sent as grant.revoked webhook events.
    let n = |sql: &str| app.count(&format!("SELECT COUNT(*) AS n FROM audit_log WHERE {sql}"));
    assert_eq!(n("kind = 'client.registered'"), 2);
    assert_eq!(n("kind = 'client.registered' AND actor LIKE 'user:%' AND detail LIKE '%\"confidential\":true%'"), 1);
    assert_eq!(
        n(&format!("kind = 'client.deleted' AND detail LIKE '%{client_id}%' AND detail LIKE '%\"grants_revoked\":2%'")),
        1
    );
    assert_eq!(n("kind = 'grant.revoked' AND detail LIKE '%client_deleted%'"), 2);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_events WHERE event_type = 'grant.revoked'"), 2);
    for secret in [secret.as_str(), api_token.as_str(), refresh_token.as_str()] {
        assert_eq!(n(&format!("detail LIKE '%{secret}%'")), 0, "a secret in the audit log");
    }
}

/// Requests with `token` to the API until one is answered from the app's token cache (the feed of
/// invalidations is read every second; a loaded machine may delay a read, and until then the
/// check reads the database): whether one was.
async fn until_cached(app: &TestApp, token: &str) -> bool {
    let hits = || app.state().caches.access_tokens.stats().hits;
    let before = hits();
    for _ in 0..50 {
        assert_eq!(api(app, "GET", "/api/v1/connections", token).await.0, Status::Ok);
        if hits() > before {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// An access-token check costs what an API key's does (issue 22, Performance): once checked, a
/// token is answered from memory, without a database write per request (a use is recorded at most
/// once a minute); and a revocation on this instance — of the grant on Connected apps, or of the
/// token by its client (RFC 7009) — refuses it at the very next request.
#[tokio::test]
async fn a_cached_access_token_writes_nothing_per_request_and_a_revocation_holds_at_the_next_one() {
    let app = builder().start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let (client_id, tokens) = granted(&app, &alice, "connections:read").await;
    let access = tokens["access_token"].as_str().unwrap();
    assert!(until_cached(&app, access).await, "the token is served from the cache");
    // The use was recorded (the first check); later requests record none within the minute.
    let recorded = app.count("SELECT COALESCE(MAX(last_used_at), 0) AS n FROM authz_grants");
    assert!(recorded > 0);
    let long_ago = recorded - 30;
    app.exec_unannounced(&format!("UPDATE authz_grants SET last_used_at = {long_ago}"));
    for _ in 0..5 {
        assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Ok);
    }
    assert_eq!(app.count("SELECT MAX(last_used_at) AS n FROM authz_grants"), long_ago, "no write per request");
    // The user revokes the grant: refused at the next request, though it was cached.
    let page = alice.fetch("/settings/apps").await.text;
    let id = regex::Regex::new(r#"id="revoke-grant-(\d+)""#).unwrap().captures(&page).unwrap()[1].to_string();
    let csrf = common::csrf_from(&page);
    let r = alice.post_form(&format!("/settings/apps/{id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized);

    // The client revokes its access token (RFC 7009): refused at the next request, and audited.
    let (verifier, challenge) = pkce();
    let url = authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", "connections:read")]);
    let (code, _) = consent(&alice, &url, |_| {}).await;
    let (status, tokens) = exchange(&app, &client_id, &code, &verifier, &[]).await;
    assert_eq!(status, Status::Ok, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap();
    assert!(until_cached(&app, access).await);
    let (status, _) = post_form(&app, "/oauth/revoke", &[("token", access), ("client_id", &client_id)], &[]).await;
    assert_eq!(status, Status::Ok);
    assert_eq!(api(&app, "GET", "/api/v1/connections", access).await.0, Status::Unauthorized);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.token_revoked'"), 1);
    let recorded = app.text("SELECT kind || ':' || key AS t FROM cache_invalidations ORDER BY id DESC LIMIT 1");
    assert!(recorded.starts_with("grant:"), "{recorded}");
    // The refresh token still works (only the access token was revoked) and its new access token too.
    let (status, renewed) = refresh(&app, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, Status::Ok, "{renewed}");
    assert_eq!(api(&app, "GET", "/api/v1/connections", renewed["access_token"].as_str().unwrap()).await.0, Status::Ok);
}

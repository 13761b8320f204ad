//! Which account, which permissions (issue 13): the provider account of every connection,
//! several accounts per service, reconnects pinned to their account, granted vs requested
//! scopes, `required_scopes` and in-place upgrades — through the real routes, against the fake
//! provider on a real HTTP port, which answers its account API for whichever account the user
//! is "signed in to" there.

use crate::common;

use crate::common::{builder, TestApp, PUBLIC_URL};
use rocket::http::{Header, Status};
use serde_json::Value;

/// The fake provider as a provider that says which account a token is for.
async fn identifying_app() -> TestApp {
    builder()
        .provider("account_id_pointer", "/id")
        .provider("account_label_pointer", "/email")
        .provider("optional_scopes", vec!["admin"])
        .start()
        .await
}

async fn api(app: &TestApp, uri: &str, key: &str) -> (Status, Value) {
    let res =
        app.client.get(uri.to_string()).header(Header::new("Authorization", format!("Bearer {key}"))).dispatch().await;
    let status = res.status();
    let body = res.into_string().await.unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Connect account `n` at the fake provider as a new connection ("Connect another account").
async fn add_account(app: &TestApp, agent: &common::Agent<'_>, n: u32) -> common::Reply {
    app.fake.with_state(|s| s.sign_in_as(n));
    let url = agent.start_flow_with("fake", &[("add_account", "true")]).await;
    agent.finish_flow("fake", &url).await
}

fn connection_ids(app: &TestApp) -> Vec<i64> {
    let n = app.connection_count();
    (0..n).map(|i| app.count(&format!("SELECT id AS n FROM connections ORDER BY id LIMIT 1 OFFSET {i}"))).collect()
}

#[tokio::test]
async fn two_accounts_of_one_service_are_two_connections_a_script_can_tell_apart() {
    let app = identifying_app().await;
    let alice = app.user("alice").await;
    let first = alice.connect("fake").await;
    assert!(first.location.as_deref().unwrap().contains("connection="), "the greeting names the connection");
    let redirector = alice.fetch("/services/fake/authorize").await.text;
    assert!(redirector.contains(r#"id="add-account""#), "a connected service offers another account");
    assert!(redirector.contains("fake@example.com"), "and says which account is connected");
    let second = add_account(&app, &alice, 2).await;
    assert_eq!(second.status, Status::SeeOther, "{}", second.text);
    assert_eq!(app.connection_count(), 2, "the second account did not replace the first");
    let ids = connection_ids(&app);
    let greeting = alice.fetch(second.location.as_deref().unwrap()).await.text;
    assert!(greeting.contains(r#"id="connected-account">user2@fake.example<"#), "{greeting}");

    // My Settings: a row per account, with its label and its own actions.
    let settings = alice.fetch("/settings/oauth2").await.text;
    for (id, account, label) in
        [(ids[0], "fake-user-1", "fake@example.com"), (ids[1], "fake-user-2", "user2@fake.example")]
    {
        assert!(
            settings.contains(&format!(r#"data-account="{account}" data-connection="{id}""#)),
            "a row for {account}: {settings}"
        );
        assert!(settings.contains(label));
        assert!(settings.contains(&format!(r#"id="revoke-fake-{id}""#)));
        assert!(settings.contains(&format!(r#"href="/services/fake/authorize?connection={id}""#)));
    }
    assert_eq!(settings.matches(r#"id="revoke-fake""#).count(), 1, "the unsuffixed id stays, on the first row");

    // The API a script uses with two accounts.
    let key = alice.api_key("script").await;
    let (status, list) = api(&app, "/api/v1/connections", &key).await;
    assert_eq!(status, Status::Ok);
    let accounts: Vec<(i64, &str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["connection_id"].as_i64().unwrap(),
                c["account_id"].as_str().unwrap(),
                c["account_label"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(accounts, [(ids[0], "fake-user-1", "fake@example.com"), (ids[1], "fake-user-2", "user2@fake.example")]);
    let (status, body) = api(&app, "/api/v1/services/fake/token", &key).await;
    assert_eq!((status, body["error"].as_str()), (Status::Conflict, Some("ambiguous_account")), "{body}");
    let listed: Vec<&str> =
        body["accounts"].as_array().unwrap().iter().map(|a| a["account_id"].as_str().unwrap()).collect();
    assert_eq!(listed, ["fake-user-1", "fake-user-2"]);
    assert!(!body.to_string().contains("CANARY"), "no token in the error");
    for (query, account, id) in [
        ("account=fake-user-2", "fake-user-2", ids[1]),
        ("account=fake-user-1", "fake-user-1", ids[0]),
        (&*format!("connection={}", ids[1]), "fake-user-2", ids[1]),
    ] {
        let (status, token) = api(&app, &format!("/api/v1/services/fake/token?{query}"), &key).await;
        assert_eq!(status, Status::Ok, "{token}");
        let access = token["access_token"].as_str().unwrap();
        assert_eq!(app.fake.account_of(access).as_deref(), Some(account), "{query} gets that account's token");
        assert_eq!((token["connection_id"].as_i64(), token["account_id"].as_str()), (Some(id), Some(account)));
    }
    for bad in ["connection=12abc", "connection=99999999999999999999", "connection="] {
        let (status, body) = api(&app, &format!("/api/v1/services/fake/token?{bad}"), &key).await;
        assert_eq!(status, Status::NotFound, "{bad} names no connection, not the only one: {body}");
    }
    let (status, body) = api(&app, "/api/v1/services/fake/token?account=someone-else", &key).await;
    assert_eq!((status, body["error"].as_str()), (Status::NotFound, Some("not_connected")));
    let (status, body) =
        api(&app, &format!("/api/v1/services/fake/token?account=fake-user-1&connection={}", ids[1]), &key).await;
    assert_eq!(status, Status::NotFound, "an account and a connection that disagree name nothing: {body}");

    // The proxy: the same parameters, taken out of the query the provider sees.
    let (status, echo) = api(&app, "/api/v1/services/fake/proxy/files?account=fake-user-2&limit=3", &key).await;
    assert_eq!(status, Status::Created, "{echo}");
    assert_eq!(echo["query"].as_str(), Some("limit=3"));
    let bearer = echo["headers"]["authorization"].as_str().unwrap().trim_start_matches("Bearer ");
    assert_eq!(app.fake.account_of(bearer).as_deref(), Some("fake-user-2"));
    let (status, body) = api(&app, "/api/v1/services/fake/proxy/files", &key).await;
    assert_eq!((status, body["error"].as_str()), (Status::Conflict, Some("ambiguous_account")));

    // The account page: the same parameter and a picker.
    let page = alice.fetch(&format!("/services/fake/account?connection={}", ids[1])).await.text;
    assert!(page.contains(r#"id="account-picker""#), "{page}");
    assert!(page.contains(r#"<dd id="account-id"><code>fake-user-2</code></dd>"#), "{page}");

    // A malformed id on the Delete form deletes nothing.
    let csrf = alice.csrf("/settings/oauth2").await;
    let res = alice.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf), ("connection", "1x")]).await;
    assert_eq!(res.status, Status::BadRequest);
    assert_eq!(app.connection_count(), 2);

    // Revoking one account leaves the other.
    let csrf = alice.csrf("/settings/oauth2").await;
    let revoked = alice
        .post_form("/settings/oauth2/fake/revoke", &[("csrf_token", &csrf), ("connection", &ids[1].to_string())])
        .await;
    assert_eq!(revoked.status, Status::SeeOther, "{}", revoked.text);
    assert_eq!(connection_ids(&app), [ids[0]]);
    let (status, token) = api(&app, "/api/v1/services/fake/token", &key).await;
    assert_eq!(status, Status::Ok, "one account left: as before, no parameter needed: {token}");
    assert_eq!(app.fake.account_of(token["access_token"].as_str().unwrap()).as_deref(), Some("fake-user-1"));

    // Webhook events say which account.
    let body: Value =
        serde_json::from_str(&app.text(
            "SELECT body AS t FROM webhook_events WHERE event_type = 'connection.revoked' ORDER BY id DESC LIMIT 1",
        ))
        .unwrap();
    assert_eq!(body["data"]["account"], serde_json::json!({"id": "fake-user-2", "label": "user2@fake.example"}));
}

#[tokio::test]
async fn a_reconnect_that_comes_back_with_another_account_stores_nothing() {
    let app = identifying_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let id = connection_ids(&app)[0];
    let before = app.stored_tokens("alice", "fake").unwrap();
    let version = app.count("SELECT version AS n FROM connections");
    // Signed in to another account at the provider, the user presses Reconnect.
    app.fake.with_state(|s| s.sign_in_as(2));
    for fields in [vec![], vec![("connection", id.to_string())]] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = alice.start_flow_with("fake", &fields).await;
        let reply = alice.finish_flow("fake", &url).await;
        assert_eq!(reply.status, Status::Conflict, "{}", reply.text);
        assert!(reply.text.contains(r#"id="account-mismatch""#));
        assert!(reply.text.contains(r#"<strong id="expected-account">fake@example.com</strong>"#), "{}", reply.text);
        assert!(reply.text.contains(r#"<strong id="got-account">user2@fake.example</strong>"#));
        assert!(reply.text.contains(r#"id="add-as-another""#), "it offers to add the account instead");
        assert!(!reply.text.contains("CANARY"), "no token or code on the page");
        assert_eq!(app.stored_tokens("alice", "fake").unwrap(), before, "nothing was stored");
        assert_eq!(app.count("SELECT version AS n FROM connections"), version);
        assert_eq!(app.connection_count(), 1);
    }
    // Back at the right account, the reconnect renews the same connection.
    app.fake.with_state(|s| s.sign_in_as(1));
    let url = alice.start_flow_with("fake", &[("connection", &id.to_string())]).await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(connection_ids(&app), [id]);
    assert_ne!(app.stored_tokens("alice", "fake").unwrap(), before);
    // Another user's connection cannot be reconnected by id.
    let bob = app.user("bob").await;
    let csrf = bob.csrf("/services/fake/authorize").await;
    let res =
        bob.post_form("/services/fake/authorize", &[("csrf_token", &csrf), ("connection", &id.to_string())]).await;
    assert_eq!(res.status, Status::NotFound);
    assert_eq!(bob.fetch(&format!("/services/fake/authorize?connection={id}")).await.status, Status::NotFound);
}

#[tokio::test]
async fn a_provider_that_does_not_say_which_account_keeps_one_connection_as_before() {
    // The fake without account pointers: as every provider was before accounts were recorded.
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let redirector = alice.fetch("/services/fake/authorize").await.text;
    assert!(!redirector.contains(r#"id="add-account""#), "no second account where they cannot be told apart");
    app.fake.with_state(|s| s.sign_in_as(2));
    alice.connect("fake").await;
    assert_eq!(app.connection_count(), 1, "connecting again replaces the tokens, as before");
    let settings = alice.fetch("/settings/oauth2").await.text;
    assert!(settings.contains(r#"data-service="fake" data-status="active" data-account="""#), "{settings}");
    assert!(settings.contains("account not known yet"));
    let key = alice.api_key("script").await;
    let (status, list) = api(&app, "/api/v1/connections", &key).await;
    assert_eq!(status, Status::Ok);
    assert!(list[0]["account_id"].is_null() && list[0]["connection_id"].is_i64(), "{list}");
    assert_eq!(api(&app, "/api/v1/services/fake/token", &key).await.0, Status::Ok);
}

#[tokio::test]
async fn a_provider_that_cannot_say_which_account_fails_the_connect_and_stores_nothing() {
    let app = identifying_app().await;
    app.fake.with_state(|s| s.account_always_401 = true);
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::BadGateway, "{}", reply.text);
    assert!(reply.text.contains("could not learn which"), "{}", reply.text);
    assert!(!reply.text.contains("CANARY"));
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn granted_scopes_are_kept_apart_from_requested_ones_and_upgraded_in_place() {
    let app = identifying_app().await;
    // The provider grants only `read` of the `read write` asked for: shown, not a failure.
    app.fake.with_state(|s| s.grant_scope = Some("read".into()));
    let alice = app.user("alice").await;
    let greeting = alice.connect("fake").await;
    let page = alice.fetch(greeting.location.as_deref().unwrap()).await.text;
    assert!(page.contains(r#"id="not-granted""#) && page.contains("<code>write</code>"), "{page}");
    let id = connection_ids(&app)[0];
    let settings = alice.fetch("/settings/oauth2").await.text;
    assert!(settings.contains(r#"class="not-granted""#), "{settings}");
    assert!(settings.contains(r#"data-status="active""#));
    assert!(settings.contains(&format!(r#"id="upgrade-fake-{id}""#)), "optional scopes can be requested");
    let key = alice.api_key("script").await;
    let (_, list) = api(&app, "/api/v1/connections", &key).await;
    assert_eq!(list[0]["scopes"], serde_json::json!(["read"]));
    assert_eq!(list[0]["requested_scopes"], serde_json::json!(["read", "write"]));

    // A script that needs `write` learns what is missing and where to get it.
    let (status, body) = api(&app, "/api/v1/services/fake/token?required_scopes=read,write", &key).await;
    assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("insufficient_scope")), "{body}");
    assert_eq!(body["missing"], serde_json::json!(["write"]));
    let upgrade = body["upgrade_url"].as_str().unwrap();
    assert_eq!(upgrade, format!("{PUBLIC_URL}/services/fake/authorize?connection={id}&scopes=write"));
    assert_eq!(api(&app, "/api/v1/services/fake/proxy/x?required_scopes=write", &key).await.0, Status::Forbidden);
    assert_eq!(api(&app, "/api/v1/services/fake/token?required_scopes=read", &key).await.0, Status::Ok);
    // A scope the provider does not offer here: no upgrade could grant it, so no upgrade_url.
    let (status, body) = api(&app, "/api/v1/services/fake/token?required_scopes=write,root", &key).await;
    assert_eq!((status, body["error"].as_str()), (Status::Forbidden, Some("insufficient_scope")), "{body}");
    assert_eq!(body["missing"], serde_json::json!(["write", "root"]));
    assert!(body["upgrade_url"].is_null(), "{body}");
    assert!(body["message"].as_str().unwrap().contains("does not offer"), "{body}");
    // tokenvault's own parameters once each, on the token API as on the proxy.
    for uri in [
        "/api/v1/services/fake/token?required_scopes=read&required_scopes=write",
        "/api/v1/services/fake/proxy/x?connection=1&connection=2",
    ] {
        let (status, body) = api(&app, uri, &key).await;
        assert_eq!((status, body["error"].as_str()), (Status::BadRequest, Some("bad_request")), "{uri}: {body}");
    }
    let (status, _) = api(&app, "/api/v1/services/fake/token?required%5Fscopes=write,root", &key).await;
    assert_eq!(status, Status::Forbidden, "an encoded name is the same parameter");

    // The upgrade: the same connection, asking for the union.
    let path = upgrade.trim_start_matches(PUBLIC_URL);
    let page = alice.fetch(path).await.text;
    assert!(page.contains(r#"id="more-scopes""#), "{page}");
    app.fake.with_state(|s| s.grant_scope = Some("read write".into()));
    let url = alice.start_flow_with("fake", &[("connection", &id.to_string()), ("scopes", "write")]).await;
    let scope: String = url.query_pairs().find(|(k, _)| k == "scope").unwrap().1.into_owned();
    assert_eq!(scope, "read write");
    assert!(!url.query().unwrap().contains("include_granted_scopes"), "only for providers that do incremental grants");
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(connection_ids(&app), [id], "upgraded in place");
    let (status, token) = api(&app, "/api/v1/services/fake/token?required_scopes=write", &key).await;
    assert_eq!(status, Status::Ok, "{token}");

    // Optional scopes: offered; a scope the provider does not offer is refused before leaving.
    let url = alice.start_flow_with("fake", &[("connection", &id.to_string()), ("scopes", "admin")]).await;
    assert!(url.query_pairs().any(|(k, v)| k == "scope" && v == "read write admin"));
    let csrf = alice.csrf("/services/fake/authorize").await;
    let res = alice
        .post_form(
            "/services/fake/authorize",
            &[("csrf_token", &csrf), ("connection", &id.to_string()), ("scopes", "root")],
        )
        .await;
    assert_eq!(res.status, Status::BadRequest);
}

#[tokio::test]
async fn incremental_providers_are_asked_to_keep_what_was_granted() {
    let app = builder()
        .provider("account_id_pointer", "/id")
        .provider("optional_scopes", vec!["admin"])
        .provider("incremental_auth", true)
        .start()
        .await;
    let alice = app.user("alice").await;
    let first = alice.start_flow("fake").await;
    assert!(!first.query().unwrap().contains("include_granted_scopes"), "not on a first connect");
    alice.finish_flow("fake", &first).await;
    let id = connection_ids(&app)[0];
    let url = alice.start_flow_with("fake", &[("connection", &id.to_string()), ("scopes", "admin")]).await;
    assert!(url.query_pairs().any(|(k, v)| k == "include_granted_scopes" && v == "true"), "{url}");
}

/// An OpenID Connect provider: the account is the verified id_token's `sub`, and a connect whose
/// id_token fails any check stores nothing.
#[tokio::test]
async fn an_openid_connect_provider_names_the_account_by_its_verified_id_token() {
    let fake = builder().provider("scopes", vec!["openid", "email"]);
    // The fake's JWKS is at <fake>/jwks: set once the fake's port is known.
    let app = fake.provider_with_fake_url("jwks_url", "/jwks").start().await;
    app.fake.with_state(|s| s.id_tokens = true);
    let alice = app.user("alice").await;
    let url = alice.start_flow("fake").await;
    let nonce = url.query_pairs().find(|(k, _)| k == "nonce").map(|(_, v)| v.into_owned());
    assert!(nonce.as_ref().is_some_and(|n| n.len() >= 32), "a nonce is sent: {url}");
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(app.text("SELECT account_id AS t FROM connections"), "sub-1", "the id_token's sub");
    assert_eq!(app.text("SELECT account_label AS t FROM connections"), "fake@example.com");
    assert!(app.fake.requests_to("/account").await.is_empty(), "no account API call is needed");

    for fault in ["aud", "iss", "nonce", "expired", "signature", "audiences", "azp", "azp-alone"] {
        app.fake.with_state(|s| {
            s.id_token_fault = Some(fault);
            s.sign_in_as(3);
        });
        let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
        let reply = alice.finish_flow("fake", &url).await;
        assert_eq!(reply.status, Status::BadGateway, "{fault}: {}", reply.text);
        assert!(reply.text.contains("could not be verified"), "{fault}");
        assert!(!reply.text.contains("CANARY") && !reply.text.contains("eyJ"), "no token on the page");
        assert_eq!(app.connection_count(), 1, "{fault}: nothing stored");
    }
    // Several audiences with tokenvault as the authorized party: the token was issued to it.
    app.fake.with_state(|s| s.id_token_fault = Some("audiences-azp-ours"));
    let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(app.connection_count(), 2, "sub-3 added");
    app.fake.with_state(|s| {
        s.id_token_fault = None;
        s.id_tokens = false;
        s.sign_in_as(4);
    });
    let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::BadGateway, "an OpenID provider's answer without an id_token: {}", reply.text);
    assert_eq!(app.connection_count(), 2);
}

/// The fake as an OpenID Connect provider (its JWKS and `openid`), signed in to account 1.
async fn openid_app() -> TestApp {
    let app =
        builder().provider("scopes", vec!["openid", "email"]).provider_with_fake_url("jwks_url", "/jwks").start().await;
    app.fake.with_state(|s| s.id_tokens = true);
    app
}

/// "Connect another account" against a provider that keeps a session: without its account
/// chooser it would sign the session's account in again and the app would renew that connection.
#[tokio::test]
async fn another_account_can_be_added_while_the_provider_keeps_a_session() {
    let app = openid_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    // At the provider's chooser she would pick account 2; without it the session (account 1) answers.
    app.fake.with_state(|s| s.choose(2));
    let plain = alice.start_flow("fake").await;
    assert!(!plain.query_pairs().any(|(k, _)| k == "prompt"), "a plain connect asks for no chooser: {plain}");
    let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
    assert!(url.query_pairs().any(|(k, v)| k == "prompt" && v == "select_account"), "{url}");
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(app.connection_count(), 2, "account 2 was added, not account 1 renewed");
    let greeting = alice.fetch(reply.location.as_deref().unwrap()).await.text;
    assert!(greeting.contains(r#"id="connected-account">user2@fake.example<"#), "{greeting}");
    assert!(!greeting.contains("account-already-connected"));

    // Picking an account that is connected already: renewed, and the page says so.
    app.fake.with_state(|s| s.choose(1));
    let version = app.count("SELECT version AS n FROM connections WHERE account_id = 'sub-1'");
    let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::SeeOther, "{}", reply.text);
    assert_eq!(app.connection_count(), 2, "no third connection");
    assert_eq!(app.count("SELECT version AS n FROM connections WHERE account_id = 'sub-1'"), version + 1);
    let greeting = alice.fetch(reply.location.as_deref().unwrap()).await.text;
    assert!(greeting.contains(r#"id="account-already-connected""#), "{greeting}");
    assert!(greeting.contains("<strong>fake@example.com</strong>"), "it names the account: {greeting}");
}

/// A provider's `add_account_params` replace the default (none for a provider without id_tokens).
#[tokio::test]
async fn add_account_params_are_configurable() {
    let app = builder()
        .provider("account_id_pointer", "/id")
        .provider("add_account_params", std::collections::BTreeMap::from([("force_reauthentication", "true")]))
        .start()
        .await;
    app.fake.with_state(|s| s.chooser = Some(("force_reauthentication".into(), "true".into())));
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.with_state(|s| s.choose(2));
    let url = alice.start_flow_with("fake", &[("add_account", "true")]).await;
    assert!(url.query_pairs().any(|(k, v)| k == "force_reauthentication" && v == "true"), "{url}");
    assert!(!url.query_pairs().any(|(k, _)| k == "prompt"), "the configured table replaces the default");
    assert_eq!(alice.finish_flow("fake", &url).await.status, Status::SeeOther);
    assert_eq!(app.connection_count(), 2);
}

/// The pages read `connection` (and `account`, `scopes`, `add_account`) as the API does: given
/// twice or malformed, refused with 400 — never acting on the first, the last or none of them.
#[tokio::test]
async fn page_forms_refuse_repeated_and_malformed_fields() {
    let app = identifying_app().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    add_account(&app, &alice, 2).await;
    let ids = connection_ids(&app);
    let (first, second) = (ids[0].to_string(), ids[1].to_string());
    let flows = || app.count("SELECT COUNT(*) AS n FROM oauth_flows");
    for action in ["delete", "revoke"] {
        for fields in
            [vec![("connection", second.as_str()), ("connection", first.as_str())], vec![("connection", "abc")]]
        {
            let csrf = alice.csrf("/settings/oauth2").await;
            let mut all = vec![("csrf_token", csrf.as_str())];
            all.extend(fields.iter().copied());
            let res = alice.post_form(&format!("/settings/oauth2/fake/{action}"), &all).await;
            assert_eq!(res.status, Status::BadRequest, "{action} {fields:?}: {}", res.text);
            assert_eq!(connection_ids(&app), ids, "{action} {fields:?}: nothing deleted");
        }
    }
    assert!(app.fake.requests_to("/revoke").await.is_empty(), "nothing revoked");
    let before = flows();
    for fields in [
        vec![("connection", "abc")],
        vec![("connection", second.as_str()), ("connection", first.as_str())],
        vec![("add_account", "true"), ("add_account", "false")],
        vec![("add_account", "maybe")],
        vec![("connection", first.as_str()), ("scopes", "admin"), ("scopes", "admin")],
    ] {
        let csrf = alice.csrf("/services/fake/authorize").await;
        let mut all = vec![("csrf_token", csrf.as_str())];
        all.extend(fields.iter().copied());
        let res = alice.post_form("/services/fake/authorize", &all).await;
        assert_eq!(res.status, Status::BadRequest, "{fields:?}: {}", res.text);
        assert_eq!(flows(), before, "{fields:?}: no flow started");
    }
    for page in [
        format!("/services/fake/authorize?connection={first}&connection={second}"),
        "/services/fake/authorize?connection=abc".to_string(),
        format!("/services/fake/authorize?connection={first}&scopes=admin&scopes=admin"),
        format!("/services/fake/account?connection={first}&connection={second}"),
        "/services/fake/account?connection=abc".to_string(),
        "/services/fake/account?account=fake-user-1&account=fake-user-2".to_string(),
        format!("/services/fake/connected?connection={first}&connection={second}"),
    ] {
        let res = alice.fetch(&page).await;
        assert_eq!(res.status, Status::BadRequest, "{page}: {}", res.text);
        assert!(res.text.contains("more than once") || res.text.contains("must be a connection id"), "{page}");
    }
    // Given once, as before.
    assert_eq!(alice.fetch(&format!("/services/fake/account?connection={second}")).await.status, Status::Ok);
    assert_eq!(alice.fetch(&format!("/services/fake/authorize?connection={second}")).await.status, Status::Ok);
}

/// Two accounts with the same label (here: the same team name): the mismatch page names them by
/// label and id, or the user could not tell which is which.
#[tokio::test]
async fn a_mismatch_between_accounts_that_share_a_label_shows_their_ids() {
    let app = builder().provider("account_id_pointer", "/id").provider("account_label_pointer", "/team").start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    app.fake.with_state(|s| s.sign_in_as(2));
    let url = alice.start_flow("fake").await;
    let reply = alice.finish_flow("fake", &url).await;
    assert_eq!(reply.status, Status::Conflict, "{}", reply.text);
    assert!(reply.text.contains(r#"<strong id="expected-account">Fake Team (fake-user-1)</strong>"#), "{}", reply.text);
    assert!(reply.text.contains(r#"<strong id="got-account">Fake Team (fake-user-2)</strong>"#), "{}", reply.text);
}

//! My Settings → OAuth2 Services, user isolation, the admin vault, and secrets at rest.

use crate::common;

use crate::common::{flow_params, TestApp, CLIENT_SECRET};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rocket::http::Status;
use tokenvault::util::ExposeSecret;

#[tokio::test]
async fn settings_lists_only_my_connections_with_their_details() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let empty = alice.fetch("/settings/oauth2").await;
    assert!(empty.text.contains(r#"id="no-connections""#));
    alice.connect("fake").await;
    let page = alice.fetch("/settings/oauth2").await;
    assert!(page.text.contains(r#"<tr data-service="fake" data-status="active""#));
    assert!(page.text.contains("<code>read</code>") && page.text.contains("<code>write</code>"));
    assert!(page.text.contains("in 59 minutes") || page.text.contains("in 1 hour"), "relative expiry");
    assert!(page.text.contains(r#"<td data-label="Refresh token" class="refresh">yes</td>"#));
    assert!(page.text.contains(r#"id="delete-fake""#));
    assert!(page.text.contains("connect <strong>ok</strong>"), "history shows the connection");
    let other = bob.fetch("/settings/oauth2").await;
    assert!(!other.text.contains(r#"data-service="fake""#));
}

#[tokio::test]
async fn delete_removes_local_tokens_and_says_the_provider_still_grants_access() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let csrf = alice.csrf("/settings/oauth2").await;
    let r = alice.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    let page = alice.fetch("/settings/oauth2").await;
    assert!(page.text.contains("Access stays granted at Fake Provider"), "{}", page.text);
    assert!(!page.text.contains(r#"<tr data-service="fake" "#));
    assert_eq!(app.connection_count(), 0);
    assert!(app.fake.requests_to("/revoke").await.is_empty(), "delete alone does not call the provider");
}

#[tokio::test]
async fn another_users_connection_is_a_404_and_stays_intact() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    alice.connect("fake").await;
    let before = app.stored_tokens("alice", "fake");
    let csrf = bob.csrf("/settings/oauth2").await;
    let r = bob.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::NotFound);
    assert_eq!(app.stored_tokens("alice", "fake"), before);
    assert_eq!(bob.fetch("/services/fake/connected").await.status, Status::NotFound);
    let calls = app.fake.token_calls().await;
    assert_eq!(calls, 1, "no provider call on Bob's behalf");
}

#[tokio::test]
async fn dashboard_shows_services_and_their_state() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let page = alice.fetch("/").await;
    assert!(page.text.contains(r#"data-service="fake""#));
    assert!(page.text.contains(r#"id="connect-fake""#) && page.text.contains("Not connected"));
    alice.connect("fake").await;
    let page = alice.fetch("/").await;
    assert!(page.text.contains("Connected"));
    let anon = app.agent().fetch("/").await;
    assert_eq!(anon.status, Status::Ok);
    assert!(anon.text.contains(r#"id="landing-login""#));
}

#[tokio::test]
async fn the_admin_vault_never_shows_a_secret_again() {
    let app = TestApp::start().await;
    let admin = app.user("alice").await; // the first user is the administrator
    let canary = "CS-CANARY-admin-typed-secret-91f";
    let csrf = admin.csrf("/admin/vault").await;
    let r = admin
        .post_form("/admin/vault", &[("csrf_token", &csrf), ("path", "example.client_secret"), ("value", canary)])
        .await;
    assert_eq!(r.status, Status::SeeOther);
    let page = admin.fetch("/admin/vault").await;
    assert!(page.text.contains("example.client_secret was saved"), "flash");
    assert!(page.text.contains(r#"<tr data-path="example.client_secret">"#));
    assert!(page.text.contains(r#"<tr data-path="fake.client_secret">"#));
    for uri in ["/admin/vault", "/", "/settings/oauth2", "/services/fake/authorize"] {
        let text = admin.fetch(uri).await.text;
        assert!(!text.contains(canary) && !text.contains(CLIENT_SECRET), "{uri} shows a secret");
    }
    let mut conn = app.db.conn().unwrap();
    let stored = tokenvault::vault::store::get(&mut conn, &app.cipher, "example.client_secret").unwrap().unwrap();
    assert_eq!(stored.expose_secret(), canary);

    // Bad keys are explained, not stored.
    let r = admin.post_form("/admin/vault", &[("csrf_token", &csrf), ("path", "../etc/passwd"), ("value", "x")]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert!(admin.fetch("/admin/vault").await.text.contains("Vault keys are"));

    // Delete.
    let r = admin.post_form("/admin/vault/delete", &[("csrf_token", &csrf), ("path", "example.client_secret")]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert!(tokenvault::vault::store::get(&mut conn, &app.cipher, "example.client_secret").unwrap().is_none());
}

#[tokio::test]
async fn non_admins_cannot_use_the_vault() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let bob = app.user("bob").await;
    assert_eq!(bob.fetch("/admin/vault").await.status, Status::Forbidden);
    let csrf = bob.csrf("/settings/oauth2").await;
    let r =
        bob.post_form("/admin/vault", &[("csrf_token", &csrf), ("path", "fake.client_secret"), ("value", "x")]).await;
    assert_eq!(r.status, Status::Forbidden);
    let mut conn = app.db.conn().unwrap();
    let stored = tokenvault::vault::store::get(&mut conn, &app.cipher, "fake.client_secret").unwrap().unwrap();
    assert_eq!(stored.expose_secret(), CLIENT_SECRET);
    assert!(!bob.fetch("/").await.text.contains("/admin/vault"), "no vault link for users");
}

#[tokio::test]
async fn a_vault_value_that_does_not_decrypt_is_a_clear_error() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let prefix = if app.database.is_postgres() { "'\\x0100'::bytea" } else { "X'0100'" };
    app.exec(&format!("UPDATE vault_entries SET ciphertext = {prefix} || ciphertext WHERE path = 'fake.client_id'"));
    let r = alice.fetch("/services/fake/authorize").await;
    assert_eq!(r.status, Status::InternalServerError);
    assert!(r.text.contains("could not be decrypted"));
    let csrf = alice.csrf("/settings/oauth2").await;
    let r = alice.post_form("/services/fake/authorize", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::InternalServerError);
}

#[tokio::test]
async fn swapped_token_ciphertexts_do_not_open() {
    let app = TestApp::start().await;
    app.user("alice").await.connect("fake").await;
    app.user("bob").await.connect("fake").await;
    // Move Alice's sealed access token onto Bob's row.
    app.exec(
        "UPDATE connections SET access_token = (SELECT access_token FROM connections WHERE user_id = 1) \
         WHERE user_id = 2",
    );
    let mut conn = app.db.conn().unwrap();
    let bob = tokenvault::db::models::connections::find(&mut conn, 2, "fake").unwrap().unwrap();
    let err = tokenvault::oauth::store::open_tokens(&app.cipher, &bob).unwrap_err();
    assert!(err.to_string().contains("does not decrypt"), "{err}");
}

fn forms(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_string(),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        hex.clone(),
        hex.to_uppercase(),
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
    ]
}

#[tokio::test]
async fn the_database_files_hold_no_token_secret_code_or_verifier() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let authorize = alice.start_flow("fake").await;
    let (state, challenge) = flow_params(&authorize);
    let code = app.fake.issue_code(&challenge);
    alice.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await;
    let calls = app.fake.requests_to("/token").await;
    let form: std::collections::BTreeMap<String, String> =
        url::form_urlencoded::parse(&calls[0].body).into_owned().collect();
    let verifier = form["code_verifier"].clone();
    let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
    // A flow in flight holds a sealed verifier too.
    alice.start_flow("fake").await;

    let bytes = app.database_bytes();
    assert!(!bytes.is_empty());
    let haystack = String::from_utf8_lossy(&bytes);
    for secret in
        [access.as_str(), refresh.as_deref().unwrap(), CLIENT_SECRET, code.as_str(), verifier.as_str(), state.as_str()]
    {
        for form in forms(secret) {
            assert!(!haystack.contains(&form), "the database holds a form of a secret: {form}");
        }
    }
    assert!(!haystack.contains("CANARY"));
}

#[tokio::test]
async fn key_rotation_re_encrypts_users_tokens() {
    let app = TestApp::start().await;
    app.user("alice").await.connect("fake").await;
    let before = app.stored_tokens("alice", "fake").unwrap();
    let new_key = "b3RoZXItdmF1bHQta2V5LTMyLWJ5dGVzLWxvbmchISE=";
    let ring = tokenvault::vault::Cipher::from_base64(new_key, &[common::VAULT_KEY.to_string()]).unwrap();
    let mut conn = app.db.conn().unwrap();
    let done = tokenvault::changes::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap();
    assert_eq!((done.connections, done.vault_entries), (1, 2));
    let new_only = tokenvault::vault::Cipher::from_base64(new_key, &[]).unwrap();
    let row = tokenvault::db::models::connections::find(&mut conn, 1, "fake").unwrap().unwrap();
    let (a, r) = tokenvault::oauth::store::open_tokens(&new_only, &row).unwrap();
    assert_eq!((a.expose_secret().to_string(), r.map(|r| r.expose_secret().to_string())), before);
    assert!(tokenvault::oauth::store::open_tokens(&app.cipher, &row).is_err(), "the old key no longer opens them");
    // A row that changed since it was read (a concurrent refresh) is not overwritten.
    let row = tokenvault::db::models::connections::find(&mut conn, 1, "fake").unwrap().unwrap();
    let stale = tokenvault::db::models::connections::RowRef { version: row.version - 1, ..row.at_version() };
    assert!(!tokenvault::db::models::connections::reseal(&mut conn, stale, Some(b"stale"), None).unwrap());
    let after = tokenvault::db::models::connections::find(&mut conn, 1, "fake").unwrap().unwrap();
    assert_eq!(after.access_token, row.access_token);
    // A second run has nothing left to do.
    let again = tokenvault::changes::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap();
    assert_eq!(again, tokenvault::vault::rotation::Rotated::default());
}

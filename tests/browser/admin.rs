//! The project vault page: values go in and never come out.

use crate::harness::{random_suffix, Browser};

const PATH: &str = "example.client_secret";

#[tokio::test]
async fn admin_vault_never_shows_a_saved_secret() {
    let Some(b) = Browser::start().await else { return };
    b.signup("admin").await;
    assert!(b.exists("#nav-vault").await, "the first user is an administrator");

    let canary = format!("CS-CANARY-{}", random_suffix());
    b.goto("/admin/vault").await;
    b.wait_for("#vault-form").await;
    b.fill("#vault-path", PATH).await;
    b.fill("#vault-value", &canary).await;
    b.click_to("#vault-save", "#flash").await;
    assert_eq!(b.path().await, "/admin/vault");
    let flash = b.text("#flash").await;
    assert!(flash.contains(PATH), "the flash names the saved key: {flash}");
    let row = format!("#vault-entries tr[data-path=\"{PATH}\"]");
    assert_eq!(b.text(&format!("{row} .state")).await, "set");
    let value = b.find("#vault-value").await.prop("value").await.expect("field value");
    assert_eq!(value.as_deref(), Some(""), "the value field is empty after saving");
    b.screenshot("09-admin-vault").await;

    for page in ["/admin/vault", "/", "/settings/oauth2", "/services/demo/authorize", "/nope"] {
        b.goto(page).await;
        b.wait_for("main").await;
        let source = b.source().await;
        assert!(!source.contains(&canary), "{page} shows the secret value");
        assert!(!source.contains("CS-CANARY"), "{page} shows part of the secret value");
    }
    assert!(!b.app.stderr().contains(&canary), "the app's log contains the secret value");
    assert!(b.app.data_dir().join("tv.sqlite").is_file(), "the database file is where this test looks");
    for file in ["tv.sqlite", "tv.sqlite-wal"] {
        // The WAL may have been checkpointed away; the database file itself must be there.
        let bytes = std::fs::read(b.app.data_dir().join(file)).unwrap_or_default();
        let found = bytes.windows(canary.len()).any(|w| w == canary.as_bytes());
        assert!(!found, "{file} holds the secret value unencrypted");
    }

    // A second user is no administrator.
    b.goto("/").await;
    b.logout().await;
    b.signup("bob").await;
    assert!(!b.exists("#nav-vault").await, "only the first user is an administrator");
    b.goto("/admin/vault").await;
    b.wait_for("#error[data-status=\"403\"]").await;
    assert!(!b.exists("#vault-form").await);
    assert!(!b.source().await.contains(&canary));

    b.finish().await;
}

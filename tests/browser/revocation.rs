//! Ending access: the demo provider revokes a grant (tokenvault asks for a reconnect, and the
//! reconnect repairs it), and the user revokes from My Settings (the provider forgets the grant).

use crate::harness::Browser;

const ROW: &str = "tr[data-service=\"demo\"]";
const CARD: &str = ".service-card[data-service=\"demo\"]";
const ACCOUNT_OK: &str = "#account[data-service=\"demo\"][data-state=\"ok\"]";
const ACCOUNT_RECONNECT: &str = "#account[data-service=\"demo\"][data-state=\"reconnect\"]";

#[tokio::test]
async fn provider_revocation_asks_for_a_reconnect_that_repairs_it() {
    let Some(b) = Browser::start().await else { return };
    b.signup("admin").await;
    b.connect_demo().await;

    // The administrator revokes the grant on the provider's side.
    b.goto("/").await;
    b.click_to("#demo-console", "#demo-grants").await;
    assert_eq!(b.path().await, "/demo/");
    let grant = b.text("tr[data-grant=\"1\"]").await;
    assert!(grant.contains("admin@demo.example") && grant.contains("active"), "the new grant: {grant}");
    b.click_to("#revoke-grant-1", "#flash").await;
    assert_eq!(b.path().await, "/demo/");
    assert!(b.text("#flash").await.contains("Grant 1 was revoked"));
    assert!(b.text("tr[data-grant=\"1\"]").await.contains("revoked"));
    assert!(!b.exists("#revoke-grant-1").await, "a revoked grant has no Revoke button");

    // The stored access token has not expired yet, but the provider refuses it (401) and then the
    // refresh token (invalid_grant): the page asks for a reconnect.
    b.goto("/services/demo/account").await;
    b.wait_for(ACCOUNT_RECONNECT).await;
    assert!(b.exists("#reconnect-required").await);
    assert!(!b.exists("#account-json").await, "no account data without access");

    b.goto("/").await;
    let card = b.wait_for(CARD).await.text().await.expect("card text");
    assert!(card.contains("Reconnect required"), "the dashboard shows the broken connection: {card}");
    b.goto("/settings/oauth2").await;
    assert_eq!(b.wait_for(&format!("{ROW} .status .badge")).await.text().await.unwrap(), "Reconnect required");
    assert_eq!(b.text(&format!("{ROW}[data-status=\"reconnect_required\"] .status-reason")).await, "revoked");

    // Repair it from the account page: Redirector → consent → connected.
    b.goto("/services/demo/account").await;
    b.wait_for(ACCOUNT_RECONNECT).await;
    b.click_to("#reconnect", "#authorize").await;
    assert_eq!(b.path().await, "/services/demo/authorize");
    b.click_to("#authorize", "#consent").await;
    assert_eq!(b.path().await, "/demo/oauth2/authorize");
    b.click_to("#allow", "#connected[data-service=\"demo\"]").await;
    assert_eq!(b.path().await, "/services/demo/connected");

    b.goto("/services/demo/account").await;
    b.wait_for(ACCOUNT_OK).await;
    assert!(b.text("#account-json").await.contains("admin@demo.example"));
    b.goto("/").await;
    let card = b.wait_for(CARD).await.text().await.expect("card text");
    assert!(card.contains("Connected") && !card.contains("Reconnect required"), "repaired: {card}");

    // The provider's side: the old grant revoked, the new one active.
    b.goto("/demo/").await;
    b.wait_for("tr[data-grant=\"2\"]").await;
    assert!(b.text("tr[data-grant=\"1\"]").await.contains("revoked"));
    assert!(b.text("tr[data-grant=\"2\"]").await.contains("active"));
    assert!(b.exists("#revoke-grant-2").await);
    b.screenshot("12-demo-console").await;

    b.finish().await;
}

#[tokio::test]
async fn revoke_from_settings_ends_the_grant_at_the_provider() {
    let Some(b) = Browser::start().await else { return };
    b.signup("admin").await;
    b.connect_demo().await;

    b.goto("/settings/oauth2").await;
    b.wait_for(ROW).await;
    b.click_to("#revoke-demo", "#flash").await;
    assert_eq!(b.path().await, "/settings/oauth2");
    let flash = b.text("#flash").await;
    assert!(flash.contains("access was revoked"), "the flash says the provider revoked access: {flash}");
    b.wait_gone(ROW).await;
    b.wait_for("#no-connections").await;

    b.goto("/demo/").await;
    let grant = b.wait_for("tr[data-grant=\"1\"]").await.text().await.expect("grant row text");
    assert!(grant.contains("revoked"), "the demo provider revoked the grant: {grant}");
    assert!(!b.exists("#revoke-grant-1").await);

    b.goto("/").await;
    assert!(b.wait_for(CARD).await.text().await.unwrap().contains("Not connected"));

    b.finish().await;
}

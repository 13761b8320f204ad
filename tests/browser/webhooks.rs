//! `/admin/webhooks`: a person connects the demo provider, the event reaches a real receiver, and
//! the page shows the delivery; the test button sends a `webhook.test`.

use std::time::Duration;

use crate::harness::{AppConfig, Browser};
use crate::webhook_receiver::{secret, Receiver};

#[tokio::test]
async fn admin_webhooks_shows_deliveries_and_sends_a_test_event() {
    let (rx, s) = (Receiver::start().await, secret());
    let config = AppConfig::new().env("ROCKET_WEBHOOKS", format!(r#"{{ops={{url="{}",secret="{s}"}}}}"#, rx.url()));
    let Some(b) = Browser::start_with(config).await else { return };
    b.signup("admin").await;
    assert!(b.exists("#nav-webhooks").await, "administrators see the page in the nav");
    b.connect_demo().await;
    let created = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(created.json()["type"], "connection.created");
    assert!(created.verifies(&s));

    b.goto("/admin/webhooks").await;
    b.wait_for("#webhook-ops").await;
    assert_eq!(b.text("#webhook-ops .webhook-url").await, rx.url());
    let row = format!("#deliveries-ops tr[data-webhook-id=\"{}\"]", created.id());
    assert_eq!(b.attr(&row, "data-status").await, "delivered");
    assert_eq!(b.text(&format!("{row} .response")).await, "200");
    assert!(!b.source().await.contains(&s[6..]), "the secret is never shown");

    b.click_to("#send-test-ops", "#flash").await;
    assert_eq!(b.path().await, "/admin/webhooks");
    let test = rx.wait_for(2, Duration::from_secs(10)).await.remove(1);
    assert_eq!(test.json()["type"], "webhook.test");
    assert!(test.verifies(&s));
    b.goto("/admin/webhooks").await;
    b.wait_for(&format!("#deliveries-ops tr[data-webhook-id=\"{}\"][data-status=\"delivered\"]", test.id())).await;
    b.screenshot("13-admin-webhooks").await;

    b.logout().await;
    b.signup("bob").await;
    assert!(!b.exists("#nav-webhooks").await);
    b.goto("/admin/webhooks").await;
    b.wait_for("#error[data-status=\"403\"]").await;
    b.finish().await;
}

/// Issue 12: an administrator adds an endpoint on the page, copies the secret shown once, the
/// receiver verifies the next event with it; then edits its URL and rotates its secret.
#[tokio::test]
async fn admin_adds_an_endpoint_edits_it_and_rotates_its_secret() {
    let (rx, moved) = (Receiver::start().await, Receiver::start().await);
    let Some(b) = Browser::start().await else { return };
    b.signup("admin").await;
    b.goto("/admin/webhooks").await;
    b.wait_for("#no-webhooks").await;
    b.fill("#new-webhook-name", "billing").await;
    b.fill("#new-webhook-url", &rx.url()).await;
    b.fill("#new-webhook-events", "connection.*").await;
    b.click_to("#add-webhook-submit", "#new-webhook-secret").await;
    let secret = b.text("#new-webhook-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(b.attr("#webhook-billing", "data-origin").await, "added");

    b.connect_demo().await;
    let created = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(created.json()["type"], "connection.created");
    assert!(created.verifies(&secret), "the secret the page showed signs the deliveries");

    // Edit the URL: the form opens, saves, and the next event goes to the new receiver.
    b.goto("/admin/webhooks").await;
    assert!(!b.source().await.contains(&secret[6..]), "the secret is shown once only");
    b.click_to("#send-test-billing", "#flash").await;
    rx.wait_for(2, Duration::from_secs(10)).await;
    b.find("#edit-billing").await.click().await.unwrap();
    b.fill("#webhook-url-billing", &moved.url()).await;
    b.click_to("#save-billing", "#flash").await;
    assert_eq!(b.text("#webhook-billing .webhook-url").await, moved.url());
    b.click_to("#rotate-secret-billing", "#new-webhook-secret").await;
    let rotated = b.text("#new-webhook-secret").await;
    assert_ne!(rotated, secret);
    b.wait_for("#webhook-billing .webhook-overlap").await;
    b.screenshot("19-admin-webhooks-edit").await;
    b.click_to("#send-test-billing", "#flash").await;
    let test = moved.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(test.json()["type"], "webhook.test");
    assert!(test.verifies(&rotated) && test.verifies(&secret), "both secrets sign during the overlap");
    assert_eq!(rx.received().len(), 2, "nothing more to the old URL");

    b.click_to("#delete-webhook-billing", "#flash").await;
    b.wait_for("#no-webhooks").await;
    b.finish().await;
}

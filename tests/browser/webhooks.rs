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

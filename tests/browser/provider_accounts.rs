//! Two accounts of one service, side by side, and a reconnect pinned to its account (issue 13),
//! with the demo provider: its consent page's "Demo account" field plays the account the user
//! is signed in to at the provider.

use crate::harness::Browser;

const ROWS: &str = "tr[data-service=\"demo\"][data-connection]";

async fn connection_ids(b: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for el in b.c.find_all(fantoccini::Locator::Css(ROWS)).await.expect("find rows") {
        ids.push(el.attr("data-connection").await.expect("attribute").unwrap_or_default());
    }
    ids
}

#[tokio::test]
async fn two_demo_accounts_side_by_side_and_a_reconnect_pinned_to_its_account() {
    let Some(b) = Browser::start().await else { return };
    b.signup("maya").await;
    b.connect_demo().await;
    assert_eq!(b.text("#connected-account").await, "maya@demo.example");

    // Connect another account: the Redirector of a connected service offers it.
    b.goto("/services/demo/authorize").await;
    b.click_to("#add-account", "#consent").await;
    b.fill("#account", "maya.work@demo.example").await;
    b.click_to("#allow", "#connected").await;
    assert_eq!(b.text("#connected-account").await, "maya.work@demo.example");

    b.goto("/settings/oauth2").await;
    b.wait_for(ROWS).await;
    assert_eq!(b.texts(&format!("{ROWS} .account-label")).await, ["maya@demo.example", "maya.work@demo.example"]);
    let ids = connection_ids(&b).await;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert!(b.exists(&format!("#revoke-demo-{id}")).await && b.exists(&format!("#reconnect-demo-{id}")).await);
    }
    assert!(b.exists("#revoke-demo").await, "the first row keeps the unsuffixed ids");
    b.screenshot("17-two-accounts").await;

    // Reconnecting the first row while "signed in" as the work account: refused, nothing stored.
    b.click_to(&format!("#reconnect-demo-{}", ids[0]), "#authorize").await;
    b.click_to("#authorize", "#consent").await;
    b.fill("#account", "maya.work@demo.example").await;
    b.click_to("#allow", "#account-mismatch").await;
    assert_eq!(b.text("#expected-account").await, "maya@demo.example");
    assert_eq!(b.text("#got-account").await, "maya.work@demo.example");
    b.screenshot("18-account-mismatch").await;

    // The account page picks an account.
    b.goto(&format!("/services/demo/account?connection={}", ids[1])).await;
    assert_eq!(b.text("#account-email").await, "maya.work@demo.example");
    assert!(b.exists("#account-picker").await);

    // Each row's own Revoke: the work account goes, the other stays.
    b.goto("/settings/oauth2").await;
    b.click_to(&format!("#revoke-demo-{}", ids[1]), "#flash").await;
    assert_eq!(connection_ids(&b).await, [ids[0].clone()]);
    assert_eq!(b.texts(&format!("{ROWS} .account-label")).await, ["maya@demo.example"]);
    b.finish().await;
}

//! Launch Test in a real browser: My Settings → Console, one click on an example, Send, and the
//! demo provider's answer with its status; the curl line names `$TOKENVAULT_API_KEY`, never a key.

use crate::harness::Browser;

#[tokio::test]
async fn the_console_sends_an_example_to_the_demo_provider() {
    let Some(b) = Browser::start().await else { return };
    b.signup("cleo").await;
    b.connect_demo().await;
    b.goto("/settings/oauth2").await;
    b.click_to("#open-console-demo", "#console-form").await;
    assert_eq!(b.path().await, "/services/demo/console");
    // The example fills the form (a link: no script on the page).
    b.click_to("#console-example-0", "#console-form").await;
    assert_eq!(b.find("#console-path").await.prop("value").await.unwrap().as_deref(), Some("/account"));
    b.click_to("#console-send", "#console-result").await;
    assert_eq!(b.attr("#console-result", "data-status").await, "200");
    let response = b.text("#console-response").await;
    assert!(response.contains("cleo@demo.example"), "the demo account's answer: {response}");
    let curl = b.text("#console-curl").await;
    assert!(curl.contains("$TOKENVAULT_API_KEY"), "{curl}");
    assert!(curl.contains("/api/v1/services/demo/proxy/account?connection="), "{curl}");
    assert!(!b.source().await.contains("tvk_"), "no API key on the page");
    b.screenshot("console").await;
    b.finish().await;
}

//! My Settings → Sessions: one browser signs another out.

use crate::harness::{Browser, PASSWORD};

#[tokio::test]
async fn sessions_page_signs_out_another_browser() {
    let Some(first) = Browser::start().await else { return };
    first.signup("hedy").await;
    let second = first.another().await;
    second.goto("/login").await;
    second.submit_login("hedy", PASSWORD, "#logout").await;
    second.goto("/settings/sessions").await;
    second.wait_for("#sessions").await;

    first.goto("/settings/sessions").await;
    first.wait_for("#sessions").await;
    assert!(first.exists("#settings-sessions").await, "the settings nav links the page");
    let rows = first.texts("tr[data-session]").await;
    assert_eq!(rows.len(), 2, "two signed-in browsers: {rows:?}");
    assert!(rows.iter().all(|r| r.contains("HeadlessChrome") || r.contains("Chrome")), "user agents shown: {rows:?}");
    assert!(rows.iter().all(|r| r.contains("127.0.0.1")), "addresses shown: {rows:?}");
    let current = first.find("tr[data-current=\"true\"]").await;
    assert!(current.text().await.unwrap().contains("this browser"));
    let other = first.attr("tr[data-current=\"false\"]", "data-session").await;
    first.screenshot("14-settings-sessions").await;

    first.click_to(&format!("#end-session-{other}"), "#flash").await;
    assert_eq!(first.path().await, "/settings/sessions");
    assert!(first.text("#flash").await.contains("signed out"));
    assert_eq!(first.texts("tr[data-session]").await.len(), 1);
    assert!(first.exists("#no-other-sessions").await);

    // The second browser is signed out: its next page is the sign-in form.
    second.goto("/settings/sessions").await;
    second.wait_for("#login-form").await;
    assert!(second.path().await.starts_with("/login"));
    assert!(!second.exists("#logout").await);
    // The first is still signed in.
    first.goto("/settings/sessions").await;
    first.wait_for("#sessions").await;

    second.finish().await;
    first.finish().await;
}

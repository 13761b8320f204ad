//! Every page on a phone's screen (390×844 CSS pixels, mobile viewport): nothing scrolls sideways,
//! the navigation collapses into a menu that opens, and every action — the connection's Account,
//! Reconnect, Revoke and Delete above all — lies within the screen.

use serde_json::Value;

use crate::harness::Browser;

const WIDTH: u32 = 390;
const HEIGHT: u32 = 844;

/// The page is no wider than the screen (and the screen really is the phone's), and no part of it
/// scrolls sideways inside its own box either (a table in a scroller would hide its last columns).
async fn assert_fits(b: &Browser, page: &str) {
    let script = "return [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth, \
                  [...document.querySelectorAll('body *')].filter(e => e.scrollWidth > e.clientWidth + 1 \
                    && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)) \
                  .map(e => e.tagName + (e.id ? '#' + e.id : '') + '.' + e.className).join(', ')];";
    let dims = b.c.execute(script, vec![]).await.expect("measure the page");
    let dim = |i: usize| dims.get(i).and_then(Value::as_u64).unwrap_or(u64::MAX);
    assert_eq!(dim(2), u64::from(WIDTH), "{page}: the viewport is the phone's width");
    let scrollers = dims.get(3).and_then(Value::as_str).unwrap_or("?");
    assert!(scrollers.is_empty(), "{page}: these scroll sideways inside the page: {scrollers}");
    assert!(
        dim(0) <= u64::from(WIDTH) && dim(1) <= u64::from(WIDTH),
        "{page} scrolls sideways on a {WIDTH} px phone: scrollWidth {} (body {})\n{}",
        dim(0),
        dim(1),
        b.context().await
    );
}

/// The element is visible and lies wholly within the screen's width, as the page is laid out —
/// nothing scrolled sideways to bring it there.
async fn assert_on_screen(b: &Browser, css: &str) {
    b.wait_for(css).await;
    let script = "const e = document.querySelector(arguments[0]); const r = e.getBoundingClientRect(); \
                  return [r.left, r.right, r.width, r.height, window.innerWidth, e.checkVisibility() ? 1 : 0];";
    let rect = b.c.execute(script, vec![Value::from(css)]).await.expect("measure the element");
    let n = |i: usize| rect.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let (left, right, width, height, viewport, visible) = (n(0), n(1), n(2), n(3), n(4), n(5));
    assert!(
        visible == 1.0 && width > 0.0 && height > 0.0 && left >= 0.0 && right <= viewport,
        "`{css}` is not within the {viewport} px screen: left {left}, right {right}, {width}×{height}, visible {visible}"
    );
}

/// Open the collapsed navigation menu and check that `link` is then on the screen.
async fn open_menu_and_check(b: &Browser, link: &str) {
    assert!(!b.find(link).await.is_displayed().await.unwrap(), "{link} is folded away until the menu opens");
    b.find("#nav-menu").await.click().await.expect("open the menu");
    assert_on_screen(b, link).await;
}

#[tokio::test]
async fn every_page_fits_a_phone_and_every_action_is_on_screen() {
    let Some(b) = Browser::start_phone(WIDTH, HEIGHT).await else { return };

    for (path, marker) in [("/", "#landing-login"), ("/login", "#login-form"), ("/signup", "#signup-form")] {
        b.goto(path).await;
        b.wait_for(marker).await;
        assert_fits(&b, path).await;
    }
    open_menu_and_check(&b, "#nav-login").await;

    b.signup("phone-user").await;
    assert_fits(&b, "dashboard").await;
    assert_on_screen(&b, "#connect-demo").await;
    open_menu_and_check(&b, "#nav-settings").await;
    assert_on_screen(&b, "#nav-vault").await;
    assert_on_screen(&b, "#logout").await;
    b.screenshot("16-phone-menu").await;

    b.goto("/").await;
    b.click_to("#connect-demo", "#authorize").await;
    assert_fits(&b, "the Redirector").await;
    assert_on_screen(&b, "#authorize").await;
    b.click_to("#authorize", "#consent").await;
    assert_fits(&b, "the demo consent page").await;
    assert_on_screen(&b, "#allow").await;
    b.click_to("#allow", "#connected").await;
    assert_fits(&b, "the success page").await;

    b.goto("/services/demo/account").await;
    b.wait_for("#account-json").await;
    assert_fits(&b, "the account page").await;

    b.goto("/settings/oauth2").await;
    b.wait_for("tr[data-service=\"demo\"]").await;
    assert_fits(&b, "My Settings → OAuth2 Services").await;
    for action in ["#account-demo", "#reconnect-demo", "#revoke-demo", "#delete-demo"] {
        assert_on_screen(&b, action).await;
    }
    b.screenshot("15-phone-settings").await;

    // A limited key, so the keys table has a row to lay out as a card.
    b.goto("/settings/api-keys").await;
    b.fill("#api-key-name", "phone script").await;
    b.find("#api-key-capability-token-read").await.click().await.expect("tick token:read");
    b.click_to("#api-key-create", "#new-api-key").await;
    assert_fits(&b, "API keys with a new key").await;
    assert_on_screen(&b, "#new-api-key").await;
    assert_on_screen(&b, "tr[data-key] button[id^=\"revoke-key-\"]").await;

    for (path, marker) in [
        ("/settings/password", "#settings-password"),
        ("/settings/sessions", "#settings-sessions"),
        ("/admin/vault", "#nav-vault"),
        ("/admin/webhooks", "#no-webhooks"),
        ("/settings/apps", "#no-connected-apps"),
        ("/admin/oauth-clients", "#oauth-client-form"),
        ("/admin/providers", "#providers"),
        ("/demo/", "#demo-grants"),
        ("/no-such-page", "#error[data-status=\"404\"]"),
    ] {
        b.goto(path).await;
        b.wait_for(marker).await;
        assert_fits(&b, path).await;
    }

    // The actions work from the phone: delete the connection from its card.
    b.goto("/settings/oauth2").await;
    b.click_to("#delete-demo", "#no-connections").await;
    b.finish().await;
}

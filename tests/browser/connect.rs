//! Connecting the demo provider: allow, deny, and deleting a connection.

use crate::harness::Browser;

const ROW: &str = "tr[data-service=\"demo\"]";

async fn texts(b: &Browser, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for el in b.c.find_all(fantoccini::Locator::Css(css)).await.expect("find elements") {
        out.push(el.text().await.expect("element text"));
    }
    out
}

/// What the settings row shows that does not drift with the clock: scopes, refresh token, status,
/// and the exact UTC times behind "obtained" and "expires" (their `title`s).
async fn row_fingerprint(b: &Browser) -> Vec<String> {
    let mut out = texts(b, &format!("{ROW} .scopes, {ROW} .refresh, {ROW} .status")).await;
    for el in b.c.find_all(fantoccini::Locator::Css(&format!("{ROW} span[title]"))).await.expect("find elements") {
        out.push(el.attr("title").await.expect("title attribute").unwrap_or_default());
    }
    out
}

/// Flow 2, with the app's Content-Security-Policy in force the whole way.
#[tokio::test]
async fn connect_demo_provider_under_csp() {
    let Some(b) = Browser::start().await else { return };
    b.signup("lin").await;

    b.click_to("#connect-demo", "#authorize").await;
    assert_eq!(b.path().await, "/services/demo/authorize");
    let scopes = texts(&b, "#scopes li").await;
    assert_eq!(scopes, ["profile", "files.read"], "the Redirector lists the permissions asked for");
    b.screenshot("05-authorize").await;

    b.click_to("#authorize", "#consent").await;
    assert_eq!(b.path().await, "/demo/oauth2/authorize");
    assert_eq!(texts(&b, "#scope-choice code").await, scopes, "the consent page lists the same scopes");
    b.screenshot("06-consent").await;

    b.click_to("#allow", "#connected").await;
    let location = b.location().await;
    assert!(location.starts_with("/services/demo/connected"), "landed on {location}");
    assert!(!location.contains("code="), "the authorization code must not stay in the URL: {location}");
    assert!(!location.contains("state="), "the state must not stay in the URL: {location}");
    let connected = b.text("#connected").await;
    assert!(connected.contains("Demo"), "the page names the service: {connected}");
    assert!(connected.contains("stored"), "the page says a refresh token is stored: {connected}");
    b.screenshot("07-connected").await;

    b.goto("/settings/oauth2").await;
    let row = b.wait_for(ROW).await;
    let row_scopes = row.find(fantoccini::Locator::Css(".scopes")).await.expect("scopes cell").text().await.unwrap();
    for scope in &scopes {
        assert!(row_scopes.contains(scope.as_str()), "settings should show scope {scope}: {row_scopes}");
    }
    assert_eq!(b.text(&format!("{ROW} .refresh")).await, "yes");
    b.screenshot("08-settings-oauth2").await;

    b.goto("/").await;
    assert!(b.text(".service-card[data-service=\"demo\"]").await.contains("Connected"));

    // Nothing along the way was blocked by the policy...
    let csp_messages: Vec<String> =
        b.console_log().await.into_iter().filter(|m| m.contains("Content Security Policy")).collect();
    assert!(csp_messages.is_empty(), "the CSP blocked something the pages need: {csp_messages:#?}");
    // ...and the browser really enforces it: an image from another origin is refused.
    let script = "const done = arguments[arguments.length - 1];\
                  document.addEventListener('securitypolicyviolation', \
                    e => done(e.effectiveDirective + ' ' + e.blockedURI), { once: true });\
                  const img = document.createElement('img');\
                  img.src = 'http://127.0.0.2:9/blocked.png';\
                  document.body.appendChild(img);";
    let violation = b.c.execute_async(script, vec![]).await.expect("CSP probe script");
    let violation = violation.as_str().unwrap_or_default();
    assert!(violation.starts_with("img-src http://127.0.0.2:9/"), "expected an img-src violation, got {violation:?}");

    b.finish().await;
}

/// Flow 3: denying at the provider stores nothing.
#[tokio::test]
async fn deny_stores_nothing() {
    let Some(b) = Browser::start().await else { return };
    b.signup("ken").await;

    b.open_consent().await;
    b.click_to("#deny", "#cancelled").await;
    assert!(b.text("#cancelled").await.contains("cancelled"));
    assert!(!b.location().await.contains("code="));
    b.screenshot("07b-cancelled").await;

    b.goto("/settings/oauth2").await;
    b.wait_for("#no-connections").await;
    assert!(!b.exists(ROW).await, "a denied authorization must store nothing");
    b.goto("/").await;
    assert!(b.text(".service-card[data-service=\"demo\"]").await.contains("Not connected"));

    b.finish().await;
}

/// Flow 3, second half: denying a new authorization keeps the connection already stored.
#[tokio::test]
async fn deny_after_connect_keeps_the_connection() {
    let Some(b) = Browser::start().await else { return };
    b.signup("mae").await;
    b.connect_demo().await;
    b.goto("/settings/oauth2").await;
    let before = row_fingerprint(&b).await;

    b.open_consent().await;
    b.click_to("#deny", "#cancelled").await;

    b.goto("/settings/oauth2").await;
    b.wait_for(ROW).await;
    assert_eq!(b.text(&format!("{ROW} .refresh")).await, "yes");
    assert_eq!(row_fingerprint(&b).await, before, "the stored connection is unchanged");

    b.finish().await;
}

/// Flow 4: deleting a connection from the settings page.
#[tokio::test]
async fn delete_connection_from_settings() {
    let Some(b) = Browser::start().await else { return };
    b.signup("ida").await;
    b.connect_demo().await;
    b.goto("/settings/oauth2").await;
    b.wait_for(ROW).await;

    b.click_to("#delete-demo", "#flash").await;
    assert_eq!(b.path().await, "/settings/oauth2");
    let flash = b.text("#flash").await;
    assert!(!flash.is_empty(), "deleting says what happened");
    b.wait_gone(ROW).await;
    b.wait_for("#no-connections").await;

    b.finish().await;
}

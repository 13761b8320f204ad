//! Sign-up, sign-in, sign-out and the session cookie.

use crate::harness::{Browser, PASSWORD};

const DASHBOARD_CARD: &str = ".service-card[data-service=\"demo\"]";

#[tokio::test]
async fn signup_logout_login() {
    let Some(b) = Browser::start().await else { return };

    b.goto("/").await;
    b.wait_for("#landing-login").await;
    assert!(b.exists("#landing-signup").await, "the landing page offers sign-up in the debug profile");
    b.screenshot("01-landing").await;

    let user = "ada";
    b.goto("/signup").await;
    b.wait_for("#signup-form").await;
    b.screenshot("02-signup").await;
    b.fill("#username", user).await;
    b.fill("#password", PASSWORD).await;
    b.fill("#password_confirm", PASSWORD).await;
    b.click_to("#signup-submit", DASHBOARD_CARD).await;
    assert_eq!(b.path().await, "/");
    assert!(b.text("#flash").await.contains(user), "the welcome message names the user");
    assert!(b.text("#logout").await.contains(user), "the nav shows who is signed in");
    assert!(b.text(DASHBOARD_CARD).await.contains("Not connected"));
    b.screenshot("04-dashboard").await;

    b.logout().await;
    assert!(b.text("#flash").await.contains("signed out"));
    assert!(!b.exists("#logout").await, "no log-out button once signed out");
    b.screenshot("03-login").await;

    b.submit_login(user, "not the right password", "#login-error").await;
    assert_eq!(b.path().await, "/login");
    let error = b.text("#login-error").await;
    assert!(error.contains("do not match"), "unexpected sign-in error: {error}");
    assert!(!b.exists("#logout").await, "a wrong password does not sign in");
    b.screenshot("03b-login-error").await;

    b.submit_login(user, PASSWORD, DASHBOARD_CARD).await;
    assert_eq!(b.path().await, "/");
    assert!(b.text("#logout").await.contains(user));

    b.goto("/nope").await;
    b.wait_for("#error[data-status=\"404\"]").await;
    assert!(b.exists("#error-message").await);
    b.screenshot("10-error-404").await;

    b.finish().await;
}

#[tokio::test]
async fn session_cookie_is_httponly_and_samesite_lax() {
    let Some(b) = Browser::start().await else { return };
    let user = "grace";
    b.signup(user).await;
    b.logout().await;

    // A page that needs a session sends to the sign-in page and back after signing in.
    b.goto("/settings/oauth2").await;
    b.wait_for("#login-form").await;
    assert_eq!(b.path().await, "/login");
    b.submit_login(user, PASSWORD, "#no-connections").await;
    assert_eq!(b.path().await, "/settings/oauth2", "signing in returns to the page asked for");

    let cookies = b.c.get_all_cookies().await.expect("read cookies through WebDriver");
    let names: Vec<String> = cookies.iter().map(|c| c.name().to_string()).collect();
    let session = cookies
        .iter()
        .find(|c| c.name() == "tv_session")
        .unwrap_or_else(|| panic!("no tv_session cookie after signing in; cookies: {names:?}"));
    assert_eq!(session.http_only(), Some(true), "tv_session must be HttpOnly");
    assert_eq!(session.same_site().map(|s| s.to_string()), Some("Lax".to_string()), "tv_session must be SameSite=Lax");
    assert_eq!(session.path(), Some("/"));
    assert_ne!(session.secure(), Some(true), "over plain http the cookie cannot be Secure");

    let visible = b.c.execute("return document.cookie;", vec![]).await.expect("run a script");
    let visible = visible.as_str().unwrap_or_default();
    assert!(!visible.contains("tv_session"), "page scripts must not see the session cookie: {visible}");

    b.finish().await;
}

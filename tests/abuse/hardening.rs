//! Issue 10, item 9: the attributes of every cookie the app sends (flash messages in `tv_flash`,
//! the session cookie `__Host-`-prefixed on https).

use std::collections::BTreeSet;

use rocket::http::Status;

use crate::common::{self, csrf_from, flow_params, Reply, PASSWORD};

// ---------------------------------------------------------------------------------------------
// Item 9: cookies

/// Every `Set-Cookie` of a response.
fn set_cookies(reply: &Reply) -> Vec<String> {
    reply.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("Set-Cookie")).map(|(_, v)| v.clone()).collect()
}

/// Sign up, see the flash, connect the fake provider, delete it (a flash redirect), log out, sign in
/// again with a wrong and then the right password; check every `Set-Cookie` on the way.
async fn every_cookie(public_url: Option<&str>) {
    let https = public_url.is_some_and(|u| u.starts_with("https:"));
    let mut builder = common::builder();
    if let Some(url) = public_url {
        builder = builder.set("public_url", url);
    }
    let app = builder.start().await;
    app.fake.state.lock().unwrap().public_url = public_url.map(String::from);
    let (session, other_session) =
        if https { ("__Host-tv_session", "tv_session") } else { ("tv_session", "__Host-tv_session") };
    let agent = app.agent();
    let mut replies: Vec<(String, Reply)> = Vec::new();
    let mut step = |name: &str, reply: Reply| -> Reply {
        let copy = Reply {
            status: reply.status,
            location: reply.location.clone(),
            headers: reply.headers.clone(),
            text: String::new(),
        };
        replies.push((name.to_string(), copy));
        reply
    };

    let page = step("GET /signup", agent.fetch("/signup").await);
    let csrf = csrf_from(&page.text);
    let fields =
        [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", PASSWORD), ("password_confirm", PASSWORD)];
    let res = step("POST /signup", agent.post_form("/signup", &fields).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let home = step("GET / (flash)", agent.fetch("/").await);
    assert!(home.text.contains(r#"id="flash""#) && home.text.contains("Welcome to tokenvault"), "{}", home.text);
    let again = step("GET / (again)", agent.fetch("/").await);
    assert!(!again.text.contains(r#"id="flash""#), "a flash message shows once");
    assert!(again.text.contains(r#"id="logout""#), "signed in with the `{session}` cookie");

    let page = step("GET authorize", agent.fetch("/services/fake/authorize").await);
    let csrf = csrf_from(&page.text);
    let res = step("POST authorize", agent.post_form("/services/fake/authorize", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let (state, challenge) = flow_params(&url::Url::parse(res.location.as_deref().unwrap()).unwrap());
    let code = app.fake.issue_code(&challenge);
    let res = step("GET callback", agent.fetch(&format!("/services/fake/callback?code={code}&state={state}")).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let connected = step("GET connected", agent.fetch(res.location.as_deref().unwrap()).await);
    assert!(connected.text.contains(r#"id="connected""#), "{}", connected.text);

    let csrf = csrf_from(&step("GET settings", agent.fetch("/settings/oauth2").await).text);
    let res = step("POST delete", agent.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther, "{}", res.text);
    let settings = step("GET settings (flash)", agent.fetch("/settings/oauth2").await);
    assert!(settings.text.contains(r#"id="flash""#), "{}", settings.text);
    assert_eq!(app.connection_count(), 0);

    let csrf = csrf_from(&settings.text);
    let res = step("POST /logout", agent.post_form("/logout", &[("csrf_token", &csrf)]).await);
    assert_eq!(res.status, Status::SeeOther);
    let login = step("GET /login (flash)", agent.fetch("/login").await);
    assert!(login.text.contains("You are signed out."), "{}", login.text);
    let csrf = csrf_from(&login.text);
    let bad = [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", "not the password")];
    assert_eq!(step("POST /login (wrong)", agent.post_form("/login", &bad).await).status, Status::Unauthorized);
    let csrf = csrf_from(&step("GET /login", agent.fetch("/login").await).text);
    let good = [("csrf_token", csrf.as_str()), ("username", "cookie"), ("password", PASSWORD)];
    assert_eq!(step("POST /login", agent.post_form("/login", &good).await).status, Status::SeeOther);
    let home = step("GET / (signed in)", agent.fetch("/").await);
    assert!(home.text.contains(r#"id="logout""#));

    let (mut set, mut removed) = (BTreeSet::new(), BTreeSet::new());
    for (name, reply) in &replies {
        for raw in set_cookies(reply) {
            let c = cookie::Cookie::parse(raw.clone()).unwrap_or_else(|e| panic!("{name}: unparsable {raw}: {e}"));
            let what = format!("{name}: `Set-Cookie: {raw}`");
            assert_ne!(c.name(), "_flash", "{what}: Rocket's flash cookie");
            assert_ne!(c.name(), other_session, "{what}");
            assert_eq!(c.http_only(), Some(true), "{what} is not HttpOnly");
            assert_eq!(c.same_site(), Some(cookie::SameSite::Lax), "{what} is not SameSite=Lax");
            assert_eq!(c.secure().unwrap_or(false), https, "{what}: Secure must be {https}");
            assert_eq!(c.path(), Some("/"), "{what}");
            assert_eq!(c.domain(), None, "{what}");
            let removal = c.value().is_empty() || c.max_age().is_some_and(|m| m.is_zero() || m.is_negative());
            let names = if removal { &mut removed } else { &mut set };
            names.insert(c.name().to_string());
        }
    }
    for name in [session, "tv_csrf", "tv_flash"] {
        assert!(set.contains(name), "`{name}` was never set: {set:?}");
        assert!(removed.contains(name), "`{name}` was never removed: {removed:?}");
    }
}

#[tokio::test]
async fn every_cookie_is_http_only_and_lax_on_http() {
    every_cookie(None).await;
}

#[tokio::test]
async fn every_cookie_is_secure_on_https_and_the_session_is_host_prefixed() {
    every_cookie(Some("https://tokenvault.example")).await;
}

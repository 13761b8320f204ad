//! Sign-up, login, logout, sessions, cookies and CSRF.

use crate::common;

use crate::common::{builder, TestApp, PASSWORD};
use rocket::http::Status;

fn set_cookie<'a>(reply: &'a common::Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("Set-Cookie"))
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(&format!("{name}=")))
}

async fn login(agent: &common::Agent<'_>, username: &str, password: &str) -> common::Reply {
    let csrf = agent.csrf("/login").await;
    agent.post_form("/login", &[("csrf_token", &csrf), ("username", username), ("password", password)]).await
}

#[tokio::test]
async fn session_cookie_is_httponly_lax_and_path_root() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let agent = app.agent();
    let reply = login(&agent, "alice", PASSWORD).await;
    assert_eq!(reply.status, Status::SeeOther);
    let cookie = cookie::Cookie::parse(set_cookie(&reply, "tv_session").expect("session cookie").to_string()).unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.same_site(), Some(cookie::SameSite::Lax));
    assert_eq!(cookie.path(), Some("/"));
    assert_ne!(cookie.secure(), Some(true), "not Secure on plain-http localhost");
}

#[tokio::test]
async fn cookies_are_secure_on_https() {
    let app = builder().set("public_url", "https://tokenvault.example").start().await;
    let agent = app.agent();
    let reply = agent.fetch("/login").await;
    let cookie = cookie::Cookie::parse(set_cookie(&reply, "tv_csrf").unwrap().to_string()).unwrap();
    assert_eq!(cookie.secure(), Some(true));
    assert!(reply.header("Strict-Transport-Security").is_some());
}

#[tokio::test]
async fn every_login_gets_a_new_session_id() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let agent = app.agent();
    login(&agent, "alice", PASSWORD).await;
    let first = agent.cookie("tv_session").unwrap();
    let csrf = agent.csrf("/settings/oauth2").await;
    agent.post_form("/logout", &[("csrf_token", &csrf)]).await;
    login(&agent, "alice", PASSWORD).await;
    let second = agent.cookie("tv_session").unwrap();
    assert_ne!(first, second);
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let agent = app.agent();
    let wrong = login(&agent, "alice", "wrong password here").await;
    let unknown = login(&agent, "nobody", "wrong password here").await;
    assert_eq!(wrong.status, Status::Unauthorized);
    assert_eq!(unknown.status, wrong.status);
    let strip = |t: &str| regex::Regex::new(r#"value="[^"]*""#).unwrap().replace_all(t, "").to_string();
    let strip_id =
        |t: &str| regex::Regex::new(r"<code>[A-Za-z0-9_-]{12}</code>").unwrap().replace_all(t, "").to_string();
    assert_eq!(strip_id(&strip(&wrong.text)), strip_id(&strip(&unknown.text)));
    assert!(wrong.text.contains(r#"id="login-error""#));
    assert!(agent.cookie("tv_session").is_none());
}

#[tokio::test]
async fn a_pre_login_cookie_grants_nothing() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let agent = app.agent();
    agent.fetch("/login").await; // gets only the anonymous CSRF cookie
    let reply = agent.fetch("/settings/oauth2").await;
    assert_eq!(reply.status, Status::SeeOther);
    assert!(reply.location.unwrap().starts_with("/login?next="));
}

#[tokio::test]
async fn logout_ends_the_session_for_good() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let cookie = alice.cookie("tv_session").unwrap();
    assert_eq!(alice.fetch("/settings/oauth2").await.status, Status::Ok);
    let csrf = alice.csrf("/settings/oauth2").await;
    let out = alice.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(out.status, Status::SeeOther);
    assert_eq!(out.location.as_deref(), Some("/login"));
    assert!(alice.cookie("tv_session").is_none());
    // Replaying the old cookie does not work: the row is gone.
    let replay = app.agent();
    replay.set_cookie("tv_session", &cookie);
    assert_eq!(replay.fetch("/settings/oauth2").await.status, Status::SeeOther);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM sessions"), 0);
}

#[tokio::test]
async fn expired_sessions_end() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    assert_eq!(alice.fetch("/settings/oauth2").await.status, Status::Ok);
    app.exec("UPDATE sessions SET expires_at = 1");
    assert_eq!(alice.fetch("/settings/oauth2").await.status, Status::SeeOther);
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    alice.connect("fake").await;
    let bob_csrf = bob.csrf("/settings/oauth2").await;
    for token in ["", "wrong", bob_csrf.as_str()] {
        let r = alice.post_form("/settings/oauth2/fake/delete", &[("csrf_token", token)]).await;
        assert_eq!(r.status, Status::Forbidden, "token {token:?}");
        let r = alice.post_form("/services/fake/authorize", &[("csrf_token", token)]).await;
        assert_eq!(r.status, Status::Forbidden);
        let r = alice.post_form("/logout", &[("csrf_token", token)]).await;
        assert_eq!(r.status, Status::Forbidden);
    }
    let r = alice.post_form("/settings/oauth2/fake/delete", &[]).await;
    assert_eq!(r.status, Status::Forbidden);
    assert_eq!(app.connection_count(), 1, "nothing was deleted");
    assert!(alice.cookie("tv_session").is_some());
    assert_eq!(alice.fetch("/settings/oauth2").await.status, Status::Ok, "still signed in");
}

#[tokio::test]
async fn cross_origin_posts_are_refused_even_with_a_valid_token() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let csrf = alice.csrf("/settings/oauth2").await;
    let r = alice
        .post_with("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)], &[("Origin", "https://evil.example")])
        .await;
    assert_eq!(r.status, Status::Forbidden);
    let r = alice
        .post_with("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)], &[("Sec-Fetch-Site", "cross-site")])
        .await;
    assert_eq!(r.status, Status::Forbidden);
    assert_eq!(app.connection_count(), 1);
    let r = alice
        .post_with("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)], &[("Origin", common::PUBLIC_URL)])
        .await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn login_and_signup_forms_need_their_csrf_token() {
    let app = TestApp::start().await;
    app.user("alice").await;
    let agent = app.agent();
    let r = agent.post_form("/login", &[("csrf_token", "x"), ("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status, Status::Forbidden);
    assert!(agent.cookie("tv_session").is_none());
    let form = [("csrf_token", "x"), ("username", "bob"), ("password", PASSWORD), ("password_confirm", PASSWORD)];
    assert_eq!(agent.post_form("/signup", &form).await.status, Status::Forbidden);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM users"), 1, "no account was made");
}

#[tokio::test]
async fn signup_validates_and_keeps_what_was_typed() {
    let app = TestApp::start().await;
    let agent = app.agent();
    let csrf = agent.csrf("/signup").await;
    let cases = [
        ("ok-name", "short", "short", "at least 10"),
        ("ok-name", "long enough password", "different password!", "do not match"),
        ("x", "long enough password", "long enough password", "Usernames are"),
    ];
    for (name, pw, confirm, message) in cases {
        let r = agent
            .post_form(
                "/signup",
                &[("csrf_token", &csrf), ("username", name), ("password", pw), ("password_confirm", confirm)],
            )
            .await;
        assert_eq!(r.status, Status::UnprocessableEntity);
        assert!(r.text.contains(message), "{message}: {}", r.text);
        assert!(r.text.contains(&format!(r#"value="{name}""#)));
        assert!(!r.text.contains(pw) || pw == "short" && !r.text.contains(r#"value="short""#));
    }
    app.user("alice").await;
    let r = agent
        .post_form(
            "/signup",
            &[("csrf_token", &csrf), ("username", "alice"), ("password", PASSWORD), ("password_confirm", PASSWORD)],
        )
        .await;
    assert!(r.text.contains("taken"));
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM users"), 1);
}

#[tokio::test]
async fn unicode_and_long_passwords_work() {
    let app = TestApp::start().await;
    let agent = app.agent();
    let pw = "pässwört-🔐-".repeat(30);
    let csrf = agent.csrf("/signup").await;
    let r = agent
        .post_form(
            "/signup",
            &[("csrf_token", &csrf), ("username", "ünï"), ("password", &pw), ("password_confirm", &pw)],
        )
        .await;
    assert_eq!(r.status, Status::UnprocessableEntity, "non-ASCII usernames are refused clearly");
    let r = agent
        .post_form(
            "/signup",
            &[("csrf_token", &csrf), ("username", "uni"), ("password", &pw), ("password_confirm", &pw)],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther);
    let other = app.agent();
    assert_eq!(login(&other, "uni", &pw).await.status, Status::SeeOther);
}

#[tokio::test]
async fn signup_can_be_turned_off() {
    let app = builder().set("allow_signup", false).start().await;
    let agent = app.agent();
    assert_eq!(agent.fetch("/signup").await.status, Status::NotFound);
    assert!(!agent.fetch("/login").await.text.contains("/signup"));
    // Posting the form anyway creates nothing.
    let csrf = agent.csrf("/login").await;
    let form = [
        ("csrf_token", csrf.as_str()),
        ("username", "mallory"),
        ("password", PASSWORD),
        ("password_confirm", PASSWORD),
    ];
    assert_eq!(agent.post_form("/signup", &form).await.status, Status::NotFound);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM users"), 0);
}

#[tokio::test]
async fn login_next_accepts_only_local_paths() {
    let app = TestApp::start().await;
    app.user("alice").await;
    for (next, expected) in [
        ("/settings/oauth2", "/settings/oauth2"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("https://evil.example", "/"),
        (" /settings", "/"),
    ] {
        let agent = app.agent();
        let csrf = agent.csrf("/login").await;
        let r = agent
            .post_form(
                "/login",
                &[("csrf_token", &csrf), ("username", "alice"), ("password", PASSWORD), ("next", next)],
            )
            .await;
        assert_eq!(r.location.as_deref(), Some(expected), "next={next:?}");
    }
}

#[tokio::test]
async fn security_headers_are_on_every_response() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    for uri in ["/", "/login", "/nope", "/services/nope/authorize", "/services/fake/callback?state=x", "/healthz"] {
        let r = alice.fetch(uri).await;
        let csp = r.header("Content-Security-Policy").unwrap_or_else(|| panic!("CSP on {uri}"));
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains(&format!("form-action 'self' {}", app.fake.uri())), "provider origin allowed: {csp}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(r.header("Referrer-Policy"), Some("no-referrer"));
        assert!(r.header("X-Request-Id").is_some());
        assert!(r.header("Strict-Transport-Security").is_none(), "no HSTS on http");
    }
}

#[tokio::test]
async fn error_pages_show_a_request_id_and_json_clients_get_json() {
    let app = TestApp::start().await;
    let agent = app.agent();
    let r = agent.fetch("/does-not-exist").await;
    assert_eq!(r.status, Status::NotFound);
    let id = r.header("X-Request-Id").unwrap().to_string();
    assert!(r.text.contains(&id));
    let res = app.client.get("/does-not-exist").header(rocket::http::Accept::JSON).dispatch().await;
    assert_eq!(res.status(), Status::NotFound);
    let body: serde_json::Value = res.into_json().await.unwrap();
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn login_is_throttled_per_account_with_a_uniform_429() {
    let app = builder().set("login_limit_per_account", 3).start().await;
    app.user("alice").await;
    let agent = app.agent();
    for _ in 0..3 {
        assert_eq!(login(&agent, "alice", "wrong password!!").await.status, Status::Unauthorized);
        assert_eq!(login(&agent, "nobody", "wrong password!!").await.status, Status::Unauthorized);
    }
    let known = login(&agent, "alice", PASSWORD).await;
    let unknown = login(&agent, "nobody", PASSWORD).await;
    assert_eq!(known.status, Status::TooManyRequests, "even the right password waits");
    assert_eq!(unknown.status, Status::TooManyRequests);
    let strip_id =
        |t: &str| regex::Regex::new(r"<code>[A-Za-z0-9_-]{12}</code>").unwrap().replace_all(t, "").to_string();
    assert_eq!(strip_id(&known.text), strip_id(&unknown.text));
    assert!(agent.cookie("tv_session").is_none());
    // Another account is not affected.
    app.user("bob").await;
    assert_eq!(login(&app.agent(), "bob", PASSWORD).await.status, Status::SeeOther);
}

#[tokio::test]
async fn login_is_throttled_per_ip() {
    // The local client has no TCP peer: name the header explicitly (it is used only then).
    let app = builder().set("login_limit_per_ip", 4).set("ip_header", "X-Real-IP").start().await;
    let agent = app.agent();
    let csrf = agent.csrf("/login").await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let name = format!("user{i}");
        let r = agent
            .post_with(
                "/login",
                &[("csrf_token", &csrf), ("username", &name), ("password", "whatever password")],
                &[("X-Real-IP", "203.0.113.7")],
            )
            .await;
        statuses.push(r.status.code);
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn changing_the_password_ends_every_other_session() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let laptop = app.agent();
    assert_eq!(login(&laptop, "alice", PASSWORD).await.status, Status::SeeOther);
    let old_cookie = alice.cookie("tv_session").unwrap();
    let csrf = alice.csrf("/settings/password").await;
    let wrong = alice
        .post_form(
            "/settings/password",
            &[
                ("csrf_token", &csrf),
                ("current_password", "not it at all"),
                ("new_password", "a brand new password"),
                ("new_password_confirm", "a brand new password"),
            ],
        )
        .await;
    assert_eq!(wrong.status, Status::UnprocessableEntity);
    assert!(wrong.text.contains("current password is not right"));
    let r = alice
        .post_form(
            "/settings/password",
            &[
                ("csrf_token", &csrf),
                ("current_password", PASSWORD),
                ("new_password", "a brand new password"),
                ("new_password_confirm", "a brand new password"),
            ],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    assert_ne!(alice.cookie("tv_session").unwrap(), old_cookie, "this session got a new id");
    assert_eq!(alice.fetch("/settings/oauth2").await.status, Status::Ok, "still signed in here");
    assert_eq!(laptop.fetch("/settings/oauth2").await.status, Status::SeeOther, "signed out elsewhere");
    let replay = app.agent();
    replay.set_cookie("tv_session", &old_cookie);
    assert_eq!(replay.fetch("/settings/oauth2").await.status, Status::SeeOther);
    assert_eq!(login(&app.agent(), "alice", PASSWORD).await.status, Status::Unauthorized);
    assert_eq!(login(&app.agent(), "alice", "a brand new password").await.status, Status::SeeOther);
}

#[tokio::test]
async fn origin_null_is_accepted_only_when_the_browser_says_same_origin() {
    // Under Referrer-Policy: no-referrer, Chromium sends `Origin: null` on same-origin form posts.
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let csrf = alice.csrf("/settings/oauth2").await;
    let path = "/settings/oauth2/fake/delete";
    let fields = [("csrf_token", csrf.as_str())];
    for headers in [
        vec![("Origin", "null")],
        vec![("Origin", "null"), ("Sec-Fetch-Site", "cross-site")],
        vec![("Origin", "null"), ("Sec-Fetch-Site", "same-site")],
        vec![("Origin", "https://evil.example"), ("Sec-Fetch-Site", "same-origin")],
    ] {
        let r = alice.post_with(path, &fields, &headers).await;
        assert_eq!(r.status, Status::Forbidden, "{headers:?}");
    }
    assert_eq!(app.connection_count(), 1);
    let r = alice.post_with(path, &fields, &[("Origin", "null"), ("Sec-Fetch-Site", "same-origin")]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert_eq!(app.connection_count(), 0);
}

#[tokio::test]
async fn error_pages_keep_the_signed_in_navigation() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let page = alice.fetch("/no/such/page").await;
    assert_eq!(page.status, Status::NotFound);
    assert!(page.text.contains(r#"id="logout""#) && page.text.contains("alice"));
    let page = alice.fetch("/services/nope/authorize").await;
    assert!(page.text.contains(r#"id="logout""#));
}

#[tokio::test]
async fn the_demo_providers_csp_lets_its_consent_form_reach_registered_redirect_uris() {
    let app =
        builder().demo().set("demo_redirect_uris", vec!["http://127.0.0.2:9000/services/demo/callback"]).start().await;
    let r = app.agent().fetch("/login").await;
    let csp = r.header("Content-Security-Policy").unwrap();
    assert!(csp.contains("form-action 'self'") && csp.contains("http://127.0.0.2:9000"), "{csp}");
}

//! Issue 10, "an API key after its owner changes the password" and My Settings → Sessions: a
//! password change revokes the user's API keys and ends every other session; the sessions page
//! lists the user's sessions and signs out one or all others, for its owner only.

mod bounded;

use rocket::http::Status;

use crate::common::{self, csrf_from, Agent, TestApp, PASSWORD};

const NEW_PASSWORD: &str = "a brand new passphrase";

/// Sign `agent` in as `username` from a browser sending `user_agent`.
async fn login(agent: &Agent<'_>, username: &str, user_agent: &str) {
    let csrf = agent.csrf("/login").await;
    let r = agent
        .post_with(
            "/login",
            &[("csrf_token", &csrf), ("username", username), ("password", PASSWORD)],
            &[("User-Agent", user_agent)],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "login failed: {}", r.text);
    // Like a browser, the next request (the page it is sent to) carries the same user agent.
    let home = agent.fetch_with(r.location.as_deref().unwrap_or("/"), &[("User-Agent", user_agent)]).await;
    assert_eq!(home.status, Status::Ok);
}

/// Create an API key on the settings page; the key shown once.
async fn create_key(agent: &Agent<'_>, name: &str) -> common::Reply {
    let csrf = agent.csrf("/settings/api-keys").await;
    agent.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", name)]).await
}

fn shown_key(page: &str) -> String {
    let re = regex::Regex::new(r#"id="new-api-key">(tvk_[A-Za-z0-9_-]+)<"#).unwrap();
    re.captures(page).map(|c| c[1].to_string()).unwrap_or_else(|| panic!("no new key in page:\n{page}"))
}

async fn api_status(app: &TestApp, key: &str) -> Status {
    app.agent().fetch_with("/api/v1/connections", &[("Authorization", &format!("Bearer {key}"))]).await.status
}

/// Whether the agent's session still signs it in (a signed-out one is sent to the login page).
async fn signed_in(agent: &Agent<'_>) -> bool {
    let r = agent.fetch("/settings/sessions").await;
    match r.status {
        Status::Ok => true,
        Status::SeeOther => {
            assert!(r.location.as_deref().unwrap_or_default().starts_with("/login"), "{:?}", r.location);
            false
        }
        other => panic!("unexpected {other}: {}", r.text),
    }
}

/// The `tr[data-session]` rows of the sessions page: (public id, current, row html).
fn session_rows(page: &str) -> Vec<(String, bool, String)> {
    let re = regex::Regex::new(r#"(?s)<tr data-session="([^"]+)" data-current="(true|false)">(.*?)</tr>"#).unwrap();
    re.captures_iter(page).map(|c| (c[1].to_string(), &c[2] == "true", c[3].to_string())).collect()
}

#[rocket::async_test]
async fn a_password_change_revokes_api_keys_and_ends_other_sessions() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let laptop = app.agent();
    login(&laptop, "alice", "Laptop/1.0").await;
    let created = create_key(&alice, "backup script").await;
    assert_eq!(created.status, Status::Ok, "{}", created.text);
    let key = shown_key(&created.text);
    let second = shown_key(&create_key(&alice, "cron").await.text);
    assert_eq!(api_status(&app, &key).await, Status::Ok, "the key works before the change");
    assert_eq!(api_status(&app, &second).await, Status::Ok);

    // The page says what a change will do before it is made.
    let page = alice.fetch("/settings/password").await;
    assert!(page.text.contains("revokes all your") && page.text.contains("API keys"), "{}", page.text);

    let csrf = csrf_from(&page.text);
    let r = alice
        .post_form(
            "/settings/password",
            &[
                ("csrf_token", &csrf),
                ("current_password", PASSWORD),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    let after = alice.fetch("/settings/password").await;
    assert_eq!(after.status, Status::Ok, "this browser stays signed in");
    assert!(after.text.contains("Your 2 API keys were revoked"), "the success message says so: {}", after.text);

    assert_eq!(api_status(&app, &key).await, Status::Unauthorized, "a key made before the change no longer works");
    assert_eq!(api_status(&app, &second).await, Status::Unauthorized);
    assert!(!signed_in(&laptop).await, "the other browser is signed out");
    assert!(signed_in(&alice).await);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL"), 0);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM sessions"), 1);

    // A key made after the change works.
    let fresh = shown_key(&create_key(&alice, "new script").await.text);
    assert_eq!(api_status(&app, &fresh).await, Status::Ok);
}

#[rocket::async_test]
async fn the_sessions_page_lists_and_ends_sessions() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let phone = app.agent();
    login(&phone, "alice", "PhoneBrowser/2.0 (Mobile)").await;
    let tablet = app.agent();
    login(&tablet, "alice", "TabletBrowser/3.0").await;
    assert!(signed_in(&phone).await && signed_in(&tablet).await);

    let page = alice.fetch_with("/settings/sessions", &[("User-Agent", "DesktopBrowser/1.0 <b>x</b>")]).await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"id="sessions""#) && page.text.contains(r#"id="settings-sessions""#));
    let rows = session_rows(&page.text);
    assert_eq!(rows.len(), 3, "{}", page.text);
    let current: Vec<_> = rows.iter().filter(|r| r.1).collect();
    assert_eq!(current.len(), 1, "exactly one row is this browser");
    assert!(current[0].2.contains("DesktopBrowser/1.0 &lt;b&gt;x&lt;/b&gt;"), "escaped: {}", current[0].2);
    assert!(current[0].2.contains("this browser"));
    let row_of = |ua: &str| rows.iter().find(|r| r.2.contains(ua)).unwrap_or_else(|| panic!("no row for {ua}")).clone();
    let (phone_id, _, phone_row) = row_of("PhoneBrowser/2.0 (Mobile)");
    let (tablet_id, _, _) = row_of("TabletBrowser/3.0");
    assert!(phone_row.contains("just now"), "last seen: {phone_row}");
    for (id, _, _) in &rows {
        assert!(page.text.contains(&format!(r#"id="end-session-{id}""#)));
    }
    assert!(page.text.contains(r#"id="end-other-sessions""#));
    // The page names sessions by a public id only: neither a session id nor its hash appears.
    let mut conn = app.db.conn().unwrap();
    let stored = tokenvault::db::models::sessions::list_for_user(&mut conn, 1, tokenvault::util::now()).unwrap();
    drop(conn);
    assert_eq!(stored.len(), 3);
    for hash in stored.iter().map(|s| s.id_hash.as_str()) {
        assert!(!page.text.contains(hash), "a session hash is in the page");
        assert!(!page.text.contains(&hash[..16]));
    }
    for agent in [&alice, &phone, &tablet] {
        let raw = agent.cookie("tv_session").expect("a session cookie");
        assert!(!page.text.contains(&raw));
    }

    // Without a CSRF token, or with a wrong one: 403, and nothing ends.
    let csrf = csrf_from(&page.text);
    let forged = alice.post_form(&format!("/settings/sessions/{phone_id}/end"), &[]).await;
    assert_eq!(forged.status, Status::Forbidden);
    let forged = alice.post_form("/settings/sessions/end-others", &[("csrf_token", "not-the-token")]).await;
    assert_eq!(forged.status, Status::Forbidden);
    assert!(signed_in(&phone).await && signed_in(&tablet).await);

    // End one: its cookie no longer signs in; the others stay.
    let r = alice.post_form(&format!("/settings/sessions/{phone_id}/end"), &[("csrf_token", &csrf)]).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::SeeOther, Some("/settings/sessions")));
    let page = alice.fetch("/settings/sessions").await;
    assert!(page.text.contains("That session was signed out."));
    assert!(!signed_in(&phone).await, "the ended session's cookie fails");
    assert!(signed_in(&tablet).await && signed_in(&alice).await);
    assert!(!page.text.contains(&phone_id));
    assert_eq!(session_rows(&page.text).len(), 2);
    let again = alice.post_form(&format!("/settings/sessions/{phone_id}/end"), &[("csrf_token", &csrf)]).await;
    assert_eq!(again.status, Status::NotFound, "an ended session is gone");

    // End all others: only this browser remains.
    let r = alice.post_form("/settings/sessions/end-others", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert!(!signed_in(&tablet).await, "{tablet_id} ended");
    assert!(signed_in(&alice).await, "this browser stays signed in");
    let page = alice.fetch("/settings/sessions").await;
    let rows = session_rows(&page.text);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].1);
    assert!(page.text.contains(r#"id="no-other-sessions""#));

    // Ending this browser's own session from the page signs it out.
    let own = rows[0].0.clone();
    let r = alice.post_form(&format!("/settings/sessions/{own}/end"), &[("csrf_token", &csrf)]).await;
    assert_eq!((r.status, r.location.as_deref()), (Status::SeeOther, Some("/login")));
    assert!(!signed_in(&alice).await);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM sessions"), 0);
}

#[rocket::async_test]
async fn another_users_session_cannot_be_ended() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let alice_page = alice.fetch("/settings/sessions").await;
    let (alice_id, _, _) = session_rows(&alice_page.text).remove(0);
    let bob_page = bob.fetch("/settings/sessions").await;
    assert_eq!(session_rows(&bob_page.text).len(), 1, "bob sees his own session only");
    assert!(!bob_page.text.contains(&alice_id));

    let csrf = csrf_from(&bob_page.text);
    let r = bob.post_form(&format!("/settings/sessions/{alice_id}/end"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::NotFound);
    let r = bob.post_form("/settings/sessions/end-others", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther);
    assert!(signed_in(&alice).await, "alice's session is untouched");
    assert!(signed_in(&bob).await);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM sessions"), 2);
    // With alice's CSRF token, bob's request is still refused (the token belongs to her session).
    let theirs = csrf_from(&alice_page.text);
    let r = bob.post_form(&format!("/settings/sessions/{alice_id}/end"), &[("csrf_token", &theirs)]).await;
    assert_eq!(r.status, Status::Forbidden);
}

#[rocket::async_test]
async fn last_seen_is_written_at_most_once_a_minute() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let seen = || app.count("SELECT COALESCE(MAX(last_seen_at), -1) AS n FROM sessions");
    assert!(signed_in(&alice).await);
    let first = seen();
    assert!(first > 0, "the first request after sign-in records the session's use");
    let agent_of = || app.text("SELECT COALESCE(MAX(user_agent), '') AS t FROM sessions");

    // A use 30 s ago: no write for this request, whatever it sends.
    app.exec(&format!("UPDATE sessions SET last_seen_at = {}", first - 30));
    let r = alice.fetch_with("/settings/sessions", &[("User-Agent", "Changed/9")]).await;
    assert_eq!(r.status, Status::Ok);
    assert_eq!(seen(), first - 30, "no write within the minute");
    assert_ne!(agent_of(), "Changed/9");

    // A use over a minute ago: this request is recorded, with its user agent (truncated).
    app.exec(&format!("UPDATE sessions SET last_seen_at = {}", first - 61));
    let long = format!("Long/1 {}", "x".repeat(1000));
    alice.fetch_with("/settings/sessions", &[("User-Agent", &long)]).await;
    assert!(seen() >= first);
    assert_eq!(agent_of().chars().count(), 256);
    assert!(long.starts_with(&agent_of()));
}

//! Issue 19, item 6: usernames that differ only in case were two accounts (`ALICE` beside
//! `alice`), while the sign-in limits and device cookies used the lower-cased name — so the owner
//! of `ALICE` held device cookies that counted for `alice` and guessed at `alice` from 40
//! addresses without one refusal. Now a name is one account whatever its case, and a device
//! cookie counts only for the account (user id) and password (epoch) it was issued under.

use std::sync::Arc;
use std::time::Duration;

use rocket::http::Status;

use super::login::{addr, client, login, signup, start};
use crate::common::{self, PASSWORD};

const NEW_PASSWORD: &str = "a brand new passphrase";

/// A `tv_device` cookie value with `value` inside, sealed as the server seals its private cookies
/// (with the test `secret_key`): what only the server could have issued.
fn sealed_device_cookie(value: &str) -> String {
    let master = tokenvault::util::b64_decode(common::SECRET_KEY).unwrap();
    let key = cookie::Key::from(&master);
    let mut jar = cookie::CookieJar::new();
    jar.private_mut(&key).add(cookie::Cookie::new("tv_device", value.to_string()));
    jar.get("tv_device").unwrap().value().to_string()
}

/// A client on 127.0.0.`n` presenting the device cookie `device` (and keeping the cookies it is
/// given, like a browser).
fn client_with_device(n: u8, base: &str, device: &str) -> reqwest::Client {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    jar.add_cookie_str(&format!("tv_device={device}; Path=/"), &base.parse().unwrap());
    reqwest::Client::builder()
        .local_address(addr(n))
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn device_cookie(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .find_map(|c| c.strip_prefix("tv_device="))
        .map(|rest| rest.split(';').next().unwrap().to_string())
        .expect("a device cookie was issued")
}

#[tokio::test]
async fn the_owner_of_another_account_cannot_guess_at_alice_past_the_per_account_limit() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let server = start(dir.path(), &database, &[]).await;
    let base = server.base.clone();
    let signed_up = signup(&client(1), &base, "alice").await;
    assert_eq!(signed_up.status, 303);
    let owner_device = device_cookie(&signed_up.set_cookies);

    // No second account under any case of her name.
    let attacker = client(2);
    for variant in ["ALICE", "Alice", " aLiCe "] {
        let a = signup(&attacker, &base, variant).await;
        assert_eq!(a.status, 422, "{variant}: {}", a.body);
        assert!(a.body.contains("That username is taken (usernames are the same whatever their case)."), "{}", a.body);
    }
    // The attacker's own account gives a genuine device cookie, for that account only.
    let own = signup(&attacker, &base, "mallory").await;
    assert_eq!(own.status, 303);
    let mallory = device_cookie(&own.set_cookies);
    // Cookies the server could have issued for `alice` to someone else: the first format bound the
    // lower-cased name only (what the owner of `ALICE` was given), and one naming `alice` with
    // mallory's user id (an account renamed, or deleted and signed up again under that name).
    let now = tokenvault::util::now();
    let old_format = sealed_device_cookie(&format!("v1|alice|n0nce1|{now}"));
    let other_id = sealed_device_cookie(&format!("v2|alice|2|0|n0nce2|{now}"));
    let cookies = [mallory, old_format, other_id];

    // 40 wrong guesses for any case of `alice` within a minute, from 40 addresses, each with one
    // of those cookies (one after the other: at once, some would only meet the busy hasher).
    let variants = ["alice", "ALICE", "Alice", "aLICE"];
    let mut guesses = Vec::new();
    for i in 0..40u8 {
        let http = client_with_device(10 + i, &base, &cookies[usize::from(i) % cookies.len()]);
        let name = variants[usize::from(i) % variants.len()];
        guesses.push(login(&http, &base, name, &format!("wrong guess {i}")).await.status);
    }
    let checked = guesses.iter().filter(|s| **s == 401).count();
    assert!(guesses.iter().all(|s| matches!(s, 401 | 429)), "{guesses:?}");
    assert!(checked <= 10, "{checked} guesses got past the per-account limit of 10: {guesses:?}");
    assert!(guesses.iter().filter(|s| **s == 429).count() >= 30, "{guesses:?}");

    // (Those cookies were sealed right: one bound to alice's own id and password epoch counts.)
    let hers = sealed_device_cookie(&format!("v2|alice|1|0|n0nce3|{now}"));
    assert_eq!(login(&client_with_device(4, &base, &hers), &base, "alice", "one more guess").await.status, 401);

    // The owner's own browser (its device cookie) still signs in, by any case of her name.
    let a = login(&client_with_device(3, &base, &owner_device), &base, "ALICE", PASSWORD).await;
    assert_eq!(a.status, 303, "{}", a.body);
}

async fn sign_in(agent: &common::Agent<'_>, username: &str, password: &str) -> Status {
    let csrf = agent.csrf("/login").await;
    agent.post_form("/login", &[("csrf_token", &csrf), ("username", username), ("password", password)]).await.status
}

#[tokio::test]
async fn any_case_of_a_name_is_the_one_account() {
    let app = common::TestApp::start().await;
    app.user("alice").await;
    let page = app.agent();
    let csrf = page.csrf("/signup").await;
    let r = page
        .post_form(
            "/signup",
            &[("csrf_token", &csrf), ("username", "Alice"), ("password", PASSWORD), ("password_confirm", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, Status::UnprocessableEntity);
    assert!(r.text.contains("That username is taken (usernames are the same whatever their case)."), "{}", r.text);
    assert_eq!(app.count("SELECT COUNT(*) AS n FROM users"), 1);
    for variant in ["alice", "ALICE", " aLiCe "] {
        let browser = app.agent();
        assert_eq!(sign_in(&browser, variant, PASSWORD).await, Status::SeeOther, "{variant}");
        assert!(browser.fetch("/").await.text.contains("Welcome, alice."), "the account's own name is shown");
    }
}

#[tokio::test]
async fn a_password_change_voids_the_device_cookies_issued_before_it() {
    let app = common::builder().set("login_limit_per_account", 3).start().await;
    let alice = app.user("alice").await;
    let laptop = app.agent();
    assert_eq!(sign_in(&laptop, "alice", PASSWORD).await, Status::SeeOther);
    let laptop_device = laptop.cookie("tv_device").expect("a device cookie");
    let with_only = |agent: &common::Agent<'_>, device: &str| {
        agent.clear_cookies();
        agent.set_cookie("tv_device", device);
    };

    // Guesses from elsewhere use up the account's limit ...
    let guesser = app.agent();
    for _ in 0..3 {
        assert_eq!(sign_in(&guesser, "alice", "wrong password!!").await, Status::Unauthorized);
    }
    assert_eq!(sign_in(&guesser, "alice", "wrong password!!").await, Status::TooManyRequests);
    // ... but not for the laptop, a known device.
    with_only(&laptop, &laptop_device);
    assert_eq!(sign_in(&laptop, "alice", PASSWORD).await, Status::SeeOther, "a known device is spared");
    let laptop_device = laptop.cookie("tv_device").expect("renewed at sign-in");

    // Alice changes her password in her first browser.
    let before = alice.cookie("tv_device").expect("a device cookie from the sign-up");
    let csrf = alice.csrf("/settings/password").await;
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

    // The laptop's cookie was issued under the old password: it counts as none now, so the laptop
    // meets the used-up account limit like any other browser.
    with_only(&laptop, &laptop_device);
    assert_eq!(sign_in(&laptop, "alice", NEW_PASSWORD).await, Status::TooManyRequests, "a voided device cookie");
    // So does the cookie alice's browser had before the change; the one it got with the change
    // (it proved the new password) counts.
    let after = alice.cookie("tv_device").expect("a fresh device cookie with the change");
    assert_ne!(after, before);
    let other = app.agent();
    with_only(&other, &before);
    assert_eq!(sign_in(&other, "alice", NEW_PASSWORD).await, Status::TooManyRequests);
    with_only(&other, &after);
    assert_eq!(sign_in(&other, "alice", NEW_PASSWORD).await, Status::SeeOther);
    assert_eq!(app.count("SELECT password_epoch AS n FROM users WHERE id = 1"), 1, "one change, one epoch");
}

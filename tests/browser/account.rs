//! The account page (`/services/demo/account`): the provider's account API called with the stored
//! token, automatic refreshes seen from the pages, and a transient provider failure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{AppConfig, Browser};

const ROW: &str = "tr[data-service=\"demo\"]";
const ACCOUNT_OK: &str = "#account[data-service=\"demo\"][data-state=\"ok\"]";

/// Access tokens that live 30 s, and no connection cache, so that a change the test makes to the
/// database is seen at once (see [`obtained_an_hour_ago`]).
fn short_lived_tokens() -> AppConfig {
    AppConfig::new().env("ROCKET_DEMO_TOKEN_LIFETIME", "30").env("ROCKET_CACHE_TTL", "0")
}

/// Make the stored token look obtained an hour ago (same expiry): a 30 s token just issued is
/// used as it is (the margin is at most half its lifetime), one obtained long ago and expiring
/// within the 60 s `refresh_margin` is refreshed before its next use.
fn obtained_an_hour_ago(b: &Browser) {
    use diesel::RunQueryDsl;
    let db = tokenvault::db::Db::open_sized(&b.app.database_url(), 1).expect("open the app's database");
    let mut conn = db.conn().expect("a connection to the app's database");
    tokenvault::on_conn!(&mut conn, c => diesel::sql_query("UPDATE connections SET obtained_at = obtained_at - 3600").execute(c))
        .expect("age the stored token");
}

/// A degraded connection's next attempt due now (the app runs with `cache_ttl = 0`).
fn set_next_attempt_due(b: &Browser) {
    use diesel::RunQueryDsl;
    let db = tokenvault::db::Db::open_sized(&b.app.database_url(), 1).expect("open the app's database");
    let mut conn = db.conn().expect("a connection to the app's database");
    tokenvault::on_conn!(&mut conn, c => diesel::sql_query("UPDATE connections SET next_attempt_at = 1").execute(c))
        .expect("the backoff step passes");
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_secs()
}

/// Wait (at most a second) until the wall clock is past `second`. The app keeps times in whole
/// seconds: a token refreshed after this expires later than one obtained by then.
async fn wait_past(second: u64) {
    while unix_now() <= second {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Open the settings page and its history for the demo connection; the events, newest first.
async fn history(b: &Browser) -> Vec<String> {
    b.goto("/settings/oauth2").await;
    b.wait_for(ROW).await;
    let summary = b.wait_for("tr[data-history=\"demo\"] details summary").await;
    summary.click().await.expect("open the history");
    b.wait_for("tr[data-history=\"demo\"] details[open] .events li").await;
    b.texts("tr[data-history=\"demo\"] .events li").await
}

async fn expires_utc(b: &Browser) -> String {
    b.attr(&format!("{ROW} td.expires span"), "title").await
}

#[tokio::test]
async fn account_page_shows_the_demo_account() {
    let Some(b) = Browser::start().await else { return };
    b.signup("nora").await;

    // Before connecting, the page says so and offers to connect.
    b.goto("/services/demo/account").await;
    b.wait_for("#account[data-state=\"not_connected\"]").await;
    assert!(b.exists("#connect").await, "the page offers to connect");

    b.connect_demo().await;
    b.goto("/").await;
    b.click_to("#account-demo", ACCOUNT_OK).await;
    assert_eq!(b.path().await, "/services/demo/account");
    let json = b.text("#account-json").await;
    assert!(json.contains("nora@demo.example"), "the account API's answer holds the demo account's email: {json}");
    assert_eq!(b.text("#account-name").await, "nora");
    assert_eq!(b.text("#account-email").await, "nora@demo.example");
    assert!(b.text("#account-id").await.starts_with("dbid:"), "the demo account id is shown");
    assert!(!b.exists("#reconnect").await, "a working connection needs no reconnect");
    b.screenshot("11-account").await;

    b.finish().await;
}

/// A token due for a refresh is refreshed before each account-page visit; the settings page shows
/// it.
#[tokio::test]
async fn expiring_token_is_refreshed_on_each_visit() {
    let Some(b) = Browser::start_with(short_lived_tokens()).await else { return };
    b.signup("otto").await;
    b.connect_demo().await;
    let connected_at = unix_now();

    b.goto("/settings/oauth2").await;
    b.wait_for(ROW).await;
    let first_expiry = expires_utc(&b).await;
    assert!(!first_expiry.is_empty(), "the demo token has an expiry");
    let before = history(&b).await;
    assert!(!before.iter().any(|e| e.contains(": refresh ")), "no refresh before any use: {before:#?}");

    // Refreshed tokens get their expiry from the clock's seconds: make sure one has passed.
    wait_past(connected_at).await;
    for visit in 1..=2 {
        obtained_an_hour_ago(&b);
        b.goto("/services/demo/account").await;
        b.wait_for(ACCOUNT_OK).await;
        let json = b.text("#account-json").await;
        assert!(json.contains("otto@demo.example"), "visit {visit}: the account API answered: {json}");
    }

    let events = history(&b).await;
    let refreshes: Vec<&String> = events.iter().filter(|e| e.contains("refresh ok")).collect();
    assert_eq!(refreshes.len(), 2, "one refresh per visit, both ok: {events:#?}");
    assert!(
        refreshes.iter().all(|e| e.contains("new refresh token stored")),
        "the demo provider rotates refresh tokens: {events:#?}"
    );
    assert!(events.iter().any(|e| e.contains("connect ok")), "the connection itself is in the history: {events:#?}");
    let new_expiry = expires_utc(&b).await;
    assert!(new_expiry > first_expiry, "the expiry moved on with the refresh: {first_expiry} → {new_expiry}");
    assert!(!b.exists(&format!("{ROW} td.expires.expired")).await, "the refreshed token is not expired");
    assert_eq!(b.text(&format!("{ROW} .status")).await, "Active");

    b.finish().await;
}

/// The demo console's failure switch: one refresh fails with 503 `temporarily_unavailable`; the
/// page says 502, the tokens are kept, My Settings shows the connection degraded (its token still
/// works), and once the backoff step has passed the next visit refreshes and it is active again.
#[tokio::test]
async fn transient_refresh_failure_keeps_the_tokens() {
    let Some(b) = Browser::start_with(short_lived_tokens()).await else { return };
    b.signup("admin").await;
    // Connect first: the switch fails *any* token call, the code exchange too.
    b.connect_demo().await;

    b.goto("/").await;
    b.click_to("#demo-console", "#failures-form").await;
    assert_eq!(b.path().await, "/demo/");
    assert_eq!(b.text("#failures-pending").await, "0");
    b.fill("#failure-count", "1").await;
    b.find("#failure-mode").await.select_by_value("temporarily_unavailable").await.expect("choose a failure mode");
    b.click_to("#failures-save", "#flash").await;
    assert_eq!(b.path().await, "/demo/");
    let flash = b.text("#flash").await;
    assert!(flash.contains("temporarily_unavailable"), "the console confirms the switch: {flash}");
    assert_eq!(b.text("#failures-pending").await, "1");

    obtained_an_hour_ago(&b);
    b.goto("/services/demo/account").await;
    b.wait_for("#error[data-status=\"502\"]").await;
    let message = b.text("#error-message").await;
    assert!(message.contains("Demo provider"), "the error names the provider: {message}");
    assert!(!b.exists("#account").await);

    b.goto("/settings/oauth2").await;
    b.wait_for(&format!("{ROW}[data-status=\"degraded\"]")).await;
    assert!(b.text(&format!("{ROW} .status")).await.starts_with("Degraded"));
    let reason = b.text(&format!("{ROW} .status-reason")).await;
    assert!(reason.contains("temporarily_unavailable") && reason.contains("next attempt in"), "{reason}");
    b.screenshot("15-settings-degraded").await;
    // Degraded is not unusable: the stored token has not expired and is used as it is.
    b.goto("/services/demo/account").await;
    b.wait_for(ACCOUNT_OK).await;

    // The backoff step passes (as 30 s later would): the next visit refreshes.
    set_next_attempt_due(&b);
    b.goto("/services/demo/account").await;
    b.wait_for(ACCOUNT_OK).await;
    assert!(b.text("#account-json").await.contains("admin@demo.example"));
    b.goto("/settings/oauth2").await;
    b.wait_for(&format!("{ROW}[data-status=\"active\"]")).await;

    let events = history(&b).await;
    let failed = events.iter().position(|e| e.contains("refresh failed (retryable)"));
    let ok = events.iter().position(|e| e.contains("refresh ok"));
    assert!(
        matches!((ok, failed), (Some(ok), Some(failed)) if ok < failed),
        "newest first: a refresh ok after the failed one: {events:#?}"
    );
    assert!(events.iter().any(|e| e.contains("tokens were kept")), "the failure kept the tokens: {events:#?}");
    assert_eq!(b.text(&format!("{ROW} .status")).await, "Active", "recovered: no reconnect was needed");

    b.goto("/demo/").await;
    b.wait_for("#failures-form").await;
    assert_eq!(b.text("#failures-pending").await, "0", "the one failure was used up");
    assert!(b.text("tr[data-grant=\"1\"]").await.contains("active"), "the grant survived the failure");

    b.finish().await;
}

//! Crash safety: the real binary is SIGKILLed in the middle of a storm of requests that refresh
//! tokens against a strictly rotating provider, then restarted on the same database.
//!
//! After every kill: the database passes `PRAGMA integrity_check`; every connection still
//! decrypts to one token pair the provider issued together (never a new access token with an old
//! refresh token, never nothing), whose access token the provider still accepts; and its refresh
//! token is either the live one, or — when the kill fell between the provider rotating it and the
//! app storing the answer — the one that refresh used (nothing else can be: the new pair existed
//! only in the killed process). After the restart every user's account page answers: the account
//! for a live refresh token, the "reconnect" page for a lost rotation (the provider revokes the
//! family on the replay), and connecting again repairs it.

use crate::common;

use crate::common::server::Server;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokenvault::util::ExposeSecret;

use crate::common::{flow_params, FakeProvider, PASSWORD, VAULT_KEY};
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::json;

const USERS: usize = 6;
/// Concurrent request loops per user during a storm.
const LOOPS_PER_USER: usize = 6;
/// `http_timeout` of the binary; a refresh lease lasts this + 2 s.
const HTTP_TIMEOUT: u64 = 2;

/// The tokenvault binary on a free port, on the test's database and data directory (so that a
/// restart finds everything the killed process committed).
async fn start(env: &Env) -> Server {
    let fake = env.fake.uri();
    let providers = format!(
        r#"{{fake={{authorize_url="{fake}/authorize",token_url="{fake}/token",account_url="{fake}/account",scopes=["read","write"],client_auth="basic"}}}}"#
    );
    let database_url = env.db_path.to_string_lossy();
    common::server::start(common::server::Options {
        data_dir: Some(env.dir.path()),
        env: vec![
            ("ROCKET_HTTP_TIMEOUT".into(), HTTP_TIMEOUT.to_string()),
            ("ROCKET_REFRESH_MARGIN".into(), "1".into()),
            ("ROCKET_PROVIDERS".into(), providers),
        ],
        ..common::server::Options::new(&database_url, &fake, env.dir.path())
    })
    .await
}

/// The last 40 lines of the server's log.
fn log_tail(server: &Server) -> String {
    let text = server.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

struct Env {
    dir: tempfile::TempDir,
    db_path: PathBuf,
    fake: FakeProvider,
    db: tokenvault::db::Db,
    cipher: tokenvault::vault::Cipher,
}

/// A browser-like client (its own cookie store) for one user.
struct User {
    name: String,
    http: reqwest::Client,
}

fn hidden_fields(html: &str) -> BTreeMap<String, String> {
    let re = regex::Regex::new(r#"<input type="hidden" name="([a-z_]+)" value="([^"]*)""#).unwrap();
    re.captures_iter(html).map(|c| (c[1].to_string(), c[2].replace("&amp;", "&").replace("&#x3D;", "="))).collect()
}

fn location(res: &reqwest::Response) -> String {
    res.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string()
}

impl User {
    async fn sign_up(base: &str, name: &str) -> User {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let page = http.get(format!("{base}/signup")).send().await.unwrap().text().await.unwrap();
        let mut form = hidden_fields(&page);
        form.insert("username".into(), name.into());
        form.insert("password".into(), PASSWORD.into());
        form.insert("password_confirm".into(), PASSWORD.into());
        let res = http.post(format!("{base}/signup")).form(&form).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "sign-up of {name}");
        User { name: name.to_string(), http }
    }

    /// The whole connect flow: Redirector → (the fake provider's code) → callback.
    async fn connect(&self, base: &str, fake: &FakeProvider) {
        let page = self.http.get(format!("{base}/services/fake/authorize")).send().await.unwrap().text().await.unwrap();
        let res = self.http.post(format!("{base}/services/fake/authorize")).form(&hidden_fields(&page)).send().await;
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{}: authorize", self.name);
        let (state, challenge) = flow_params(&url::Url::parse(&location(&res)).unwrap());
        let code = fake.issue_code(&challenge);
        let res =
            self.http.get(format!("{base}/services/fake/callback?code={code}&state={state}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::SEE_OTHER, "{}: callback", self.name);
        assert!(location(&res).starts_with("/services/fake/connected"), "{}: {}", self.name, location(&res));
    }

    async fn account_page(&self, base: &str) -> (StatusCode, String) {
        let res = self.http.get(format!("{base}/services/fake/account")).send().await.unwrap();
        let status = res.status();
        (status, res.text().await.unwrap_or_default())
    }
}

/// What a connection holds after a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// The live refresh token.
    Live,
    /// The refresh token of a refresh the provider answered but the killed app never stored.
    LostRotation,
}

/// `n` of `AT-CANARY-<n>-…` / `RT-CANARY-<n>-…`: the fake numbers each issued pair.
fn pair_number(token: &str) -> u64 {
    token.split('-').nth(2).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a canary token: {token}"))
}

fn integrity(db_path: &Path) -> (String, i64) {
    #[derive(QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        integrity_check: String,
    }
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = SqliteConnection::establish(&db_path.to_string_lossy()).unwrap();
    let checks = diesel::sql_query("PRAGMA integrity_check").load::<Check>(&mut conn).unwrap();
    let report = checks.into_iter().map(|c| c.integrity_check).collect::<Vec<_>>().join("; ");
    let dangling =
        diesel::sql_query("SELECT COUNT(*) AS n FROM pragma_foreign_key_check").get_result::<N>(&mut conn).unwrap().n;
    (report, dangling)
}

fn expire_all_tokens(db_path: &Path) {
    let mut conn = SqliteConnection::establish(&db_path.to_string_lossy()).unwrap();
    diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).unwrap();
    diesel::sql_query("UPDATE connections SET expires_at = 0").execute(&mut conn).unwrap();
}

/// The refresh tokens the fake received in refresh calls.
async fn refresh_tokens_sent(fake: &FakeProvider) -> Vec<String> {
    let mut sent = Vec::new();
    for r in fake.requests_to("/token").await {
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&r.body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) == Some("refresh_token") {
            sent.push(form.get("refresh_token").cloned().unwrap_or_default());
        }
    }
    sent
}

/// Check what every user's connection holds after a kill, and classify it.
async fn check_after_kill(env: &Env, users: &[User]) -> Vec<Held> {
    let (report, dangling) = integrity(&env.db_path);
    assert_eq!(report, "ok", "PRAGMA integrity_check");
    assert_eq!(dangling, 0, "PRAGMA foreign_key_check");
    let sent = refresh_tokens_sent(&env.fake).await;
    let mut conn = env.db.conn().unwrap();
    let mut held = Vec::new();
    for user in users {
        let row = tokenvault::db::models::users::find_by_username(&mut conn, &user.name).unwrap().unwrap();
        let c = tokenvault::db::models::connections::find(&mut conn, row.id, "fake")
            .unwrap()
            .unwrap_or_else(|| panic!("{}: the connection is gone", user.name));
        assert_eq!(c.status.as_str(), "active", "{}: nothing provoked invalid_grant before the kill", user.name);
        let (access, refresh) = tokenvault::oauth::store::open_tokens(&env.cipher, &c)
            .unwrap_or_else(|e| panic!("{}: the stored tokens do not decrypt: {e}", user.name));
        let (access, refresh) =
            (access.expose_secret().to_string(), refresh.expect("a refresh token").expose_secret().to_string());
        assert_eq!(pair_number(&access), pair_number(&refresh), "{}: a mixed pair {access} / {refresh}", user.name);
        assert!(env.fake.access_token_valid(&access), "{}: the stored access token is dead", user.name);
        if env.fake.refresh_token_valid(&refresh) {
            held.push(Held::Live);
        } else {
            assert!(
                sent.contains(&refresh),
                "{}: a dead refresh token that no refresh used: {refresh} (a lost write?)",
                user.name
            );
            held.push(Held::LostRotation);
        }
    }
    held
}

/// Wait until the fake has received no new token request for 300 ms (at most 5 s).
async fn settle(fake: &FakeProvider) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = fake.token_calls().await;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fake.token_calls().await;
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Every request loop's statuses until the server went away.
type StormResult = Vec<StatusCode>;

fn storm(base: &str, users: &[User]) -> Vec<tokio::task::JoinHandle<StormResult>> {
    let mut tasks = Vec::new();
    for user in users {
        for _ in 0..LOOPS_PER_USER {
            let http = user.http.clone();
            let url = format!("{base}/services/fake/account");
            tasks.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                // Bounded: the kill ends it long before.
                for _ in 0..500 {
                    match http.get(&url).send().await {
                        Ok(res) => {
                            let status = res.status();
                            match res.text().await {
                                Ok(_) => statuses.push(status),
                                Err(_) => break,
                            }
                        }
                        Err(_) => break,
                    }
                }
                statuses
            }));
        }
    }
    tasks
}

/// When to kill the server, counted from the start of a storm.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Right after the provider received the `n`-th refresh of this storm (its answer is delayed).
    RefreshInFlight(usize),
    /// After a fixed time.
    After(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_refresh_storm_leaves_a_consistent_database() {
    let started = Instant::now();
    let fake = FakeProvider::start().await;
    // Strict rotation with family revocation on reuse (the fake's default), slow refresh answers
    // and tokens that need a refresh about every second (the binary runs with a 1 s margin).
    fake.with_state(|s| {
        s.expires_in = Some(json!(2));
        s.refresh_delay = Some(Duration::from_millis(200));
    });
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("tokenvault.sqlite");
    let db = tokenvault::db::Db::open(&db_path.to_string_lossy()).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(VAULT_KEY, &[]).unwrap();
    {
        let mut conn = db.conn().unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_id", common::CLIENT_ID, "test").unwrap();
        tokenvault::vault::store::set(&mut conn, &cipher, "fake.client_secret", common::CLIENT_SECRET, "test").unwrap();
    }
    let env = Env { dir, db_path, fake, db, cipher };
    let mut server = start(&env).await;
    let base = server.base.clone();
    let mut users = Vec::new();
    for i in 0..USERS {
        let user = User::sign_up(&base, &format!("user{i}")).await;
        user.connect(&base, &env.fake).await;
        users.push(user);
    }
    println!("setup: {:?}", started.elapsed());

    let kills =
        [KillAt::RefreshInFlight(1), KillAt::After(Duration::from_millis(600)), KillAt::RefreshInFlight(USERS + 2)];
    let mut totals = (0, 0);
    let mut base = base;
    for (round, kill_at) in kills.into_iter().enumerate() {
        let round_started = Instant::now();
        expire_all_tokens(&env.db_path);
        let refreshes_before = env.fake.refresh_calls().await;
        let tasks = storm(&base, &users);
        let storm_started = Instant::now();
        match kill_at {
            KillAt::RefreshInFlight(n) => loop {
                if env.fake.refresh_calls().await >= refreshes_before + n {
                    break;
                }
                assert!(
                    storm_started.elapsed() < Duration::from_secs(10),
                    "round {round}: no refresh reached the fake"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            },
            KillAt::After(d) => tokio::time::sleep(d).await,
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        let killed_after = storm_started.elapsed();
        let mut answered = Vec::new();
        for t in tasks {
            answered.extend(t.await.unwrap());
        }
        assert!(
            answered.iter().all(|s| *s == StatusCode::OK),
            "round {round}: every account page answered before the kill was the account: {answered:?}\n{}",
            log_tail(&server)
        );
        // Let the fake finish with requests that were already on their way when the app died.
        settle(&env.fake).await;
        let held = check_after_kill(&env, &users).await;
        let lost = held.iter().filter(|h| **h == Held::LostRotation).count();
        totals = (totals.0 + held.len() - lost, totals.1 + lost);

        // Restart on the same database (on another free port: the users' cookies are per host).
        server = start(&env).await;
        base = server.base.clone();
        let base = base.as_str();
        let (report, _) = integrity(&env.db_path);
        assert_eq!(report, "ok", "round {round}: integrity after the restart");
        // First the connections with a live refresh token (before any replay makes the fake revoke
        // every family it issued), then the lost rotations.
        for wanted in [Held::Live, Held::LostRotation] {
            let pages = futures_util::future::join_all(users.iter().zip(&held).filter(|(_, h)| **h == wanted).map(
                |(u, _)| async move {
                    let t = Instant::now();
                    (u, u.account_page(base).await, t.elapsed())
                },
            ))
            .await;
            for (user, (status, text), took) in pages {
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "round {round}: {} ({wanted:?}) after the restart: {text}",
                    user.name
                );
                assert!(took < Duration::from_secs(HTTP_TIMEOUT + 6), "{}: {took:?}", user.name);
                match wanted {
                    Held::Live => assert!(text.contains("fake-user-1"), "round {round}: {}: {text}", user.name),
                    Held::LostRotation => {
                        assert!(text.contains(r#"id="reconnect""#), "round {round}: {}: {text}", user.name)
                    }
                }
            }
        }
        // Everyone connects again (the replays revoked every family at the fake) and works.
        for user in &users {
            user.connect(base, &env.fake).await;
            let (status, text) = user.account_page(base).await;
            assert!(status == StatusCode::OK && text.contains("fake-user-1"), "round {round}: {}: {text}", user.name);
        }
        println!(
            "round {round}: kill {kill_at:?} after {killed_after:?}, {} account pages answered before it; \
             live {} / lost rotation {lost}; round took {:?}",
            answered.len(),
            held.len() - lost,
            round_started.elapsed()
        );
    }
    println!(
        "{} live, {} lost rotations over {} kills; total {:?}",
        totals.0,
        totals.1,
        kills.len(),
        started.elapsed()
    );
    assert!(totals.1 >= 1, "at least one kill fell inside a refresh");
    let (report, dangling) = integrity(&env.db_path);
    assert_eq!((report.as_str(), dangling), ("ok", 0));
}

//! The audit log: what the app records, that no secret lands in it, the CLI's verify and tail,
//! and two writers on one PostgreSQL never forking the chain.

mod common;

use common::cli::{text, tokenvault};
use common::{TestApp, PASSWORD};
use rocket::http::{Header, Status};

const VAULT_KEY: &str = "dGVzdC12YXVsdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=";

async fn api_key(agent: &common::Agent<'_>, name: &str) -> String {
    let csrf = agent.csrf("/settings/api-keys").await;
    let r = agent.post_form("/settings/api-keys", &[("csrf_token", &csrf), ("name", name)]).await;
    assert_eq!(r.status, Status::Ok, "{}", r.text);
    let re = regex::Regex::new(r#"<code id="new-api-key">(tvk_[A-Za-z0-9_-]+)</code>"#).unwrap();
    re.captures(&r.text).expect("the new key is shown once")[1].to_string()
}

/// Every audit row as one text (kind|user|actor|service|address|detail lines).
fn rows(app: &TestApp) -> Vec<String> {
    let n = app.count("SELECT COUNT(*) AS n FROM audit_log");
    (1..=n)
        .map(|id| {
            app.text(&format!(
                "SELECT kind || '|' || COALESCE(CAST(user_id AS TEXT), '-') || '|' || actor || '|' || \
                 COALESCE(service, '-') || '|' || COALESCE(address, '-') || '|' || detail AS t \
                 FROM audit_log WHERE id = {id}"
            ))
        })
        .collect()
}

#[tokio::test]
async fn sign_ins_token_reads_proxy_calls_and_vault_changes_are_recorded_without_secrets() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    // A failed sign-in, then a successful one, from a fresh browser.
    let other = app.agent();
    let csrf = other.csrf("/login").await;
    let r = other
        .post_form("/login", &[("csrf_token", &csrf), ("username", "alice"), ("password", "wrong password")])
        .await;
    assert_eq!(r.status, Status::Unauthorized);
    let csrf = other.csrf("/login").await;
    let r = other.post_form("/login", &[("csrf_token", &csrf), ("username", "alice"), ("password", PASSWORD)]).await;
    assert_eq!(r.status, Status::SeeOther);

    alice.connect("fake").await;
    let key = api_key(&alice, "a").await;
    let res = app
        .client
        .get("/api/v1/services/fake/token")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    let res = app
        .client
        .post("/api/v1/services/fake/proxy/files/12345")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .body("{}")
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Created);
    app.state().audit.flush().await;

    let all = rows(&app);
    let text = all.join("\n");
    let has = |prefix: &str| all.iter().any(|r| r.starts_with(prefix));
    assert!(has("signin.failure|1|system|-|"), "{text}");
    assert!(has("signin.success|1|user:1|-|"), "{text}");
    assert!(has("token.read|1|key:"), "{text}");
    assert!(all.iter().any(|r| r.starts_with("token.read|1|key:") && r.contains("|fake|") && r.contains("key_id")));
    assert!(
        all.iter().any(|r| r.starts_with("proxy.call|1|key:")
            && r.contains("\"method\":\"POST\"")
            && r.contains("\"path\":\"/files/*\"")
            && r.contains("\"status\":201")),
        "{text}"
    );
    // No token, key, password or username in any row.
    let (access, refresh) = app.stored_tokens("alice", "fake").unwrap();
    for secret in [access.as_str(), refresh.as_deref().unwrap_or("CANARY"), key.as_str(), PASSWORD, "wrong password"] {
        assert!(!text.contains(secret), "a secret in the audit log");
    }
    assert!(!text.contains("alice"), "usernames only as keyed hashes");
    assert!(text.contains("username_hash"));

    // The admin's vault change (alice is the debug profile's first user, so the admin).
    let csrf = alice.csrf("/admin/vault").await;
    let r = alice
        .post_form(
            "/admin/vault",
            &[("csrf_token", &csrf), ("path", "other.client_secret"), ("value", "CS-AUDIT-CANARY")],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    let all = rows(&app);
    assert!(all.iter().any(|r| r.starts_with("vault.set|1|user:1|") && r.contains("other.client_secret")));
    assert!(!all.join("\n").contains("CS-AUDIT-CANARY"));
    let mut conn = app.db.conn().unwrap();
    let n = tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().expect("intact");
    assert_eq!(n as usize, all.len());
}

#[test]
fn cli_verify_names_the_tampered_entry_and_tail_prints_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ROCKET_VAULT_KEY", VAULT_KEY)];
    for (path, value) in [("a.client_id", "1"), ("b.client_id", "2"), ("c.client_id", "3"), ("d.client_id", "4")] {
        let out = tokenvault(dir.path(), &["vault", "set", path, value], &env, None);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = tokenvault(dir.path(), &["audit", "verify"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("intact: 4 entries"), "{}", text(&out));

    let out = tokenvault(dir.path(), &["audit", "tail", "-n", "3", "--json"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["kind"], "vault.set");
        assert_eq!(v["actor"], "cli");
    }

    let db = tokenvault::db::Db::open(&dir.path().join("cli.sqlite").to_string_lossy()).unwrap();
    {
        use diesel::RunQueryDsl;
        let mut conn = db.conn().unwrap();
        tokenvault::on_conn!(&mut conn, c => diesel::sql_query(
            "UPDATE audit_log SET detail = '{\"path\":\"z.client_id\"}' WHERE id = 3").execute(c))
        .unwrap();
    }
    let out = tokenvault(dir.path(), &["audit", "verify"], &env, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("entry 3"), "{}", text(&out));
}

/// Two instances (two pools, two threads) appending at once on one PostgreSQL: one chain.
#[test]
fn two_writers_on_postgres_never_fork_the_chain() {
    let Ok(admin) = std::env::var("TOKENVAULT_TEST_POSTGRES_URL") else {
        eprintln!("skipped: TOKENVAULT_TEST_POSTGRES_URL is not set");
        return;
    };
    if admin.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let cipher = std::sync::Arc::new(tokenvault::vault::Cipher::from_base64(VAULT_KEY, &[]).unwrap());
    let dbs: Vec<_> = (0..2).map(|_| tokenvault::db::Db::open(&database.url).unwrap()).collect();
    let threads: Vec<_> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            let (db, cipher) = (db.clone(), cipher.clone());
            std::thread::spawn(move || {
                use tokenvault::audit::{append, Actor, Entry, Kind};
                let mut conn = db.conn().unwrap();
                for n in 0..200 {
                    let e = Entry::new(Kind::TokenRead, Actor::Key(i as i64)).with("n", n);
                    append(&mut conn, &cipher, &[e]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut conn = dbs[0].conn().unwrap();
    assert_eq!(tokenvault::audit::verify(&mut conn, &cipher).unwrap(), Ok(400));
}

#[tokio::test]
async fn connections_api_keys_pages_and_filters() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await; // the debug profile's first user: the administrator
    let bob = app.user("bob").await;
    bob.connect("fake").await;
    let (bob_access, _) = app.stored_tokens("bob", "fake").unwrap();
    let key = api_key(&bob, "b").await;
    let res = app
        .client
        .get("/api/v1/services/fake/token")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    bob.connect("fake").await;
    let csrf = bob.csrf("/settings/oauth2").await;
    let r = bob.post_form("/settings/oauth2/fake/delete", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    app.state().audit.flush().await;

    let all = rows(&app);
    let text = all.join("\n");
    for kind in [
        "user.added|2|",
        "connection.created|2|user:2|fake|",
        "connection.reconnected|2|user:2|fake|",
        "connection.deleted|2|user:2|fake|",
        "api_key.created|2|user:2|",
        "token.read|2|key:",
    ] {
        assert!(all.iter().any(|r| r.starts_with(kind)), "{kind} missing in\n{text}");
    }
    assert!(!text.contains(&bob_access) && !text.contains(&key));

    // Bob sees his own entries only; alice's sign-up is not among them.
    let page = bob.fetch("/settings/activity").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains(r#"data-kind="token.read""#));
    let alice_added = app.count("SELECT id AS n FROM audit_log WHERE kind = 'user.added' AND user_id = 1");
    assert!(!page.text.contains(&format!(r#"data-audit-id="{alice_added}""#)), "another user's entry shown");
    assert!(!page.text.contains(&bob_access) && !page.text.contains(&key));

    // The admin page: administrators only, filters narrow it.
    let r = bob.fetch("/admin/audit").await;
    assert!(r.status == Status::Forbidden || r.status == Status::SeeOther, "{:?}", r.status);
    let r = alice.fetch("/admin/audit").await;
    assert_eq!(r.status, Status::Ok);
    assert!(r.text.contains(r#"data-kind="connection.deleted""#) && !r.text.contains(&bob_access));
    let r = alice.fetch("/admin/audit?kind=token.read&user=bob&service=fake").await;
    assert!(r.text.contains(r#"data-kind="token.read""#));
    assert!(!r.text.contains(r#"data-kind="connection.created""#));
    let r = alice.fetch("/admin/audit?user=alice").await;
    assert!(!r.text.contains(r#"data-kind="token.read""#));
    let r = alice.fetch("/admin/audit?from=2000-01-01&to=2000-01-02").await;
    assert!(r.text.contains(r#"id="audit-empty""#));
    let mut conn = app.db.conn().unwrap();
    assert!(tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().is_ok());
}

/// Sign-in attempts refused before any work (throttled, an impossible username) are audited
/// through the bounded batcher, at most `REFUSALS_PER_SECOND` a second: a flood leaves a few
/// entries saying how many were left out, not one row per request. `/metrics` counts what the
/// batcher could not write.
#[tokio::test]
async fn refused_sign_ins_are_audited_without_a_row_per_request_of_a_flood() {
    use tokenvault::audit::batcher::REFUSALS_PER_SECOND;
    let app = common::builder().set("login_limit_per_account", 2).start().await;
    app.user("alice").await;
    let other = app.agent();
    let csrf = other.csrf("/login").await;
    let attempt = |name: String| {
        let (other, csrf) = (&other, csrf.clone());
        async move {
            other
                .post_form("/login", &[("csrf_token", &csrf), ("username", &name), ("password", "wrong password")])
                .await
        }
    };
    let long = attempt("x".repeat(300)).await;
    assert_eq!(long.status, Status::UnprocessableEntity);
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..60 {
        if attempt("alice".into()).await.status == Status::TooManyRequests {
            refused += 1;
        }
    }
    let seconds = started.elapsed().as_secs() + 1;
    assert!(refused >= 50, "the account throttle refused the flood ({refused})");
    // The flood stops: once its last second is over, the flusher records what it left out.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    app.state().audit.flush().await;

    let all = rows(&app);
    let throttled: Vec<&String> = all
        .iter()
        .filter(|r| r.contains("\"refused\":\"throttled\"") || r.contains("\"refused\":\"suppressed\""))
        .collect();
    assert!(!throttled.is_empty(), "{all:?}");
    assert!(
        throttled.len() as u64 <= u64::from(REFUSALS_PER_SECOND) * (seconds + 1),
        "{} entries in {seconds} s",
        throttled.len()
    );
    let details: Vec<serde_json::Value> =
        throttled.iter().map(|r| serde_json::from_str(r.rsplit('|').next().unwrap()).unwrap()).collect();
    let suppressed: u64 = details.iter().filter_map(|d| d["suppressed_before"].as_u64()).sum();
    // Identical ones of a batch are one entry with their count; a summary is no refusal itself.
    let recorded: u64 =
        details.iter().filter(|d| d["refused"] == "throttled").map(|d| d["count"].as_u64().unwrap_or(1)).sum();
    // Every refusal is recorded or counted in the next one recorded.
    assert_eq!(recorded + suppressed, refused as u64, "{throttled:?}");
    if seconds <= 4 {
        assert!(suppressed > 0 && (recorded as usize) < refused / 2, "a flood records few: {recorded}");
    }
    assert!(all.iter().any(|r| r.starts_with("signin.failure|-|system|") && r.contains("username_too_long")));
    assert!(!all.join("\n").contains("alice") && !all.join("\n").contains("xxxxxxxx"), "no username in the log");
    let mut conn = app.db.conn().unwrap();
    assert!(tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().is_ok());

    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    for line in [
        "tokenvault_audit_entries_lost_total{reason=\"queue_full\"} 0",
        "tokenvault_audit_entries_lost_total{reason=\"write_failed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 19, item 5: security events that used to leave no trace.

/// The rows of one kind, as `rows` gives them.
fn of_kind(app: &TestApp, kind: &str) -> Vec<String> {
    rows(app).into_iter().filter(|r| r.starts_with(&format!("{kind}|"))).collect()
}

/// The JSON detail of a row of `rows`.
fn detail(row: &str) -> serde_json::Value {
    serde_json::from_str(row.rsplit('|').next().unwrap()).unwrap()
}

async fn sign_in(agent: &common::Agent<'_>, username: &str, password: &str) {
    let csrf = agent.csrf("/login").await;
    let r = agent.post_form("/login", &[("csrf_token", &csrf), ("username", username), ("password", password)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
}

fn key_id(app: &TestApp, key: &str) -> i64 {
    app.count(&format!("SELECT id AS n FROM api_keys WHERE prefix = '{}'", &key[..12]))
}

#[tokio::test]
async fn a_password_change_records_itself_every_key_it_revoked_and_the_sessions_it_ended() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let laptop = app.agent();
    sign_in(&laptop, "alice", PASSWORD).await;
    let (first, second) = (api_key(&alice, "one").await, api_key(&alice, "two").await);
    let ids = [key_id(&app, &first), key_id(&app, &second)];

    let csrf = alice.csrf("/settings/password").await;
    let new = "a brand new passphrase";
    let r = alice
        .post_form(
            "/settings/password",
            &[
                ("csrf_token", &csrf),
                ("current_password", PASSWORD),
                ("new_password", new),
                ("new_password_confirm", new),
            ],
        )
        .await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);

    let text = rows(&app).join("\n");
    let changed = of_kind(&app, "password.changed");
    assert_eq!(changed.len(), 1, "{text}");
    assert!(changed[0].starts_with("password.changed|1|user:1|"), "{text}");
    assert_eq!(detail(&changed[0])["api_keys_revoked"], 2, "{text}");
    assert_eq!(detail(&changed[0])["sessions_ended"], 2, "{text}");
    let revoked = of_kind(&app, "api_key.revoked");
    assert_eq!(revoked.len(), 2, "one entry per key: {text}");
    for (row, id) in revoked.iter().zip(ids) {
        assert!(row.starts_with("api_key.revoked|1|user:1|"), "{row}");
        assert_eq!(detail(row)["key_id"], id, "{row}");
        assert_eq!(detail(row)["reason"], "password_changed", "{row}");
    }
    let ended = of_kind(&app, "session.end");
    assert_eq!(ended.len(), 1, "{text}");
    assert_eq!(detail(&ended[0])["reason"], "password_changed");
    assert_eq!(detail(&ended[0])["count"], 2, "alice's two browsers");
    assert!(!text.contains(new) && !text.contains(PASSWORD) && !text.contains(&first) && !text.contains(&second));
    let mut conn = app.db.conn().unwrap();
    assert!(tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().is_ok());
}

/// The public ids of the `tr[data-session]` rows of the sessions page, and whether each is this
/// browser's.
fn sessions_of(page: &str) -> Vec<(String, bool)> {
    let re = regex::Regex::new(r#"<tr data-session="([^"]+)" data-current="(true|false)">"#).unwrap();
    re.captures_iter(page).map(|c| (c[1].to_string(), &c[2] == "true")).collect()
}

#[tokio::test]
async fn sessions_ended_from_my_settings_are_recorded_one_or_all_others() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    let browsers = [app.agent(), app.agent(), app.agent()];
    for b in &browsers {
        sign_in(b, "alice", PASSWORD).await;
    }
    let page = alice.fetch("/settings/sessions").await;
    let (one, _) = sessions_of(&page.text).into_iter().find(|(_, current)| !current).expect("another session");
    let csrf = common::csrf_from(&page.text);
    let r = alice.post_form(&format!("/settings/sessions/{one}/end"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    let ended = of_kind(&app, "session.end");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(ended[0].starts_with("session.end|1|user:1|"), "{}", ended[0]);
    let d = detail(&ended[0]);
    assert_eq!(
        (d["reason"].as_str(), d["session"].as_str(), d["count"].as_i64()),
        (Some("ended_from_settings"), Some(one.as_str()), Some(1))
    );

    let csrf = alice.csrf("/settings/sessions").await;
    let r = alice.post_form("/settings/sessions/end-others", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    let ended = of_kind(&app, "session.end");
    assert_eq!(ended.len(), 2, "{ended:?}");
    let d = detail(&ended[1]);
    assert_eq!(
        (d["reason"].as_str(), d["scope"].as_str(), d["count"].as_i64()),
        (Some("ended_from_settings"), Some("others"), Some(2))
    );
    // Nothing left to end: nothing recorded.
    let csrf = alice.csrf("/settings/sessions").await;
    alice.post_form("/settings/sessions/end-others", &[("csrf_token", &csrf)]).await;
    assert_eq!(of_kind(&app, "session.end").len(), 2);
}

#[tokio::test]
async fn a_key_revoked_by_the_per_user_limit_is_recorded() {
    let app = common::builder().set("max_api_keys_per_user", 2).start().await;
    let alice = app.user("alice").await;
    let oldest = api_key(&alice, "one").await;
    let oldest_id = key_id(&app, &oldest);
    api_key(&alice, "two").await;
    assert!(of_kind(&app, "api_key.revoked").is_empty());
    api_key(&alice, "three").await;
    let revoked = of_kind(&app, "api_key.revoked");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert!(revoked[0].starts_with("api_key.revoked|1|user:1|"), "{}", revoked[0]);
    let d = detail(&revoked[0]);
    assert_eq!((d["key_id"].as_i64(), d["reason"].as_str()), (Some(oldest_id), Some("over_limit")));
    assert_eq!(of_kind(&app, "api_key.created").len(), 3);
}

#[test]
fn a_key_created_with_the_cli_is_recorded_with_actor_cli() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ROCKET_VAULT_KEY", VAULT_KEY), ("ROCKET_MAX_API_KEYS_PER_USER", "1")];
    let out = tokenvault(dir.path(), &["user", "add", "erin"], &env, Some("a long cli password\n"));
    assert!(out.status.success(), "{}", text(&out));
    for name in ["first", "second"] {
        let out = tokenvault(dir.path(), &["api-key", "create", "erin", name], &env, None);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = tokenvault(dir.path(), &["audit", "tail", "-n", "10", "--json"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
    let entries: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| entries.iter().filter(|e| e["kind"] == kind).cloned().collect::<Vec<_>>();
    let created = of("api_key.created");
    assert_eq!(created.len(), 2, "{entries:#?}");
    assert!(created.iter().all(|e| e["actor"] == "cli" && e["user_id"] == 1), "{created:#?}");
    let revoked = of("api_key.revoked");
    assert_eq!(revoked.len(), 1, "the first key, over the limit of 1: {entries:#?}");
    assert_eq!(revoked[0]["actor"], "cli");
    let d: serde_json::Value = serde_json::from_str(revoked[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(d["reason"], "over_limit");
    let out = tokenvault(dir.path(), &["audit", "verify"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
}

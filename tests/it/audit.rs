//! The audit log: what the app records, that no secret lands in it, the CLI's verify and tail,
//! and two writers on one PostgreSQL never forking the chain.

use crate::common;

use crate::common::cli::{text, tokenvault};
use crate::common::{TestApp, PASSWORD, VAULT_KEY};
use rocket::http::{Header, Status};

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
    let key = alice.api_key("a").await;
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
    let key = bob.api_key("b").await;
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

// ---- Issue 19: the audit log under an attacker with write access to the database ----

/// Run SQL as an attacker with write access to the database would (no vault key).
fn attack(db: &tokenvault::db::Db, sql: &str) {
    use diesel::connection::SimpleConnection;
    let mut conn = db.conn().unwrap();
    tokenvault::on_conn!(&mut conn, c => c.batch_execute(sql)).unwrap();
}

fn vault_cipher() -> tokenvault::vault::Cipher {
    tokenvault::vault::Cipher::from_base64(VAULT_KEY, &[]).unwrap()
}

/// The head row as the migration leaves it.
const RESET_HEAD: &str = "UPDATE audit_head SET seq = 0, \
    hash = '0000000000000000000000000000000000000000000000000000000000000000', anchor_id = 0, \
    anchor_hash = '0000000000000000000000000000000000000000000000000000000000000000', mac = NULL";

/// The CLI on `database` (SQLite file or PostgreSQL), with more environment.
fn cli(dir: &std::path::Path, database: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut all = vec![("ROCKET_VAULT_KEY", VAULT_KEY), ("ROCKET_DATABASE_URL", database)];
    all.extend_from_slice(env);
    tokenvault(dir, args, &all, None)
}

/// `n` audit entries appended through the library, as the server would.
fn append_entries(db: &tokenvault::db::Db, n: usize, at: i64) {
    use tokenvault::audit::{Actor, Entry, Kind};
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry { at, ..Entry::new(Kind::TokenRead, Actor::Key(1)).user(1).with("n", i as i64) })
        .collect();
    tokenvault::audit::append(&mut db.conn().unwrap(), &vault_cipher(), &entries).unwrap();
}

/// Issue 19, item 1 (SQLite and PostgreSQL): a minutes-old entry's `at` set to 1970, then a
/// server start (whose retention prune runs at once): nothing is removed, nothing re-anchored,
/// and verify names the entry. An old entry changed by hand makes the prune refuse, log an error
/// and count it in `/metrics`, and leave every row.
#[tokio::test]
async fn a_moved_at_does_not_let_the_prune_at_start_remove_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cipher = vault_cipher();
    // The issue's scenario: every entry minutes old, one moved to 1970.
    let database = common::TestDatabase::new(dir.path());
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    append_entries(&db, 10, tokenvault::util::now() - 300);
    attack(&db, "UPDATE audit_log SET at = 0 WHERE id = 8");
    let app = common::builder().set("database_url", database.url.clone()).set("audit_retention_days", 30).start().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut conn = db.conn().unwrap();
    assert_eq!(tokenvault::audit::prune(&mut conn, &cipher, 30, tokenvault::util::now()).unwrap(), Ok(0));
    let count = |conn: &mut tokenvault::db::Conn| tokenvault::db::models::audit::count(conn).unwrap();
    assert_eq!(count(&mut conn), 10, "nothing removed");
    assert_eq!(tokenvault::db::models::audit::head(&mut conn).unwrap().anchor_id, 0, "not re-anchored");
    assert_eq!(tokenvault::audit::verify(&mut conn, &cipher).unwrap(), Err(tokenvault::audit::Broken::Changed(8)));
    drop(app);

    // Old entries, one of them changed: the prune refuses — counted, nothing removed.
    let database = common::TestDatabase::new(dir.path().join("second").as_path());
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    append_entries(&db, 6, tokenvault::util::now() - 40 * 86_400);
    append_entries(&db, 2, tokenvault::util::now());
    attack(&db, "UPDATE audit_log SET at = 0 WHERE id = 3");
    let app = common::builder().set("database_url", database.url.clone()).set("audit_retention_days", 30).start().await;
    let started = std::time::Instant::now();
    let metrics = loop {
        let text = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
        if text.contains("tokenvault_audit_prune_refused_total 1") || started.elapsed().as_secs() > 10 {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("tokenvault_audit_prune_refused_total 1"), "{metrics}");
    let mut conn = db.conn().unwrap();
    assert_eq!(count(&mut conn), 8, "nothing removed");
    assert_eq!(tokenvault::audit::verify(&mut conn, &cipher).unwrap(), Err(tokenvault::audit::Broken::Changed(3)));
}

/// Issue 19, item 2 (SQLite and PostgreSQL): every row, the chain key and the head reset to the
/// migration's values in a database with users: `audit verify` fails, the server does not start
/// (it would have to begin a new chain), commands that record refuse; `audit restart` archives
/// what is left and starts a new log after it.
#[tokio::test]
async fn a_wiped_log_fails_verification_and_is_never_started_again_silently() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    // A database in use: the log started by the CLI, a user, entries.
    for path in ["a.client_id", "b.client_id"] {
        let out = cli(dir.path(), &database.url, &["vault", "set", path, "1"], &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    attack(&db, "INSERT INTO users (username, password_hash, is_admin, created_at, password_changed_at) VALUES ('alice', 'x', TRUE, 0, 0)");
    let out = cli(dir.path(), &database.url, &["audit", "verify"], &[]);
    assert!(text(&out).contains("intact: 2 entries"), "{}", text(&out));

    // The attacker.
    attack(&db, "DELETE FROM audit_log; DELETE FROM meta WHERE name = 'audit_chain_key';");
    attack(&db, RESET_HEAD);

    let out = cli(dir.path(), &database.url, &["audit", "verify"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not an authenticated genesis"), "{}", text(&out));
    let out = cli(dir.path(), &database.url, &["vault", "set", "c.client_id", "1"], &[]);
    assert!(!out.status.success() && text(&out).contains("audit restart"), "{}", text(&out));
    let figment = rocket::figment::Figment::from(rocket::Config::debug_default())
        .merge(("secret_key", common::SECRET_KEY))
        .merge(("database_url", database.url.clone()))
        .merge(("data_dir", dir.path().to_string_lossy().to_string()))
        .merge(("vault_key", VAULT_KEY))
        .select("debug");
    let rocket = tokenvault::app::build(figment.clone()).unwrap();
    match rocket::local::asynchronous::Client::untracked(rocket).await {
        // (Rocket's error must be looked at, or its drop panics.)
        Err(e) => assert!(matches!(e.kind(), rocket::error::ErrorKind::FailedFairings(_)), "{e}"),
        Ok(_) => panic!("the server must refuse to start on a wiped log"),
    }
    let mut conn = db.conn().unwrap();
    assert_eq!(tokenvault::db::models::audit::count(&mut conn).unwrap(), 0, "no new chain was begun");
    assert_eq!(
        tokenvault::audit::verify(&mut conn, &vault_cipher()).unwrap(),
        Err(tokenvault::audit::Broken::NotStarted)
    );

    // The operator's way out: archive and restart, recorded in the new log.
    let archive = dir.path().join("archive.jsonl");
    let archive_arg = archive.to_string_lossy().to_string();
    let args = ["audit", "restart", "--archive", archive_arg.as_str(), "--reason", "wiped, see incident 7"];
    let out = cli(dir.path(), &database.url, &args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let out = cli(dir.path(), &database.url, &["audit", "verify"], &[]);
    assert!(out.status.success() && text(&out).contains("intact: 1 entries"), "{}", text(&out));
    let out = cli(dir.path(), &database.url, &["audit", "tail", "--json"], &[]);
    assert!(text(&out).contains("audit.restarted") && text(&out).contains("incident 7"), "{}", text(&out));
    let rocket = tokenvault::app::build(figment).unwrap();
    assert!(rocket::local::asynchronous::Client::untracked(rocket).await.is_ok(), "and the server starts again");
}

/// Issue 19, item 3 (SQLite and PostgreSQL): an earlier genuine head put back and the entries
/// after it deleted verifies as intact — the database alone cannot tell — but not against a
/// checkpoint taken before: `--checkpoint` and `--checkpoint-file` fail, saying the log ends
/// before it. A forged checkpoint line is reported as such.
#[test]
fn a_rolled_back_head_and_cut_tail_are_caught_by_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let file = dir.path().join("checkpoints.jsonl");
    let file_arg = file.to_string_lossy().to_string();
    let env = [("ROCKET_AUDIT_CHECKPOINT_FILE", file_arg.as_str())];
    let set = |path: &str| {
        let out = cli(dir.path(), &database.url, &["vault", "set", path, "1"], &env);
        assert!(out.status.success(), "{}", text(&out));
    };
    for i in 0..6 {
        set(&format!("p{i}.client_id"));
    }
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    let saved = tokenvault::db::models::audit::head(&mut db.conn().unwrap()).unwrap();
    assert_eq!(saved.seq, 6);
    for i in 6..10 {
        set(&format!("p{i}.client_id"));
    }
    let out = cli(dir.path(), &database.url, &["audit", "checkpoint"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let checkpoint = tokenvault::audit::checkpoint::Checkpoint::parse(&line).unwrap();
    assert_eq!(checkpoint.seq, 10);
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit checkpoint"), "the app log line");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), line, "appended to the file");
    assert!(!line.contains(VAULT_KEY));

    // The attacker: entries 7-10 deleted, the genuine head of entry 6 put back.
    attack(&db, "DELETE FROM audit_log WHERE id > 6");
    tokenvault::db::models::audit::set_head(&mut db.conn().unwrap(), &saved).unwrap();
    let out = cli(dir.path(), &database.url, &["audit", "verify"], &[]);
    assert!(out.status.success() && text(&out).contains("intact: 6 entries"), "{}", text(&out));

    let out = cli(dir.path(), &database.url, &["audit", "verify", "--checkpoint-file", &file_arg], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("FAILED") && text(&out).contains("ends at entry 6"), "{}", text(&out));
    let out = cli(dir.path(), &database.url, &["audit", "verify", "--checkpoint", &checkpoint.short()], &[]);
    assert!(!out.status.success() && text(&out).contains("ends at entry 6"), "{}", text(&out));
    // A checkpoint of an entry that is still there holds.
    let six = format!("6:{}", saved.hash);
    let out = cli(dir.path(), &database.url, &["audit", "verify", "--checkpoint", &six], &[]);
    assert!(out.status.success(), "{}", text(&out));

    // A forged line (another seq under the same signature) is a finding of its own.
    let forged = tokenvault::audit::checkpoint::Checkpoint { seq: 6, hash: saved.hash.clone(), ..checkpoint };
    let forged_file = dir.path().join("forged.jsonl");
    std::fs::write(&forged_file, format!("{}\n", forged.line())).unwrap();
    let forged_arg = forged_file.to_string_lossy().to_string();
    let out = cli(dir.path(), &database.url, &["audit", "verify", "--checkpoint-file", &forged_arg], &[]);
    assert!(!out.status.success() && text(&out).contains("signature does not verify"), "{}", text(&out));
}

/// The server publishes a checkpoint at start-up: an `audit.checkpoint` webhook event (to an
/// endpoint that asks for it, signed, its `data` a checkpoint line whose signature verifies) and
/// a line in `audit_checkpoint_file`; an endpoint taking every event gets none.
#[tokio::test]
async fn the_server_publishes_a_checkpoint_at_start_up() {
    use crate::common::webhook_receiver::{secret, Receiver};
    use rocket::figment::value::{Dict, Value};
    let (audit_rx, all_rx) = (Receiver::start().await, Receiver::start().await);
    let (s1, s2) = (secret(), secret());
    let mut hooks = Dict::new();
    for (name, url, secret, events) in
        [("audit", audit_rx.url(), &s1, Some(vec!["audit.checkpoint"])), ("all", all_rx.url(), &s2, None)]
    {
        let mut t = Dict::new();
        t.insert("url".into(), url.into());
        t.insert("secret".into(), secret.clone().into());
        if let Some(events) = events {
            t.insert("events".into(), events.into());
        }
        hooks.insert(name.into(), t.into());
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints.jsonl");
    let app = common::builder()
        .set("webhooks", Value::from(hooks))
        .set("audit_checkpoint_file", file.to_string_lossy().to_string())
        .start()
        .await;
    let got = audit_rx.wait_for(1, std::time::Duration::from_secs(10)).await;
    let body = got[0].json();
    assert!(got[0].verifies(&s1));
    assert_eq!(body["type"], "audit.checkpoint");
    let data: tokenvault::audit::checkpoint::Checkpoint = serde_json::from_value(body["data"].clone()).unwrap();
    assert_eq!(data.authenticity(&app.cipher), tokenvault::audit::checkpoint::Authenticity::Valid);
    let head = tokenvault::db::models::audit::head(&mut app.state().db.conn().unwrap()).unwrap();
    assert_eq!((data.seq, data.hash.as_str()), (head.seq, head.hash.as_str()));
    let lines = tokenvault::audit::checkpoint::read_file(&file).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].1.as_ref().unwrap(), &data);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(all_rx.count(), 0, "checkpoints only go where they are asked for");
    let metrics = app.client.get("/metrics").dispatch().await.into_string().await.unwrap();
    assert!(metrics.contains("tokenvault_audit_checkpoints_total{result=\"published\"} 1"), "{metrics}");
}

/// A database made by main (4c91691) — these are the rows, head and sealed chain key its CLI
/// wrote for `vault set a|b|c.client_id 1` and `user add alice` — upgrades: the migration and the
/// first start keep its chain, `audit verify` passes before and after, and appending goes on
/// from it (SQLite and PostgreSQL).
#[test]
fn a_log_made_by_main_verifies_across_the_upgrade() {
    use tokenvault::db::models::audit::{self as rows, AuditRow, Head};
    const AT: i64 = 1_796_566_139;
    let main_rows: [(&str, Option<i64>, &str, &str); 4] = [
        (
            "vault.set",
            None,
            r#"{"path":"a.client_id"}"#,
            "e0b2b19ab2ceff5348d32b7b58cbb737e926570cdb725de4a0bc00b2beb400ef",
        ),
        (
            "vault.set",
            None,
            r#"{"path":"b.client_id"}"#,
            "e128ac086e5d86815e364b2c82142257baf8aa2cfda922eef4786c465fea983a",
        ),
        (
            "vault.set",
            None,
            r#"{"path":"c.client_id"}"#,
            "5739ce4122071d1341a0bfdc25198c8c34e7a4a284ab61a431b3fb9d94a5fb75",
        ),
        (
            "user.added",
            Some(1),
            r#"{"admin":true}"#,
            "9d9aa008e3431b1f45b30b29de26c1022c9f31d45cc7c0f11c8ad5e2c142d066",
        ),
    ];
    const HEAD_MAC: &str = "bd92cedae1f2820a96f0141a422e60245952f1fadd50eb4badb6b543f02dbb65";
    const SEALED_KEY: &str = "015F350EB19611B6A55714DF83A7A34723D80E25AF245FB5FFA9DFEEB6B63E9B0E2C4E137BB624316DB8EDFF9AA9E3270CFAD24284C1143AFE6F1EBA2CE0BF72533844057828249C73F93C40C8A4A91756D84F2BFC73BB1D23";

    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db = tokenvault::db::Db::open(&database.url).unwrap();
    let mut conn = db.conn().unwrap();
    let mut prev = tokenvault::audit::GENESIS.to_string();
    let mut stored = Vec::new();
    for (i, (kind, user_id, detail, hash)) in main_rows.iter().enumerate() {
        stored.push(AuditRow {
            id: i as i64 + 1,
            at: AT,
            kind: kind.to_string(),
            user_id: *user_id,
            actor: "cli".into(),
            service: None,
            connection_id: None,
            account: None,
            address: None,
            detail: detail.to_string(),
            prev_hash: prev.clone(),
            hash: hash.to_string(),
            at_last: None,
        });
        prev = hash.to_string();
    }
    rows::insert(&mut conn, &stored).unwrap();
    let head = Head {
        seq: 4,
        hash: prev.clone(),
        anchor_id: 0,
        anchor_hash: tokenvault::audit::GENESIS.into(),
        mac: Some(HEAD_MAC.into()),
    };
    rows::set_head(&mut conn, &head).unwrap();
    let sealed: Vec<u8> =
        (0..SEALED_KEY.len()).step_by(2).map(|i| u8::from_str_radix(&SEALED_KEY[i..i + 2], 16).unwrap()).collect();
    tokenvault::db::models::meta::set(&mut conn, "audit_chain_key", &sealed, AT).unwrap();
    attack(&db, "INSERT INTO users (username, password_hash, is_admin, created_at, password_changed_at) VALUES ('alice', 'x', TRUE, 0, 0)");
    drop(conn);

    let cipher = vault_cipher();
    assert_eq!(tokenvault::audit::verify(&mut db.conn().unwrap(), &cipher).unwrap(), Ok(4), "as main left it");
    let out = cli(dir.path(), &database.url, &["audit", "verify"], &[]);
    assert!(out.status.success() && text(&out).contains("intact: 4 entries"), "{}", text(&out));
    let out = cli(dir.path(), &database.url, &["vault", "set", "d.client_id", "1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let mut conn = db.conn().unwrap();
    assert_eq!(tokenvault::audit::verify(&mut conn, &cipher).unwrap(), Ok(5));
    assert_eq!(rows::find(&mut conn, 5).unwrap().unwrap().prev_hash, prev, "the chain goes on from main's");
}

/// Issue 19, item 4 (SQLite and PostgreSQL): one user's flood of long, distinct proxy paths
/// grows the audit log by a bounded amount per coalescing window: at most PATHS_PER_BATCH + 1
/// rows of at most MAX_ENTRY_BYTES a batch (the issue saw a 60 KB row per call).
#[tokio::test]
async fn a_flood_of_long_proxy_paths_is_bounded_per_batch() {
    use tokenvault::audit::{batcher::PATHS_PER_BATCH, MAX_ENTRY_BYTES};
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("flood").await;
    app.state().audit.flush().await;
    let batches_before = app.state().audit.batches_written();
    let calls = 300;
    let call = |i: usize| {
        // 20 KB of plain words, another first word each time: every template distinct.
        let first: String = (0..4).map(|k| char::from(b'a' + ((i / 26usize.pow(k)) % 26) as u8)).collect();
        let path = format!("{first}/{}", vec!["abcdefghijklmnopqrs"; 1000].join("/"));
        let req = app
            .client
            .get(format!("/api/v1/services/fake/proxy/{path}"))
            .header(Header::new("Authorization", format!("Bearer {key}")));
        async move { req.dispatch().await.status() }
    };
    // Fifty at a time, so that many land in one batch. (On a loaded machine some may time out
    // at the fake provider: another status, recorded all the same.)
    for chunk in (0..calls).collect::<Vec<_>>().chunks(50) {
        for status in futures_util::future::join_all(chunk.iter().map(|i| call(*i))).await {
            assert!(status != Status::Unauthorized && status != Status::Forbidden, "{status}");
        }
    }
    app.state().audit.flush().await;
    let batches = app.state().audit.batches_written() - batches_before;
    let rows = app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'proxy.call'");
    let bytes = app.count(
        "SELECT CAST(COALESCE(SUM(LENGTH(kind) + LENGTH(actor) + LENGTH(COALESCE(service, '')) + \
         LENGTH(COALESCE(address, '')) + LENGTH(detail)), 0) AS BIGINT) AS n FROM audit_log WHERE kind = 'proxy.call'",
    );
    let biggest = app
        .count("SELECT CAST(COALESCE(MAX(LENGTH(detail)), 0) AS BIGINT) AS n FROM audit_log WHERE kind = 'proxy.call'");
    // The bound is per batch and per group (here: per upstream status).
    let filter = tokenvault::db::models::audit::Filter { kind: Some("proxy.call".into()), ..Default::default() };
    let listed = tokenvault::db::models::audit::list(&mut app.db.conn().unwrap(), &filter, 10_000).unwrap();
    let statuses: std::collections::BTreeSet<String> = listed
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.detail).unwrap()["status"].to_string())
        .collect();
    let groups = batches * statuses.len() as u64;
    println!(
        "{calls} calls with 20 KB paths: {rows} rows, {bytes} bytes, in {batches} batches (statuses {statuses:?})"
    );
    assert!(batches >= 1);
    assert!(rows as u64 <= groups * (PATHS_PER_BATCH as u64 + 1), "{rows} rows in {batches} batches");
    assert!(bytes as u64 <= groups * (PATHS_PER_BATCH as u64 + 1) * MAX_ENTRY_BYTES as u64, "{bytes} bytes");
    assert!((bytes as usize) < calls * 20_000 / 20, "{bytes} bytes for {} KB of paths", calls * 20);
    assert!((biggest as usize) < 1024, "{biggest}");
    let calls_counted = app.count(
        "SELECT CAST(COALESCE(SUM(CASE WHEN detail LIKE '%\"count\":%' THEN 0 ELSE 1 END), 0) AS BIGINT) AS n \
         FROM audit_log WHERE kind = 'proxy.call'",
    );
    assert!(calls_counted <= rows);
    let mut conn = app.db.conn().unwrap();
    assert!(tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().is_ok());
}

/// Issue 19, item 5 (SQLite and PostgreSQL): a key's token read is batched and written after the
/// key's revocation, so by id it seems to come after it. The entry carries the time range of its
/// reads (`at`..`at_last`), shown on /admin/audit, /settings/activity and `audit tail` as batched.
#[tokio::test]
async fn a_batched_read_written_after_a_revocation_shows_when_it_happened() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("reader").await;
    app.state().audit.flush().await;
    let res = app
        .client
        .get("/api/v1/services/fake/token")
        .header(Header::new("Authorization", format!("Bearer {key}")))
        .dispatch()
        .await;
    assert_eq!(res.status(), Status::Ok);
    // Revoked before the batch of its read is written.
    let key_id = app.count("SELECT MAX(id) AS n FROM api_keys");
    let csrf = alice.csrf("/settings/api-keys").await;
    let r = alice.post_form(&format!("/settings/api-keys/{key_id}/revoke"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, Status::SeeOther, "{}", r.text);
    app.state().audit.flush().await;

    let read_id = app.count("SELECT MAX(id) AS n FROM audit_log WHERE kind = 'token.read'");
    let revoked_id = app.count("SELECT MAX(id) AS n FROM audit_log WHERE kind = 'api_key.revoked'");
    assert!(read_id > revoked_id, "the batch is written after the revocation");
    let read_last = app.count(&format!("SELECT at_last AS n FROM audit_log WHERE id = {read_id}"));
    let revoked_at = app.count(&format!("SELECT at AS n FROM audit_log WHERE id = {revoked_id}"));
    assert!(read_last <= revoked_at, "its time range says it happened before");
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) AS n FROM audit_log WHERE id = {revoked_id} AND at_last IS NULL")),
        1
    );

    for page in ["/admin/audit", "/settings/activity"] {
        let r = alice.fetch(page).await;
        let row = r.text.split("<tr ").find(|t| t.contains(&format!("data-audit-id=\"{read_id}\""))).unwrap();
        assert!(row.contains("data-batched=\"1\"") && row.contains("(batched)"), "{page}: {row}");
        assert!(r.text.contains("Compare times, not positions"), "{page}");
    }
    let mut conn = app.db.conn().unwrap();
    assert!(tokenvault::audit::verify(&mut conn, &app.cipher).unwrap().is_ok());
    if !app.database.is_postgres() {
        let db = app.db_path.to_string_lossy().to_string();
        let out = cli(app.dir.path(), &db, &["audit", "tail", "-n", "50"], &[]);
        let line = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("{read_id}\t")))
            .map(str::to_string)
            .unwrap_or_default();
        assert!(line.contains("(batched)") && line.contains("token.read"), "{}", text(&out));
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
    let (first, second) = (alice.api_key("one").await, alice.api_key("two").await);
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
    let oldest = alice.api_key("one").await;
    let oldest_id = key_id(&app, &oldest);
    alice.api_key("two").await;
    assert!(of_kind(&app, "api_key.revoked").is_empty());
    alice.api_key("three").await;
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

//! Deploying the binary alone: embedded templates and static files (and their overrides), the
//! `backup` and `check` commands, key files, and PostgreSQL over TLS without a system libpq.

use crate::common;

use std::path::Path;
use std::process::Output;

use crate::common::cli::{text, tokenvault};

use crate::common::server::{self, Options};
use crate::common::{builder, TestApp};
use rocket::http::{Header, Status};

const OTHER_VAULT_KEY: &str = "b3RoZXItdmF1bHQta2V5LW9mLTMyLWJ5dGVzLWxvbmc=";

#[tokio::test]
async fn the_binary_alone_serves_pages_and_static_files() {
    // An empty working directory: no templates/, static/ or Rocket.toml beside the binary.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("empty");
    std::fs::create_dir_all(&cwd).unwrap();
    let database = dir.path().join("tv.sqlite").to_string_lossy().into_owned();
    let server = server::start_in(Options::new(&database, "http://127.0.0.1:9", dir.path()), &cwd).await;
    let http = reqwest::Client::new();

    let login = http.get(format!("{}/login", server.base)).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert!(login.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = login.text().await.unwrap();
    assert!(page.contains(r#"id="login-form""#) && page.contains("/static/app.css"), "{page}");

    let css = http.get(format!("{}/static/app.css", server.base)).send().await.unwrap();
    assert_eq!(css.status(), 200);
    let headers = css.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/css"), "{headers:?}");
    assert_eq!(headers["cache-control"], "public, max-age=3600");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers.contains_key("content-security-policy"));
    let etag = headers["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() == 66, "a quoted SHA-256: {etag}");
    assert_eq!(
        css.bytes().await.unwrap(),
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/static/app.css")).unwrap()
    );

    for tag in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}")] {
        let again =
            http.get(format!("{}/static/app.css", server.base)).header("If-None-Match", &tag).send().await.unwrap();
        assert_eq!(again.status(), 304, "{tag}");
        assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
        assert!(again.bytes().await.unwrap().is_empty());
    }
    let changed =
        http.get(format!("{}/static/app.css", server.base)).header("If-None-Match", "\"other\"").send().await.unwrap();
    assert_eq!(changed.status(), 200);

    let pico = http.get(format!("{}/static/vendor/pico/pico.min.css", server.base)).send().await.unwrap();
    assert_eq!(pico.status(), 200);
    let missing = http.get(format!("{}/static/nope.css", server.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["cache-control"], "no-store", "an error is not cached");
    let escape = http.get(format!("{}/static/..%2FCargo.toml", server.base)).send().await.unwrap();
    assert_ne!(escape.status(), 200);
    // Error pages render from the embedded templates too.
    let not_found = http.get(format!("{}/no/such/page", server.base)).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    assert!(not_found.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
}

#[tokio::test]
async fn files_in_template_dir_and_static_dir_win_over_the_embedded_ones() {
    let overrides = tempfile::tempdir().unwrap();
    let templates = overrides.path().join("templates");
    let statics = overrides.path().join("static");
    std::fs::create_dir_all(templates.join("auth")).unwrap();
    std::fs::create_dir_all(&statics).unwrap();
    let login = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/auth/login.html.hbs")).unwrap();
    let custom = login.replace("<form", "<p id=\"custom-banner\">Operated by Example Corp</p><form");
    assert_ne!(custom, login);
    std::fs::write(templates.join("auth/login.html.hbs"), custom).unwrap();
    std::fs::write(statics.join("app.css"), "body { color: rebeccapurple }\n").unwrap();

    let app = builder()
        .set("template_dir", templates.to_string_lossy().to_string())
        .set("static_dir", statics.to_string_lossy().to_string())
        .start()
        .await;
    let agent = app.agent();
    let page = agent.fetch("/login").await;
    assert_eq!(page.status, Status::Ok);
    assert!(page.text.contains("custom-banner"), "the override wins");
    // Pages the directory does not have come from the binary, still as HTML.
    let signup = app.client.get("/signup").dispatch().await;
    assert_eq!(signup.status(), Status::Ok);
    assert_eq!(signup.content_type(), Some(rocket::http::ContentType::HTML));
    assert!(signup.into_string().await.unwrap().contains("<form"));

    let css = app.client.get("/static/app.css").dispatch().await;
    assert_eq!(css.status(), Status::Ok);
    let etag = css.headers().get_one("ETag").unwrap().to_string();
    assert_eq!(css.into_string().await.unwrap(), "body { color: rebeccapurple }\n");
    let cached = app.client.get("/static/app.css").header(Header::new("If-None-Match", etag)).dispatch().await;
    assert_eq!(cached.status(), Status::NotModified);
    // A file the directory does not have comes from the binary.
    let pico = app.client.get("/static/vendor/pico/pico.min.css").dispatch().await;
    assert_eq!(pico.status(), Status::Ok);
}

#[tokio::test]
async fn a_missing_or_broken_override_directory_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere").to_string_lossy().to_string();
    let figment = || {
        rocket::Config::figment()
            .merge(("vault_key", common::VAULT_KEY))
            .merge(("secret_key", common::SECRET_KEY))
            .merge(("data_dir", dir.path().to_string_lossy().to_string()))
    };
    let err = tokenvault::app::build(figment().merge(("template_dir", missing.clone()))).err().unwrap().to_string();
    assert!(err.contains("template_dir") && err.contains("nowhere"), "{err}");
    let err = tokenvault::app::build(figment().merge(("static_dir", missing))).err().unwrap().to_string();
    assert!(err.contains("static_dir"), "{err}");
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("home")).unwrap();
    std::fs::write(broken.join("home/landing.html.hbs"), "{{#each}}").unwrap();
    let err = tokenvault::app::build(figment().merge(("template_dir", broken.to_string_lossy().to_string())))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("home/landing.html.hbs"), "{err}");
}

/// Sign up users on a running server until told to stop; returns how many.
async fn keep_signing_up(base: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> usize {
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // A new cookie jar each time: a new visitor.
        let http =
            reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let page = http.get(format!("{base}/signup")).send().await.unwrap().text().await.unwrap();
        let csrf = common::csrf_from(&page);
        let name = format!("writer{n}");
        let r = http
            .post(format!("{base}/signup"))
            .header("Origin", common::PUBLIC_URL)
            .form(&[
                ("csrf_token", csrf.as_str()),
                ("username", &name),
                ("password", common::PASSWORD),
                ("password_confirm", common::PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "sign-up of {name}");
        n += 1;
    }
    n
}

#[tokio::test]
async fn a_backup_of_a_running_instance_restores_into_a_fresh_one() {
    let app = TestApp::start().await;
    let alice = app.user("alice").await;
    alice.connect("fake").await;
    let key = alice.api_key("restore test").await;
    let (access_token, _) = app.stored_tokens("alice", "fake").unwrap();
    let backup = app.dir.path().join("backups/tokenvault-backup.sqlite");
    std::fs::create_dir_all(backup.parent().unwrap()).unwrap();
    let url = app.database.url.clone();
    let env = [("ROCKET_DATABASE_URL", url.as_str()), ("ROCKET_VAULT_KEY", common::VAULT_KEY)];
    let backup_arg = backup.to_string_lossy().to_string();

    if app.database.is_postgres() {
        let out = tokenvault(app.dir.path(), &["backup", &backup_arg], &env, None);
        assert!(!out.status.success(), "no backup was written, so no success: {}", text(&out));
        assert!(text(&out).contains("pg_dump") && text(&out).contains("vault key"), "{}", text(&out));
        assert!(!backup.exists());
        return;
    }

    // The server runs on the same database and keeps writing while the backup is taken.
    let live = app.dir.path().join("live");
    let fake = app.fake.uri();
    let mut options = Options::new(&url, &fake, &live);
    options.env.push(("ROCKET_LOGIN_LIMIT_PER_IP".into(), "1000000".into()));
    let running = server::start(options).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn(keep_signing_up(running.base.clone(), stop.clone()));
    while app.count("SELECT COUNT(*) AS n FROM users") < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = app.dir.path().to_path_buf();
    let (arg, live_url) = (backup_arg.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || tokenvault(&dir, &["backup", &arg], &env_owned(&live_url), None))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let signed_up = writer.await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&backup_arg) && said.contains("bytes") && said.contains("users: "), "{said}");
    assert!(said.contains("connections: 1") && said.contains("api_keys: 1"), "{said}");
    assert!(said.contains("vault key"), "the output reminds to keep the key: {said}");
    assert!(!text(&out).contains(common::VAULT_KEY) && !text(&out).contains(&access_token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    }
    drop(running);
    assert!(signed_up >= 1);

    // Never over an existing file.
    let before = std::fs::read(&backup).unwrap();
    let again = tokenvault(app.dir.path(), &["backup", &backup_arg], &env, None);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read(&backup).unwrap(), before);

    // Restore: the file into a new instance's place (new data dir, same vault key).
    let fresh = tempfile::tempdir().unwrap();
    let restored = fresh.path().join("tokenvault.sqlite");
    std::fs::copy(&backup, &restored).unwrap();
    let restored_url = restored.to_string_lossy().to_string();
    let server = server::start(Options::new(&restored_url, &app.fake.uri(), fresh.path())).await;
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/services/fake/token", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["access_token"], access_token.as_str());
}

fn env_owned(url: &str) -> [(&str, &str); 2] {
    [("ROCKET_DATABASE_URL", url), ("ROCKET_VAULT_KEY", common::VAULT_KEY)]
}

/// A release-profile configuration for `check`, with the fake provider as service `fake`.
fn release_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("ROCKET_PROFILE".into(), "release".into()),
        ("ROCKET_DATABASE_URL".into(), dir.join("check.sqlite").to_string_lossy().into()),
        ("ROCKET_PUBLIC_URL".into(), "https://vault.example.com".into()),
        ("ROCKET_PROVIDERS".into(), server::fake_provider_env("http://127.0.0.1:9")),
    ]
}

fn run(dir: &Path, args: &[&str], env: &[(String, String)], extra: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    tokenvault(dir, args, &all, stdin)
}

#[test]
fn check_names_the_first_problem_and_passes_on_a_good_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let env = release_env(dir.path());
    let keys = [("ROCKET_VAULT_KEY", common::VAULT_KEY), ("ROCKET_SECRET_KEY", common::SECRET_KEY)];

    let out = run(dir.path(), &["check"], &env, &keys, None);
    assert!(!out.status.success(), "no client credentials yet: {}", text(&out));
    let said = text(&out);
    assert!(said.contains("redirect URI https://vault.example.com/services/fake/callback"), "{said}");
    assert!(said.contains("error: provider fake: `fake.client_id` is not set"), "{said}");

    assert!(run(dir.path(), &["vault", "set", "fake.client_id", "the-id"], &env, &keys, None).status.success());
    let out = run(dir.path(), &["check"], &env, &keys, None);
    assert!(text(&out).contains("error: provider fake: `fake.client_secret` is not set"), "{}", text(&out));
    let out = run(dir.path(), &["vault", "set", "fake.client_secret", "-"], &env, &keys, Some("CS-CANARY-check\n"));
    assert!(out.status.success());

    let out = run(dir.path(), &["check"], &env, &keys, None);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("configuration: ok (profile release") && said.contains("vault key: ok"), "{said}");
    assert!(said.contains("fake (Fake Provider): redirect URI https://vault.example.com/services/fake/callback"));
    assert!(said.contains("client credentials: set") && said.contains("check passed"), "{said}");
    assert!(!said.contains("CS-CANARY") && !said.contains(common::VAULT_KEY), "{said}");

    // A key that does not open this database.
    let wrong = [("ROCKET_VAULT_KEY", OTHER_VAULT_KEY), ("ROCKET_SECRET_KEY", common::SECRET_KEY)];
    let out = run(dir.path(), &["check"], &env, &wrong, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("error: vault key: the configured vault_key does not open"), "{}", text(&out));
    assert!(!text(&out).contains(OTHER_VAULT_KEY));

    // Bad values, each named.
    for (key, value, named) in [
        ("ROCKET_FLOW_TTL", "3600", "`flow_ttl` is invalid"),
        ("ROCKET_PUBLIC_URL", "ftp://x", "`public_url` is invalid"),
        ("ROCKET_TEMPLATE_DIR", "/nonexistent/templates", "`template_dir` is invalid"),
        ("ROCKET_PORT", "eighty", "port"),
    ] {
        let mut bad = keys.to_vec();
        bad.push((key, value));
        let out = run(dir.path(), &["check"], &env, &bad, None);
        assert!(!out.status.success(), "{key}");
        assert!(text(&out).to_lowercase().contains(&named.to_lowercase()), "{key}: {}", text(&out));
    }
    // No secret key in the release profile.
    let out = run(dir.path(), &["check"], &env, &keys[..1], None);
    assert!(!out.status.success() && text(&out).contains("`secret_key` is required"), "{}", text(&out));
}

#[cfg(unix)]
fn key_file(dir: &Path, name: &str, value: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_string_lossy().into_owned()
}

#[cfg(unix)]
#[tokio::test]
async fn keys_can_come_from_files_as_systemd_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let env = release_env(dir.path());
    let vault_file = key_file(dir.path(), "vault.key", common::VAULT_KEY, 0o400);
    let secret_file = key_file(dir.path(), "secret.key", common::SECRET_KEY, 0o600);
    let files = [("ROCKET_VAULT_KEY_FILE", vault_file.as_str()), ("ROCKET_SECRET_KEY_FILE", secret_file.as_str())];
    for (path, value) in [("fake.client_id", "id"), ("fake.client_secret", "secret")] {
        let out = run(dir.path(), &["vault", "set", path, value], &env, &files, None);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = run(dir.path(), &["check"], &env, &files, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(common::VAULT_KEY) && !text(&out).contains(common::SECRET_KEY));

    // The file's key is the one the database was sealed with: an inline key alone also works,
    // and both at once are refused.
    let both = [files[0], files[1], ("ROCKET_VAULT_KEY", common::VAULT_KEY)];
    let out = run(dir.path(), &["check"], &env, &both, None);
    assert!(!out.status.success());
    assert!(text(&out).contains("both `vault_key` and `vault_key_file` are set"), "{}", text(&out));
    let both = [files[0], files[1], ("ROCKET_SECRET_KEY", common::SECRET_KEY)];
    assert!(text(&run(dir.path(), &["check"], &env, &both, None)).contains("both `secret_key` and `secret_key_file`"));

    // A key file other users can read is refused, without showing its content.
    let open = key_file(dir.path(), "open.key", common::VAULT_KEY, 0o644);
    let out = run(dir.path(), &["check"], &env, &[("ROCKET_VAULT_KEY_FILE", &open), files[1]], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("accessible to other users") && !text(&out).contains(common::VAULT_KEY));
    let out = run(dir.path(), &["check"], &env, &[files[0], ("ROCKET_SECRET_KEY_FILE", "/nonexistent/key")], None);
    assert!(!out.status.success() && text(&out).contains("secret_key_file /nonexistent/key"), "{}", text(&out));

    // The server starts in the release profile with only the files (no key in the environment).
    let dir_path = dir.path();
    let mut server = common::binary::spawn("127.0.0.1", None, dir_path, |cmd, _| {
        cmd.current_dir(dir_path)
            .env_clear()
            .env("ROCKET_CONFIG", dir_path.join("no-Rocket.toml"))
            .env("RUST_LOG", "info");
        for (k, v) in env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(files) {
            cmd.env(k, v);
        }
    })
    .await;
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.is_ok_and(|r| r.status() == 200);
    let _ = server.child.kill();
    let _ = server.child.wait();
    let log = server.log_text();
    assert!(ready, "{log}");
    assert!(!log.contains(common::VAULT_KEY) && !log.contains(common::SECRET_KEY));
}

#[test]
fn postgres_connections_use_tls_with_sslmode_require() {
    let Ok(admin) = std::env::var("TOKENVAULT_TEST_POSTGRES_URL") else {
        eprintln!("skipped: set TOKENVAULT_TEST_POSTGRES_URL to run it against PostgreSQL");
        return;
    };
    if admin.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let mut url = url::Url::parse(&database.url).unwrap();
    url.query_pairs_mut().append_pair("sslmode", "require");
    let db = tokenvault::db::Db::open_sized(url.as_str(), 1).expect("connects with sslmode=require");
    let mut conn = db.conn().unwrap();
    let tokenvault::db::Conn::Postgres(c) = &mut conn else { panic!("a PostgreSQL connection") };
    #[derive(diesel::QueryableByName)]
    struct Ssl {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        ssl: bool,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        version: Option<String>,
    }
    use diesel::RunQueryDsl;
    let row = diesel::sql_query("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .get_result::<Ssl>(&mut **c)
        .unwrap();
    assert!(row.ssl, "the connection is encrypted");
    assert!(row.version.is_some_and(|v| v.starts_with("TLS")));
}

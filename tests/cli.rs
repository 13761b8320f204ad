//! The `tokenvault` binary's commands, and its refusal to start without keys in production.

mod common;

use common::cli::{text, tokenvault};

const VAULT_KEY: &str = "dGVzdC12YXVsdC1rZXktMzItYnl0ZXMtbG9uZyEhISE=";

#[test]
fn user_add_reads_the_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ROCKET_VAULT_KEY", VAULT_KEY)];
    let out = tokenvault(dir.path(), &["user", "add", "carol", "--admin"], &env, Some("a long cli password\n"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created user carol (id 1, admin)"));
    assert!(!text(&out).contains("a long cli password"));

    let again = tokenvault(dir.path(), &["user", "add", "carol"], &env, Some("a long cli password\n"));
    assert!(!again.status.success());
    assert!(text(&again).contains("taken"));
    let weak = tokenvault(dir.path(), &["user", "add", "dave"], &env, Some("short\n"));
    assert!(!weak.status.success());
    assert!(text(&weak).contains("at least 10"));

    let db = tokenvault::db::Db::open(&dir.path().join("cli.sqlite").to_string_lossy()).unwrap();
    let mut conn = db.conn().unwrap();
    let user = tokenvault::db::models::users::find_by_username(&mut conn, "carol").unwrap().unwrap();
    assert!(user.is_admin);
    assert!(tokenvault::auth::password::verify_blocking(
        &tokenvault::util::Secret::new("a long cli password"),
        Some(&user.password_hash)
    ));
}

#[test]
fn vault_set_and_list_never_print_values() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ROCKET_VAULT_KEY", VAULT_KEY)];
    let out = tokenvault(dir.path(), &["vault", "set", "dropbox.client_id", "app-key-123"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
    let out = tokenvault(dir.path(), &["vault", "set", "dropbox.client_secret", "-"], &env, Some("CS-CANARY-cli\n"));
    assert!(out.status.success(), "{}", text(&out));
    let list = tokenvault(dir.path(), &["vault", "list"], &env, None);
    let shown = text(&list);
    assert!(shown.contains("dropbox.client_id") && shown.contains("dropbox.client_secret"));
    assert!(!shown.contains("CS-CANARY") && !shown.contains("app-key-123"));
    let bad = tokenvault(dir.path(), &["vault", "set", "bad path", "x"], &env, None);
    assert!(!bad.status.success());

    let db = tokenvault::db::Db::open(&dir.path().join("cli.sqlite").to_string_lossy()).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    let v = tokenvault::vault::store::get(&mut conn, &cipher, "dropbox.client_secret").unwrap().unwrap();
    assert_eq!(v.expose(), "CS-CANARY-cli");
}

#[test]
fn debug_profile_creates_a_private_vault_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokenvault(dir.path(), &["vault", "set", "x.client_id", "one"], &[], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("generated a new vault key"));
    let key_path = dir.path().join("data/vault.key");
    let key = std::fs::read_to_string(&key_path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
        let db = dir.path().join("cli.sqlite");
        assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600, "the database is private too");
    }
    let out = tokenvault(dir.path(), &["vault", "list"], &[], None);
    assert!(out.status.success());
    assert!(!text(&out).contains("generated a new vault key"));
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), key);
}

#[test]
fn release_profile_refuses_to_start_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokenvault(dir.path(), &["serve"], &[("ROCKET_PROFILE", "release")], None);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("`vault_key` is required in the `release` profile") && t.contains("tokenvault keygen"), "{t}");

    let out =
        tokenvault(dir.path(), &["serve"], &[("ROCKET_PROFILE", "release"), ("ROCKET_VAULT_KEY", VAULT_KEY)], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("`secret_key` is required"), "{}", text(&out));

    let out =
        tokenvault(dir.path(), &["serve"], &[("ROCKET_PROFILE", "live"), ("ROCKET_VAULT_KEY", "too-short")], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("`vault_key` is invalid"), "{}", text(&out));

    // A malformed secret_key is reported as such (not as missing, not silently replaced in debug),
    // and a secret given with the wrong shape is never echoed.
    for profile in ["release", "debug"] {
        let env = [("ROCKET_PROFILE", profile), ("ROCKET_VAULT_KEY", VAULT_KEY), ("ROCKET_SECRET_KEY", "not-a-key")];
        let out = tokenvault(dir.path(), &["serve"], &env, None);
        assert!(!out.status.success());
        assert!(text(&out).contains("`secret_key` is invalid"), "{profile}: {}", text(&out));
    }
    let canary = "b2xkLWtleS10aGF0LW11c3Qtbm90LWJlLXByaW50ZWQtYW55d2hlcmU=";
    let out = tokenvault(dir.path(), &["vault", "list"], &[("ROCKET_VAULT_OLD_KEYS", canary)], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("vault_old_keys") && !text(&out).contains(canary), "{}", text(&out));
}

#[test]
fn keygen_prints_fresh_keys() {
    let dir = tempfile::tempdir().unwrap();
    let a = String::from_utf8(tokenvault(dir.path(), &["keygen"], &[], None).stdout).unwrap();
    let b = String::from_utf8(tokenvault(dir.path(), &["keygen"], &[], None).stdout).unwrap();
    assert_eq!(a.trim().len(), 44);
    assert_ne!(a, b);
    let s = String::from_utf8(tokenvault(dir.path(), &["keygen", "--secret-key"], &[], None).stdout).unwrap();
    assert_eq!(s.trim().len(), 88);
}

#[test]
fn bad_provider_configuration_is_named_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Rocket.toml"),
        "[default.providers.acme]\nauthorize_url = \"http://acme.example/authorize\"\ntoken_url = \"https://acme.example/token\"\n",
    )
    .unwrap();
    let out = tokenvault(dir.path(), &["serve"], &[("ROCKET_VAULT_KEY", VAULT_KEY)], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("providers.acme.authorize_url"), "{}", text(&out));
}

const OTHER_KEY: &str = "b3RoZXItdmF1bHQta2V5LTMyLWJ5dGVzLWxvbmchISE=";

#[test]
fn a_wrong_vault_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokenvault(dir.path(), &["vault", "set", "x.client_id", "one"], &[("ROCKET_VAULT_KEY", VAULT_KEY)], None);
    assert!(out.status.success(), "{}", text(&out));
    let out = tokenvault(dir.path(), &["vault", "list"], &[("ROCKET_VAULT_KEY", OTHER_KEY)], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("does not open this database"), "{}", text(&out));
    let out = tokenvault(dir.path(), &["vault", "set", "y.client_id", "two"], &[("ROCKET_VAULT_KEY", OTHER_KEY)], None);
    assert!(!out.status.success(), "nothing is written with a wrong key");
}

#[test]
fn rotate_key_re_encrypts_everything_under_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = [("ROCKET_VAULT_KEY", VAULT_KEY)];
    for (path, value) in [("a.client_id", "id-a"), ("a.client_secret", "CS-CANARY-a")] {
        assert!(tokenvault(dir.path(), &["vault", "set", path, value], &old, None).status.success());
    }
    let old_keys = format!("[\"{VAULT_KEY}\"]");
    let ring = [("ROCKET_VAULT_KEY", OTHER_KEY), ("ROCKET_VAULT_OLD_KEYS", old_keys.as_str())];
    let out = tokenvault(dir.path(), &["vault", "rotate-key"], &ring, None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 vault entries"), "{}", text(&out));
    assert!(text(&out).contains("re-encrypted 2 vault entries\n"), "progress is reported: {}", text(&out));
    assert!(text(&out).contains("re-encrypted; the old key can now be removed"), "{}", text(&out));
    // The new key alone now opens everything; the old one no longer does.
    let new_only = [("ROCKET_VAULT_KEY", OTHER_KEY)];
    assert!(tokenvault(dir.path(), &["vault", "list"], &new_only, None).status.success());
    assert!(!tokenvault(dir.path(), &["vault", "list"], &old, None).status.success());
    let db = tokenvault::db::Db::open(&dir.path().join("cli.sqlite").to_string_lossy()).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(OTHER_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    let v = tokenvault::vault::store::get(&mut conn, &cipher, "a.client_secret").unwrap().unwrap();
    assert_eq!(v.expose(), "CS-CANARY-a");
}

#[test]
fn api_key_create_prints_a_working_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("ROCKET_VAULT_KEY", VAULT_KEY)];
    assert!(tokenvault(dir.path(), &["user", "add", "erin"], &env, Some("a long cli password\n")).status.success());
    let out = tokenvault(dir.path(), &["api-key", "create", "erin", "nightly backup"], &env, None);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("tvk_"));
    let db = tokenvault::db::Db::open(&dir.path().join("cli.sqlite").to_string_lossy()).unwrap();
    let mut conn = db.conn().unwrap();
    let (k, user) = tokenvault::db::models::api_keys::find_active(&mut conn, &tokenvault::util::sha256_hex(&key))
        .unwrap()
        .expect("the printed key is the stored one");
    assert_eq!((k.name.as_str(), user.username.as_str()), ("nightly backup", "erin"));
    let missing = tokenvault(dir.path(), &["api-key", "create", "nobody", "x"], &env, None);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("no user named nobody"));
}

//! Providers managed in the app (issue 21): added, edited, disabled, enabled and deleted with
//! `tokenvault provider …` while servers run — in effect without a restart (on every instance, on
//! PostgreSQL), audited and sent as `provider.changed` webhooks without a secret; refused input
//! saves nothing; a stale edit is a 409.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::cli::{text, tokenvault};
use crate::common::server::{browser, hidden, sign_up};

/// The CLI's environment for the server's database.
fn cli_env(database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ROCKET_VAULT_KEY", common::VAULT_KEY.to_string()),
        ("ROCKET_DATABASE_URL", database_url.to_string()),
        ("ROCKET_DEMO_PROVIDER", "false".to_string()),
        // The debug profile allows private addresses by default (as for webhooks); loopback stays
        // allowed in it (the fake provider), other private addresses are refused.
        ("ROCKET_WEBHOOK_PRIVATE_URLS", "false".to_string()),
    ]
}

fn cli(dir: &std::path::Path, database_url: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let env = cli_env(database_url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    tokenvault(dir, args, &env, stdin)
}

/// `provider add acme` for the fake provider: its authorize URL on `localhost` (another origin
/// than the configured `fake`'s 127.0.0.1, so the CSP's form-action must learn it).
fn add_acme(dir: &std::path::Path, database_url: &str, fake: &str) -> std::process::Output {
    let port = url::Url::parse(fake).unwrap().port().unwrap();
    let sets = [
        "display_name=\"Acme\"".to_string(),
        format!("authorize_url=\"http://localhost:{port}/authorize\""),
        format!("token_url=\"{fake}/token\""),
        format!("revoke_url=\"{fake}/revoke\""),
        format!("account_url=\"{fake}/account\""),
        format!("api_base_url=\"{fake}/api\""),
        "scopes=[\"read\", \"write\"]".to_string(),
        "client_auth=basic".to_string(),
    ];
    let mut args = vec!["provider", "add", "acme"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    args.extend(["--client-id", common::CLIENT_ID, "--client-secret", "-"]);
    cli(dir, database_url, &args, Some(&format!("{}\n", common::CLIENT_SECRET)))
}

/// Connect `service` (the fake provider under that name) with the flow started and finished on `base`.
async fn connect(http: &reqwest::Client, base: &str, service: &str, fake: &common::FakeProvider) {
    let page = http.get(format!("{base}/services/{service}/authorize")).send().await.unwrap().text().await.unwrap();
    let res = http
        .post(format!("{base}/services/{service}/authorize"))
        .form(&[("csrf_token", hidden(&page, "csrf_token"))])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let authorize = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(authorize.host_str(), Some("localhost"), "{authorize}");
    let (state, challenge) = common::flow_params(&authorize);
    let code = fake.issue_code(&challenge);
    let res = http.get(format!("{base}/services/{service}/callback?code={code}&state={state}")).send().await.unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap_or_default());
}

/// Poll `probe` until it is true; how long that took (panics after `limit`).
async fn within<F, Fut>(limit: Duration, what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(http: &reqwest::Client, url: &str) -> u16 {
    http.get(url).send().await.unwrap().status().as_u16()
}

async fn api(key: &str, base: &str, service: &str) -> (u16, serde_json::Value) {
    let res = reqwest::Client::new()
        .get(format!("{base}/api/v1/services/{service}/token"))
        .header("Authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

fn count(database_url: &str, sql: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = tokenvault::db::Db::open_sized(database_url, 1).unwrap();
    let mut conn = db.conn().unwrap();
    let conn = &mut conn;
    tokenvault::on_conn!(conn, c => diesel::sql_query(sql).get_result::<N>(c)).unwrap().n
}

fn texts(database_url: &str, sql: &str) -> Vec<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let db = tokenvault::db::Db::open_sized(database_url, 1).unwrap();
    let mut conn = db.conn().unwrap();
    let conn = &mut conn;
    tokenvault::on_conn!(conn, c => diesel::sql_query(sql).load::<T>(c)).unwrap().into_iter().map(|r| r.t).collect()
}

#[tokio::test]
async fn a_provider_added_with_the_cli_is_usable_at_once_then_disabled_enabled_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let fake = common::FakeProvider::start().await;
    fake.with_state(|s| s.service = Some("acme".into()));
    let server = common::server::start(common::server::Options {
        // Every event goes to a receiver: the provider.changed events are recorded for it.
        env: vec![(
            "ROCKET_WEBHOOKS".into(),
            "{ops={url=\"http://127.0.0.1:9/hook\",secret=\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"}}".into(),
        )],
        ..common::server::Options::new(&database.url, &fake.uri(), dir.path())
    })
    .await;
    let base = server.base.clone();
    let http = browser();
    sign_up(&http, &base, "alice").await;
    assert_eq!(status(&http, &format!("{base}/services/acme/authorize")).await, 404);
    let csp = |res: &reqwest::Response| res.headers()["content-security-policy"].to_str().unwrap().to_string();
    let port = url::Url::parse(&fake.uri()).unwrap().port().unwrap();
    let acme_origin = format!("http://localhost:{port}");
    assert!(!csp(&http.get(&base).send().await.unwrap()).contains(&acme_origin));

    let out = add_acme(dir.path(), &database.url, &fake.uri());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("client credentials set"), "{}", text(&out));
    assert!(!text(&out).contains(common::CLIENT_SECRET));

    // No restart: the server's invalidation poll rebuilds its catalog (every second on SQLite).
    let took = within(Duration::from_secs(3), "acme usable", || async {
        status(&http, &format!("{base}/services/acme/authorize")).await == 200
    })
    .await;
    eprintln!("acme usable after {took:?}");
    let page = http.get(&base).send().await.unwrap();
    assert!(csp(&page).contains(&acme_origin), "form-action follows the catalog: {}", csp(&page));
    assert!(page.text().await.unwrap().contains(r#"data-service="acme""#));
    connect(&http, &base, "acme", &fake).await;

    let out = cli(dir.path(), &database.url, &["api-key", "create", "alice", "script"], None);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(api(&key, &base, "acme").await.0, 200);

    // Disabled: the card and the API are gone (409 service_disabled), the connection is kept.
    let out = cli(dir.path(), &database.url, &["provider", "disable", "acme"], None);
    assert!(out.status.success(), "{}", text(&out));
    within(Duration::from_secs(3), "acme disabled", || async { api(&key, &base, "acme").await.0 == 409 }).await;
    let (_, body) = api(&key, &base, "acme").await;
    assert_eq!(body["error"], "service_disabled", "{body}");
    let dashboard = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(!dashboard.contains(r#"data-service="acme""#));
    assert_eq!(count(&database.url, "SELECT COUNT(*) AS n FROM connections WHERE service = 'acme'"), 1);
    let list = cli(dir.path(), &database.url, &["provider", "list"], None);
    assert!(text(&list).contains("acme\tadded\tdisabled\tcredentials set"), "{}", text(&list));

    // Enabled again: everything is back.
    let out = cli(dir.path(), &database.url, &["provider", "enable", "acme"], None);
    assert!(out.status.success(), "{}", text(&out));
    within(Duration::from_secs(3), "acme enabled", || async { api(&key, &base, "acme").await.0 == 200 }).await;

    // Edited: a key set in the app.
    let out =
        cli(dir.path(), &database.url, &["provider", "edit", "acme", "--set", "display_name=\"Acme Corp\""], None);
    assert!(out.status.success(), "{}", text(&out));
    within(Duration::from_secs(3), "acme renamed", || async {
        http.get(&base).send().await.unwrap().text().await.unwrap().contains("Acme Corp")
    })
    .await;

    // Deleted: refused while it has a connection, then with it (revoked at the provider).
    let out = cli(dir.path(), &database.url, &["provider", "delete", "acme"], None);
    assert!(!out.status.success());
    assert!(text(&out).contains("1 connection") && text(&out).contains("--with-connections"), "{}", text(&out));
    let out = cli(dir.path(), &database.url, &["provider", "delete", "acme", "--with-connections"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 connection(s) revoked and deleted"), "{}", text(&out));
    assert_eq!(fake.requests_to("/revoke").await.len(), 1, "revoked at the provider");
    assert!(fake.live_refresh_tokens().is_empty(), "its refresh token no longer works");
    assert_eq!(count(&database.url, "SELECT COUNT(*) AS n FROM connections WHERE service = 'acme'"), 0);
    assert_eq!(count(&database.url, "SELECT COUNT(*) AS n FROM providers"), 0);
    assert_eq!(count(&database.url, "SELECT COUNT(*) AS n FROM vault_entries WHERE path LIKE 'acme.%'"), 0);
    within(Duration::from_secs(3), "acme gone", || async { api(&key, &base, "acme").await.0 == 404 }).await;

    // Every change audited and sent as provider.changed, never with the client secret.
    let audit = texts(&database.url, "SELECT detail AS t FROM audit_log WHERE kind = 'provider.changed' ORDER BY id");
    let actions: Vec<String> = audit
        .iter()
        .map(|d| serde_json::from_str::<serde_json::Value>(d).unwrap()["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["added", "disabled", "enabled", "edited", "deleted"]);
    let events =
        texts(&database.url, "SELECT body AS t FROM webhook_events WHERE event_type = 'provider.changed' ORDER BY id");
    assert_eq!(events.len(), 5);
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["data"]["provider"], "acme");
    assert_eq!(first["data"]["action"], "added");
    assert_eq!(first["data"]["by"], "cli");
    for row in audit.iter().chain(&events) {
        assert!(!row.contains(common::CLIENT_SECRET), "{row}");
    }
    let log = server.log_text();
    assert!(!log.contains(common::CLIENT_SECRET));
}

#[test]
fn refused_input_says_why_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db_url = database.url.clone();
    let add = |name: &str, sets: &[&str]| {
        let mut args = vec!["provider", "add", name];
        for s in sets {
            args.extend(["--set", s]);
        }
        cli(dir.path(), &db_url, &args, None)
    };
    let endpoints = |host: &str| [format!("authorize_url=\"{host}/authorize\""), format!("token_url=\"{host}/token\"")];
    let refused = |out: std::process::Output, why: &[&str]| {
        assert!(!out.status.success(), "{}", text(&out));
        for w in why {
            assert!(text(&out).contains(w), "{w}: {}", text(&out));
        }
    };
    let [a, t] = endpoints("http://login.acme.example");
    refused(add("acme", &[&a, &t]), &["https"]);
    let [a, t] = endpoints("https://10.1.2.3");
    refused(add("acme", &[&a, &t]), &["authorize_url", "public", "webhook_private_urls"]);
    let [a, t] = endpoints("https://login.acme.example");
    refused(add("acme", &[&a, &t, "colour=\"blue\""]), &["colour"]);
    refused(add("acme", &[&a, &t, "account_id_pointer=\"id\""]), &["account_id_pointer"]);
    refused(add("Bad Name", &[&a, &t]), &["names are"]);
    refused(add("acme", &["preset=\"nope\""]), &["nope"]);
    refused(
        cli(dir.path(), &db_url, &["provider", "add", "acme", "--preset", "github", "--client-secret", "s3"], None),
        &["standard input"],
    );
    assert_eq!(count(&db_url, "SELECT COUNT(*) AS n FROM providers"), 0, "nothing saved");
    assert_eq!(count(&db_url, "SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'provider.changed'"), 0);

    let out = cli(dir.path(), &db_url, &["provider", "add", "gh", "--preset", "github"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("client credentials missing"), "{}", text(&out));
    refused(cli(dir.path(), &db_url, &["provider", "add", "gh", "--preset", "github"], None), &["exists already"]);
    let show = cli(dir.path(), &db_url, &["provider", "show", "gh"], None);
    assert!(text(&show).contains("origin: added") && text(&show).contains("https://github.com/login/oauth/authorize"));
    // `check` covers providers stored in the database: gh has no credentials.
    let check = cli(dir.path(), &db_url, &["check"], None);
    assert!(!check.status.success());
    assert!(text(&check).contains("gh.client_id"), "{}", text(&check));
    let presets = cli(dir.path(), &db_url, &["provider", "presets"], None);
    assert!(text(&presets).lines().any(|l| l == "github GitHub"), "{}", text(&presets));
    assert!(text(&presets).lines().count() >= 30);
}

/// An edit made from a page (or a script) that read an older version is refused with a 409 and
/// saves nothing; so is an edit that fails validation (422).
#[test]
fn stale_edits_are_refused() {
    use tokenvault::oauth::managed::{Editor, Egress, LiveCatalog, NewProvider};
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let db = tokenvault::db::Db::open_sized(&database.url, 1).unwrap();
    let cipher = tokenvault::vault::Cipher::from_base64(common::VAULT_KEY, &[]).unwrap();
    let mut conn = db.conn().unwrap();
    tokenvault::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let live = LiveCatalog::fixed(Default::default());
    let editor = Editor {
        live: &live,
        cipher: &cipher,
        actor: tokenvault::audit::Actor::User(1),
        by: "root",
        egress: Egress { private_urls: false, loopback: false },
    };
    let settings = tokenvault::oauth::managed::parse_set(&["preset=gitlab".into()]).unwrap();
    let new = NewProvider { name: "lab".into(), settings, ..Default::default() };
    editor.add(&mut conn, &new).unwrap().recorded_only();
    live.reload(&mut conn).unwrap();
    let set = tokenvault::oauth::managed::parse_set(&["display_name=\"Lab\"".into()]).unwrap();
    editor.edit(&mut conn, "lab", 1, &set, None, None).unwrap().recorded_only();
    // The same form again: version 1 is gone.
    let stale = editor.edit(&mut conn, "lab", 1, &set, None, None).unwrap_err();
    assert_eq!(stale.status().code, 409, "{stale}");
    let bad = tokenvault::oauth::managed::parse_set(&["authorize_url=\"https://192.168.1.1/a\"".into()]).unwrap();
    let refused = editor.edit(&mut conn, "lab", 2, &bad, None, None).unwrap_err();
    assert_eq!(refused.status().code, 422, "{refused}");
    assert!(refused.user_message().contains("public"), "{}", refused.user_message());
    live.reload(&mut conn).unwrap();
    let entry = live.entry("lab").unwrap();
    assert_eq!(entry.version, 2);
    assert_eq!(entry.provider.unwrap().display_name, "Lab");
    assert!(editor.set_enabled(&mut conn, "lab", Some(1), false).unwrap_err().status().code == 409);
}

/// Two instances on PostgreSQL: a provider added (by the CLI, a third process) is connectable on
/// both within two seconds, and disabling it reaches both as fast.
#[tokio::test]
async fn two_instances_follow_a_provider_change_within_two_seconds() {
    if std::env::var("TOKENVAULT_TEST_POSTGRES_URL").map(|v| v.is_empty()).unwrap_or(true) {
        eprintln!("skipped: set TOKENVAULT_TEST_POSTGRES_URL to run it against PostgreSQL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = common::TestDatabase::new(dir.path());
    let fake = common::FakeProvider::start().await;
    fake.with_state(|s| s.service = Some("acme".into()));
    let start = |sub: &str| {
        let d = dir.path().join(sub);
        let (url, fake) = (database.url.clone(), fake.uri());
        async move {
            common::server::start(common::server::Options {
                log_filter: "warn",
                ..common::server::Options::new(&url, &fake, &d)
            })
            .await
        }
    };
    let (a, b) = tokio::join!(start("a"), start("b"));
    let http = browser();
    sign_up(&http, &a.base, "alice").await;
    let out = add_acme(dir.path(), &database.url, &fake.uri());
    assert!(out.status.success(), "{}", text(&out));
    let added = Instant::now();
    for server in [&a, &b] {
        within(Duration::from_secs(2).saturating_sub(added.elapsed()), "acme on both instances", || async {
            status(&http, &format!("{}/services/acme/authorize", server.base)).await == 200
        })
        .await;
    }
    connect(&http, &b.base, "acme", &fake).await;
    let out = cli(dir.path(), &database.url, &["provider", "disable", "acme"], None);
    assert!(out.status.success(), "{}", text(&out));
    let disabled = Instant::now();
    for server in [&a, &b] {
        within(Duration::from_secs(2).saturating_sub(disabled.elapsed()), "acme disabled on both", || async {
            status(&http, &format!("{}/services/acme/authorize", server.base)).await == 409
        })
        .await;
    }
}

/// The add form's settings textarea, as the page filled it (HTML entities decoded).
fn page_settings(html: &str) -> String {
    let start = html.find("id=\"new-provider-settings\"").expect("the settings field");
    let open = start + html[start..].find('>').unwrap() + 1;
    let close = open + html[open..].find("</textarea>").unwrap();
    html[open..close]
        .replace("&quot;", "\"")
        .replace("&#x3D;", "=")
        .replace("&#x27;", "'")
        .replace("&#x60;", "`")
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

mod page {
    //! `/admin/providers` over HTTP (the app in this process).

    use crate::common;
    use rocket::http::Status;
    use std::time::Duration;
    use wiremock::matchers::path;
    use wiremock::{Mock, ResponseTemplate};

    fn lines(fake: &str, extra: &str) -> String {
        format!(
            "display_name = \"Acme\"\nauthorize_url = \"{fake}/authorize\"\ntoken_url = \"{fake}/token\"\n\
             revoke_url = \"{fake}/revoke\"\naccount_url = \"{fake}/account\"\napi_base_url = \"{fake}/api\"\n\
             scopes = [\"read\", \"write\"]\nclient_auth = \"basic\"\n{extra}"
        )
    }

    fn row<'t>(page: &'t str, name: &str) -> &'t str {
        let start = page.find(&format!(r#"<tr data-provider="{name}""#)).unwrap_or_else(|| panic!("no row {name}"));
        let end = page[start..].find("</tr>").map(|e| start + e).unwrap_or(page.len());
        &page[start..end]
    }

    #[tokio::test]
    async fn administrators_add_edit_disable_and_delete_providers_on_the_page() {
        let app = common::builder().set("webhook_private_urls", false).start().await;
        let root = app.user("root").await;
        let page = root.fetch("/admin/providers").await;
        assert_eq!(page.status, Status::Ok);
        for id in [
            "id=\"providers\"",
            "id=\"add-provider-form\"",
            "id=\"new-provider-preset\"",
            "id=\"new-provider-name\"",
            "id=\"new-provider-issuer\"",
            "id=\"new-provider-client-id\"",
            "id=\"new-provider-client-secret\"",
            "id=\"add-provider-submit\"",
            "id=\"nav-providers\"",
            "id=\"nav-audit\"",
            "id=\"redirect-uri-fake\"",
        ] {
            assert!(page.text.contains(id), "{id}");
        }
        let fake_row = row(&page.text, "fake");
        assert!(fake_row.contains(r#"data-origin="config" data-enabled="true" data-credentials="set""#), "{fake_row}");
        assert!(fake_row.contains("http://localhost:8000/services/fake/callback"));
        // Not for other users.
        let bob = app.user("bob").await;
        assert_ne!(bob.fetch("/admin/providers").await.status, Status::Ok);
        assert!(!bob.fetch("/").await.text.contains("nav-providers"));

        // Refused forms: 422, the message and what was typed, nothing saved.
        let csrf = root.csrf("/admin/providers").await;
        let fake = app.fake.uri();
        let add = |name: &'static str, settings: String, issuer: String| {
            let csrf = csrf.clone();
            let root = &root;
            async move {
                root.post_form(
                    "/admin/providers",
                    &[
                        ("csrf_token", &csrf),
                        ("name", name),
                        ("issuer", &issuer),
                        ("client_id", common::CLIENT_ID),
                        ("client_secret", common::CLIENT_SECRET),
                        ("settings", &settings),
                    ],
                )
                .await
            }
        };
        let cases = [
            ("acme", lines("http://login.acme.example", ""), "https"),
            ("acme", lines("https://10.0.0.7", ""), "public"),
            ("fake", lines(&fake, ""), "exists already"),
            ("acme", lines(&fake, "colour = \"blue\""), "colour"),
            ("acme", lines(&fake, "account_id_pointer = \"id\""), "JSON pointer"),
            ("Acme!", lines(&fake, ""), "names are"),
        ];
        for (name, settings, why) in cases {
            let r = add(name, settings, String::new()).await;
            assert_eq!(r.status, Status::UnprocessableEntity, "{why}: {}", r.text);
            assert!(r.text.contains("id=\"add-provider-error\"") && r.text.contains(why), "{why}: {}", r.text);
            assert!(r.text.contains(&format!("value=\"{name}\"")), "what was typed is shown again");
            assert!(!r.text.contains(common::CLIENT_SECRET), "never the secret");
        }
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0, "nothing saved");

        // By issuer: a discovery document naming another issuer, none at all, a huge one, a slow one.
        let mock = |route: &'static str, response: ResponseTemplate| Mock::given(path(route)).respond_with(response);
        let doc = |issuer: &str| {
            serde_json::json!({"issuer": issuer, "authorization_endpoint": format!("{fake}/authorize"),
                               "token_endpoint": format!("{fake}/token")})
        };
        app.fake
            .mount(mock(
                "/other/.well-known/openid-configuration",
                ResponseTemplate::new(200).set_body_json(doc("https://evil.example")),
            ))
            .await;
        app.fake
            .mount(mock(
                "/huge/.well-known/openid-configuration",
                ResponseTemplate::new(200).set_body_string("x".repeat(10 << 20)),
            ))
            .await;
        app.fake
            .mount(mock(
                "/slow/.well-known/openid-configuration",
                ResponseTemplate::new(200)
                    .set_body_json(doc(&format!("{fake}/slow")))
                    .set_delay(Duration::from_secs(30)),
            ))
            .await;
        for (issuer, why) in [
            (format!("{fake}/other"), "evil.example"),
            ("http://127.0.0.1:9".to_string(), "Issuer"),
            (format!("{fake}/huge"), "Issuer"),
            (format!("{fake}/slow"), "Issuer"),
        ] {
            let r = add("oidc", String::new(), issuer.clone()).await;
            assert_eq!(r.status, Status::UnprocessableEntity, "{issuer}: {}", r.text);
            assert!(r.text.contains(why), "{issuer}: {}", r.text);
        }
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0, "nothing saved");
        // A good issuer: its endpoints are shown for confirmation, nothing saved until then.
        app.fake
            .mount(mock(
                "/good/.well-known/openid-configuration",
                ResponseTemplate::new(200).set_body_json(doc(&format!("{fake}/good"))),
            ))
            .await;
        let r = add("good", String::new(), format!("{fake}/good")).await;
        assert_eq!(r.status, Status::Ok, "{}", r.text);
        assert!(r.text.contains("id=\"discovered-endpoints\"") && r.text.contains(&format!("{fake}/token")));
        assert!(!r.text.contains(common::CLIENT_SECRET));
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0, "nothing saved before confirmation");
        let settings = super::page_settings(&r.text);
        assert!(settings.contains(&format!("issuer = \"{fake}/good\"")), "{settings}");
        let r = add("good", settings, String::new()).await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        let r = root.post_form("/admin/providers/good/delete", &[("csrf_token", &csrf), ("version", "1")]).await;
        assert_eq!(r.status, Status::SeeOther);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0);

        // Added with its credentials: usable at once.
        let r = add("acme", lines(&fake, ""), String::new()).await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        let page = root.fetch("/admin/providers").await.text;
        let acme = row(&page, "acme");
        assert!(acme.contains(r#"data-origin="added" data-enabled="true" data-credentials="set""#), "{acme}");
        assert!(!page.contains(common::CLIENT_SECRET));
        app.fake.with_state(|s| s.service = Some("acme".into()));
        let alice = app.user("alice").await;
        alice.connect("acme").await;
        let page = root.fetch("/admin/providers").await.text;
        assert!(row(&page, "acme").contains("class=\"connections\">1"), "{}", row(&page, "acme"));

        // Edit: a stale form is a 409 and saves nothing; a fresh one saves.
        let csrf = root.csrf("/admin/providers").await;
        let edit = |version: &'static str, settings: String| {
            let (csrf, root) = (csrf.clone(), &root);
            async move {
                root.post_form(
                    "/admin/providers/acme",
                    &[("csrf_token", &csrf), ("version", version), ("settings", &settings)],
                )
                .await
            }
        };
        let r = edit("1", lines(&fake, "").replace("\"Acme\"", "\"Acme Corp\"")).await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        let r = edit("1", lines(&fake, "").replace("\"Acme\"", "\"Stale\"")).await;
        assert_eq!(r.status, Status::Conflict, "{}", r.text);
        let r = edit("2", lines("https://192.168.0.9", "")).await;
        assert_eq!(r.status, Status::UnprocessableEntity);
        assert!(r.text.contains("id=\"provider-error-acme\"") && r.text.contains("192.168.0.9"));
        assert!(alice.fetch("/").await.text.contains("Acme Corp"));

        // Test: each endpoint answers, the credentials are set; the secret is sent nowhere.
        let r = root.post_form("/admin/providers/acme/test", &[("csrf_token", &csrf)]).await;
        assert_eq!(r.status, Status::Ok);
        assert!(r.text.contains("id=\"test-results-acme\""), "{}", r.text);
        assert!(!r.text.contains("data-ok=\"false\""), "{}", r.text);
        assert!(r.text.contains("token_url") && r.text.contains("answers (HTTP"));
        let secret_sent = app.fake.all_requests().await.iter().any(|q| {
            String::from_utf8_lossy(&q.body).contains(common::CLIENT_SECRET)
                || q.url.as_str().contains(common::CLIENT_SECRET)
        });
        assert!(!secret_sent, "the test sends no credentials");

        // Disable: card gone, Redirector and API refuse, connection kept; enable restores.
        let r = root.post_form("/admin/providers/acme/disable", &[("csrf_token", &csrf), ("version", "2")]).await;
        assert_eq!(r.status, Status::SeeOther);
        assert!(!alice.fetch("/").await.text.contains(r#"data-service="acme""#));
        assert_eq!(alice.fetch("/services/acme/authorize").await.status, Status::Conflict);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM connections WHERE service = 'acme'"), 1);
        let page = root.fetch("/admin/providers").await.text;
        assert!(row(&page, "acme").contains(r#"data-enabled="false""#));
        assert!(page.contains("id=\"enable-provider-acme\""));
        let r = root.post_form("/admin/providers/acme/enable", &[("csrf_token", &csrf), ("version", "3")]).await;
        assert_eq!(r.status, Status::SeeOther);
        assert!(alice.fetch("/").await.text.contains(r#"data-service="acme""#));

        // Delete: refused with a connection unless the box is ticked; then revoked and deleted.
        let r = root.post_form("/admin/providers/acme/delete", &[("csrf_token", &csrf), ("version", "4")]).await;
        assert_eq!(r.status, Status::SeeOther);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 1, "refused: it has a connection");
        let r = root
            .post_form(
                "/admin/providers/acme/delete",
                &[("csrf_token", &csrf), ("version", "4"), ("with_connections", "true")],
            )
            .await;
        assert_eq!(r.status, Status::SeeOther);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM connections WHERE service = 'acme'"), 0);
        assert_eq!(app.fake.requests_to("/revoke").await.len(), 1, "revoked at the provider");
        assert_eq!(alice.fetch("/services/acme/authorize").await.status, Status::NotFound);
        assert_eq!(
            app.count("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'provider.changed'"),
            7,
            "good added and deleted; acme added, edited, disabled, enabled, deleted"
        );
    }

    /// A configured provider edited on the page and reverted: its Rocket.toml table applies again.
    #[tokio::test]
    async fn a_configured_provider_is_edited_then_reverted() {
        let app = common::TestApp::start().await;
        let root = app.user("root").await;
        let csrf = root.csrf("/admin/providers").await;
        let r = root
            .post_form(
                "/admin/providers/fake",
                &[("csrf_token", &csrf), ("version", "0"), ("settings", "display_name = \"Renamed\"")],
            )
            .await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        let page = root.fetch("/admin/providers").await.text;
        assert!(row(&page, "fake").contains(r#"data-origin="edited""#));
        assert!(page.contains("Renamed") && page.contains("id=\"revert-provider-fake\""));
        assert!(!page.contains("id=\"delete-provider-fake\""), "a configured provider is not deleted here");
        let r = root.post_form("/admin/providers/fake/revert", &[("csrf_token", &csrf), ("version", "1")]).await;
        assert_eq!(r.status, Status::SeeOther);
        let page = root.fetch("/admin/providers").await.text;
        assert!(row(&page, "fake").contains(r#"data-origin="config""#));
        assert!(!page.contains("Renamed"));
    }

    /// Deleting an added provider takes its name off the API keys and grants limited to it, and
    /// revokes those limited to it alone (recorded with reason `provider_deleted`): a later
    /// provider of the same name inherits none of them (issue 22). No list is ever emptied into
    /// NULL, which would mean every service.
    #[tokio::test]
    async fn deleting_a_provider_takes_it_off_keys_and_grants_and_revokes_those_left_with_nothing() {
        use crate::oauth_server::{authorize_url, consent, pkce, register, REDIRECT};
        let app = common::builder().set("webhook_private_urls", false).start().await;
        let root = app.user("root").await;
        let csrf = root.csrf("/admin/providers").await;
        let fields = [
            ("csrf_token", csrf.as_str()),
            ("name", "acme"),
            ("issuer", ""),
            ("client_id", common::CLIENT_ID),
            ("client_secret", common::CLIENT_SECRET),
            ("settings", &lines(&app.fake.uri(), "")),
        ];
        let r = root.post_form("/admin/providers", &fields).await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        app.exec(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash, created_at, services) VALUES \
             (1, 'only', 'tvs_a', 'h1', 1, 'acme'), (1, 'two', 'tvs_b', 'h2', 1, 'acme fake'), \
             (1, 'other', 'tvs_c', 'h3', 1, 'fake'), (1, 'all', 'tvk_d', 'h4', 1, NULL), \
             (1, 'alike', 'tvs_e', 'h5', 1, 'acmeish')",
        );
        let client_id = register(&app, &[REDIRECT]).await;
        for scope in ["proxy:read service:acme", "proxy:read service:acme service:fake"] {
            let (_, challenge) = pkce();
            consent(&root, &authorize_url(&client_id, REDIRECT, Some(&challenge), &[("scope", scope)]), |_| {}).await;
        }
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM authz_grants WHERE revoked_at IS NULL"), 2);

        let r = root.post_form("/admin/providers/acme/delete", &[("csrf_token", &csrf), ("version", "1")]).await;
        assert_eq!(r.status, Status::SeeOther, "{}", r.text);
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM providers"), 0);
        let key = |name: &str| {
            let sql = format!(
                "SELECT COALESCE(services, '<all>') || CASE WHEN revoked_at IS NULL THEN '' ELSE ' revoked' END AS t \
                 FROM api_keys WHERE name = '{name}'"
            );
            app.text(&sql)
        };
        assert_eq!(key("only"), "acme revoked", "left with nothing: revoked, its list kept");
        assert_eq!(key("two"), "fake");
        assert_eq!(key("other"), "fake");
        assert_eq!(key("all"), "<all>", "no list: every service, untouched");
        assert_eq!(key("alike"), "acmeish", "another name");
        let grants =
            "SELECT COALESCE(services, '<all>') || CASE WHEN revoked_at IS NULL THEN '' ELSE ' revoked' END AS t \
                      FROM authz_grants ORDER BY id";
        assert_eq!(app.text(grants), "acme revoked");
        assert_eq!(
            app.count("SELECT COUNT(*) AS n FROM authz_grants WHERE services = 'fake' AND revoked_at IS NULL"),
            1
        );
        let reason = "detail LIKE '%\"reason\":\"provider_deleted\"%'";
        assert_eq!(
            app.count(&format!("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'api_key.revoked' AND {reason}")),
            1
        );
        assert_eq!(
            app.count(&format!("SELECT COUNT(*) AS n FROM audit_log WHERE kind = 'grant.revoked' AND {reason}")),
            1
        );
        assert_eq!(app.count("SELECT COUNT(*) AS n FROM webhook_events WHERE event_type = 'grant.revoked'"), 1);
    }
}

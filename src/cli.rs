//! Administration commands on the same binary and configuration as the server.

use crate::util::ExposeSecret;
use std::io::{BufRead, IsTerminal};

use clap::{Parser, Subcommand};

use crate::app::{figment, prepare};
use crate::auth::accounts;
use crate::db::{self, Conn};
use crate::util::Secret;
use crate::vault::store as vault;

mod providers;
pub use providers::ProviderCommand;

#[derive(Debug, Parser)]
#[command(name = "tokenvault", version, about = "Connect third-party OAuth 2.0 accounts and use them safely")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the web server (the default).
    Serve,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage the project vault (client ids and secrets).
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Manage personal API keys.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// Print a new random key for `vault_key` (or, with --secret-key, for Rocket's `secret_key`).
    Keygen {
        #[arg(long)]
        secret_key: bool,
    },
    /// Copy the SQLite database, consistently, while the server runs, into a new file (mode
    /// 0600). On PostgreSQL, explains how to use `pg_dump` instead (and exits non-zero).
    Backup { file: std::path::PathBuf },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage providers: presets, list, show, add, edit, disable, enable, revert, delete (as
    /// /admin/providers does; running servers follow within seconds, no restart).
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
    },
    /// Check the configuration as `serve` would, open the database, verify the vault key, and
    /// list every provider with the redirect URI to register and whether its credentials are set.
    /// Exits non-zero naming the first problem.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the chain from its anchor: exit 0 printing the count when intact, else non-zero
    /// naming the first bad entry and why. With checkpoints, also fail when the log no longer
    /// holds a checkpoint's entry with its hash (or ends before it).
    Verify {
        /// A checkpoint `<seq>:<hash>` (from the app log's `audit checkpoint` line or a webhook
        /// event) the log must still hold (repeat for several).
        #[arg(long = "checkpoint", value_name = "SEQ:HASH")]
        checkpoints: Vec<String>,
        /// A file of checkpoint lines (`audit_checkpoint_file`, or the `data` of `audit.checkpoint`
        /// events one a line): every line is checked, its signature first (repeat for several).
        #[arg(long = "checkpoint-file", value_name = "FILE")]
        checkpoint_files: Vec<std::path::PathBuf>,
    },
    /// Print the newest entries, oldest first (`--json`: one JSON object a line).
    Tail {
        #[arg(short = 'n', default_value_t = 20)]
        n: i64,
        #[arg(long)]
        json: bool,
    },
    /// Publish a checkpoint of the log's head now: print its line, append it to
    /// `audit_checkpoint_file` when set, log it, and record an `audit.checkpoint` webhook event
    /// (delivered by a running server).
    Checkpoint,
    /// Archive a log that does not verify (every entry, its head and sealed chain key, as JSON
    /// lines in a new file of mode 0600) and start a new one after it, whose first entry
    /// (`audit.restarted`) records why, what was found and the archive's SHA-256. Refused while
    /// the log verifies.
    Restart {
        /// The archive to write (must not exist).
        #[arg(long, value_name = "FILE")]
        archive: std::path::PathBuf,
        /// Why: recorded in the new log's first entry.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from standard input (one line; no echo on a terminal).
    /// `--admin` makes an administrator (outside the debug profile the only way to get the first one).
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// Rename a user: NAME exactly (or any case of it, when only one user has it) becomes
    /// NEW_NAME, which no other user may have in any case. The way to resolve users whose names
    /// differ only in case, which keep tokenvault from starting: it works before that upgrade step.
    Rename { name: String, new_name: String },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a user and print it (once). Without limits it may do everything the
    /// user may; `--service`, `--scope` and `--expires` limit it.
    Create {
        username: String,
        name: String,
        /// Limit the key to this service (repeat for several).
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// Limit the key to this capability: connections:read, token:read, proxy or proxy:read (repeat for several).
        #[arg(long = "scope", value_name = "CAPABILITY")]
        scopes: Vec<String>,
        /// Make the key stop working after this long: 90m, 12h, 30d, 2w.
        #[arg(long, value_name = "LIFETIME")]
        expires: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Set a value; `-` reads it from standard input.
    Set { path: String, value: String },
    /// List the keys that are set (never their values).
    List,
    /// Re-encrypt every secret (vault entries, users' tokens) under the active `vault_key`.
    /// Put the previous key in `vault_old_keys` first; remove it once this has finished.
    RotateKey,
}

fn read_secret(prompt: &str) -> Result<Secret, String> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map(crate::util::secret)
            .map_err(|e| format!("cannot read the password: {e}"))
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(crate::util::secret(line.trim_end_matches(['\r', '\n']).to_string()))
    }
}

/// The configuration and one database connection of its own (no pool: a command is one short
/// sequence of queries, and a pool's background threads could still be connecting at exit),
/// after checking that the vault key opens this database.
fn open() -> Result<(Conn, crate::app::Prepared), String> {
    let prepared = prepare(figment()).map_err(|e| e.to_string())?;
    let mut conn = db::connect(&prepared.settings.database_url)?;
    crate::vault::rotation::verify_key(&mut conn, &prepared.cipher)?;
    // A new database's audit log starts here as at the server's start. A log that cannot be
    // extended is not an error yet: a command that records fails on it with what to do, and
    // `audit verify`/`restart` are how to look into it.
    if let Err(e) = crate::audit::open(&mut conn, &prepared.cipher) {
        tracing::debug!("audit log: {e}");
    }
    Ok((conn, prepared))
}

/// Run a non-server command; the text to print on success.
pub fn run(command: Command) -> Result<String, String> {
    match command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Keygen { secret_key } => {
            Ok(if secret_key { crate::util::random_key_b64(64) } else { crate::vault::Cipher::generate_key() })
        }
        Command::User { command: UserCommand::Add { name, admin } } => user_add(name, admin),
        Command::User { command: UserCommand::Rename { name, new_name } } => user_rename(name, new_name),
        Command::Vault { command: VaultCommand::Set { path, value } } => vault_set(path, value),
        Command::ApiKey { command: ApiKeyCommand::Create { username, name, services, scopes, expires } } => {
            api_key_create(username, name, services, scopes, expires)
        }
        Command::Vault { command: VaultCommand::RotateKey } => vault_rotate_key(),
        Command::Backup { file } => backup(file),
        Command::Check => check(),
        Command::Audit { command: AuditCommand::Verify { checkpoints, checkpoint_files } } => {
            let (mut conn, prepared) = open()?;
            audit_verify(&mut conn, &prepared.cipher, &checkpoints, &checkpoint_files)
        }
        Command::Audit { command: AuditCommand::Checkpoint } => audit_checkpoint(),
        Command::Audit { command: AuditCommand::Restart { archive, reason } } => audit_restart(archive, reason),
        Command::Audit { command: AuditCommand::Tail { n, json } } => audit_tail(n, json),
        Command::Vault { command: VaultCommand::List } => vault_list(),
        Command::Provider { command } => providers::run(command),
    }
}

/// `tokenvault user add NAME [--admin]`: a new account, its password read from the terminal.
fn user_add(name: String, admin: bool) -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let password = read_secret(&format!("Password for {name}: "))?;
    // Synchronous and alone: the CLI hashes directly, before it takes a connection.
    accounts::check_new(&name, &password).map_err(cli_error)?;
    let hash = crate::auth::password::hash_blocking(&password).map_err(cli_error)?;
    let role = if admin {
        accounts::Role::Admin
    } else if prepared.settings.dev_mode {
        accounts::Role::FirstIsAdmin
    } else {
        accounts::Role::User
    };
    let user = accounts::add_from_cli(&mut conn, &prepared.cipher, &name, &hash, role).map_err(cli_error)?;
    Ok(format!("created user {} (id {}{})", user.username, user.id, if user.is_admin { ", admin" } else { "" }))
}

/// `tokenvault user rename NAME NEW_NAME`: also on a database that names differing only in case keep from starting.
fn user_rename(name: String, new_name: String) -> Result<String, String> {
    let prepared = prepare(figment()).map_err(|e| e.to_string())?;
    // Migrated up to (not into) a step that names differing only in case would block.
    let mut conn = db::connect_for_repair(&prepared.settings.database_url)?;
    crate::vault::rotation::verify_key(&mut conn, &prepared.cipher)?;
    let id = accounts::rename(&mut conn, &prepared.cipher, &name, &new_name).map_err(cli_error)?;
    let left = crate::db::models::users::case_collisions(&mut conn).map_err(|e| e.to_string())?;
    let mut out = format!("renamed user {name} (id {id}) to {}", accounts::clean_username(&new_name));
    if !left.is_empty() {
        out.push_str(&format!("\nstill to rename before tokenvault starts: {}", db::collision_groups(&left)));
    }
    Ok(out)
}

/// `tokenvault vault set PATH VALUE|-`: a secret into the project vault.
fn vault_set(path: String, value: String) -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let value = if value == "-" { read_secret(&format!("Value for {path}: "))? } else { crate::util::secret(value) };
    vault::set_recorded(&mut conn, &prepared.cipher, &path, &value, crate::changes::Actor::Cli, "cli")
        .map_err(cli_error)?
        // The CLI caches nothing and runs no worker: the recorded rows tell the servers.
        .recorded_only();
    Ok(format!("{path} set"))
}

/// `tokenvault api-key create`: a scoped key for a user; the key alone on standard output.
fn api_key_create(
    username: String,
    name: String,
    services: Vec<String>,
    scopes: Vec<String>,
    expires: Option<String>,
) -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let scope = crate::auth::api_key::KeyScope::from_input(
        &services,
        &scopes,
        expires.as_deref(),
        |s| prepared.catalog.get(s).is_some(),
        crate::util::now(),
    )?;
    let user = crate::db::models::users::find_by_username(&mut conn, &username)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user named {username}"))?;
    let max_keys = prepared.settings.api.max_keys_per_user;
    let cli = crate::audit::Actor::Cli;
    let created = crate::auth::api_key::create(&mut conn, &prepared.cipher, cli, user.id, &name, &scope, max_keys)
        .map_err(cli_error)?;
    for old in &created.evicted {
        // On standard error: standard output is the key alone, for scripts.
        eprintln!(
            "revoked the oldest key \"{}\" ({}…): {username} can have {max_keys} keys at most",
            old.name, old.prefix
        );
    }
    Ok(created.key.expose_secret().to_string())
}

/// `tokenvault vault rotate-key`: every sealed value re-sealed under the active key.
fn vault_rotate_key() -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let done = crate::changes::rotate_vault_key(&mut conn, &prepared.cipher, |what, n| {
        eprintln!("re-encrypted {n} {what}");
    })
    .map_err(|e| e.to_string())?;
    Ok(format!(
        "rotation complete under key {}: {} vault entries, {} connections, {} flows, {} webhook secrets, \
         {} tokens waiting to be revoked re-encrypted; the old key can now be removed from vault_old_keys",
        prepared.cipher.active_key_id(),
        done.vault_entries,
        done.connections,
        done.flows,
        done.webhook_secrets,
        done.retired_tokens
    ))
}

/// `tokenvault backup FILE`: a consistent copy of a SQLite database.
fn backup(file: std::path::PathBuf) -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let backup = crate::db::backup::sqlite(&mut conn, &file)?;
    let rows: Vec<String> = backup.tables.iter().map(|(table, n)| format!("  {table}: {n}")).collect();
    Ok(format!(
        "wrote {} ({} bytes, mode 0600), a consistent copy of {}:\n{}\n\
         Its secrets are sealed with the vault key {}: keep that key backed up separately (not next to \
         this file); a restore needs both.",
        backup.path.display(),
        backup.bytes,
        prepared.settings.database_url,
        rows.join("\n"),
        prepared.cipher.active_key_id(),
    ))
}

/// `tokenvault audit checkpoint`: publish a checkpoint of the audit log now.
fn audit_checkpoint() -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    let file = prepared.settings.audit.checkpoint_file.as_deref();
    // The endpoints in effect, edits on /admin/webhooks included.
    prepared.webhooks.reload(&mut conn, &prepared.cipher).map_err(cli_error)?;
    let hooks = &prepared.webhooks;
    let cipher = &prepared.cipher;
    let published = crate::audit::checkpoint::publish(&mut conn, cipher, file, &|conn, c| {
        // The CLI runs no worker: the servers' workers deliver the recorded event.
        crate::changes::checkpoint_event(conn, cipher, hooks, c).map(crate::changes::Committed::recorded_only)
    })
    .map_err(cli_error)?
    .map_err(|broken| format!("no checkpoint: {}", crate::audit::unusable(&broken)))?;
    for problem in &published.problems {
        eprintln!("not published to {problem}");
    }
    if !published.problems.is_empty() {
        return Err(format!("checkpoint {} not published everywhere", published.checkpoint.short()));
    }
    Ok(published.checkpoint.line())
}

/// `tokenvault audit restart --archive FILE --reason TEXT`: archive a broken log and begin again, on the record.
fn audit_restart(archive: std::path::PathBuf, reason: String) -> Result<String, String> {
    let (mut conn, prepared) = open()?;
    if reason.trim().is_empty() {
        return Err("--reason must say why the log is restarted".into());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file =
        options.open(&archive).map_err(|e| format!("cannot create the archive {}: {e}", archive.display()))?;
    let done = match crate::audit::restart(&mut conn, &prepared.cipher, reason.trim(), &mut file) {
        Ok(done) => done,
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&archive);
            return Err(cli_error(e));
        }
    };
    file.sync_all().map_err(|e| format!("cannot write the archive {}: {e}", archive.display()))?;
    Ok(format!(
        "audit log restarted after entry {}: {} entries archived to {} (SHA-256 {}), recorded in the new log's \
         first entry. What was wrong: {}. Publish a checkpoint now (`tokenvault audit checkpoint`) and start \
         a new checkpoint file: the old checkpoints name the archived log.",
        done.anchor,
        done.archived,
        archive.display(),
        done.archive_sha256,
        done.broken
    ))
}

/// `tokenvault audit tail [-n N] [--json]`: the newest entries, oldest first.
fn audit_tail(n: i64, json: bool) -> Result<String, String> {
    let (mut conn, _) = open()?;
    let filter = crate::db::models::audit::Filter::default();
    let mut rows = crate::db::models::audit::list(&mut conn, &filter, n.clamp(1, 10_000)).map_err(|e| e.to_string())?;
    rows.reverse();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            if json {
                serde_json::to_string(r).unwrap_or_default()
            } else {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    crate::audit::when(r.at, r.at_last),
                    r.kind,
                    r.actor,
                    r.service.as_deref().unwrap_or("-"),
                    r.address.as_deref().unwrap_or("-"),
                    r.detail
                )
            }
        })
        .collect();
    Ok(lines.join("\n"))
}

/// `tokenvault vault list`: the vault's paths (never their values).
fn vault_list() -> Result<String, String> {
    let (mut conn, _) = open()?;
    let entries = vault::list(&mut conn).map_err(cli_error)?;
    Ok(entries
        .iter()
        .map(|e| format!("{}\t(updated {} by {})", e.path, crate::util::format_utc(e.updated_at), e.updated_by))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// `tokenvault check`: every step `serve` takes before it listens, each reported on stdout; the
/// first problem is the error (and the exit status).
fn check() -> Result<String, String> {
    let prepared = prepare(figment()).map_err(|e| format!("configuration: {e}"))?;
    let http = check_configuration(&prepared)?;
    let mut conn = check_database(&prepared)?;
    let problems = check_providers(prepared, &mut conn, &http)?;
    match problems.into_iter().next() {
        Some(first) => Err(first),
        None => Ok("check passed".to_string()),
    }
}

/// `check`, first step: the configuration Rocket and the templates read; the outbound client.
fn check_configuration(prepared: &crate::app::Prepared) -> Result<crate::oauth::http::Outbound, String> {
    let settings = &prepared.settings;
    prepared
        .figment
        .extract::<rocket::Config>()
        .map_err(|e| format!("configuration: {}", crate::config::describe(e)))?;
    crate::assets::template_root(settings.template_dir.as_deref())
        .map_err(|e| format!("configuration: `template_dir`: {e}"))?;
    let http =
        crate::oauth::http::Outbound::new(&settings.http).map_err(|e| format!("configuration: `http_timeout`: {e}"))?;
    println!("configuration: ok (profile {}, public_url {})", settings.profile, settings.public_url);
    let overrides = [("template_dir", &settings.template_dir), ("static_dir", &settings.static_dir)];
    for (key, dir) in overrides {
        match dir {
            Some(dir) => println!("{key}: {} (its files override the built-in ones)", dir.display()),
            None => println!("{key}: not set (the files built into tokenvault)"),
        }
    }

    Ok(http)
}

/// `check`, second step: the database, the vault key that opens it, and its audit log.
fn check_database(prepared: &crate::app::Prepared) -> Result<crate::db::Conn, String> {
    let settings = &prepared.settings;
    // One connection of its own, as every CLI command (no pool threads left running at exit).
    let mut conn = crate::db::connect(&settings.database_url).map_err(|e| format!("database: {e}"))?;
    println!(
        "database: ok ({:?}, {}, migrations applied)",
        conn.backend(),
        crate::util::redact_url(&settings.database_url)
    );
    let key_check =
        crate::vault::rotation::verify_key(&mut conn, &prepared.cipher).map_err(|e| format!("vault key: {e}"))?;
    let key_id = prepared.cipher.active_key_id();
    let audit = crate::audit::open(&mut conn, &prepared.cipher).map_err(|e| format!("audit log: {e}"))?;
    match key_check {
        crate::vault::rotation::KeyCheck::Active => println!("vault key: ok (key {key_id} opens this database)"),
        crate::vault::rotation::KeyCheck::Created => {
            println!("vault key: ok (a new database: its key check was recorded with key {key_id})")
        }
        crate::vault::rotation::KeyCheck::OldKey => {
            println!("vault key: ok, but secrets are still sealed with an old key: run `tokenvault vault rotate-key`")
        }
    }
    match audit {
        Ok(head) => println!("audit log: ok (its head, at entry {}, verifies)", head.seq),
        Err(broken) => return Err(format!("audit log: {}", crate::audit::unusable(&broken))),
    }

    Ok(conn)
}

/// `check`, last step: every provider (discovered as at start) and its client credentials; the
/// problems found, in order.
fn check_providers(
    prepared: crate::app::Prepared,
    conn: &mut crate::db::Conn,
    http: &crate::oauth::http::Outbound,
) -> Result<Vec<String>, String> {
    let settings = &prepared.settings;
    // Providers configured by `issuer` alone are resolved by OpenID Connect discovery, as at start.
    let mut catalog = prepared.catalog;
    let runtime = rocket::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start an async runtime: {e}"))?;
    runtime.block_on(catalog.discover(http));
    let configured = crate::config::RawConfig::from_figment(&prepared.figment).map_err(|e| e.to_string())?.providers;
    let mut problems = Vec::new();
    for name in configured.keys().filter(|name| catalog.get(name).is_none()) {
        problems.push(format!("provider {name}: OpenID Connect discovery failed (see the log above)"));
    }
    // With the providers added, edited and disabled in the app (the `providers` table).
    let live = crate::oauth::managed::LiveCatalog::new(configured, catalog);
    live.reload(conn).map_err(cli_error)?;
    for e in live.entries().iter() {
        match &e.provider {
            Err(why) if e.origin != crate::oauth::managed::Origin::Config => {
                problems.push(format!("provider {} ({} in the app): {why}", e.name, e.origin.as_str()))
            }
            Ok(_) if !e.enabled => println!("  {} is disabled in the app (its connections are kept)", e.name),
            _ => {}
        }
    }
    let catalog = live.current();
    println!("providers:");
    if catalog.iter().next().is_none() {
        problems.push("no providers are configured: add a `[<profile>.providers.<name>]` table".to_string());
    }
    for provider in catalog.iter() {
        let credentials = if provider.is_demo {
            "built in (created at start)".to_string()
        } else {
            let stored = vault::client_credentials(conn, &prepared.cipher, &provider.name).map_err(cli_error)?;
            let missing = match &stored {
                None => Some(provider.client_id_path()),
                Some(c) if c.client_secret.is_none() => Some(provider.client_secret_path()),
                Some(_) => None,
            };
            match missing {
                None => "set".to_string(),
                Some(path) => {
                    problems.push(format!(
                        "provider {}: `{path}` is not set in the vault (`tokenvault vault set {path} -`)",
                        provider.name
                    ));
                    format!("MISSING {path}")
                }
            }
        };
        println!(
            "  {} ({}): redirect URI {} ; client credentials: {credentials}",
            provider.name,
            provider.display_name,
            settings.redirect_uri(&provider.name)
        );
    }
    Ok(problems)
}

/// `tokenvault audit verify [--checkpoint S:H]… [--checkpoint-file F]…`: the chain's verdict, then
/// one line per checkpoint; `Err` (exit 1) with the whole report when the chain is broken or a
/// checkpoint fails (not held, malformed, or a forged line).
fn audit_verify(
    conn: &mut Conn,
    cipher: &crate::vault::Cipher,
    checkpoints: &[String],
    files: &[std::path::PathBuf],
) -> Result<String, String> {
    let report = crate::audit::verify_report(conn, cipher).map_err(cli_error)?;
    let headline = match &report.result {
        Ok(n) if report.head.anchor_id > 0 => {
            format!("audit log intact: {n} entries (entries {} to {})", report.head.anchor_id + 1, report.head.seq)
        }
        Ok(n) => format!("audit log intact: {n} entries"),
        Err(broken) if broken.id().is_some() => format!("audit log broken at {broken}"),
        Err(broken) => format!("audit log broken: {broken}"),
    };
    let mut v = Verification { conn, report: &report, lines: vec![headline], failed: report.result.is_err() };
    for text in checkpoints {
        v.claim(text)?;
    }
    for file in files {
        v.file(file, cipher)?;
    }
    let text = v.lines.join("\n");
    if v.failed {
        Err(text)
    } else {
        Ok(text)
    }
}

/// `audit verify`'s findings so far: one line each, and whether any failed.
struct Verification<'a> {
    conn: &'a mut Conn,
    report: &'a crate::audit::Report,
    lines: Vec<String>,
    failed: bool,
}

impl Verification<'_> {
    fn note(&mut self, line: String, failure: bool) {
        self.failed |= failure;
        self.lines.push(line);
    }

    /// One checkpoint (`seq`, `hash`) against the log.
    fn check(&mut self, what: String, seq: i64, hash: &str) -> Result<(), String> {
        let (head, moved) = (&self.report.head, self.report.anchor_moved_by.as_ref());
        let finding = crate::audit::checkpoint::check(self.conn, head, moved, seq, hash).map_err(cli_error)?;
        if finding.is_failure() {
            self.note(format!("{what}: FAILED — {finding}"), true);
        } else {
            self.note(format!("{what}: ok — {finding}"), false);
        }
        Ok(())
    }

    /// `--checkpoint SEQ:HASH`.
    fn claim(&mut self, text: &str) -> Result<(), String> {
        match crate::audit::checkpoint::parse_claim(text) {
            Ok((seq, hash)) => self.check(format!("checkpoint {seq}:{hash}"), seq, &hash),
            Err(e) => {
                self.note(format!("checkpoint `{text}`: FAILED — {e}"), true);
                Ok(())
            }
        }
    }

    /// `--checkpoint-file F`: every line of it, its signature checked first.
    fn file(&mut self, file: &std::path::Path, cipher: &crate::vault::Cipher) -> Result<(), String> {
        use crate::audit::checkpoint::{self, Authenticity};
        let entries = checkpoint::read_file(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if entries.is_empty() {
            self.lines.push(format!("{}: no checkpoints in it", file.display()));
        }
        for (n, parsed) in entries {
            let what = format!("{} line {n}", file.display());
            let c = match parsed {
                Ok(c) => c,
                Err(e) => {
                    self.note(format!("{what}: FAILED — {e}"), true);
                    continue;
                }
            };
            let what = format!("{what} (checkpoint {})", c.short());
            match c.authenticity(cipher) {
                Authenticity::Valid => self.check(what, c.seq, &c.hash)?,
                Authenticity::Forged => self.note(
                    format!(
                        "{what}: FAILED — its signature does not verify with vault key {}: tokenvault did not write \
                         this line (forged or damaged)",
                        c.key_id
                    ),
                    true,
                ),
                Authenticity::UnknownKey => {
                    let unsigned = format!(
                        "{what}: signed with vault key {}, which is not configured (rotated away?): not \
                         authenticated, compared with the log all the same",
                        c.key_id
                    );
                    self.note(unsigned, false);
                    self.check(what, c.seq, &c.hash)?;
                }
            }
        }
        Ok(())
    }
}

/// An error as the operator at the terminal should read it: the whole of it (the web app shows a
/// generic message and logs the detail; the CLI has no log to point to).
fn cli_error(e: crate::error::AppError) -> String {
    match e {
        crate::error::AppError::BadRequest(message)
        | crate::error::AppError::Refused(message)
        | crate::error::AppError::Conflict(message) => message,
        other => other.to_string(),
    }
}

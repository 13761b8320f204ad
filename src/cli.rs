//! Administration commands on the same binary and configuration as the server.

use std::io::{BufRead, IsTerminal};

use clap::{Parser, Subcommand};

use crate::app::{figment, prepare};
use crate::auth::accounts;
use crate::db::Db;
use crate::util::Secret;
use crate::vault::store as vault;

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
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for a user and print it (once).
    Create { username: String, name: String },
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
        rpassword::prompt_password(prompt).map(Secret::new).map_err(|e| format!("cannot read the password: {e}"))
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read standard input: {e}"))?;
        Ok(Secret::new(line.trim_end_matches(['\r', '\n']).to_string()))
    }
}

fn open() -> Result<(Db, crate::app::Prepared), String> {
    let prepared = prepare(figment()).map_err(|e| e.to_string())?;
    let db = Db::open(&prepared.settings.database_url)?;
    let mut conn = db.conn().map_err(|e| e.to_string())?;
    crate::vault::rotation::verify_key(&mut conn, &prepared.cipher)?;
    drop(conn);
    Ok((db, prepared))
}

/// Run a non-server command; the text to print on success.
pub fn run(command: Command) -> Result<String, String> {
    match command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Keygen { secret_key } => {
            Ok(if secret_key { crate::util::random_key_b64(64) } else { crate::vault::Cipher::generate_key() })
        }
        Command::User { command: UserCommand::Add { name, admin } } => {
            let (db, prepared) = open()?;
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
            let mut conn = db.conn().map_err(|e| e.to_string())?;
            let user = accounts::create(&mut conn, &name, &hash, role).map_err(cli_error)?;
            Ok(format!("created user {} (id {}{})", user.username, user.id, if user.is_admin { ", admin" } else { "" }))
        }
        Command::Vault { command: VaultCommand::Set { path, value } } => {
            let (db, prepared) = open()?;
            let value = if value == "-" { read_secret(&format!("Value for {path}: "))? } else { Secret::new(value) };
            let mut conn = db.conn().map_err(|e| e.to_string())?;
            vault::set(&mut conn, &prepared.cipher, &path, value.expose(), "cli").map_err(cli_error)?;
            Ok(format!("{path} set"))
        }
        Command::ApiKey { command: ApiKeyCommand::Create { username, name } } => {
            let (db, _) = open()?;
            let mut conn = db.conn().map_err(|e| e.to_string())?;
            let user = crate::db::models::users::find_by_username(&mut conn, &username)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no user named {username}"))?;
            let (_, key) = crate::auth::api_key::create(&mut conn, user.id, &name).map_err(cli_error)?;
            Ok(key.expose().to_string())
        }
        Command::Vault { command: VaultCommand::RotateKey } => {
            let (db, prepared) = open()?;
            let mut conn = db.conn().map_err(|e| e.to_string())?;
            let done = crate::vault::rotation::rotate(&mut conn, &prepared.cipher, |what, n| {
                eprintln!("re-encrypted {n} {what}");
            })
            .map_err(|e| e.to_string())?;
            Ok(format!(
                "rotation complete under key {}: {} vault entries, {} connections, {} flows re-encrypted; \
                 the old key can now be removed from vault_old_keys",
                prepared.cipher.active_key_id(),
                done.vault_entries,
                done.connections,
                done.flows
            ))
        }
        Command::Vault { command: VaultCommand::List } => {
            let (db, _) = open()?;
            let mut conn = db.conn().map_err(|e| e.to_string())?;
            let entries = vault::list(&mut conn).map_err(cli_error)?;
            Ok(entries
                .iter()
                .map(|e| format!("{}\t(updated {} by {})", e.path, crate::util::format_utc(e.updated_at), e.updated_by))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }
}

/// An error as the operator at the terminal should read it: the whole of it (the web app shows a
/// generic message and logs the detail; the CLI has no log to point to).
fn cli_error(e: crate::error::AppError) -> String {
    match e {
        crate::error::AppError::BadRequest(message) => message,
        other => other.to_string(),
    }
}

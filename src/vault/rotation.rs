//! The vault key check and key rotation.
//!
//! A database remembers a value sealed with its vault key. At start the configured key ring must
//! open it, or tokenvault refuses to start (a wrong key would otherwise fail on every secret).
//! `tokenvault vault rotate-key` re-encrypts every sealed value (vault entries, users' tokens,
//! flows in flight, tokens waiting to be revoked) under the active key, in batches of one transaction each, and then moves the
//! key check to the active key; the old key can then be removed from `vault_old_keys`.

use crate::db::models::connections::RowRef;
use crate::db::models::vault as vault_model;
use crate::db::models::{connections, flows, meta, revocations, webhook_endpoints};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::now;
use crate::util::ExposeSecret;
use crate::vault::{Aad, Cipher, VaultError};

const KEY_CHECK: &str = "vault_key_check";
const KEY_CHECK_PLAINTEXT: &str = "tokenvault vault key check";
const BATCH: i64 = 200;

#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// First start: the check was written with the active key.
    Created,
    /// The active key opens it.
    Active,
    /// Only an old key opens it: secrets still need `tokenvault vault rotate-key`.
    OldKey,
}

/// Check (or create) the key check. `Err` means the key ring cannot open this database's secrets.
pub fn verify_key(conn: &mut Conn, cipher: &Cipher) -> Result<KeyCheck, String> {
    let stored = meta::get(conn, KEY_CHECK).map_err(|e| e.to_string())?;
    let Some(sealed) = stored else {
        meta::set(conn, KEY_CHECK, &cipher.seal_str(KEY_CHECK_PLAINTEXT, Aad::KeyCheck), now())
            .map_err(|e| e.to_string())?;
        return Ok(KeyCheck::Created);
    };
    match cipher.open(&sealed, Aad::KeyCheck) {
        Ok(v) if v.expose_secret() == KEY_CHECK_PLAINTEXT => {
            Ok(if cipher.needs_rotation(&sealed) { KeyCheck::OldKey } else { KeyCheck::Active })
        }
        Ok(_) | Err(VaultError::Decrypt) | Err(VaultError::Malformed) | Err(VaultError::UnknownKey(_)) => {
            Err("the configured vault_key does not open this database's secrets (wrong key?). Set the key it was \
             created with; to change keys, add the old one to vault_old_keys and run `tokenvault vault rotate-key`"
                .into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// How many values a rotation re-encrypted, by table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotated {
    pub vault_entries: usize,
    pub connections: usize,
    pub flows: usize,
    /// Secrets of webhook endpoints edited on `/admin/webhooks` (current and previous).
    pub webhook_secrets: usize,
    /// Replaced or discarded tokens waiting to be revoked (`token_revocations`).
    pub retired_tokens: usize,
}

/// The `meta` rows that hold a sealed value, with the associated data each is sealed with.
const SEALED_META: [(&str, Aad<'static>); 1] = [(crate::vault::AUDIT_CHAIN_KEY, Aad::AuditChainKey)];

fn reseal(cipher: &Cipher, sealed: &[u8], aad: Aad<'_>) -> AppResult<Option<Vec<u8>>> {
    if !cipher.needs_rotation(sealed) {
        return Ok(None);
    }
    let plain = cipher.open(sealed, aad)?;
    Ok(Some(cipher.seal_str(plain.expose_secret(), aad)))
}

/// A connection whose tokens a rotation re-sealed: cached copies hold the old ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resealed {
    pub id: i64,
    pub user_id: i64,
    pub service: String,
}

/// Re-encrypt everything under the active key. `resealed` is called in each batch's transaction
/// with the connections it re-sealed (the unit of work records that they changed:
/// `crate::changes::rotate_vault_key`); `progress` is told after each batch.
pub fn rotate(
    conn: &mut Conn,
    cipher: &Cipher,
    mut resealed: impl FnMut(&mut Conn, &[Resealed]) -> AppResult<()>,
    mut progress: impl FnMut(&str, usize),
) -> AppResult<Rotated> {
    let mut done = Rotated::default();
    vault_entries(conn, cipher, &mut done, &mut progress)?;
    connection_tokens(conn, cipher, &mut done, &mut resealed, &mut progress)?;
    // The small tables (few rows each), in one transaction that ends by writing the key check.
    conn.transaction(|conn| {
        flow_verifiers(conn, cipher, &mut done)?;
        webhook_secrets(conn, cipher, &mut done)?;
        retired_tokens(conn, cipher, &mut done)?;
        sealed_meta(conn, cipher)?;
        meta::set(conn, KEY_CHECK, &cipher.seal_str(KEY_CHECK_PLAINTEXT, Aad::KeyCheck), now())?;
        Ok::<_, AppError>(())
    })?;
    progress("flows", done.flows);
    Ok(done)
}

/// Vault entries, by path, in batches.
fn vault_entries(
    conn: &mut Conn,
    cipher: &Cipher,
    done: &mut Rotated,
    progress: &mut impl FnMut(&str, usize),
) -> AppResult<()> {
    let mut after = String::new();
    loop {
        let batch = vault_model::sealed_batch(conn, &after, BATCH)?;
        let Some(last) = batch.last() else { break };
        after = last.0.clone();
        conn.transaction(|conn| {
            for (path, sealed) in &batch {
                if let Some(new) = reseal(cipher, sealed, Aad::VaultEntry(path))? {
                    vault_model::set_ciphertext(conn, path, &new)?;
                    done.vault_entries += 1;
                }
            }
            Ok::<_, AppError>(())
        })?;
        progress("vault entries", done.vault_entries);
    }
    Ok(())
}

/// Users' tokens, by connection id, in batches.
fn connection_tokens(
    conn: &mut Conn,
    cipher: &Cipher,
    done: &mut Rotated,
    resealed: &mut impl FnMut(&mut Conn, &[Resealed]) -> AppResult<()>,
    progress: &mut impl FnMut(&str, usize),
) -> AppResult<()> {
    let mut after_id = 0i64;
    loop {
        let batch = connections::sealed_batch(conn, after_id, BATCH)?;
        let Some(last) = batch.last() else { break };
        after_id = last.id;
        conn.transaction(|conn| {
            let mut changed = Vec::new();
            for row in &batch {
                let (user_id, service, account) = (row.user_id, row.service.as_str(), row.account_id.as_str());
                let new_access = reseal(cipher, &row.access_token, Aad::AccessToken { user_id, service, account })?;
                let new_refresh = match &row.refresh_token {
                    Some(r) => reseal(cipher, r, Aad::RefreshToken { user_id, service, account })?,
                    None => None,
                };
                // Compare-and-swap on the version: a refresh by a running server in between wins
                // (it sealed its new tokens with the active key already).
                if (new_access.is_some() || new_refresh.is_some())
                    && connections::reseal(
                        conn,
                        RowRef { id: row.id, version: row.version, user_id: row.user_id, service: &row.service },
                        new_access.as_deref(),
                        new_refresh.as_deref(),
                    )?
                {
                    done.connections += 1;
                    changed.push(Resealed { id: row.id, user_id: row.user_id, service: row.service.clone() });
                }
            }
            resealed(conn, &changed)
        })?;
        progress("connections", done.connections);
    }
    Ok(())
}

/// Flows in flight (few, short-lived).
fn flow_verifiers(conn: &mut Conn, cipher: &Cipher, done: &mut Rotated) -> AppResult<()> {
    for (hash, sealed) in &flows::sealed_all(conn)? {
        if let Some(new) = reseal(cipher, sealed, Aad::PkceVerifier { state_hash: hash })? {
            flows::set_verifier(conn, hash, &new)?;
            done.flows += 1;
        }
    }
    Ok(())
}

/// Webhook endpoints edited on the page (few): the version stays, so no edit is refused.
fn webhook_secrets(conn: &mut Conn, cipher: &Cipher, done: &mut Rotated) -> AppResult<()> {
    for row in webhook_endpoints::all(conn)? {
        let secret = reseal(cipher, &row.secret, Aad::WebhookSecret(&row.name))?;
        let previous = match &row.previous_secret {
            Some(p) => reseal(cipher, p, Aad::WebhookPreviousSecret(&row.name))?,
            None => None,
        };
        if secret.is_some() || previous.is_some() {
            let n = usize::from(secret.is_some()) + usize::from(previous.is_some());
            let secret = secret.unwrap_or_else(|| row.secret.clone());
            let previous = previous.or_else(|| row.previous_secret.clone());
            if webhook_endpoints::set_ciphertexts(conn, &row.name, &row.revision, &secret, previous.as_deref())? {
                done.webhook_secrets += n;
            }
        }
    }
    Ok(())
}

/// Tokens waiting to be revoked (few: each is worked within hours).
fn retired_tokens(conn: &mut Conn, cipher: &Cipher, done: &mut Rotated) -> AppResult<()> {
    for row in revocations::all(conn)? {
        let (user_id, service, account) = (row.user_id, row.service.as_str(), row.account_id.as_str());
        let aad = |column| Aad::RetiredToken { user_id, service, account, column };
        let access = reseal(cipher, &row.access_token, aad("access_token"))?;
        let refresh = match &row.refresh_token {
            Some(r) => reseal(cipher, r, aad("refresh_token"))?,
            None => None,
        };
        if access.is_some() || refresh.is_some() {
            done.retired_tokens += usize::from(access.is_some()) + usize::from(refresh.is_some());
            let access = access.unwrap_or_else(|| row.access_token.clone());
            let refresh = refresh.or_else(|| row.refresh_token.clone());
            revocations::set_tokens(conn, &row, &access, refresh.as_deref())?;
        }
    }
    Ok(())
}

/// Values sealed in `meta` (the audit log's chain key): re-sealed here, by name, so that the vault
/// needs nothing from the modules that keep them.
fn sealed_meta(conn: &mut Conn, cipher: &Cipher) -> AppResult<()> {
    for (name, aad) in SEALED_META {
        if let Some(sealed) = meta::get(conn, name)? {
            if let Some(resealed) = reseal(cipher, &sealed, aad)? {
                meta::set(conn, name, &resealed, now())?;
            }
        }
    }
    Ok(())
}

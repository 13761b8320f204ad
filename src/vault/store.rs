//! The project vault: the app's own secrets (client ids and secrets), one sealed value per path.

use crate::changes::{self, Actor, Change, Committed};
use crate::db::models::vault::{self as model, VaultEntry, VaultEntryMeta};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::ExposeSecret;
use crate::util::{now, Secret};
use crate::vault::{Aad, Cipher};

/// Largest value the vault accepts, in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;

/// Paths are dotted names such as `dropbox.client_secret`.
pub fn validate_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 128
        && path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !path.starts_with('.')
        && !path.ends_with('.')
        && !path.contains("..");
    if ok {
        Ok(())
    } else {
        Err("Vault keys are 1-128 characters of letters, digits, '.', '_' and '-', like dropbox.client_secret.".into())
    }
}

pub fn set(conn: &mut Conn, cipher: &Cipher, path: &str, value: &str, by: &str) -> AppResult<()> {
    validate_path(path).map_err(AppError::BadRequest)?;
    if value.is_empty() {
        return Err(AppError::BadRequest("The value is empty.".into()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(AppError::BadRequest(format!("The value is longer than {MAX_VALUE_LEN} bytes.")));
    }
    let entry = VaultEntry {
        path: path.to_string(),
        ciphertext: cipher.seal_str(value, Aad::VaultEntry(path)),
        updated_at: now(),
        updated_by: by.to_string(),
    };
    model::upsert(conn, &entry)?;
    Ok(())
}

/// The decrypted value at `path`, if set. A value that does not decrypt is an error.
pub fn get(conn: &mut Conn, cipher: &Cipher, path: &str) -> AppResult<Option<Secret>> {
    match model::get(conn, path)? {
        Some(entry) => Ok(Some(cipher.open(&entry.ciphertext, Aad::VaultEntry(path))?)),
        None => Ok(None),
    }
}

pub fn list(conn: &mut Conn) -> AppResult<Vec<VaultEntryMeta>> {
    Ok(model::list(conn)?)
}

pub fn delete(conn: &mut Conn, path: &str) -> AppResult<bool> {
    Ok(model::delete(conn, path)? > 0)
}

/// [`set`] with its `vault.set` audit entry by `by` (never the value), in one unit of work.
pub fn set_recorded(
    conn: &mut Conn,
    cipher: &Cipher,
    path: &str,
    value: &Secret,
    by: Actor,
    updated_by: &str,
) -> AppResult<Committed<()>> {
    changes::write_no_history(conn, cipher, |tx| {
        set(tx.conn(), cipher, path, value.expose_secret(), updated_by)?;
        tx.record(Change::VaultValueSet { by, path: path.to_string() })
    })
}

/// [`delete`] with its `vault.delete` audit entry by `by` when there was a value, in one unit of
/// work; whether there was.
pub fn delete_recorded(conn: &mut Conn, cipher: &Cipher, path: &str, by: Actor) -> AppResult<Committed<bool>> {
    changes::write_no_history(conn, cipher, |tx| {
        let deleted = delete(tx.conn(), path)?;
        if deleted {
            tx.record(Change::VaultValueDeleted { by, path: path.to_string() })?;
        }
        Ok(deleted)
    })
}

/// A provider's client credentials from the vault.
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: Option<Secret>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// `None` when the provider's `client_id` is not set.
pub fn client_credentials(conn: &mut Conn, cipher: &Cipher, provider: &str) -> AppResult<Option<ClientCredentials>> {
    let Some(client_id) = get(conn, cipher, &format!("{provider}.client_id"))? else {
        return Ok(None);
    };
    let client_secret = get(conn, cipher, &format!("{provider}.client_secret"))?;
    Ok(Some(ClientCredentials { client_id: client_id.expose_secret().to_string(), client_secret }))
}

#[cfg(test)]
mod tests {
    use super::validate_path;

    #[test]
    fn paths() {
        assert!(validate_path("dropbox.client_secret").is_ok());
        assert!(validate_path("my-app.client_id").is_ok());
        for bad in ["", ".x", "x.", "a..b", "a b", "a/b", "ä", &"x".repeat(129)] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}

//! Creating accounts, shared by the sign-up page and `tokenvault user add`.

use crate::auth::password;
use crate::db::models::users::{self, NewUser, User};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::util::{now, Secret};

/// Usernames: 3-32 characters of letters, digits, '.', '_' and '-'.
pub fn check_username(name: &str) -> Result<(), String> {
    let ok = (3..=32).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err("Usernames are 3 to 32 characters: letters, digits, '.', '_' and '-'.".into())
    }
}

/// Create a user; the first user of an instance becomes its administrator. Blocking (argon2):
/// call it from `Db::run` or the CLI. `BadRequest` carries a message for the user.
pub fn create(conn: &mut Conn, username: &str, password: &Secret, admin: bool) -> AppResult<User> {
    check_username(username).map_err(AppError::BadRequest)?;
    password::check_policy(password.expose()).map_err(AppError::BadRequest)?;
    let hash = password::hash_blocking(password)?;
    // Count and insert in one write transaction, so two first sign-ups cannot both become admin.
    conn.immediate_transaction(|conn| {
        let first = users::count(conn)? == 0;
        let now = now();
        let new = NewUser {
            username,
            password_hash: &hash,
            is_admin: admin || first,
            created_at: now,
            password_changed_at: now,
        };
        users::create(conn, &new)?.ok_or_else(|| AppError::BadRequest("That username is taken.".into()))
    })
}

/// What a password change ended: the number of sessions, and the hashes of the API keys revoked
/// (for the caller to drop from this process's cache).
pub struct PasswordReplaced {
    pub sessions_ended: usize,
    pub revoked_key_hashes: Vec<String>,
}

/// Set a new password hash, end every session of the user and revoke every API key, in one
/// transaction. The caller starts a fresh session for the browser that made the change.
pub fn replace_password(conn: &mut Conn, user_id: i64, hash: &str) -> AppResult<PasswordReplaced> {
    conn.transaction(|conn| {
        users::set_password(conn, user_id, hash, now())?;
        let sessions_ended = crate::db::models::sessions::delete_for_user(conn, user_id)?;
        let revoked_key_hashes = crate::db::models::api_keys::revoke_all_for_user(conn, user_id, now())?;
        Ok(PasswordReplaced { sessions_ended, revoked_key_hashes })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames() {
        assert!(super::check_username("alice").is_ok());
        assert!(super::check_username("al").is_err());
        assert!(super::check_username("a b c").is_err());
        assert!(super::check_username("<script>").is_err());
    }
}

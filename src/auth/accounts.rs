//! Creating accounts, shared by the sign-up page and `tokenvault user add`, and the one place
//! usernames are cleaned and normalised.

use crate::auth::password;
use crate::cache::Caches;
use crate::db::models::invalidations::Written;
use crate::db::models::users::{self, NewUser, User};
use crate::db::{Conn, Db};
use crate::error::{AppError, AppResult};
use crate::util::ExposeSecret;
use crate::util::{now, Secret};

/// Longest username accepted, in bytes (usernames are ASCII). Anything longer is refused before
/// it reaches the login throttle's maps or the password hasher.
pub const MAX_USERNAME_LEN: usize = 32;
pub const MIN_USERNAME_LEN: usize = 3;

/// Usernames: 3-32 characters of letters, digits, '.', '_' and '-'.
pub fn check_username(name: &str) -> Result<(), String> {
    let ok = (MIN_USERNAME_LEN..=MAX_USERNAME_LEN).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Usernames are {MIN_USERNAME_LEN} to {MAX_USERNAME_LEN} characters: letters, digits, '.', '_' and '-'."
        ))
    }
}

/// The username as typed in a form, without surrounding whitespace: what is stored and looked up.
pub fn clean_username(input: &str) -> &str {
    input.trim()
}

/// The key under which a username is throttled: cleaned and lower-cased, so `Alice`, `alice ` and
/// `ALICE` share one allowance.
pub fn throttle_key(input: &str) -> String {
    clean_username(input).to_lowercase()
}

/// Who becomes an administrator when an account is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    User,
    /// An administrator if it is the instance's first account, else a user: only the `debug`
    /// profile's sign-up page uses this (outside `debug` the first administrator comes from
    /// `tokenvault user add --admin`).
    FirstIsAdmin,
}

/// Check a new account's username and password before anything is hashed.
pub fn check_new(username: &str, password: &Secret) -> AppResult<()> {
    check_username(username).map_err(AppError::BadRequest)?;
    password::check_policy(password.expose_secret()).map_err(AppError::BadRequest)
}

/// Create a user with an argon2 `hash` made beforehand (no connection is held while hashing:
/// check with [`check_new`], hash, then call this). `BadRequest` carries a message for the user.
pub fn create(conn: &mut Conn, username: &str, hash: &str, role: Role) -> AppResult<User> {
    check_username(username).map_err(AppError::BadRequest)?;
    // Count and insert in one write transaction, so two first sign-ups cannot both become admin.
    conn.immediate_transaction(|conn| {
        let is_admin = match role {
            Role::Admin => true,
            Role::User => false,
            Role::FirstIsAdmin => users::count(conn)? == 0,
        };
        let now = now();
        let new = NewUser { username, password_hash: hash, is_admin, created_at: now, password_changed_at: now };
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
pub fn replace_password(conn: &mut Conn, user_id: i64, hash: &str) -> AppResult<Written<PasswordReplaced>> {
    conn.transaction(|conn| {
        users::set_password(conn, user_id, hash, now())?;
        let sessions_ended = crate::db::models::sessions::delete_for_user(conn, user_id)?;
        let revoked = crate::db::models::api_keys::revoke_all_for_user(conn, user_id, now())?;
        Ok(revoked.map(|revoked_key_hashes| PasswordReplaced { sessions_ended, revoked_key_hashes }))
    })
}

/// [`replace_password`] for the signed-in user, with this process's cached copies of the revoked
/// API keys dropped at once (other instances learn of them from their invalidations).
pub async fn change_password(db: &Db, caches: &Caches, user_id: i64, hash: String) -> AppResult<PasswordReplaced> {
    let done = db.run(move |conn| replace_password(conn, user_id, &hash)).await?;
    Ok(caches.after_write(done))
}

#[cfg(test)]
mod tests {
    #[test]
    fn usernames() {
        assert!(super::check_username("alice").is_ok());
        assert!(super::check_username("al").is_err());
        assert!(super::check_username("a b c").is_err());
        assert!(super::check_username("<script>").is_err());
        assert!(super::check_username(&"a".repeat(super::MAX_USERNAME_LEN)).is_ok());
        assert!(super::check_username(&"a".repeat(super::MAX_USERNAME_LEN + 1)).is_err());
    }

    #[test]
    fn throttle_keys_ignore_case_and_surrounding_whitespace() {
        assert_eq!(super::throttle_key("  Alice\t"), "alice");
        assert_eq!(super::throttle_key("ALICE"), super::throttle_key("alice"));
        assert_eq!(super::clean_username(" Alice "), "Alice");
    }
}

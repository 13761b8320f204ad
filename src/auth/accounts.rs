//! Creating accounts, shared by the sign-up page and `tokenvault user add`, and the one place
//! usernames are cleaned and normalised.

use std::net::IpAddr;

use crate::auth::password;
use crate::changes::{self, Actor, Change, Committed, GrantEnd, KeyRevoked, SessionsEnd};
use crate::db::models::users::{self, NewUser, User};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::util::ExposeSecret;
use crate::util::{now, Secret};
use crate::vault::Cipher;

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

/// The account a username names, in one canonical form: cleaned and lower-cased (ASCII, as
/// usernames are: [`check_username`]). Usernames are unique in this form (the
/// `users_username_nocase` index on `lower(username)`), so `Alice`, `alice ` and `ALICE` are one
/// account: sign-in finds it by any of them, and the login throttle's per-account limit, device
/// cookies and the password page all key on this one string.
pub fn canonical_username(input: &str) -> String {
    clean_username(input).to_ascii_lowercase()
}

/// The key under which a sign-in to `input` is throttled per account: its
/// [`canonical_username`], which names exactly one account (or none).
pub fn throttle_key(input: &str) -> String {
    canonical_username(input)
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
        users::create(conn, &new)?.ok_or_else(|| {
            AppError::BadRequest("That username is taken (usernames are the same whatever their case).".into())
        })
    })
}

/// What a password change ended: the number of sessions, the hashes of the API keys revoked
/// (for the caller to drop from this process's cache), and the new password epoch (device
/// cookies issued under an older one are void).
pub struct PasswordReplaced {
    pub sessions_ended: usize,
    pub revoked_key_hashes: Vec<String>,
    pub password_epoch: i64,
}

/// Set a new password hash, end every session of the user, revoke every API key and every live
/// grant of the authorization server (its access and refresh tokens stop working with it), in one
/// transaction with their audit entries (`password.changed`, one `api_key.revoked` per key and one
/// `grant.revoked` per grant with `"reason": "password_changed"`, and `session.end` with the
/// number of sessions ended). The caller starts a fresh session for the browser that made the change.
pub fn replace_password(
    conn: &mut Conn,
    cipher: &Cipher,
    user_id: i64,
    hash: &str,
    address: Option<IpAddr>,
) -> AppResult<Committed<PasswordReplaced>> {
    changes::write_no_history(conn, cipher, |tx| {
        let at = now();
        let password_epoch = users::set_password(tx.conn(), user_id, hash, at)?;
        let sessions_ended = crate::db::models::sessions::delete_for_user(tx.conn(), user_id)?;
        let revoked = crate::db::models::api_keys::revoke_all_for_user(tx.conn(), user_id, at)?;
        let api_keys_revoked = revoked.len();
        tx.record(Change::PasswordChanged { user_id, address, sessions_ended, api_keys_revoked })?;
        for (key_id, key_hash) in &revoked {
            let (by, why, key_id, key_hash) =
                (Actor::User(user_id), KeyRevoked::PasswordChanged, *key_id, key_hash.clone());
            tx.record(Change::ApiKeyRevoked { by, user_id, key_id, key_hash, why, address })?;
        }
        if sessions_ended > 0 {
            let why = SessionsEnd::PasswordChanged { count: sessions_ended };
            tx.record(Change::SessionsEnded { user_id, address, why })?;
        }
        revoke_grants(tx, user_id, at)?;
        Ok(PasswordReplaced {
            sessions_ended,
            revoked_key_hashes: revoked.into_iter().map(|(_, hash)| hash).collect(),
            password_epoch,
        })
    })
}

/// Revoke every live grant of `user_id` (a password change ends them), each recorded.
fn revoke_grants(tx: &mut changes::Tx<'_>, user_id: i64, at: i64) -> AppResult<()> {
    use crate::db::models::authz;
    for (grant, client) in authz::live_grants_for_user(tx.conn(), user_id, at)? {
        if let Some(grant) = authz::revoke_grant(tx.conn(), grant.id, Some(user_id), at)? {
            let grant = crate::authz::grants::subject(&grant, &client);
            tx.record(Change::GrantRevoked { by: Actor::User(user_id), grant, why: GrantEnd::PasswordChanged })?;
        }
    }
    Ok(())
}

/// [`replace_password`] for the signed-in user, settled: this process's cached copies of the
/// revoked API keys dropped at once (other instances learn of them from their invalidations).
pub async fn change_password(
    app: &AppState,
    user_id: i64,
    hash: String,
    address: Option<IpAddr>,
) -> AppResult<PasswordReplaced> {
    let cipher = app.cipher.clone();
    let done = app.db.run(move |conn| replace_password(conn, &cipher, user_id, &hash, address)).await?;
    Ok(done.settle(app.effects()))
}

/// Create an account from the sign-up page and record it (`user.added` by the new user), then
/// settle. Recorded right after the insert, not inside it: [`create`] is an immediate (on
/// PostgreSQL SERIALIZABLE) transaction, which cannot be nested.
pub async fn sign_up(
    app: &AppState,
    name: String,
    hash: String,
    role: Role,
    address: Option<IpAddr>,
) -> AppResult<User> {
    let user = app.db.run(move |conn| create(conn, &name, &hash, role)).await?;
    let (user_id, by) = (user.id, Actor::User(user.id));
    app.record(Change::UserAdded { user_id, by, admin: None, address }).await?;
    Ok(user)
}

/// [`create`] for `tokenvault user add`, recorded as `user.added` by `cli` (saying whether the
/// account is an administrator's).
pub fn add_from_cli(conn: &mut Conn, cipher: &Cipher, name: &str, hash: &str, role: Role) -> AppResult<User> {
    let user = create(conn, name, hash, role)?;
    let (user_id, admin) = (user.id, Some(user.is_admin));
    let committed = changes::write_no_history(conn, cipher, |tx| {
        tx.record(Change::UserAdded { user_id, by: Actor::Cli, admin, address: None })
    })?;
    // The CLI caches nothing and runs no worker: the recorded rows tell the running servers.
    committed.recorded_only();
    Ok(user)
}

/// Rename an account (`tokenvault user rename`): `from` is the exact name, or any case of it when
/// only one account has it; `to` must pass [`check_username`] and be no other account's name in
/// any case. Recorded as `user.renamed` (actor `cli`; names only as the user id). The way to
/// resolve accounts whose names differ only in case, which keep tokenvault from starting.
pub fn rename(conn: &mut Conn, cipher: &Cipher, from: &str, to: &str) -> AppResult<i64> {
    let (from, to) = (clean_username(from), clean_username(to));
    check_username(to).map_err(AppError::BadRequest)?;
    let renamed = changes::write_no_history(conn, cipher, |tx| match users::rename(tx.conn(), from, to)? {
        users::Renamed::Done(user_id) => {
            tx.record(Change::UserRenamed { user_id })?;
            Ok(user_id)
        }
        users::Renamed::NoSuchUser => Err(AppError::BadRequest(format!("no user named {from}"))),
        users::Renamed::Ambiguous(names) => Err(AppError::BadRequest(format!(
            "several users are named {from} in other cases ({}): give one of these names exactly",
            names.join(", ")
        ))),
        users::Renamed::Taken => {
            Err(AppError::BadRequest(format!("{to} is taken (usernames are the same whatever their case)")))
        }
    })?;
    // The CLI caches nothing and runs no worker: the recorded rows tell the running servers.
    Ok(renamed.recorded_only())
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
        // ASCII folding, as SQL lower() on both backends and as usernames are.
        assert_eq!(super::canonical_username("ÄLICE"), "Älice");
    }
}

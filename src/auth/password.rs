//! argon2id password hashing (m=19456 KiB, t=2, p=1), always off the async worker threads.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{AppError, AppResult};
use crate::util::Secret;

/// Longest password accepted, in bytes (argon2 takes any length; this caps the work per request).
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MIN_PASSWORD_CHARS: usize = 10;

fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Check a new password against the policy; the message is shown to the user.
pub fn check_policy(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!("Use a password of at least {MIN_PASSWORD_CHARS} characters."));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("Use a password of at most {MAX_PASSWORD_BYTES} bytes."));
    }
    Ok(())
}

pub fn hash_blocking(password: &Secret) -> AppResult<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::internal(format!("password hashing failed: {e}")))
}

/// A hash to verify against when the user does not exist, so both cases take the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_blocking(&Secret::new(crate::util::random_token(16))).expect("hashing a random password works")
    })
}

pub fn verify_blocking(password: &Secret, hash: Option<&str>) -> bool {
    let (hash, real) = match hash {
        Some(h) => (h, true),
        None => (dummy_hash(), false),
    };
    let ok = match PasswordHash::new(hash) {
        Ok(parsed) => argon2().verify_password(password.expose().as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    };
    ok && real
}

pub async fn hash(password: Secret) -> AppResult<String> {
    rocket::tokio::task::spawn_blocking(move || hash_blocking(&password))
        .await
        .map_err(|e| AppError::internal(format!("hashing task failed: {e}")))?
}

/// Verify `password` against `hash`; with `None` (unknown user) verify against a dummy hash and fail.
pub async fn verify(password: Secret, hash: Option<String>) -> bool {
    rocket::tokio::task::spawn_blocking(move || verify_blocking(&password, hash.as_deref())).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_strong_params_and_unique_salts() {
        let pw = Secret::new("correct horse battery staple");
        let a = hash_blocking(&pw).unwrap();
        let b = hash_blocking(&pw).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(verify_blocking(&pw, Some(&a)));
        assert!(!verify_blocking(&Secret::new("wrong password!"), Some(&a)));
    }

    #[test]
    fn unicode_and_long_passwords_work() {
        let pw = Secret::new("pässwörd-🔐-".repeat(40));
        let h = hash_blocking(&pw).unwrap();
        assert!(verify_blocking(&pw, Some(&h)));
    }

    #[test]
    fn unknown_users_never_verify() {
        assert!(!verify_blocking(&Secret::new("anything"), None));
        assert!(!verify_blocking(&Secret::new("anything"), Some("not a hash")));
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("long enough pw").is_ok());
        assert!(check_policy(&"x".repeat(2000)).is_err());
    }
}

//! argon2id password hashing (m=19456 KiB, t=2, p=1), always off the async worker threads and,
//! in the server, through the bounded [`Hasher`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use rocket::tokio::sync::Semaphore;

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

/// Bounded password hashing: every argon2 hash and verify of the server goes through one of
/// these (in `AppState`). At most `workers` run at once (each takes 19 MiB and a core for tens of
/// milliseconds), at most `queue` more wait for a turn, and beyond that a request is refused at
/// once with [`AppError::Busy`] (503 + `Retry-After`) instead of piling up blocking threads and
/// memory. Callers hold no database connection while they wait or hash.
pub struct Hasher {
    /// Permits to be admitted at all: `workers + queue`.
    admission: Arc<Semaphore>,
    /// Permits to hash: `workers`.
    work: Arc<Semaphore>,
    workers: usize,
    queue: usize,
    /// Hashes running now and at most, counted inside the blocking tasks.
    running: Arc<(AtomicUsize, AtomicUsize)>,
    refused: AtomicU64,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("workers", &self.workers).field("queue", &self.queue).finish()
    }
}

/// What `/metrics` shows of the hasher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HasherStats {
    pub workers: usize,
    pub queue: usize,
    pub running: usize,
    /// The most hashes that ever ran at once (never above `workers`).
    pub peak: usize,
    /// Requests refused with 503 because the queue was full.
    pub refused: u64,
}

/// `Retry-After` of a refusal: the queue drains in well under a second.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How many wait for a turn, per worker, before requests are refused.
pub const QUEUE_PER_WORKER: usize = 2;

impl Hasher {
    /// One worker per core (`std::thread::available_parallelism`), a queue of two per worker.
    pub fn for_this_machine() -> Hasher {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Hasher::new(cores, cores * QUEUE_PER_WORKER)
    }

    pub fn new(workers: usize, queue: usize) -> Hasher {
        let workers = workers.max(1);
        Hasher {
            admission: Arc::new(Semaphore::new(workers + queue)),
            work: Arc::new(Semaphore::new(workers)),
            workers,
            queue,
            running: Arc::default(),
            refused: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> HasherStats {
        HasherStats {
            workers: self.workers,
            queue: self.queue,
            running: self.running.0.load(Ordering::Relaxed),
            peak: self.running.1.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Run `job` on the blocking pool once a worker is free; `Busy` when the queue is full.
    async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> AppResult<T> {
        let Ok(admitted) = self.admission.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(workers = self.workers, queue = self.queue, "password hashing queue full: refused with 503");
            return Err(AppError::Busy { retry_after: RETRY_AFTER_SECS });
        };
        let permit = self.work.clone().acquire_owned().await.map_err(|e| AppError::internal(e.to_string()))?;
        let counters = self.running.clone();
        // The permits move into the blocking task: if the request is dropped while it hashes, the
        // worker stays taken until the hash has really finished.
        rocket::tokio::task::spawn_blocking(move || {
            let now = counters.0.fetch_add(1, Ordering::SeqCst) + 1;
            counters.1.fetch_max(now, Ordering::SeqCst);
            let out = job();
            counters.0.fetch_sub(1, Ordering::SeqCst);
            drop((permit, admitted));
            out
        })
        .await
        .map_err(|e| AppError::internal(format!("hashing task failed: {e}")))
    }

    /// Hash a new password (argon2id, fresh salt).
    pub async fn hash(&self, password: Secret) -> AppResult<String> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verify `password` against `hash`; with `None` (unknown user) verify against a dummy hash and
    /// fail, so both cases cost the same. `Busy` when the queue is full.
    pub async fn verify(&self, password: Secret, hash: Option<String>) -> AppResult<bool> {
        self.run(move || verify_blocking(&password, hash.as_deref())).await
    }
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

    #[rocket::async_test]
    async fn a_full_queue_is_refused_with_busy_and_workers_never_exceed_the_limit() {
        let hasher = Arc::new(Hasher::new(1, 1));
        // Hold the only worker: a job that waits until released.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = hasher.clone();
        let first = rocket::tokio::spawn(async move { h.run(move || rx.recv().is_ok()).await });
        while hasher.stats().running == 0 {
            rocket::tokio::task::yield_now().await;
        }
        // One may wait in the queue ...
        let h = hasher.clone();
        let queued = rocket::tokio::spawn(async move { h.run(|| true).await });
        while hasher.admission.available_permits() > 0 {
            rocket::tokio::task::yield_now().await;
        }
        // ... the next is refused at once, without hashing.
        let refused = hasher.verify(Secret::new("whatever password"), None).await;
        assert!(matches!(refused, Err(AppError::Busy { retry_after }) if retry_after >= 1), "{refused:?}");
        assert_eq!(hasher.stats().refused, 1);
        tx.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert!(queued.await.unwrap().unwrap());
        let stats = hasher.stats();
        assert_eq!((stats.peak, stats.running), (1, 0), "{stats:?}");
        // Capacity is back: a real verify runs.
        assert!(!hasher.verify(Secret::new("whatever password"), None).await.unwrap());
    }
}

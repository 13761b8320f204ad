//! argon2id password hashing (m=19456 KiB, t=2, p=1), always off the async worker threads and,
//! in the server, through the bounded [`Hasher`].
//!
//! The server's hashes run on a few dedicated threads, each with one argon2 memory block that it
//! allocates on first use and reuses for every hash ([`Memory`]). Allocating 19 MiB per hash on
//! the blocking pool instead left freed blocks in glibc's per-thread arenas (after the first free,
//! glibc's mmap threshold rises to the block's size, so later blocks come from arenas that are
//! rarely trimmed): 192 logins grew the server to ~230 MB with never more than two hashes at
//! once, the memory sitting in 64 MiB-aligned arena mappings (`TV_BENCH_SMAPS=1 cargo bench
//! --bench login_flood`). With reused blocks hashing holds `workers` × 19 MiB, whatever the traffic.

use crate::util::ExposeSecret;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

use rocket::tokio::sync::{oneshot, Semaphore};

use crate::error::{AppError, AppResult};
use crate::util::Secret;

/// Longest password accepted, in bytes (argon2 takes any length; this caps the work per request).
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MIN_PASSWORD_CHARS: usize = 10;

/// The parameters of every new hash: OWASP's first argon2id choice (19 MiB, two passes).
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;

/// The most memory, passes and lanes a stored hash may ask for when verified (4× ours): a hash
/// written with larger parameters elsewhere fails to verify rather than making a login allocate or
/// compute without bound.
const MAX_M_COST_KIB: u32 = 4 * M_COST_KIB;
const MAX_T_COST: u32 = 4 * T_COST;
const MAX_P_COST: u32 = 4;

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, 1, None).expect("valid argon2 parameters")
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

/// argon2's working memory, allocated on first use and reused by every later hash.
#[derive(Default)]
pub struct Memory {
    blocks: Vec<Block>,
}

impl Memory {
    /// The first `count` blocks, growing the allocation only when a hash needs more than before.
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.blocks.len() < count {
            self.blocks.resize(count, Block::default());
        }
        &mut self.blocks[..count]
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.blocks.capacity() * Block::SIZE
    }

    /// Give back what a hash with larger parameters than ours made this memory grow to, so that
    /// hashing keeps holding one block of our size per worker.
    fn shrink_to_ours(&mut self) {
        if self.blocks.len() > M_COST_KIB as usize {
            self.blocks = Vec::new();
        }
    }
}

/// argon2 of `password` with `salt`, the PHC string's parts, computed in `memory`.
fn hash_in<'a>(
    memory: &mut Memory,
    password: &[u8],
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Salt<'a>,
) -> argon2::password_hash::Result<PasswordHash<'a>> {
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST {
        return Err(argon2::password_hash::Error::ParamValueInvalid(
            argon2::password_hash::errors::InvalidValue::TooLong,
        ));
    }
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let output_len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let blocks = memory.blocks(params.block_count());
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let output = Output::init_with(output_len, |out| {
        argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *blocks).map_err(Into::into)
    })?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt),
        hash: Some(output),
    })
}

/// Hash a new password (argon2id, fresh salt) in `memory`.
pub fn hash_with(memory: &mut Memory, password: &Secret) -> AppResult<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hash_in(memory, password.expose_secret().as_bytes(), Algorithm::Argon2id, Version::V0x13, params(), salt.as_salt())
        .map(|h| h.to_string())
        .map_err(|e| AppError::internal(format!("password hashing failed: {e}")))
}

/// Does `password` match the PHC string `hash`? (The comparison is constant-time.)
fn matches(memory: &mut Memory, password: &Secret, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed.version.map(Version::try_from).transpose().map(Option::unwrap_or_default),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let matched = match hash_in(memory, password.expose_secret().as_bytes(), algorithm, version, params, salt) {
        Ok(computed) => computed.hash == Some(expected),
        Err(_) => false,
    };
    memory.shrink_to_ours();
    matched
}

/// A hash to verify against when the user does not exist, so both cases take the same time.
fn dummy_hash(memory: &mut Memory) -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return hash;
    }
    let hash = hash_with(memory, &crate::util::secret(crate::util::random_token(16)))
        .expect("hashing a random password works");
    DUMMY.get_or_init(|| hash)
}

/// Verify `password` against `hash` in `memory`; with `None` (unknown user) verify against a
/// dummy hash and fail, so both cases cost the same.
pub fn verify_with(memory: &mut Memory, password: &Secret, hash: Option<&str>) -> bool {
    match hash {
        Some(hash) => matches(memory, password, hash),
        None => {
            let dummy = dummy_hash(memory);
            let _ = matches(memory, password, dummy);
            false
        }
    }
}

/// Hash with memory of its own (the CLI: one hash per process).
pub fn hash_blocking(password: &Secret) -> AppResult<String> {
    hash_with(&mut Memory::default(), password)
}

/// Verify with memory of its own.
pub fn verify_blocking(password: &Secret, hash: Option<&str>) -> bool {
    verify_with(&mut Memory::default(), password, hash)
}

type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// Bounded password hashing: every argon2 hash and verify of the server goes through one of
/// these (in `AppState`). `workers` dedicated threads hash, each in its own reused [`Memory`] (so
/// hashing holds at most `workers` × 19 MiB); at most `queue` more requests wait for a turn, and
/// beyond that a request is refused at once with [`AppError::Busy`] (503 + `Retry-After`) instead
/// of piling up threads and memory. Callers hold no database connection while they wait or hash.
/// The threads end when the `Hasher` is dropped.
pub struct Hasher {
    /// Permits to be admitted at all: `workers + queue`; a job holds one until it has finished.
    admission: Arc<Semaphore>,
    jobs: Mutex<mpsc::Sender<Job>>,
    workers: usize,
    queue: usize,
    /// Hashes running now and at most, counted on the hashing threads.
    running: Arc<(AtomicUsize, AtomicUsize)>,
    refused: AtomicU64,
    /// Whether the queue is known to be full: its first refusal is logged at `warn`, the ones
    /// after it (until a job is admitted again) at `debug` — a flood writes one warning, and
    /// `/metrics` counts every refusal.
    full: AtomicBool,
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
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("tv-hash-{n}"))
                .spawn(move || {
                    let mut memory = Memory::default();
                    loop {
                        // (The lock is held only while waiting for the next job.)
                        let next = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
                        match next {
                            Ok(job) => job(&mut memory),
                            Err(_) => break,
                        }
                    }
                })
                .expect("a password hashing thread starts");
        }
        Hasher {
            admission: Arc::new(Semaphore::new(workers + queue)),
            jobs: Mutex::new(tx),
            workers,
            queue,
            running: Arc::default(),
            refused: AtomicU64::new(0),
            full: AtomicBool::new(false),
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

    /// Run `job` on a hashing thread once one is free; `Busy` when the queue is full.
    async fn run<T: Send + 'static>(&self, job: impl FnOnce(&mut Memory) -> T + Send + 'static) -> AppResult<T> {
        let Ok(admitted) = self.admission.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if self.full.swap(true, Ordering::Relaxed) {
                tracing::debug!(
                    workers = self.workers,
                    queue = self.queue,
                    "password hashing queue still full: refused"
                );
            } else {
                tracing::warn!(
                    workers = self.workers,
                    queue = self.queue,
                    "password hashing queue full: refusing with 503 until it drains (each refusal counted in /metrics)"
                );
            }
            return Err(AppError::Busy { retry_after: RETRY_AFTER_SECS });
        };
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("password hashing queue has room again");
        }
        let counters = self.running.clone();
        let (reply, answer) = oneshot::channel();
        // The permit moves into the job: if the request is dropped while it waits or hashes, its
        // place stays taken until the hash has really finished.
        let job: Job = Box::new(move |memory: &mut Memory| {
            // The request gave up while it waited (the client went away): nobody wants the answer.
            if reply.is_closed() {
                return;
            }
            let now = counters.0.fetch_add(1, Ordering::SeqCst) + 1;
            counters.1.fetch_max(now, Ordering::SeqCst);
            // A panic loses this answer (the caller gets an error), not the thread.
            let out = std::panic::catch_unwind(AssertUnwindSafe(|| job(memory)));
            counters.0.fetch_sub(1, Ordering::SeqCst);
            drop(admitted);
            if let Ok(out) = out {
                let _ = reply.send(out);
            }
        });
        let sent = self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).send(job);
        sent.map_err(|_| AppError::internal("the password hashing threads are gone"))?;
        answer.await.map_err(|_| AppError::internal("a password hashing job failed"))
    }

    /// Hash a new password (argon2id, fresh salt).
    pub async fn hash(&self, password: Secret) -> AppResult<String> {
        self.run(move |memory| hash_with(memory, &password)).await?
    }

    /// Verify `password` against `hash`; with `None` (unknown user) verify against a dummy hash and
    /// fail, so both cases cost the same. `Busy` when the queue is full.
    pub async fn verify(&self, password: Secret, hash: Option<String>) -> AppResult<bool> {
        self.run(move |memory| verify_with(memory, &password, hash.as_deref())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_strong_params_and_unique_salts() {
        let pw = Secret::from("correct horse battery staple");
        let a = hash_blocking(&pw).unwrap();
        let b = hash_blocking(&pw).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b);
        assert!(verify_blocking(&pw, Some(&a)));
        assert!(!verify_blocking(&Secret::from("wrong password!"), Some(&a)));
    }

    #[test]
    fn unicode_and_long_passwords_work() {
        let pw = Secret::from("pässwörd-🔐-".repeat(40));
        let h = hash_blocking(&pw).unwrap();
        assert!(verify_blocking(&pw, Some(&h)));
    }

    #[test]
    fn unknown_users_never_verify() {
        assert!(!verify_blocking(&Secret::from("anything"), None));
        assert!(!verify_blocking(&Secret::from("anything"), Some("not a hash")));
    }

    #[test]
    fn hashes_are_compatible_both_ways_with_argon2s_own_hasher() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pw = Secret::from("correct horse battery staple");
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
            .hash_password(pw.expose_secret().as_bytes(), &SaltString::generate(&mut rand::rngs::OsRng))
            .unwrap()
            .to_string();
        let mut memory = Memory::default();
        assert!(verify_with(&mut memory, &pw, Some(&theirs)));
        assert!(!verify_with(&mut memory, &Secret::from("correct horse battery stapler"), Some(&theirs)));
        let ours = hash_with(&mut memory, &pw).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(pw.expose_secret().as_bytes(), &parsed).is_ok());
        // Other parameters and argon2i/argon2d stored elsewhere verify too.
        let other = Argon2::new(Algorithm::Argon2i, Version::V0x10, Params::new(8192, 3, 1, Some(24)).unwrap())
            .hash_password(b"another password", &SaltString::generate(&mut rand::rngs::OsRng))
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, &Secret::from("another password"), Some(&other)));
        assert!(!verify_with(&mut memory, &Secret::from("another passwore"), Some(&other)));
    }

    #[test]
    fn one_memory_block_is_allocated_once_and_reused() {
        let mut memory = Memory::default();
        assert_eq!(memory.held(), 0);
        let pw = Secret::from("correct horse battery staple");
        let hash = hash_with(&mut memory, &pw).unwrap();
        let block = M_COST_KIB as usize * 1024;
        assert_eq!(memory.held(), block);
        for _ in 0..3 {
            assert!(verify_with(&mut memory, &pw, Some(&hash)));
            assert!(!verify_with(&mut memory, &pw, None));
        }
        assert_eq!(memory.held(), block, "no hash allocates again");
        // A stored hash asking for more than 4× our memory, passes or lanes is refused, not run.
        let greedy = hash.replace("m=19456", &format!("m={}", MAX_M_COST_KIB + 1));
        assert!(!verify_with(&mut memory, &pw, Some(&greedy)));
        assert!(!verify_with(&mut memory, &pw, Some(&hash.replace("t=2", "t=9"))));
        assert!(!verify_with(&mut memory, &pw, Some(&hash.replace("p=1", "p=5"))));
        assert_eq!(memory.held(), block);
        // One with twice our memory verifies, and the memory goes back to nothing (the next hash
        // allocates our size again), not to twice ours.
        use argon2::password_hash::PasswordHasher;
        let bigger = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(2 * M_COST_KIB, 1, 1, None).unwrap())
            .hash_password(pw.expose_secret().as_bytes(), &SaltString::generate(&mut rand::rngs::OsRng))
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, &pw, Some(&bigger)));
        assert_eq!(memory.held(), 0);
        assert!(verify_with(&mut memory, &pw, Some(&hash)));
        assert_eq!(memory.held(), block);
    }

    #[test]
    fn tampered_hashes_never_verify() {
        let pw = Secret::from("correct horse battery staple");
        let hash = hash_blocking(&pw).unwrap();
        let (head, digest) = hash.rsplit_once('$').unwrap();
        let flipped = if digest.starts_with('A') { "B" } else { "A" };
        assert!(!verify_blocking(&pw, Some(&format!("{head}${flipped}{}", &digest[1..]))));
        assert!(!verify_blocking(&pw, Some(head)), "no digest");
        assert!(!verify_blocking(&pw, Some(&hash.replace("argon2id", "scrypt"))));
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("long enough pw").is_ok());
        assert!(check_policy(&"x".repeat(2000)).is_err());
    }

    #[rocket::async_test]
    async fn a_panicking_job_is_an_error_and_the_worker_and_its_place_survive() {
        let hasher = Hasher::new(1, 0);
        let failed = hasher.run(|_| -> bool { panic!("a hashing bug") }).await;
        assert!(matches!(failed, Err(AppError::Internal(_))), "{failed:?}");
        assert_eq!(hasher.admission.available_permits(), 1);
        assert!(!hasher.verify(Secret::from("whatever password"), None).await.unwrap());
    }

    #[rocket::async_test]
    async fn a_request_that_gave_up_while_queued_is_not_hashed() {
        let hasher = Arc::new(Hasher::new(1, 1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = hasher.clone();
        let first = rocket::tokio::spawn(async move { h.run(move |_| rx.recv().is_ok()).await });
        while hasher.stats().running == 0 {
            rocket::tokio::task::yield_now().await;
        }
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, flag) = (hasher.clone(), ran.clone());
        let queued = rocket::tokio::spawn(async move { h.run(move |_| flag.store(true, Ordering::SeqCst)).await });
        while hasher.admission.available_permits() > 0 {
            rocket::tokio::task::yield_now().await;
        }
        // (`run` sends the job right after taking the permit, with no await in between.)
        rocket::tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        queued.abort();
        let _ = queued.await;
        tx.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        while hasher.admission.available_permits() < 2 {
            rocket::tokio::task::yield_now().await;
        }
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job was skipped");
        assert_eq!(hasher.stats().peak, 1);
    }

    #[rocket::async_test]
    async fn a_full_queue_is_refused_with_busy_and_workers_never_exceed_the_limit() {
        let hasher = Arc::new(Hasher::new(1, 1));
        // Hold the only worker: a job that waits until released.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = hasher.clone();
        let first = rocket::tokio::spawn(async move { h.run(move |_| rx.recv().is_ok()).await });
        while hasher.stats().running == 0 {
            rocket::tokio::task::yield_now().await;
        }
        // One may wait in the queue ...
        let h = hasher.clone();
        let queued = rocket::tokio::spawn(async move { h.run(|_| true).await });
        while hasher.admission.available_permits() > 0 {
            rocket::tokio::task::yield_now().await;
        }
        // ... the next is refused at once, without hashing.
        let refused = hasher.verify(Secret::from("whatever password"), None).await;
        assert!(matches!(refused, Err(AppError::Busy { retry_after }) if retry_after >= 1), "{refused:?}");
        assert_eq!(hasher.stats().refused, 1);
        tx.send(()).unwrap();
        assert!(first.await.unwrap().unwrap());
        assert!(queued.await.unwrap().unwrap());
        let stats = hasher.stats();
        assert_eq!((stats.peak, stats.running), (1, 0), "{stats:?}");
        // Capacity is back: a real verify runs.
        assert!(!hasher.verify(Secret::from("whatever password"), None).await.unwrap());
    }
}

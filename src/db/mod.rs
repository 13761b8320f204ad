//! Database access: SQLite (the embedded default) or PostgreSQL (several instances), chosen by
//! `database_url` at run time. One code path for queries: model functions take [`Conn`] and
//! write their Diesel query once inside [`on_conn!`], which compiles it for both backends.
//! [`Db::run`] uses a pooled connection off the async worker threads.

pub mod backup;
pub mod models;
pub mod notify;
pub mod schema;
pub mod text_enum;

use crate::util::redact_url;
use std::path::Path;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{AppError, AppResult};

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Which database a `database_url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(database_url: &str) -> Backend {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }
}

/// A connection to either backend: pooled (the server) or on its own (the CLI, see [`connect`]).
pub enum Conn {
    Sqlite(Handle<SqliteConnection>),
    Postgres(Handle<PgConnection>),
}

/// A connection of one backend, borrowed from a pool or owned; dereferences to the connection.
pub enum Handle<C: R2D2Connection + 'static> {
    Pooled(PooledConnection<ConnectionManager<C>>),
    /// Closed when dropped: no pool, no background threads.
    Direct(C),
}

impl<C: R2D2Connection + 'static> std::ops::Deref for Handle<C> {
    type Target = C;

    fn deref(&self) -> &C {
        match self {
            Handle::Pooled(c) => c,
            Handle::Direct(c) => c,
        }
    }
}

impl<C: R2D2Connection + 'static> std::ops::DerefMut for Handle<C> {
    fn deref_mut(&mut self) -> &mut C {
        match self {
            Handle::Pooled(c) => c,
            Handle::Direct(c) => c,
        }
    }
}

/// Run `$body` with `$c` bound to the concrete connection (`&mut SqliteConnection` or
/// `&mut PgConnection`): the query is written once and compiled for each backend.
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite($c) => {
                let $c: &mut ::diesel::sqlite::SqliteConnection = &mut **$c;
                $body
            }
            $crate::db::Conn::Postgres($c) => {
                let $c: &mut ::diesel::pg::PgConnection = &mut **$c;
                $body
            }
        }
    };
}

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Postgres(_) => Backend::Postgres,
        }
    }

    /// Run `f` in a transaction: committed when it returns `Ok`, rolled back otherwise.
    pub fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        on_conn!(self, c => AnsiTransactionManager::begin_transaction(c))?;
        match f(self) {
            Ok(value) => match on_conn!(self, c => AnsiTransactionManager::commit_transaction(c)) {
                Ok(()) => Ok(value),
                Err(e) => {
                    let _ = on_conn!(self, c => AnsiTransactionManager::rollback_transaction(c));
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = on_conn!(self, c => AnsiTransactionManager::rollback_transaction(c));
                Err(e)
            }
        }
    }

    /// A transaction that takes the write lock at once (SQLite `BEGIN IMMEDIATE`; PostgreSQL
    /// `SERIALIZABLE`), for read-then-write decisions such as "the first user is the admin".
    pub fn immediate_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Conn) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        self.transaction(|conn| {
            if let Conn::Postgres(c) = conn {
                let c: &mut PgConnection = c;
                c.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
            }
            if let Conn::Sqlite(c) = conn {
                // Take SQLite's write lock now rather than at the first write.
                let c: &mut SqliteConnection = c;
                c.batch_execute("UPDATE users SET id = id WHERE 0")?;
            }
            f(conn)
        })
    }
}

/// Per-connection SQLite settings: WAL for concurrent readers, a busy timeout instead of instant
/// `SQLITE_BUSY`, enforced foreign keys.
#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        sqlite_pragmas(conn).map_err(diesel::r2d2::Error::QueryError)
    }
}

fn sqlite_pragmas(conn: &mut SqliteConnection) -> diesel::QueryResult<()> {
    conn.batch_execute(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
         PRAGMA synchronous = NORMAL;",
    )
}

/// The SQLite file's path, with its folder created and its mode restricted.
fn prepare_sqlite_file(database_url: &str) -> Result<&str, String> {
    let path = sqlite_path(database_url);
    if let Some(dir) = Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    restrict_permissions(Path::new(path));
    Ok(path)
}

/// One migrated connection of its own, for a short-lived process (the CLI): no pool, so no pool
/// threads still connecting in the background when the process exits (with PostgreSQL over TLS
/// such a thread raced OpenSSL's exit-time cleanup and crashed the process). Closed when dropped.
pub fn connect(database_url: &str) -> Result<Conn, String> {
    let mut conn = connect_unmigrated(database_url)?;
    migrate(&mut conn, Blocked::Refuse)?;
    Ok(conn)
}

/// [`connect`] for `tokenvault user rename`, the way out of a migration that existing rows block
/// (accounts whose names differ only in case, see [`USERNAMES_NOCASE`]): the migrations before
/// that step are applied and the rest are left pending, so the rows can be fixed first.
pub fn connect_for_repair(database_url: &str) -> Result<Conn, String> {
    let mut conn = connect_unmigrated(database_url)?;
    migrate(&mut conn, Blocked::StopBefore)?;
    Ok(conn)
}

fn connect_unmigrated(database_url: &str) -> Result<Conn, String> {
    let conn = match Backend::of(database_url) {
        Backend::Postgres => Conn::Postgres(Handle::Direct(
            PgConnection::establish(database_url)
                .map_err(|e| format!("cannot connect to {}: {e}", redact_url(database_url)))?,
        )),
        Backend::Sqlite => {
            let path = prepare_sqlite_file(database_url)?;
            let mut c = SqliteConnection::establish(path).map_err(|e| format!("cannot open database {path}: {e}"))?;
            sqlite_pragmas(&mut c).map_err(|e| format!("cannot open database {path}: {e}"))?;
            Conn::Sqlite(Handle::Direct(c))
        }
    };
    Ok(conn)
}

#[derive(Clone)]
enum Pools {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>),
    Postgres(Pool<ConnectionManager<PgConnection>>),
}

/// The connection pool, in Rocket's managed state.
#[derive(Clone)]
pub struct Db {
    pools: Pools,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("backend", &self.backend()).finish()
    }
}

/// Turn `database_url` into the path SQLite opens (`sqlite://` prefixes are accepted).
fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url)
}

/// Create the database file readable by its owner only (SQLite gives -wal/-shm the same mode).
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str() == ":memory:" {
            return;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                    }
                }
            }
            Err(_) => {}
        }
    }
}

/// A key for PostgreSQL's advisory lock taken around migrations, so that instances starting
/// together do not migrate at the same time.
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e76;

impl Db {
    /// Open (creating a SQLite file and its folder if needed) and migrate the database.
    pub fn open(database_url: &str) -> Result<Db, String> {
        Db::open_sized(database_url, 16)
    }

    pub fn open_sized(database_url: &str, max_size: u32) -> Result<Db, String> {
        let db = match Backend::of(database_url) {
            Backend::Postgres => {
                let manager = ConnectionManager::<PgConnection>::new(database_url);
                let pool = Pool::builder()
                    .max_size(max_size)
                    .min_idle(Some(1))
                    .connection_timeout(Duration::from_secs(5))
                    // Check each connection as it is handed out (one `SELECT 1`): after a server
                    // restart or a terminated backend, Diesel cannot tell a dead connection from a
                    // live one (`is_broken` looks only at the transaction state), so without this
                    // the pool would keep serving dead connections and the app would answer 503
                    // long after the database is back. The API's hot path reads the in-memory
                    // caches, not the pool.
                    .test_on_check_out(true)
                    .build(manager)
                    .map_err(|e| format!("cannot connect to {}: {e}", redact_url(database_url)))?;
                Db { pools: Pools::Postgres(pool) }
            }
            Backend::Sqlite => {
                let path = prepare_sqlite_file(database_url)?;
                let manager = ConnectionManager::<SqliteConnection>::new(path);
                let pool = Pool::builder()
                    .max_size(max_size)
                    .min_idle(Some(1))
                    .connection_timeout(Duration::from_secs(5))
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(Pragmas))
                    .build(manager)
                    .map_err(|e| format!("cannot open database {path}: {e}"))?;
                Db { pools: Pools::Sqlite(pool) }
            }
        };
        migrate(&mut db.conn().map_err(|e| e.to_string())?, Blocked::Refuse)?;
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite(_) => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// A connection for synchronous callers (the CLI, startup).
    pub fn conn(&self) -> AppResult<Conn> {
        Ok(match &self.pools {
            Pools::Sqlite(p) => Conn::Sqlite(Handle::Pooled(p.get()?)),
            Pools::Postgres(p) => Conn::Postgres(Handle::Pooled(p.get()?)),
        })
    }

    /// Run `f` with a pooled connection on the blocking thread pool.
    pub async fn run<F, T>(&self, f: F) -> AppResult<T>
    where
        F: FnOnce(&mut Conn) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        rocket::tokio::task::spawn_blocking(move || {
            let mut conn = db.conn()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }
}

/// The version of the step that makes usernames unique whatever their case
/// (`2026-12-06-000210_usernames_nocase`): it cannot be applied while two accounts' names differ
/// only in case, so [`migrate`] checks for that first.
pub const USERNAMES_NOCASE: &str = "20261206000210";

/// What [`migrate`] does when existing rows keep a step from being applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    /// Fail, naming the rows and how to fix them (`serve` and every command but the repair).
    Refuse,
    /// Apply the steps before it and stop there (`user rename`).
    StopBefore,
}

/// Run the pending migrations (on PostgreSQL under an advisory lock, so that instances starting
/// together do not migrate at the same time), one step at a time: before the
/// [`USERNAMES_NOCASE`] step, accounts whose names differ only in case are looked for, and if
/// there are any the operator is told which (the step would fail with a bare "UNIQUE constraint
/// failed" otherwise).
fn migrate(conn: &mut Conn, blocked: Blocked) -> Result<(), String> {
    if let Conn::Postgres(c) = conn {
        let c: &mut PgConnection = c;
        c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).map_err(|e| e.to_string())?;
    }
    let result = migrate_steps(conn, blocked);
    if let Conn::Postgres(c) = conn {
        let c: &mut PgConnection = c;
        let _ = c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    }
    result
}

fn migrate_steps(conn: &mut Conn, blocked: Blocked) -> Result<(), String> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| format!("migrations failed: {e}");
    loop {
        let next = match conn {
            Conn::Sqlite(c) => next_pending(&mut **c, SQLITE_MIGRATIONS),
            Conn::Postgres(c) => next_pending(&mut **c, POSTGRES_MIGRATIONS),
        }
        .map_err(failed)?;
        let Some(version) = next else { return Ok(()) };
        if version == USERNAMES_NOCASE {
            let collisions = models::users::case_collisions(conn).map_err(|e| format!("migrations failed: {e}"))?;
            if !collisions.is_empty() {
                return match blocked {
                    Blocked::StopBefore => Ok(()),
                    Blocked::Refuse => Err(describe_collisions(&collisions)),
                };
            }
        }
        match conn {
            Conn::Sqlite(c) => c.run_next_migration(SQLITE_MIGRATIONS).map(|_| ()),
            Conn::Postgres(c) => c.run_next_migration(POSTGRES_MIGRATIONS).map(|_| ()),
        }
        .map_err(failed)?;
    }
}

/// The version of the first pending migration of `source`.
fn next_pending<DB: diesel::backend::Backend>(
    c: &mut impl MigrationHarness<DB>,
    source: EmbeddedMigrations,
) -> diesel::migration::Result<Option<String>> {
    Ok(c.pending_migrations(source)?.first().map(|m| m.name().version().to_string()))
}

/// Accounts whose names differ only in case ([`models::users::case_collisions`]), one group a
/// line part: `"alice" (id 1), "ALICE" (id 7); "bob" (id 2), "Bob" (id 9)`.
pub fn collision_groups(collisions: &[(i64, String)]) -> String {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut last: Option<String> = None;
    for (id, name) in collisions {
        let key = name.to_lowercase();
        if last.as_deref() != Some(key.as_str()) {
            groups.push(Vec::new());
            last = Some(key);
        }
        if let Some(group) = groups.last_mut() {
            group.push(format!("\"{name}\" (id {id})"));
        }
    }
    groups.iter().map(|g| g.join(", ")).collect::<Vec<_>>().join("; ")
}

/// The operator's message for accounts whose names differ only in case: which, and what to do.
pub fn describe_collisions(collisions: &[(i64, String)]) -> String {
    format!(
        "cannot upgrade the database: a username is now one account whatever its case, and these accounts' \
         names differ only in case: {}. Rename all but one of each group with \
         `tokenvault user rename <name> <new-name>` (or delete the extra accounts); tokenvault refuses to \
         start until then",
        collision_groups(collisions)
    )
}

/// Whether the database answers and every embedded migration is applied (for `/readyz`).
pub fn ready(conn: &mut Conn) -> Result<(), String> {
    let pending = match conn {
        Conn::Sqlite(c) => {
            c.batch_execute("SELECT 1").map_err(|e| format!("database: {e}"))?;
            c.has_pending_migration(SQLITE_MIGRATIONS)
        }
        Conn::Postgres(c) => {
            c.batch_execute("SELECT 1").map_err(|e| format!("database: {e}"))?;
            c.has_pending_migration(POSTGRES_MIGRATIONS)
        }
    };
    match pending {
        Ok(false) => Ok(()),
        Ok(true) => Err("migrations are pending".into()),
        Err(e) => Err(format!("migrations: {e}")),
    }
}

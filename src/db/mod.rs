//! Database access: an r2d2 pool of Diesel connections, embedded migrations, and
//! [`Db::run`] to use a connection off the async worker threads.

pub mod models;
pub mod schema;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error::{AppError, AppResult};

pub type Conn = SqliteConnection;
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Per-connection settings: WAL for concurrent readers, a busy timeout instead of instant
/// `SQLITE_BUSY`, enforced foreign keys.
#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(
            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
             PRAGMA synchronous = NORMAL;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The connection pool, in Rocket's managed state.
#[derive(Clone)]
pub struct Db {
    pool: Pool<ConnectionManager<Conn>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("state", &self.pool.state()).finish()
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

impl Db {
    /// Open (creating the file and its folder if needed) and migrate the database.
    pub fn open(database_url: &str) -> Result<Db, String> {
        let path = sqlite_path(database_url);
        if path.starts_with("postgres://") || path.starts_with("postgresql://") {
            return Err("PostgreSQL is not supported by this build yet; use a SQLite path".into());
        }
        if let Some(dir) = Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        restrict_permissions(Path::new(path));
        let manager = ConnectionManager::<Conn>::new(path);
        let pool = Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(5))
            .connection_customizer(Box::new(Pragmas))
            .build(manager)
            .map_err(|e| format!("cannot open database {path}: {e}"))?;
        let db = Db { pool };
        let mut conn = db.conn().map_err(|e| e.to_string())?;
        conn.run_pending_migrations(MIGRATIONS).map_err(|e| format!("migrations failed: {e}"))?;
        Ok(db)
    }

    /// A connection for synchronous callers (the CLI, startup).
    pub fn conn(&self) -> AppResult<PooledConnection<ConnectionManager<Conn>>> {
        Ok(self.pool.get()?)
    }

    /// Run `f` with a pooled connection on the blocking thread pool.
    pub async fn run<F, T>(&self, f: F) -> AppResult<T>
    where
        F: FnOnce(&mut Conn) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        rocket::tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }
}

/// Whether the database answers and every embedded migration is applied (for `/readyz`).
pub fn ready(conn: &mut Conn) -> Result<(), String> {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT 1").execute(conn).map_err(|e| format!("database: {e}"))?;
    match conn.has_pending_migration(MIGRATIONS) {
        Ok(false) => Ok(()),
        Ok(true) => Err("migrations are pending".into()),
        Err(e) => Err(format!("migrations: {e}")),
    }
}

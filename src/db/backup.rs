//! `tokenvault backup`: a consistent copy of a running SQLite database.
//!
//! `VACUUM INTO` reads the database in one read transaction — one snapshot, whatever other
//! connections (a running server) commit meanwhile under WAL — and writes a compact copy. The
//! copy goes into a file created here first with mode 0600 and `O_EXCL` (SQLite accepts an empty
//! target file), so an existing file is never overwritten and the copy is never readable by
//! others, not even while it is written. PostgreSQL has `pg_dump` for this.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, QueryableByName, RunQueryDsl};

use super::Conn;

/// What a backup wrote.
#[derive(Debug)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    /// Every table of the copy with its number of rows, by name.
    pub tables: Vec<(String, i64)>,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    quick_check: String,
}

/// Why the PostgreSQL backend has no `backup` command, and what to do instead.
pub const POSTGRES_ADVICE: &str = "tokenvault backup copies SQLite databases only; on PostgreSQL use its own tools, \
     e.g. `pg_dump --format=custom --file=tokenvault.dump <database_url>` (restore with `pg_restore`), or your \
     provider's snapshots. The vault key is not in the database (only a check value sealed with it is): the tokens \
     and client secrets in a dump open only with the `vault_key` they were sealed with, so keep the key backed up \
     separately, and not next to the dump";

/// Copy the database behind `conn` (SQLite) into the new file `dest`.
pub fn sqlite(conn: &mut Conn, dest: &Path) -> Result<Backup, String> {
    let Conn::Sqlite(c) = conn else { return Err(POSTGRES_ADVICE.into()) };
    let c: &mut SqliteConnection = c;
    create_private(dest).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} already exists: backup never overwrites a file; choose a new name", dest.display())
        }
        _ => format!("cannot create {}: {e}", dest.display()),
    })?;
    let written = (|| {
        let target = dest.to_str().ok_or("the backup path is not valid UTF-8")?;
        diesel::sql_query("VACUUM INTO ?")
            .bind::<Text, _>(target)
            .execute(c)
            .map_err(|e| format!("the copy failed: {e}"))?;
        std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(|e| format!("cannot sync the copy: {e}"))?;
        describe(dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    written
}

/// Create `path` empty, with mode 0600, failing if it exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

/// Open the copy on its own, check it and count its rows.
fn describe(path: &Path) -> Result<Backup, String> {
    let url = path.to_str().ok_or("the backup path is not valid UTF-8")?;
    let mut copy = SqliteConnection::establish(url).map_err(|e| format!("cannot open the copy: {e}"))?;
    copy.batch_execute("PRAGMA query_only = ON").map_err(|e| e.to_string())?;
    let check = diesel::sql_query("PRAGMA quick_check")
        .get_result::<Check>(&mut copy)
        .map_err(|e| format!("cannot check the copy: {e}"))?;
    if check.quick_check != "ok" {
        return Err(format!("the copy is damaged: {}", check.quick_check));
    }
    let names = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .load::<Name>(&mut copy)
    .map_err(|e| e.to_string())?;
    let mut tables = Vec::new();
    for Name { name } in names {
        let quoted = name.replace('"', "\"\"");
        let count = diesel::sql_query(format!("SELECT count(*) AS n FROM \"{quoted}\""))
            .get_result::<Count>(&mut copy)
            .map_err(|e| e.to_string())?;
        tables.push((name, count.n));
    }
    let bytes = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    Ok(Backup { path: path.to_path_buf(), bytes, tables })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_into_a_new_private_file_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("live.sqlite").to_string_lossy()).unwrap();
        let mut conn = db.conn().unwrap();
        crate::db::models::meta::set(&mut conn, "backup_test", b"value", 1).unwrap();
        let dest = dir.path().join("copy.sqlite");
        let backup = sqlite(&mut conn, &dest).unwrap();
        assert!(backup.bytes > 0);
        assert!(backup.tables.iter().any(|(name, rows)| name == "meta" && *rows == 1), "{:?}", backup.tables);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let copy = crate::db::Db::open(&dest.to_string_lossy()).unwrap();
        let value = crate::db::models::meta::get(&mut copy.conn().unwrap(), "backup_test").unwrap();
        assert_eq!(value.as_deref(), Some(&b"value"[..]));

        let before = std::fs::read(&dest).unwrap();
        let err = sqlite(&mut conn, &dest).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), before, "the existing file is left alone");
        let err = sqlite(&mut conn, &dir.path().join("missing/copy.sqlite")).unwrap_err();
        assert!(err.contains("cannot create"), "{err}");
    }
}

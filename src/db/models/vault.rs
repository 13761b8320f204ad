use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::schema::vault_entries;
use crate::db::Conn;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = vault_entries)]
pub struct VaultEntry {
    pub path: String,
    pub ciphertext: Vec<u8>,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Metadata of an entry, without its value.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = vault_entries)]
pub struct VaultEntryMeta {
    pub path: String,
    pub updated_at: i64,
    pub updated_by: String,
}

pub fn upsert(conn: &mut Conn, entry: &VaultEntry) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(vault_entries::table)
            .values(entry)
            .on_conflict(vault_entries::path)
            .do_update()
            .set((
                vault_entries::ciphertext.eq(excluded(vault_entries::ciphertext)),
                vault_entries::updated_at.eq(excluded(vault_entries::updated_at)),
                vault_entries::updated_by.eq(excluded(vault_entries::updated_by)),
            ))
            .execute(conn)
    })
}

pub fn get(conn: &mut Conn, path: &str) -> QueryResult<Option<VaultEntry>> {
    crate::on_conn!(conn, conn => {
        vault_entries::table.find(path).select(VaultEntry::as_select()).first(conn).optional()
    })
}

pub fn list(conn: &mut Conn) -> QueryResult<Vec<VaultEntryMeta>> {
    crate::on_conn!(conn, conn => {
        vault_entries::table.order(vault_entries::path.asc()).select(VaultEntryMeta::as_select()).load(conn)
    })
}

pub fn delete(conn: &mut Conn, path: &str) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::delete(vault_entries::table.find(path)).execute(conn)
    })
}

/// Up to `limit` entries after `after` (by path), with their sealed values (for key rotation).
pub fn sealed_batch(conn: &mut Conn, after: &str, limit: i64) -> QueryResult<Vec<(String, Vec<u8>)>> {
    crate::on_conn!(conn, conn => {
        vault_entries::table
            .filter(vault_entries::path.gt(after))
            .order(vault_entries::path.asc())
            .limit(limit)
            .select((vault_entries::path, vault_entries::ciphertext))
            .load(conn)
    })
}

pub fn set_ciphertext(conn: &mut Conn, path: &str, ciphertext: &[u8]) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::update(vault_entries::table.find(path)).set(vault_entries::ciphertext.eq(ciphertext)).execute(conn)
    })
}

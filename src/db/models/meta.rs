use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::schema::meta;
use crate::db::Conn;

pub fn get(conn: &mut Conn, name: &str) -> QueryResult<Option<Vec<u8>>> {
    crate::on_conn!(conn, conn => {
        meta::table.find(name).select(meta::value).first(conn).optional()
    })
}

pub fn set(conn: &mut Conn, name: &str, value: &[u8], now: i64) -> QueryResult<usize> {
    crate::on_conn!(conn, conn => {
        diesel::insert_into(meta::table)
            .values((meta::name.eq(name), meta::value.eq(value), meta::updated_at.eq(now)))
            .on_conflict(meta::name)
            .do_update()
            .set((meta::value.eq(excluded(meta::value)), meta::updated_at.eq(excluded(meta::updated_at))))
            .execute(conn)
    })
}

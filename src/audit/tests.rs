//! The chain on a SQLite file: append, verify, and each kind of tampering named by its id.

use super::{append, prune, verify, Actor, Broken, Entry, Kind};
use crate::db::{Conn, Db};
use crate::vault::Cipher;

fn setup(n: usize) -> (tempfile::TempDir, Db, Cipher) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("a.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let entries: Vec<Entry> = (0..n)
        .map(|i| Entry::new(Kind::TokenRead, Actor::Key(1)).user(1).service("fake").with("n", i as i64))
        .collect();
    if n > 0 {
        append(&mut db.conn().unwrap(), &cipher, &entries).unwrap();
    }
    (dir, db, cipher)
}

fn sql(conn: &mut Conn, q: &str) {
    use diesel::connection::SimpleConnection;
    crate::on_conn!(conn, c => c.batch_execute(q)).unwrap();
}

#[test]
fn an_intact_chain_verifies_with_its_count() {
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(0));
    append(&mut conn, &cipher, &[Entry::new(Kind::VaultSet, Actor::Cli)]).unwrap();
    super::record(&mut conn, &cipher, Entry::new(Kind::UserAdded, Actor::Cli).user(1)).unwrap();
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(2));
    // Another vault key cannot open the chain key.
    assert!(verify(&mut conn, &Cipher::for_tests(4)).is_err());
}

#[test]
fn a_changed_row_is_named() {
    let (_d, db, cipher) = setup(10);
    let mut conn = db.conn().unwrap();
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(10));
    sql(&mut conn, "UPDATE audit_log SET service = 'other' WHERE id = 5");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Changed(5)));
}

#[test]
fn a_removed_row_is_named() {
    let (_d, db, cipher) = setup(10);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, "DELETE FROM audit_log WHERE id = 6");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Missing(6)));
}

#[test]
fn swapped_rows_are_named() {
    let (_d, db, cipher) = setup(10);
    let mut conn = db.conn().unwrap();
    sql(
        &mut conn,
        "UPDATE audit_log SET id = -3 WHERE id = 3; UPDATE audit_log SET id = 3 WHERE id = 4; \
         UPDATE audit_log SET id = 4 WHERE id = -3;",
    );
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::OutOfOrder(3)));
}

#[test]
fn a_truncated_tail_is_named_even_with_the_head_rolled_back() {
    let (_d, db, cipher) = setup(10);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, "DELETE FROM audit_log WHERE id >= 9");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Truncated(9)));
    // Setting the head to the last remaining entry by hand does not hide it: the head's MAC.
    sql(&mut conn, "UPDATE audit_head SET seq = 8, hash = (SELECT hash FROM audit_log WHERE id = 8)");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::HeadChanged));
}

#[test]
fn pruning_keeps_the_chain_verifiable_from_its_anchor() {
    let (_d2, db2, cipher) = setup(0);
    let mut conn2 = db2.conn().unwrap();
    let old = crate::util::now() - 40 * 86_400;
    let mut entries: Vec<Entry> =
        (0..4).map(|_| Entry { at: old, ..Entry::new(Kind::TokenRead, Actor::Key(1)) }).collect();
    entries.extend((0..6).map(|_| Entry::new(Kind::ProxyCall, Actor::Key(1))));
    append(&mut conn2, &cipher, &entries).unwrap();
    assert_eq!(prune(&mut conn2, &cipher, 0, crate::util::now()).unwrap(), 0, "0 keeps forever");
    assert_eq!(prune(&mut conn2, &cipher, 30, crate::util::now()).unwrap(), 4);
    // 6 kept + the audit.pruned entry.
    assert_eq!(verify(&mut conn2, &cipher).unwrap(), Ok(7));
    assert_eq!(prune(&mut conn2, &cipher, 30, crate::util::now()).unwrap(), 0, "nothing more to prune");
    // Removing the first entry after the anchor is still detected.
    sql(&mut conn2, "DELETE FROM audit_log WHERE id = 5");
    assert_eq!(verify(&mut conn2, &cipher).unwrap(), Err(Broken::Missing(5)));
}

#[test]
fn usernames_are_recorded_only_as_keyed_hashes() {
    let k = super::ChainKey::for_tests(1);
    assert_eq!(k.username_hash("Alice"), k.username_hash(" alice "));
    assert_ne!(k.username_hash("alice"), super::ChainKey::for_tests(2).username_hash("alice"));
    assert!(!k.username_hash("alice").contains("alice"));
}

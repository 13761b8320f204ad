//! The chain on a SQLite file: append, verify, and each kind of tampering named by its id —
//! tampering as an attacker with write access to the database (and no vault key) would: raw SQL.

use super::checkpoint::{self, Checkpoint, Finding};
use super::{append, prune, verify, verify_report, Actor, Broken, Entry, Kind};
use crate::db::models::audit as rows;
use crate::db::{Conn, Db};
use crate::vault::Cipher;

fn entries(n: usize) -> Vec<Entry> {
    (0..n).map(|i| Entry::new(Kind::TokenRead, Actor::Key(1)).user(1).service("fake").with("n", i as i64)).collect()
}

/// A new database with its log started (as the server's or the CLI's start does) and `n` entries.
fn setup(n: usize) -> (tempfile::TempDir, Db, Cipher) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("a.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    assert!(super::open(&mut conn, &cipher).unwrap().is_ok(), "a new database's log starts");
    if n > 0 {
        append(&mut conn, &cipher, &entries(n)).unwrap();
    }
    (dir, db, cipher)
}

fn sql(conn: &mut Conn, q: &str) {
    use diesel::connection::SimpleConnection;
    crate::on_conn!(conn, c => c.batch_execute(q)).unwrap();
}

/// The head row as the migration leaves it, set back by hand.
const RESET_HEAD: &str = "UPDATE audit_head SET seq = 0, \
    hash = '0000000000000000000000000000000000000000000000000000000000000000', anchor_id = 0, \
    anchor_hash = '0000000000000000000000000000000000000000000000000000000000000000', mac = NULL";

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
    // …and the next append does not launder it by writing a fresh MAC over it: it is refused.
    let e = append(&mut conn, &cipher, &entries(1)).unwrap_err().to_string();
    assert!(e.contains("cannot be appended") && e.contains("head row was changed"), "{e}");
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
    assert_eq!(prune(&mut conn2, &cipher, 0, crate::util::now()).unwrap(), Ok(0), "0 keeps forever");
    assert_eq!(prune(&mut conn2, &cipher, 30, crate::util::now()).unwrap(), Ok(4));
    // 6 kept + the audit.pruned entry.
    assert_eq!(verify(&mut conn2, &cipher).unwrap(), Ok(7));
    assert_eq!(prune(&mut conn2, &cipher, 30, crate::util::now()).unwrap(), Ok(0), "nothing more to prune");
    // Removing the first entry after the anchor is still detected.
    sql(&mut conn2, "DELETE FROM audit_log WHERE id = 5");
    assert_eq!(verify(&mut conn2, &cipher).unwrap(), Err(Broken::Missing(5)));
}

/// Issue 19, item 1: `at` set to 1970 on a minutes-old entry made the retention prune delete it
/// and everything before it, and re-anchor the chain so that verify said "intact". The prune now
/// walks the verified chain from the anchor and stops at the first entry that is not old: the
/// tampered entry is never reached, nothing is removed, and verify names it.
#[test]
fn an_at_moved_back_by_hand_does_not_make_recent_entries_prunable() {
    let (_d, db, cipher) = setup(10);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, "UPDATE audit_log SET at = 0 WHERE id = 7");
    assert_eq!(prune(&mut conn, &cipher, 30, crate::util::now()).unwrap(), Ok(0));
    assert_eq!(rows::count(&mut conn).unwrap(), 10, "nothing removed");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Changed(7)));

    // With old entries before it, those (verified) are pruned; the moved one and what follows stay.
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    let old = crate::util::now() - 40 * 86_400;
    let mut list: Vec<Entry> = entries(3).into_iter().map(|e| Entry { at: old, ..e }).collect();
    list.extend(entries(5));
    append(&mut conn, &cipher, &list).unwrap();
    sql(&mut conn, "UPDATE audit_log SET at = 0 WHERE id = 6");
    assert_eq!(prune(&mut conn, &cipher, 30, crate::util::now()).unwrap(), Ok(3));
    assert!(rows::find(&mut conn, 6).unwrap().is_some() && rows::find(&mut conn, 4).unwrap().is_some());
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Changed(6)));
}

/// A prune refuses — removes nothing — when anything up to its cut-off does not verify: a
/// changed old entry, a gap, a hand-set head.
#[test]
fn a_prune_that_meets_anything_unverified_removes_nothing() {
    let old = crate::util::now() - 40 * 86_400;
    let scenarios: [(&str, Broken); 3] = [
        ("UPDATE audit_log SET detail = '{\"n\":99}' WHERE id = 2", Broken::Changed(2)),
        ("DELETE FROM audit_log WHERE id = 3", Broken::Missing(3)),
        (
            "UPDATE audit_head SET anchor_id = 2, anchor_hash = (SELECT hash FROM audit_log WHERE id = 2)",
            Broken::HeadChanged,
        ),
    ];
    for (tamper, broken) in scenarios {
        let (_d, db, cipher) = setup(0);
        let mut conn = db.conn().unwrap();
        let list: Vec<Entry> = entries(6).into_iter().map(|e| Entry { at: old, ..e }).collect();
        append(&mut conn, &cipher, &list).unwrap();
        let before = rows::count(&mut conn).unwrap();
        sql(&mut conn, tamper);
        assert_eq!(prune(&mut conn, &cipher, 30, crate::util::now()).unwrap(), Err(broken.clone()), "{tamper}");
        assert_eq!(rows::count(&mut conn).unwrap(), before - i64::from(tamper.starts_with("DELETE")), "{tamper}");
        assert!(rows::head(&mut conn).unwrap().anchor_id == 0 || broken == Broken::HeadChanged, "not re-anchored");
    }
}

/// Entries are not in time order (a batch is written after entries recorded meanwhile): the prune
/// removes the longest run from the anchor that is all older than the cut-off, no further — and a
/// batched entry counts by the last of its events.
#[test]
fn pruning_stops_at_the_first_entry_that_is_not_old() {
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    let (old, now) = (crate::util::now() - 40 * 86_400, crate::util::now());
    let list = vec![
        Entry { at: old, ..Entry::new(Kind::VaultSet, Actor::Cli) },
        Entry { at: old, at_last: Some(now), ..Entry::new(Kind::TokenRead, Actor::Key(1)) },
        Entry { at: old, ..Entry::new(Kind::VaultSet, Actor::Cli) },
    ];
    append(&mut conn, &cipher, &list).unwrap();
    assert_eq!(prune(&mut conn, &cipher, 30, now).unwrap(), Ok(1));
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(3));
}

/// Issue 19, item 2: deleting every row and the chain key and resetting the head to the
/// migration's values gave "intact: 0 entries", and the next entry started a new chain at id 1.
#[test]
fn a_wiped_log_does_not_verify_and_is_not_started_again() {
    let (_d, db, cipher) = setup(5);
    let mut conn = db.conn().unwrap();
    crate::db::models::users::for_tests(&mut conn, "alice");
    sql(&mut conn, "DELETE FROM audit_log; DELETE FROM meta WHERE name = 'audit_chain_key';");
    sql(&mut conn, RESET_HEAD);
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::NotStarted));
    assert_eq!(super::open(&mut conn, &cipher).unwrap(), Err(Broken::NotStarted));
    let e = append(&mut conn, &cipher, &entries(1)).unwrap_err().to_string();
    assert!(e.contains("cannot be appended") && e.contains("tokenvault audit restart"), "{e}");
    assert!(super::record_signin_failure(&mut conn, &cipher, None, "alice", None).is_err());
    assert_eq!(rows::count(&mut conn).unwrap(), 0, "no new chain");
    assert!(super::chain_key(&mut conn, &cipher).unwrap().is_none(), "no new key");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::NotStarted));

    // Only with every user deleted too does the database look new (and its log start again):
    // what only checkpoints can catch (`a_database_made_to_look_new_is_caught_by_a_checkpoint`).
}

/// A database upgraded from a version that had users but never wrote an audit entry: the
/// upgrade's migration marks it, and its first start starts the log (instead of refusing to
/// start, as for a log emptied by hand).
#[test]
fn an_upgraded_database_with_users_and_no_log_yet_starts_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("old.sqlite").to_string_lossy().to_string();
    let cipher = Cipher::for_tests(3);
    {
        // The database as the version before this one left it: users, the placeholder head, no
        // entry and no chain key (the step undone and not recorded as run).
        let db = Db::open(&url).unwrap();
        let mut conn = db.conn().unwrap();
        crate::db::models::users::for_tests(&mut conn, "alice");
        sql(&mut conn, include_str!("../../migrations/sqlite/2026-12-06-000110_audit_batched_range/down.sql"));
        sql(&mut conn, "DELETE FROM __diesel_schema_migrations WHERE version = '20261206000110'");
        assert_eq!(super::open(&mut conn, &cipher).unwrap(), Err(Broken::NotStarted), "no log without the mark");
    }
    let db = Db::open(&url).unwrap();
    let mut conn = db.conn().unwrap();
    assert_eq!(rows::head(&mut conn).unwrap().hash, super::UPGRADED_WITHOUT_LOG);
    let head = super::open(&mut conn, &cipher).unwrap().expect("the upgrade starts the log");
    assert!(head.mac.is_some() && head.hash != super::UPGRADED_WITHOUT_LOG);
    append(&mut conn, &cipher, &entries(2)).unwrap();
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(2));
}

/// Deleting only the chain key, or only resetting the head over the entries, is found too; and
/// an emptied log whose genuine head was kept is a truncation.
#[test]
fn a_deleted_key_or_a_reset_head_is_named() {
    let (_d, db, cipher) = setup(3);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, "DELETE FROM meta WHERE name = 'audit_chain_key'");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::KeyMissing));
    assert!(append(&mut conn, &cipher, &entries(1)).is_err(), "no key is made over a started log");
    assert!(super::chain_key(&mut conn, &cipher).unwrap().is_none());

    let (_d, db, cipher) = setup(3);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, RESET_HEAD);
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::NotStarted));
    assert!(append(&mut conn, &cipher, &entries(1)).is_err());

    let (_d, db, cipher) = setup(3);
    let mut conn = db.conn().unwrap();
    sql(&mut conn, "DELETE FROM audit_log");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Truncated(1)));
}

/// A log starts once, in a database that never had one, with an authenticated genesis of its
/// own; before that the placeholder head does not verify, and a database that already has users
/// never starts one by itself.
#[test]
fn a_log_starts_only_in_a_database_without_history() {
    let dir = tempfile::tempdir().unwrap();
    let cipher = Cipher::for_tests(3);
    let open = |name: &str| Db::open(&dir.path().join(name).to_string_lossy()).unwrap();
    let (a, b) = (open("a.sqlite"), open("b.sqlite"));
    let (mut ca, mut cb) = (a.conn().unwrap(), b.conn().unwrap());
    assert_eq!(verify(&mut ca, &cipher).unwrap(), Err(Broken::NotStarted), "the placeholder is no genesis");
    let ha = super::open(&mut ca, &cipher).unwrap().unwrap();
    let hb = super::open(&mut cb, &cipher).unwrap().unwrap();
    assert_eq!((ha.seq, ha.anchor_id), (0, 0));
    assert!(ha.hash != super::GENESIS && ha.hash != hb.hash && ha.hash == ha.anchor_hash, "a random genesis each");
    assert_eq!(super::open(&mut ca, &cipher).unwrap().unwrap(), ha, "started once");
    assert_eq!(verify(&mut ca, &cipher).unwrap(), Ok(0));
    // The genesis is authenticated: changing it by hand is found.
    sql(&mut ca, "UPDATE audit_head SET hash = '1111111111111111111111111111111111111111111111111111111111111111'");
    assert_eq!(verify(&mut ca, &cipher).unwrap(), Err(Broken::HeadChanged));

    let c = open("c.sqlite");
    let mut cc = c.conn().unwrap();
    crate::db::models::users::for_tests(&mut cc, "bob");
    assert_eq!(super::open(&mut cc, &cipher).unwrap(), Err(Broken::NotStarted));
    assert!(append(&mut cc, &cipher, &entries(1)).is_err());
}

/// The chain key is sealed under the vault key and re-sealed by `vault rotate-key`: after the
/// rotation, with the old key dropped from the ring, the chain verifies and goes on.
#[test]
fn the_chain_outlives_a_vault_key_rotation() {
    let (_d, db, old) = setup(5);
    let mut conn = db.conn().unwrap();
    let key = |seed: u8| crate::util::b64_encode(&[seed; crate::vault::KEY_LEN]);
    let ring = Cipher::from_base64(&key(9), &[key(3)]).unwrap();
    crate::vault::rotation::rotate(&mut conn, &ring, |_, _| Ok(()), |_, _| {}).unwrap();
    let new = Cipher::for_tests(9);
    assert_eq!(verify(&mut conn, &new).unwrap(), Ok(5));
    append(&mut conn, &new, &entries(2)).unwrap();
    assert_eq!(verify(&mut conn, &new).unwrap(), Ok(7));
    assert!(verify(&mut conn, &old).is_err(), "the old key alone no longer opens it");
}

/// Issue 19, item 3: putting back an earlier genuine head and deleting what followed verifies as
/// intact — no chain kept in the database can tell. A checkpoint taken before can.
#[test]
fn a_rolled_back_head_is_caught_by_a_checkpoint() {
    let (_d, db, cipher) = setup(6);
    let mut conn = db.conn().unwrap();
    let saved = rows::head(&mut conn).unwrap();
    append(&mut conn, &cipher, &entries(4)).unwrap();
    let cp = checkpoint::current(&mut conn, &cipher).unwrap().unwrap();
    let earlier = Checkpoint::sign(&cipher, 8, &rows::find(&mut conn, 8).unwrap().unwrap().hash, 1);
    assert_eq!((cp.seq, cp.authenticity(&cipher)), (10, checkpoint::Authenticity::Valid));
    // The attacker: entries 7-10 deleted, the saved (genuine) head put back.
    sql(&mut conn, "DELETE FROM audit_log WHERE id > 6");
    rows::set_head(&mut conn, &saved).unwrap();
    let report = verify_report(&mut conn, &cipher).unwrap();
    assert_eq!(report.result, Ok(6), "the database alone cannot tell");
    for c in [&cp, &earlier] {
        let finding = checkpoint::check(&mut conn, &report.head, None, c.seq, &c.hash).unwrap();
        assert_eq!(finding, Finding::Ahead { ends_at: 6 });
        assert!(finding.is_failure() && finding.to_string().contains("ends at entry 6"));
    }
    // A checkpoint of an entry still there holds; one of another log's entry differs.
    let six = rows::find(&mut conn, 6).unwrap().unwrap().hash;
    assert_eq!(checkpoint::check(&mut conn, &report.head, None, 6, &six).unwrap(), Finding::Holds);
    assert!(matches!(checkpoint::check(&mut conn, &report.head, None, 5, &six).unwrap(), Finding::Differs { .. }));
    // A head the MAC does not vouch for is never checkpointed.
    sql(&mut conn, "UPDATE audit_head SET seq = 5");
    assert_eq!(checkpoint::current(&mut conn, &cipher).unwrap(), Err(Broken::HeadChanged));
}

/// A checkpoint of an entry that retention pruning removed cannot be compared any more: said so,
/// with the `audit.pruned` entry that explains it — not a failure. Without such an entry it is.
#[test]
fn a_checkpoint_pruned_past_is_explained_by_the_pruned_entry() {
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    let old = crate::util::now() - 40 * 86_400;
    let list: Vec<Entry> = entries(4).into_iter().map(|e| Entry { at: old, ..e }).chain(entries(2)).collect();
    append(&mut conn, &cipher, &list).unwrap();
    let two = rows::find(&mut conn, 2).unwrap().unwrap().hash;
    let four = rows::find(&mut conn, 4).unwrap().unwrap().hash;
    assert_eq!(prune(&mut conn, &cipher, 30, crate::util::now()).unwrap(), Ok(4));
    let report = verify_report(&mut conn, &cipher).unwrap();
    let moved = report.anchor_moved_by.clone().expect("the audit.pruned entry");
    assert_eq!((moved.kind.as_str(), moved.through, moved.entry), ("audit.pruned", 4, 7));
    let finding = checkpoint::check(&mut conn, &report.head, Some(&moved), 2, &two).unwrap();
    assert_eq!(finding, Finding::Removed(moved.clone()));
    assert!(!finding.is_failure() && finding.to_string().contains("not tampering"));
    // The anchor itself is still comparable.
    assert_eq!(checkpoint::check(&mut conn, &report.head, Some(&moved), 4, &four).unwrap(), Finding::Holds);
    let unexplained = checkpoint::check(&mut conn, &report.head, None, 2, &two).unwrap();
    assert!(unexplained.is_failure());
}

/// Issue 19, item 4: every entry is stored within the cap whatever its caller built, cut the
/// same way every time, with a marker; the write never fails for it.
#[test]
fn entries_are_stored_within_the_cap() {
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    let huge = "x".repeat(1 << 20);
    let mut e = Entry::new(Kind::ProxyCall, Actor::Key(1)).service(huge.clone()).address(Some(huge.clone()));
    for i in 0..40 {
        e = e.with(&format!("field{i:02}"), format!("{i}-{huge}"));
    }
    let e = e.with("count", 7).with("list", vec![huge.clone(); 100]);
    let bounded = e.clone().bounded();
    assert!(bounded.stored_bytes() <= super::MAX_ENTRY_BYTES, "{}", bounded.stored_bytes());
    assert!(bounded.detail.to_string().len() <= super::MAX_DETAIL_BYTES);
    assert_eq!(bounded, bounded.clone().bounded(), "idempotent");
    assert_eq!(bounded, e.clone().bounded(), "deterministic");
    assert_eq!(bounded.detail["truncated"], true);
    assert_eq!(bounded.detail["count"], 7, "small values are kept");
    assert!(bounded.service.as_deref().unwrap().ends_with(super::CUT));
    append(&mut conn, &cipher, &[e]).unwrap();
    let row = rows::find(&mut conn, 1).unwrap().unwrap();
    let stored = row.kind.len()
        + row.actor.len()
        + row.service.map_or(0, |s| s.len())
        + row.address.map_or(0, |s| s.len())
        + row.detail.len();
    assert!(stored <= super::MAX_ENTRY_BYTES, "{stored}");
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(1));
    // Multi-byte text is cut at a character boundary.
    let cut = Entry::new(Kind::VaultSet, Actor::Cli).with("path", "é".repeat(1000)).bounded();
    let path = cut.detail["path"].as_str().unwrap();
    assert!(path.len() <= super::MAX_TEXT_BYTES && path.ends_with(super::CUT));
}

/// A path template keeps at most 16 segments and 256 bytes, then `/…`.
#[test]
fn path_templates_are_capped() {
    use super::path_template;
    assert_eq!(path_template(&["files", "12345", "content"]), "/files/*/content");
    assert_eq!(path_template::<&str>(&[]), "/");
    let words: Vec<String> = (0..3000).map(|i| format!("segment{}", char::from(b'a' + (i % 26) as u8))).collect();
    let t = path_template(&words);
    assert!(t.len() <= super::PATH_BYTES && t.ends_with("/…"), "{} bytes: {t}", t.len());
    assert!(t.matches('/').count() <= super::PATH_SEGMENTS + 1, "{t}");
    let long_words: Vec<String> = (0..40).map(|_| "abcdefghijklmnopqrstuvw".to_string()).collect();
    let t = path_template(&long_words);
    assert!(t.len() <= super::PATH_BYTES && t.ends_with("/…"), "{} bytes: {t}", t.len());
    let sixteen: Vec<&str> = vec!["a"; 16];
    assert_eq!(path_template(&sixteen), format!("/{}", sixteen.join("/")), "16 segments are kept whole");
    let seventeen: Vec<&str> = vec!["a"; 17];
    assert_eq!(path_template(&seventeen), format!("/{}/…", sixteen.join("/")));
}

/// Issue 19, item 5: a batched entry carries the range of its events (`at`..`at_last`), under its
/// hash: set, changed or removed by hand, it breaks the chain.
#[test]
fn the_time_range_of_a_batched_entry_is_part_of_its_hash() {
    let (_d, db, cipher) = setup(0);
    let mut conn = db.conn().unwrap();
    let e = Entry { at: 100, at_last: Some(103), ..Entry::new(Kind::TokenRead, Actor::Key(1)) };
    append(&mut conn, &cipher, &[e, Entry::new(Kind::VaultSet, Actor::Cli)]).unwrap();
    assert_eq!(rows::find(&mut conn, 1).unwrap().unwrap().at_last, Some(103));
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(2));
    for (tamper, restore) in [
        ("UPDATE audit_log SET at_last = 101 WHERE id = 1", "UPDATE audit_log SET at_last = 103 WHERE id = 1"),
        ("UPDATE audit_log SET at_last = NULL WHERE id = 1", "UPDATE audit_log SET at_last = 103 WHERE id = 1"),
        ("UPDATE audit_log SET at_last = 5 WHERE id = 2", "UPDATE audit_log SET at_last = NULL WHERE id = 2"),
    ] {
        sql(&mut conn, tamper);
        assert!(matches!(verify(&mut conn, &cipher).unwrap(), Err(Broken::Changed(_))), "{tamper}");
        sql(&mut conn, restore);
    }
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(2));
    assert_eq!(super::when(100, None), "1970-01-01 00:01:40 UTC");
    assert_eq!(super::when(100, Some(100)), "1970-01-01 00:01:40 UTC (batched)");
    assert_eq!(super::when(100, Some(103)), "1970-01-01 00:01:40 UTC – 1970-01-01 00:01:43 UTC (batched)");
}

/// An entry without `at_last` hashes exactly as main (4c91691) hashed it: the chain of a database
/// it made verifies unchanged (`tests/it/audit.rs` checks rows that build wrote).
#[test]
fn entries_without_a_range_hash_as_before() {
    let key = super::ChainKey::for_tests(5);
    let row = rows::AuditRow {
        id: 1,
        at: 1_796_566_139,
        kind: "vault.set".into(),
        user_id: None,
        actor: "cli".into(),
        service: None,
        connection_id: None,
        account: None,
        address: None,
        detail: r#"{"path":"a.client_id"}"#.into(),
        prev_hash: super::GENESIS.into(),
        hash: String::new(),
        at_last: None,
    };
    assert_eq!(key.entry_hash(super::GENESIS, &row), ENTRY_HASH_OF_MAIN);
    assert_ne!(
        key.entry_hash(super::GENESIS, &rows::AuditRow { at_last: Some(row.at), ..row.clone() }),
        ENTRY_HASH_OF_MAIN
    );
}

/// HMAC-SHA256([5; 32], the v1 encoding of the row above), computed independently (Python's hmac).
const ENTRY_HASH_OF_MAIN: &str = "129879e0ed7b54e0c915503f5acbdce776a50385fd6d1c71f97569e7a3e940ae";

#[test]
fn usernames_are_recorded_only_as_keyed_hashes() {
    let k = super::ChainKey::for_tests(1);
    assert_eq!(k.username_hash("Alice"), k.username_hash(" alice "));
    assert_ne!(k.username_hash("alice"), super::ChainKey::for_tests(2).username_hash("alice"));
    assert!(!k.username_hash("alice").contains("alice"));
}

/// `audit restart` archives a log that cannot be extended and starts a new one after it: ids go
/// on, the new log verifies, its first entry says why, and a log that verifies is never restarted.
#[test]
fn a_restart_archives_the_old_log_and_starts_after_it() {
    let (_d, db, cipher) = setup(5);
    let mut conn = db.conn().unwrap();
    crate::db::models::users::for_tests(&mut conn, "alice");
    let mut archive = Vec::new();
    let e = super::restart(&mut conn, &cipher, "test", &mut archive).unwrap_err().to_string();
    assert!(e.contains("verifies"), "{e}");
    assert!(archive.is_empty());
    sql(&mut conn, "DELETE FROM meta WHERE name = 'audit_chain_key'");
    sql(&mut conn, "DELETE FROM audit_log WHERE id = 5");
    sql(&mut conn, RESET_HEAD);
    let done = super::restart(&mut conn, &cipher, "incident 42", &mut archive).unwrap();
    assert_eq!((done.archived, done.anchor), (4, 4));
    let text = String::from_utf8(archive).unwrap();
    assert_eq!(text.lines().count(), 5, "a header and the four entries left");
    assert!(text.lines().next().unwrap().contains("incident 42"));
    use sha2::Digest;
    assert_eq!(done.archive_sha256, crate::util::hex(&sha2::Sha256::digest(text.as_bytes())));
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(1));
    let first = rows::find(&mut conn, 5).unwrap().unwrap();
    assert_eq!(first.kind, "audit.restarted");
    assert!(first.detail.contains(&done.archive_sha256) && first.detail.contains("incident 42"));
    append(&mut conn, &cipher, &entries(2)).unwrap();
    assert_eq!(verify(&mut conn, &cipher).unwrap(), Ok(3));
}

/// What the database alone cannot catch: everything wiped, the users too, so that the database
/// looks brand new and a new log starts. A checkpoint of the old log — even of its genesis —
/// says the log is not the one it was.
#[test]
fn a_database_made_to_look_new_is_caught_by_a_checkpoint() {
    let (_d, db, cipher) = setup(4);
    let mut conn = db.conn().unwrap();
    let genesis = Checkpoint::sign(&cipher, 0, &rows::head(&mut conn).unwrap().anchor_hash, 1);
    let four = checkpoint::current(&mut conn, &cipher).unwrap().unwrap();
    sql(&mut conn, "DELETE FROM audit_log; DELETE FROM meta WHERE name = 'audit_chain_key';");
    sql(&mut conn, RESET_HEAD);
    assert!(super::open(&mut conn, &cipher).unwrap().is_ok(), "no users: a new database, a new log");
    append(&mut conn, &cipher, &entries(5)).unwrap();
    let report = verify_report(&mut conn, &cipher).unwrap();
    assert_eq!(report.result, Ok(5));
    for c in [&genesis, &four] {
        let finding = checkpoint::check(&mut conn, &report.head, None, c.seq, &c.hash).unwrap();
        assert!(matches!(finding, Finding::Differs { .. }), "{finding:?}");
    }
}

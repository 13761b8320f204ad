-- Entries written by the audit batcher (token reads, proxy calls, refused sign-ins) carry the time
-- range of the events they stand for: `at` the first, `at_last` the last (the same for one event).
-- Such an entry is appended when its batch is written, up to 200 ms after `at_last`, so its id may
-- follow entries recorded in the meantime: its times, not its id, say when it happened. NULL for
-- every entry written at the time of its event. Covered by the entry's hash when set (an entry
-- without it hashes as before, so the chains of existing databases verify unchanged).
ALTER TABLE audit_log ADD COLUMN at_last BIGINT;

-- A database upgraded from a version that had users but never wrote an audit entry (the head still
-- its placeholder, no entry, no chain key) is marked, so that the first start of this version starts
-- its log there instead of refusing to start. (This version never starts a log in a database with
-- users otherwise: a log emptied by hand must not quietly begin again.)
UPDATE audit_head SET hash = 'upgraded-without-log'
 WHERE seq = 0 AND anchor_id = 0 AND mac IS NULL
   AND NOT EXISTS (SELECT 1 FROM audit_log)
   AND NOT EXISTS (SELECT 1 FROM meta WHERE name = 'audit_chain_key')
   AND EXISTS (SELECT 1 FROM users);

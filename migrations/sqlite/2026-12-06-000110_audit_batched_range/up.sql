-- Entries written by the audit batcher (token reads, proxy calls, refused sign-ins) carry the time
-- range of the events they stand for: `at` the first, `at_last` the last (the same for one event).
-- Such an entry is appended when its batch is written, up to 200 ms after `at_last`, so its id may
-- follow entries recorded in the meantime: its times, not its id, say when it happened. NULL for
-- every entry written at the time of its event. Covered by the entry's hash when set (an entry
-- without it hashes as before, so the chains of existing databases verify unchanged).
ALTER TABLE audit_log ADD COLUMN at_last BIGINT;

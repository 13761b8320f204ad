-- Entries written with `at_last` no longer verify once it is dropped (it is part of their hash):
-- `tokenvault audit verify` names the first one.
ALTER TABLE audit_log DROP COLUMN at_last;
UPDATE audit_head SET hash = '0000000000000000000000000000000000000000000000000000000000000000'
 WHERE hash = 'upgraded-without-log';

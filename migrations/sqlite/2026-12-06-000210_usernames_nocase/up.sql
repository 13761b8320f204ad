-- One account per username whatever its case (issue 19): `ALICE` beside `alice` is impossible.
-- Usernames are ASCII (letters, digits, '.', '_', '-': auth/accounts.rs check_username), and
-- lower() folds A-Z on both backends, so this index is exactly the app's own normalisation
-- (accounts::canonical_username) and sign-in finds an account by lower(username).
--
-- This step fails while two accounts' names differ only in case. tokenvault checks for that
-- before it runs the step (db::migrate), lists the accounts, and refuses to start until they are
-- renamed (`tokenvault user rename <name> <new-name>`) or deleted.
--
-- password_epoch: bumped by every password change. Device cookies (auth/device.rs) carry the
-- user id and the epoch they were issued under, so a password change voids them.
ALTER TABLE users ADD COLUMN password_epoch BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_username_nocase ON users (lower(username));

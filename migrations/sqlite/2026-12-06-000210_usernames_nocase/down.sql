DROP INDEX users_username_nocase;
ALTER TABLE users DROP COLUMN password_epoch;

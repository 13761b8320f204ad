ALTER TABLE connections DROP COLUMN refresh_after_401_at;

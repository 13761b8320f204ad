ALTER TABLE connections DROP COLUMN expiry_warned_for;

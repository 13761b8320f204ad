ALTER TABLE connections DROP COLUMN refresh_lease_until;

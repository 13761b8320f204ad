-- Small facts about this database, such as the vault key check (a value sealed with the vault
-- key, so that a wrong key is refused at start instead of failing on every secret).
CREATE TABLE meta (
    name TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    updated_at BIGINT NOT NULL
);

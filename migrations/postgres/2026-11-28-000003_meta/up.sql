CREATE TABLE meta (
    name TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);

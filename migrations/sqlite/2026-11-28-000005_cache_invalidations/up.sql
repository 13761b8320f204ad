-- What each instance must drop from its in-memory caches (src/cache.rs): written in the same
-- transaction as the change, polled by every instance about once a second, kept for an hour.
CREATE TABLE cache_invalidations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX cache_invalidations_created_at ON cache_invalidations(created_at);

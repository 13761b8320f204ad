-- The tamper-evident audit log (`crate::audit`). Append-only: each entry's `hash` is
-- HMAC-SHA256(chain key, prev_hash || every field), and ids are consecutive (the id is the chain
-- position, taken from `audit_head` in the appending transaction), so a changed, removed or
-- reordered row is detected by `tokenvault audit verify`. `detail` is small JSON: never a token,
-- secret, code, password or username (only its keyed hash). `account` is left NULL for now.
CREATE TABLE audit_log (
    id BIGINT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    user_id BIGINT,
    actor TEXT NOT NULL,
    service TEXT,
    connection_id BIGINT,
    account TEXT,
    address TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_user ON audit_log(user_id, id);
CREATE INDEX audit_log_at ON audit_log(at);

-- The chain's head, one row: every append updates it first (so appenders from several instances
-- queue on its row lock and never fork the chain). `mac` authenticates (seq, hash, anchor) so a
-- truncated tail cannot be hidden by rolling the head back by hand; the anchor is the last entry
-- removed by retention pruning (verify starts after it).
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    anchor_id BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL,
    mac TEXT
);
INSERT INTO audit_head (id, seq, hash, anchor_id, anchor_hash, mac) VALUES
    (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0,
     '0000000000000000000000000000000000000000000000000000000000000000', NULL);

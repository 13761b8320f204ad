-- tokenvault as an OAuth 2.1 authorization server for its own API (issue 22, `crate::authz`).
-- Clients: registered by an administrator (`admin`, confidential with a hashed secret or
-- public), by RFC 7591 dynamic registration (`dynamic`, deleted when unused past `expires_at`),
-- or Client ID Metadata Documents (`metadata`: `client_id` is the document's URL, the row a
-- cache of it until `expires_at`).
CREATE TABLE authz_clients (
    id BIGSERIAL PRIMARY KEY,
    client_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    secret_hash TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_used_at BIGINT,
    registered_from TEXT
);

-- What a user allowed a client (one consent): services (NULL: every service, also those
-- connected later), capabilities (space-separated scope names), until `expires_at`.
CREATE TABLE authz_grants (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_pk BIGINT NOT NULL REFERENCES authz_clients(id) ON DELETE CASCADE,
    services TEXT,
    capabilities TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_used_at BIGINT,
    last_used_ip TEXT
);
CREATE INDEX authz_grants_user ON authz_grants(user_id);

-- Authorization codes: hashed, one use, PKCE S256, bound to a redirect URI and a resource.
CREATE TABLE authz_codes (
    id BIGSERIAL PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    grant_id BIGINT NOT NULL REFERENCES authz_grants(id) ON DELETE CASCADE,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    resource TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- Access (`access`) and refresh (`refresh`) tokens, stored hashed, bound to a resource; a
-- refresh token is rotated on use (`rotated_at`), its successors name it in `parent_id`.
CREATE TABLE authz_tokens (
    id BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    grant_id BIGINT NOT NULL REFERENCES authz_grants(id) ON DELETE CASCADE,
    resource TEXT NOT NULL,
    parent_id BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    rotated_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX authz_tokens_grant ON authz_tokens(grant_id);
CREATE INDEX authz_tokens_expiry ON authz_tokens(expires_at);

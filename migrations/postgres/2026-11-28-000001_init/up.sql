-- PostgreSQL twin of migrations/sqlite/2026-11-28-000001_init (keep the two in lockstep).
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    password_changed_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_user_id ON sessions(user_id);
CREATE INDEX sessions_expires_at ON sessions(expires_at);

CREATE TABLE oauth_flows (
    state_hash TEXT PRIMARY KEY NOT NULL,
    session_hash TEXT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    pkce_verifier BYTEA NOT NULL,
    redirect_uri TEXT NOT NULL,
    return_to TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oauth_flows_expires_at ON oauth_flows(expires_at);

CREATE TABLE vault_entries (
    path TEXT PRIMARY KEY NOT NULL,
    ciphertext BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE connections (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    access_token BYTEA NOT NULL,
    refresh_token BYTEA,
    token_type TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expires_at BIGINT,
    obtained_at BIGINT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    version BIGINT NOT NULL DEFAULT 1,
    updated_at BIGINT NOT NULL,
    UNIQUE (user_id, service)
);

CREATE TABLE connection_events (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    service TEXT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX connection_events_user_service ON connection_events(user_id, service, at);

CREATE TABLE demo_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scopes TEXT NOT NULL,
    account TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE demo_grants (
    id BIGSERIAL PRIMARY KEY,
    client_id TEXT NOT NULL,
    account TEXT NOT NULL,
    scopes TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);

CREATE TABLE demo_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    grant_id BIGINT NOT NULL REFERENCES demo_grants(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at BIGINT
);
CREATE INDEX demo_tokens_grant ON demo_tokens(grant_id);

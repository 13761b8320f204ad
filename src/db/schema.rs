//! Table definitions, kept by hand to match `migrations/` (see diesel.toml).

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        is_admin -> Bool,
        created_at -> BigInt,
        password_changed_at -> BigInt,
        password_epoch -> BigInt,
    }
}

diesel::table! {
    sessions (id_hash) {
        id_hash -> Text,
        user_id -> BigInt,
        csrf_token -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        public_id -> Text,
        last_seen_at -> Nullable<BigInt>,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
    }
}

diesel::table! {
    oauth_flows (state_hash) {
        state_hash -> Text,
        session_hash -> Text,
        user_id -> BigInt,
        service -> Text,
        pkce_verifier -> Binary,
        redirect_uri -> Text,
        return_to -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        connection_id -> Nullable<BigInt>,
        add_account -> Bool,
        scopes -> Nullable<Text>,
        nonce_hash -> Nullable<Text>,
    }
}

diesel::table! {
    vault_entries (path) {
        path -> Text,
        ciphertext -> Binary,
        updated_at -> BigInt,
        updated_by -> Text,
    }
}

diesel::table! {
    connections (id) {
        id -> BigInt,
        user_id -> BigInt,
        service -> Text,
        access_token -> Binary,
        refresh_token -> Nullable<Binary>,
        token_type -> Text,
        scopes -> Text,
        expires_at -> Nullable<BigInt>,
        obtained_at -> BigInt,
        status -> Text,
        version -> BigInt,
        updated_at -> BigInt,
        refresh_lease_until -> Nullable<BigInt>,
        refresh_after_401_at -> Nullable<BigInt>,
        status_reason -> Nullable<Text>,
        attempts -> BigInt,
        next_attempt_at -> Nullable<BigInt>,
        refresh_token_expires_at -> Nullable<BigInt>,
        expiry_warned_for -> Nullable<BigInt>,
        account_id -> Text,
        account_label -> Nullable<Text>,
        requested_scopes -> Nullable<Text>,
    }
}

diesel::table! {
    connection_events (id) {
        id -> BigInt,
        user_id -> BigInt,
        service -> Text,
        at -> BigInt,
        kind -> Text,
        outcome -> Text,
        detail -> Text,
    }
}

diesel::table! {
    demo_codes (code_hash) {
        code_hash -> Text,
        client_id -> Text,
        redirect_uri -> Text,
        code_challenge -> Text,
        scopes -> Text,
        account -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    demo_grants (id) {
        id -> BigInt,
        client_id -> Text,
        account -> Text,
        scopes -> Text,
        revoked -> Bool,
        created_at -> BigInt,
    }
}

diesel::table! {
    demo_tokens (token_hash) {
        token_hash -> Text,
        grant_id -> BigInt,
        kind -> Text,
        used -> Bool,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    meta (name) {
        name -> Text,
        value -> Binary,
        updated_at -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> BigInt,
        user_id -> BigInt,
        name -> Text,
        prefix -> Text,
        key_hash -> Text,
        created_at -> BigInt,
        last_used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        services -> Nullable<Text>,
        capabilities -> Nullable<Text>,
        expires_at -> Nullable<BigInt>,
        last_used_ip -> Nullable<Text>,
    }
}

diesel::table! {
    cache_invalidations (id) {
        id -> BigInt,
        kind -> Text,
        key -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_events (id) {
        id -> BigInt,
        msg_id -> Text,
        event_type -> Text,
        body -> Text,
        target -> Nullable<Text>,
        fanned_out -> Bool,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        event_id -> BigInt,
        endpoint -> Text,
        status -> Text,
        attempts -> BigInt,
        next_attempt_at -> BigInt,
        lease_until -> Nullable<BigInt>,
        last_status_code -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    webhook_endpoints (name) {
        name -> Text,
        url -> Text,
        events -> Nullable<Text>,
        secret -> Binary,
        previous_secret -> Nullable<Binary>,
        previous_until -> Nullable<BigInt>,
        version -> BigInt,
        revision -> Text,
        updated_at -> BigInt,
        updated_by -> Text,
    }
}

diesel::table! {
    providers (name) {
        name -> Text,
        settings -> Nullable<Text>,
        enabled -> Bool,
        version -> BigInt,
        revision -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
        updated_by -> Text,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        at -> BigInt,
        kind -> Text,
        user_id -> Nullable<BigInt>,
        actor -> Text,
        service -> Nullable<Text>,
        connection_id -> Nullable<BigInt>,
        account -> Nullable<Text>,
        address -> Nullable<Text>,
        detail -> Text,
        prev_hash -> Text,
        hash -> Text,
        at_last -> Nullable<BigInt>,
    }
}

diesel::table! {
    audit_head (id) {
        id -> BigInt,
        seq -> BigInt,
        hash -> Text,
        anchor_id -> BigInt,
        anchor_hash -> Text,
        mac -> Nullable<Text>,
    }
}

diesel::table! {
    jobs (id) {
        id -> BigInt,
        kind -> Text,
        payload -> Text,
        attempts -> BigInt,
        max_attempts -> BigInt,
        run_at -> BigInt,
        locked_by -> Nullable<Text>,
        locked_until -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        dead_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    authz_clients (id) {
        id -> BigInt,
        client_id -> Text,
        kind -> Text,
        name -> Text,
        redirect_uris -> Text,
        secret_hash -> Nullable<Text>,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
        registered_from -> Nullable<Text>,
    }
}

diesel::table! {
    authz_grants (id) {
        id -> BigInt,
        user_id -> BigInt,
        client_pk -> BigInt,
        services -> Nullable<Text>,
        capabilities -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
        last_used_ip -> Nullable<Text>,
    }
}

diesel::table! {
    authz_codes (id) {
        id -> BigInt,
        code_hash -> Text,
        grant_id -> BigInt,
        redirect_uri -> Text,
        code_challenge -> Text,
        resource -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    authz_tokens (id) {
        id -> BigInt,
        token_hash -> Text,
        kind -> Text,
        grant_id -> BigInt,
        resource -> Text,
        parent_id -> Nullable<BigInt>,
        created_at -> BigInt,
        expires_at -> BigInt,
        rotated_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(connections -> users (user_id));
diesel::joinable!(demo_tokens -> demo_grants (grant_id));
diesel::joinable!(webhook_deliveries -> webhook_events (event_id));
diesel::joinable!(authz_grants -> users (user_id));
diesel::joinable!(authz_grants -> authz_clients (client_pk));
diesel::joinable!(authz_codes -> authz_grants (grant_id));
diesel::joinable!(authz_tokens -> authz_grants (grant_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    oauth_flows,
    vault_entries,
    connections,
    connection_events,
    demo_codes,
    demo_grants,
    demo_tokens,
    meta,
    api_keys,
    cache_invalidations,
    webhook_events,
    webhook_deliveries,
    webhook_endpoints,
    providers,
    audit_log,
    audit_head,
    jobs,
    authz_clients,
    authz_grants,
    authz_codes,
    authz_tokens,
);

//! Each projection's mapping, variant by variant, and a unit of work writing them all in its
//! transaction.

use super::project::{audit_of, history_of, invalidation_of, outbox_of, wakes_webhooks};
use super::{
    Actor, Change, ClientSubject, EndpointChange, GrantEnd, GrantSubject, Issued, KeyRevoked, ProviderAction,
    SessionsEnd, Subject,
};
use crate::db::models::connections::Account;
use crate::db::models::events::EventOutcome;
use crate::db::models::invalidations::Invalidated;

fn checkpoint() -> crate::audit::checkpoint::Checkpoint {
    crate::audit::checkpoint::Checkpoint {
        seq: 12,
        hash: "ab".repeat(32),
        at: 1_700_000_000,
        key_id: "k1".into(),
        signature: "cd".repeat(32),
    }
}

fn subject() -> Subject {
    Subject { id: 3, user_id: 7, service: "dropbox".into(), account: Some(Account { id: "acc".into(), label: None }) }
}

/// One of every variant (the names say which; `samples_cover_every_variant` checks it).
fn samples() -> Vec<(&'static str, Change)> {
    let conn = subject();
    vec![
        ("created", Change::ConnectionCreated { conn: conn.clone(), detail: "with a refresh token".into() }),
        ("reconnected", Change::ConnectionReconnected { conn: conn.clone(), detail: "without a refresh token".into() }),
        (
            "refused",
            Change::ConnectRefused { user_id: 7, service: "dropbox".into(), cancelled: false, detail: "no".into() },
        ),
        (
            "cancelled",
            Change::ConnectRefused { user_id: 7, service: "dropbox".into(), cancelled: true, detail: "no".into() },
        ),
        ("deleted", Change::ConnectionDeleted { conn: conn.clone(), outcome: EventOutcome::Ok, detail: "d".into() }),
        (
            "revoked",
            Change::ConnectionRevoked { conn: conn.clone(), outcome: EventOutcome::ProviderFailed, detail: "r".into() },
        ),
        ("refreshed", Change::ConnectionRefreshed { conn: conn.clone(), rotated: true, recovered: false }),
        ("recovered", Change::ConnectionRefreshed { conn: conn.clone(), rotated: false, recovered: true }),
        (
            "reconnect_required",
            Change::ReconnectRequired { conn: conn.clone(), reason: "invalid_grant".into(), detail: "gone".into() },
        ),
        (
            "degraded",
            Change::ConnectionDegraded {
                conn: conn.clone(),
                reason: "timeout".into(),
                detail: "later".into(),
                entering: true,
            },
        ),
        (
            "still_degraded",
            Change::ConnectionDegraded {
                conn: conn.clone(),
                reason: "timeout".into(),
                detail: "later".into(),
                entering: false,
            },
        ),
        ("needs_admin", Change::RefreshNeedsAdmin { user_id: 7, service: "dropbox".into(), detail: "admin".into() }),
        ("expiring", Change::ExpiryWarned { conn, status: "active".into() }),
        ("resealed", Change::ConnectionResealed { id: 3, user_id: 7, service: "dropbox".into() }),
        ("signed_in", Change::SignedIn { user_id: 7, address: Some(ip()) }),
        ("signin_refused", Change::SignInRefused { user_id: None, username: "eve".into(), address: Some(ip()) }),
        ("signed_out", Change::SignedOut { user_id: 7, address: None }),
        (
            "sessions_password",
            Change::SessionsEnded { user_id: 7, address: None, why: SessionsEnd::PasswordChanged { count: 2 } },
        ),
        (
            "session_settings",
            Change::SessionsEnded {
                user_id: 7,
                address: None,
                why: SessionsEnd::FromSettings { session: "s1".into() },
            },
        ),
        (
            "sessions_others",
            Change::SessionsEnded { user_id: 7, address: None, why: SessionsEnd::OthersFromSettings { count: 3 } },
        ),
        ("user_signup", Change::UserAdded { user_id: 7, by: Actor::User(7), admin: None, address: Some(ip()) }),
        ("user_cli", Change::UserAdded { user_id: 7, by: Actor::Cli, admin: Some(true), address: None }),
        ("renamed", Change::UserRenamed { user_id: 7 }),
        ("password", Change::PasswordChanged { user_id: 7, address: None, sessions_ended: 2, api_keys_revoked: 1 }),
        ("key_created", Change::ApiKeyCreated { by: Actor::Cli, user_id: 7, key_id: 4 }),
        ("key_by_user", key_revoked(KeyRevoked::ByUser)),
        ("key_over_limit", key_revoked(KeyRevoked::OverLimit { max_keys: 20 })),
        ("key_password", key_revoked(KeyRevoked::PasswordChanged)),
        ("key_provider_deleted", key_revoked(KeyRevoked::ProviderDeleted)),
        ("vault_set", Change::VaultValueSet { by: Actor::User(7), path: "oauth/x/client_secret".into() }),
        ("vault_cli", Change::VaultValueSet { by: Actor::Cli, path: "p".into() }),
        ("vault_deleted", Change::VaultValueDeleted { by: Actor::User(7), path: "p".into() }),
        ("hook_added", endpoint(EndpointChange::Added { url_origin: "https://h.example".into(), events: Vec::new() })),
        (
            "hook_updated",
            endpoint(EndpointChange::Updated {
                url_origin: "https://h.example".into(),
                events: vec!["connection.*".into()],
            }),
        ),
        ("hook_rotated", endpoint(EndpointChange::SecretRotated { previous_valid_until: 99 })),
        ("hook_deleted", endpoint(EndpointChange::Deleted)),
        ("hook_reverted", endpoint(EndpointChange::Reverted)),
        ("hook_test", Change::WebhookTestQueued { endpoint: "ops".into(), by: "root".into() }),
        ("checkpointed", Change::AuditCheckpointed { checkpoint: checkpoint() }),
        ("grant_created", Change::GrantCreated { grant: grant(), address: Some(ip()) }),
        ("grant_by_user", Change::GrantRevoked { by: Actor::User(7), grant: grant(), why: GrantEnd::ByUser }),
        ("grant_code_reused", Change::GrantRevoked { by: Actor::System, grant: grant(), why: GrantEnd::CodeReused }),
        ("grant_password", Change::GrantRevoked { by: Actor::User(7), grant: grant(), why: GrantEnd::PasswordChanged }),
        (
            "grant_provider_deleted",
            Change::GrantRevoked { by: Actor::Cli, grant: grant(), why: GrantEnd::ProviderDeleted },
        ),
        (
            "grant_issued",
            Change::GrantTokensIssued {
                grant: grant(),
                how: Issued::Refresh,
                resource: "https://tv.example/mcp".into(),
            },
        ),
        (
            "grant_retried",
            Change::GrantTokensIssued {
                grant: grant(),
                how: Issued::RefreshRetry,
                resource: "https://tv.example/mcp".into(),
            },
        ),
        ("grant_token_revoked", Change::GrantTokenRevoked { grant: grant() }),
        (
            "provider_added",
            provider(Actor::User(7), ProviderAction::Added { authorize_origin: "https://p.example".into() }),
        ),
        (
            "provider_edited",
            provider(
                Actor::Cli,
                ProviderAction::Edited {
                    keys: vec!["scopes".into(), "client_secret".into()],
                    authorize_origin: "https://p.example".into(),
                },
            ),
        ),
        ("provider_disabled", provider(Actor::User(7), ProviderAction::Disabled)),
        ("provider_enabled", provider(Actor::User(7), ProviderAction::Enabled)),
        ("provider_reverted", provider(Actor::User(7), ProviderAction::Reverted)),
        ("provider_deleted", provider(Actor::Cli, ProviderAction::Deleted)),
        (
            "client_registered",
            Change::ClientRegistered { by: Actor::System, client: client(), confidential: false, address: Some(ip()) },
        ),
        ("client_deleted", Change::ClientDeleted { by: Actor::User(7), client: client(), grants_revoked: 2 }),
        (
            "grant_client_deleted",
            Change::GrantRevoked { by: Actor::User(7), grant: grant(), why: GrantEnd::ClientDeleted },
        ),
    ]
}

fn client() -> ClientSubject {
    ClientSubject { id: 9, client_id: "tvcl_abc".into(), name: "Agent".into(), kind: "dynamic" }
}

fn grant() -> GrantSubject {
    GrantSubject {
        id: 5,
        user_id: 7,
        client_id: "https://agent.example/client.json".into(),
        client_name: "Agent".into(),
        services: Some(vec!["dropbox".into()]),
        capabilities: vec!["proxy:read".into()],
        expires_at: 1_700_000_000,
    }
}

fn provider(by: Actor, action: ProviderAction) -> Change {
    Change::ProviderChanged { by, name: "acme".into(), action }
}

fn ip() -> std::net::IpAddr {
    std::net::IpAddr::from([192, 0, 2, 1])
}

fn endpoint(change: EndpointChange) -> Change {
    Change::WebhookEndpointChanged { user_id: 7, endpoint: "ops".into(), change }
}

fn key_revoked(why: KeyRevoked) -> Change {
    Change::ApiKeyRevoked { by: Actor::User(7), user_id: 7, key_id: 4, key_hash: "9f86d0".into(), why, address: None }
}

/// A name per variant: a new variant fails to compile here until it has a sample.
fn variant(change: &Change) -> &'static str {
    match change {
        Change::ConnectionCreated { .. } => "ConnectionCreated",
        Change::ConnectionReconnected { .. } => "ConnectionReconnected",
        Change::ConnectRefused { .. } => "ConnectRefused",
        Change::ConnectionDeleted { .. } => "ConnectionDeleted",
        Change::ConnectionRevoked { .. } => "ConnectionRevoked",
        Change::ConnectionRefreshed { .. } => "ConnectionRefreshed",
        Change::ReconnectRequired { .. } => "ReconnectRequired",
        Change::ConnectionDegraded { .. } => "ConnectionDegraded",
        Change::RefreshNeedsAdmin { .. } => "RefreshNeedsAdmin",
        Change::ExpiryWarned { .. } => "ExpiryWarned",
        Change::ConnectionResealed { .. } => "ConnectionResealed",
        Change::SignedIn { .. } => "SignedIn",
        Change::SignInRefused { .. } => "SignInRefused",
        Change::SignedOut { .. } => "SignedOut",
        Change::SessionsEnded { .. } => "SessionsEnded",
        Change::UserAdded { .. } => "UserAdded",
        Change::UserRenamed { .. } => "UserRenamed",
        Change::PasswordChanged { .. } => "PasswordChanged",
        Change::ApiKeyCreated { .. } => "ApiKeyCreated",
        Change::ApiKeyRevoked { .. } => "ApiKeyRevoked",
        Change::VaultValueSet { .. } => "VaultValueSet",
        Change::VaultValueDeleted { .. } => "VaultValueDeleted",
        Change::WebhookEndpointChanged { .. } => "WebhookEndpointChanged",
        Change::WebhookTestQueued { .. } => "WebhookTestQueued",
        Change::AuditCheckpointed { .. } => "AuditCheckpointed",
        Change::GrantCreated { .. } => "GrantCreated",
        Change::GrantRevoked { .. } => "GrantRevoked",
        Change::GrantTokensIssued { .. } => "GrantTokensIssued",
        Change::GrantTokenRevoked { .. } => "GrantTokenRevoked",
        Change::ProviderChanged { .. } => "ProviderChanged",
        Change::ClientRegistered { .. } => "ClientRegistered",
        Change::ClientDeleted { .. } => "ClientDeleted",
    }
}

const VARIANTS: usize = 32;

/// The samples past the connection ones, which no connection projection (history, outbox)
/// makes anything of.
const NOT_CONNECTIONS: [&str; 42] = [
    "signed_in",
    "signin_refused",
    "signed_out",
    "sessions_password",
    "session_settings",
    "sessions_others",
    "user_signup",
    "user_cli",
    "renamed",
    "password",
    "key_created",
    "key_by_user",
    "key_over_limit",
    "key_password",
    "key_provider_deleted",
    "vault_set",
    "vault_cli",
    "vault_deleted",
    "hook_added",
    "hook_updated",
    "hook_rotated",
    "hook_deleted",
    "hook_reverted",
    "hook_test",
    "checkpointed",
    "grant_created",
    "grant_by_user",
    "grant_code_reused",
    "grant_password",
    "grant_provider_deleted",
    "grant_issued",
    "grant_retried",
    "grant_token_revoked",
    "provider_added",
    "provider_edited",
    "provider_disabled",
    "provider_enabled",
    "provider_reverted",
    "provider_deleted",
    "client_registered",
    "client_deleted",
    "grant_client_deleted",
];

fn with_none(mut rows: Vec<(&'static str, Option<&'static str>)>) -> Vec<(&'static str, Option<&'static str>)> {
    rows.extend(NOT_CONNECTIONS.iter().map(|n| (*n, None)));
    rows
}

/// What `projection` makes of each sample, by the sample's name.
fn table(projection: impl Fn(&Change) -> Option<String>) -> Vec<(&'static str, Option<String>)> {
    samples().iter().map(|(name, c)| (*name, projection(c))).collect()
}

fn expected(rows: &[(&'static str, Option<&str>)]) -> Vec<(&'static str, Option<String>)> {
    rows.iter().map(|(n, r)| (*n, r.map(str::to_string))).collect()
}

#[test]
fn samples_cover_every_variant() {
    let mut names: Vec<_> = samples().iter().map(|(_, c)| variant(c)).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), VARIANTS, "{names:?}");
}

/// The history rows, as `connection_events` stores them (kind, outcome, detail).
#[test]
fn history_projection() {
    let got = table(|c| {
        history_of(c).map(|h| {
            assert_eq!((h.user_id, h.service), (7, "dropbox"));
            format!("{} / {} / {}", h.kind.as_str(), h.outcome.as_str(), h.detail)
        })
    });
    let want = [
        ("created", Some("connect / ok / with a refresh token")),
        ("reconnected", Some("connect / ok / without a refresh token")),
        ("refused", Some("connect / failed / no")),
        ("cancelled", Some("connect / cancelled / no")),
        ("deleted", Some("delete / ok / d")),
        ("revoked", Some("revoke / provider failed / r")),
        ("refreshed", Some("refresh / ok / new refresh token stored")),
        ("recovered", Some("refresh / ok / refresh token kept")),
        ("reconnect_required", Some("refresh / reconnect required / gone")),
        ("degraded", Some("refresh / failed (retryable) / later")),
        ("still_degraded", Some("refresh / failed (retryable) / later")),
        ("needs_admin", Some("refresh / failed (admin) / admin")),
        ("expiring", None),
        ("resealed", None),
    ];
    assert_eq!(got, expected(&with_none(want.to_vec())));
}

/// The audit entries: kind string, actor, and the detail as stored.
#[test]
fn audit_projection() {
    let got = table(|c| {
        audit_of(c).map(|e| {
            let (kind, actor, detail) = (e.kind.as_str(), &e.actor, &e.detail);
            let at = e.address.as_ref().map(|a| format!(" @{a}")).unwrap_or_default();
            format!(
                "{kind} {actor} user={:?} service={:?} connection={:?} {detail}{at}",
                e.user_id, e.service, e.connection_id
            )
        })
    });
    let conn = |kind: &str| {
        Some(format!(r#"{kind} user:7 user=Some(7) service=Some("dropbox") connection=Some(3) {{"account":"acc"}}"#))
    };
    let want = vec![
        ("created", conn("connection.created")),
        ("reconnected", conn("connection.reconnected")),
        ("refused", None),
        ("cancelled", None),
        ("deleted", conn("connection.deleted")),
        ("revoked", conn("connection.revoked")),
        ("refreshed", None),
        ("recovered", None),
        ("reconnect_required", None),
        ("degraded", None),
        ("still_degraded", None),
        ("needs_admin", None),
        ("expiring", None),
        ("resealed", None),
    ];
    let mut want: Vec<_> = want.into_iter().map(|(n, r)| (n, r.map(|r| r.to_string()))).collect();
    let none = "user=None service=None connection=None";
    let at7 = "user=Some(7) service=None connection=None";
    let key = r#"api_key.revoked user:7 user=Some(7) service=None connection=None {"key_id":4,"#;
    want.extend(expected(&[
        ("signed_in", Some(&format!("signin.success user:7 {at7} {{}} @192.0.2.1"))),
        ("signin_refused", Some(&format!("signin.failure system {none} {{}} @192.0.2.1"))),
        ("signed_out", Some(&format!("session.end user:7 {at7} {{}}"))),
        ("sessions_password", Some(&format!(r#"session.end user:7 {at7} {{"count":2,"reason":"password_changed"}}"#))),
        (
            "session_settings",
            Some(&format!(r#"session.end user:7 {at7} {{"count":1,"reason":"ended_from_settings","session":"s1"}}"#)),
        ),
        (
            "sessions_others",
            Some(&format!(r#"session.end user:7 {at7} {{"count":3,"reason":"ended_from_settings","scope":"others"}}"#)),
        ),
        ("user_signup", Some(&format!("user.added user:7 {at7} {{}} @192.0.2.1"))),
        ("user_cli", Some(&format!(r#"user.added cli {at7} {{"admin":true}}"#))),
        ("renamed", Some(&format!("user.renamed cli {at7} {{}}"))),
        ("password", Some(&format!(r#"password.changed user:7 {at7} {{"api_keys_revoked":1,"sessions_ended":2}}"#))),
        ("key_created", Some(&format!(r#"api_key.created cli {at7} {{"key_id":4}}"#))),
        ("key_by_user", Some(&format!(r#"{key}"reason":"revoked_by_user"}}"#))),
        ("key_over_limit", Some(&format!(r#"{key}"max_api_keys_per_user":20,"reason":"over_limit"}}"#))),
        ("key_password", Some(&format!(r#"{key}"reason":"password_changed"}}"#))),
        ("key_provider_deleted", Some(&format!(r#"{key}"reason":"provider_deleted"}}"#))),
        ("vault_set", Some(&format!(r#"vault.set user:7 {at7} {{"path":"oauth/x/client_secret"}}"#))),
        ("vault_cli", Some(&format!(r#"vault.set cli {none} {{"path":"p"}}"#))),
        ("vault_deleted", Some(&format!(r#"vault.delete user:7 {at7} {{"path":"p"}}"#))),
        (
            "hook_added",
            Some(&format!(
                r#"webhook.changed user:7 {at7} {{"change":"added","endpoint":"ops","events":"all","url_origin":"https://h.example"}}"#
            )),
        ),
        (
            "hook_updated",
            Some(&format!(
                r#"webhook.changed user:7 {at7} {{"change":"updated","endpoint":"ops","events":["connection.*"],"url_origin":"https://h.example"}}"#
            )),
        ),
        (
            "hook_rotated",
            Some(&format!(
                r#"webhook.changed user:7 {at7} {{"change":"secret_rotated","endpoint":"ops","previous_valid_until":99}}"#
            )),
        ),
        ("hook_deleted", Some(&format!(r#"webhook.changed user:7 {at7} {{"change":"deleted","endpoint":"ops"}}"#))),
        ("hook_reverted", Some(&format!(r#"webhook.changed user:7 {at7} {{"change":"reverted","endpoint":"ops"}}"#))),
        ("hook_test", None),
        ("checkpointed", None),
        (
            "grant_created",
            Some(&format!(
                r#"grant.created user:7 {at7} {{"capabilities":"proxy:read","client_id":"https://agent.example/client.json","expires_at":1700000000,"grant_id":5,"services":["dropbox"]}} @192.0.2.1"#
            )),
        ),
        (
            "grant_by_user",
            Some(&format!(
                r#"grant.revoked user:7 {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"reason":"revoked_by_user"}}"#
            )),
        ),
        (
            "grant_code_reused",
            Some(&format!(
                r#"grant.revoked system {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"reason":"code_reused"}}"#
            )),
        ),
        (
            "grant_password",
            Some(&format!(
                r#"grant.revoked user:7 {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"reason":"password_changed"}}"#
            )),
        ),
        (
            "grant_provider_deleted",
            Some(&format!(
                r#"grant.revoked cli {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"reason":"provider_deleted"}}"#
            )),
        ),
        (
            "grant_issued",
            Some(&format!(
                r#"grant.tokens_issued grant:5 {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"grant_type":"refresh_token","resource":"https://tv.example/mcp"}}"#
            )),
        ),
        (
            "grant_retried",
            Some(&format!(
                r#"grant.tokens_issued grant:5 {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"grant_type":"refresh_token_retry","resource":"https://tv.example/mcp"}}"#
            )),
        ),
        (
            "grant_token_revoked",
            Some(&format!(
                r#"grant.token_revoked system {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"token_type":"access_token"}}"#
            )),
        ),
        (
            "provider_added",
            Some(r#"provider.changed user:7 user=Some(7) service=Some("acme") connection=None {"action":"added","authorize_origin":"https://p.example","provider":"acme"}"#),
        ),
        (
            "provider_edited",
            Some(r#"provider.changed cli user=None service=Some("acme") connection=None {"action":"edited","authorize_origin":"https://p.example","keys":["scopes","client_secret"],"provider":"acme"}"#),
        ),
        (
            "provider_disabled",
            Some(r#"provider.changed user:7 user=Some(7) service=Some("acme") connection=None {"action":"disabled","provider":"acme"}"#),
        ),
        (
            "provider_enabled",
            Some(r#"provider.changed user:7 user=Some(7) service=Some("acme") connection=None {"action":"enabled","provider":"acme"}"#),
        ),
        (
            "provider_reverted",
            Some(r#"provider.changed user:7 user=Some(7) service=Some("acme") connection=None {"action":"reverted","provider":"acme"}"#),
        ),
        (
            "provider_deleted",
            Some(r#"provider.changed cli user=None service=Some("acme") connection=None {"action":"deleted","provider":"acme"}"#),
        ),
        (
            "client_registered",
            Some(&format!(
                r#"client.registered system {none} {{"client":9,"client_id":"tvcl_abc","client_kind":"dynamic","client_name":"Agent","confidential":false}} @192.0.2.1"#
            )),
        ),
        (
            "client_deleted",
            Some(&format!(
                r#"client.deleted user:7 {at7} {{"client":9,"client_id":"tvcl_abc","client_kind":"dynamic","client_name":"Agent","grants_revoked":2}}"#
            )),
        ),
        (
            "grant_client_deleted",
            Some(&format!(
                r#"grant.revoked user:7 {at7} {{"client_id":"https://agent.example/client.json","grant_id":5,"reason":"client_deleted"}}"#
            )),
        ),
    ]));
    assert_eq!(got, want);
}

/// The webhook events: type as sent, the connection's status and the reason.
#[test]
fn outbox_projection() {
    let got = table(|c| {
        outbox_of(c).map(|e| {
            assert_eq!(e.conn, &subject());
            format!("{} {} {:?}", e.event_type.as_str(), e.status, e.reason)
        })
    });
    let want = [
        ("created", Some("connection.created active None")),
        ("reconnected", Some("connection.reconnected active None")),
        ("refused", None),
        ("cancelled", None),
        ("deleted", Some("connection.deleted deleted None")),
        ("revoked", Some(r#"connection.revoked revoked Some("provider_revocation_failed")"#)),
        ("refreshed", None),
        ("recovered", Some("connection.recovered active None")),
        ("reconnect_required", Some(r#"connection.reconnect_required reconnect_required Some("invalid_grant")"#)),
        ("degraded", Some(r#"connection.refresh_failed degraded Some("timeout")"#)),
        ("still_degraded", None),
        ("needs_admin", None),
        ("expiring", Some(r#"connection.expiring active Some("refresh_token_expiring")"#)),
        ("resealed", None),
    ];
    assert_eq!(got, expected(&with_none(want.to_vec())));
}

/// The cache invalidations.
#[test]
fn invalidation_projection() {
    let conn = Some(Invalidated::Connection { user_id: 7, service: "dropbox".into() });
    let got: Vec<_> = samples().iter().map(|(name, c)| (*name, invalidation_of(c))).collect();
    let want = vec![
        ("created", conn.clone()),
        ("reconnected", conn.clone()),
        ("refused", None),
        ("cancelled", None),
        ("deleted", conn.clone()),
        ("revoked", conn.clone()),
        ("refreshed", conn.clone()),
        ("recovered", conn.clone()),
        ("reconnect_required", conn.clone()),
        ("degraded", conn.clone()),
        ("still_degraded", conn.clone()),
        ("needs_admin", None),
        ("expiring", None),
        ("resealed", conn.clone()),
    ];
    let mut want: Vec<_> = want.into_iter().chain(NOT_CONNECTIONS.iter().map(|n| (*n, None))).collect();
    for (name, what) in &mut want {
        if name.starts_with("key_") && *name != "key_created" {
            *what = Some(Invalidated::ApiKey("9f86d0".into()));
        }
        if name.starts_with("provider_") {
            *what = Some(Invalidated::Providers("acme".into()));
        }
        // A grant's cached access tokens go when it ends, when one is revoked, when a retried
        // refresh revokes the first try's.
        if [
            "grant_by_user",
            "grant_code_reused",
            "grant_retried",
            "grant_token_revoked",
            "grant_client_deleted",
            "grant_password",
            "grant_provider_deleted",
        ]
        .contains(name)
        {
            *what = Some(Invalidated::Grant(5));
        }
    }
    assert_eq!(got, want);
}

/// A unit of work writes every projection of what it records in its transaction, once per
/// invalidation, and its value comes out with what settling must do; a failed unit leaves nothing.
#[test]
fn a_unit_of_work_writes_its_projections_in_its_transaction() {
    use crate::cache::Caches;
    use crate::db::Db;
    use crate::vault::Cipher;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let user_id = crate::db::models::users::for_tests(&mut conn, "ann");
    let conn_of = || Subject { user_id, ..subject() };
    let count = |conn: &mut crate::db::Conn, table: &str| -> i64 {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let q = format!("SELECT COUNT(*) AS n FROM {table}");
        crate::on_conn!(conn, c => diesel::sql_query(q).get_result::<N>(c)).unwrap().n
    };
    let tables = ["connection_events", "audit_log", "webhook_events", "cache_invalidations"];
    let before: Vec<i64> = tables.iter().map(|t| count(&mut conn, t)).collect();

    let failed = super::write(&mut conn, &cipher, 10, |tx| {
        tx.record(Change::ConnectionCreated { conn: conn_of(), detail: "x".into() })?;
        Err::<(), _>(crate::error::AppError::internal("then it failed"))
    });
    assert!(failed.is_err());
    assert_eq!(tables.iter().map(|t| count(&mut conn, t)).collect::<Vec<_>>(), before, "rolled back");

    let committed = super::write(&mut conn, &cipher, 10, |tx| {
        tx.record(Change::ConnectionCreated { conn: conn_of(), detail: "x".into() })?;
        tx.record(Change::ConnectionRefreshed { conn: conn_of(), rotated: true, recovered: false })?;
        Ok(42)
    })
    .unwrap();
    let after: Vec<i64> = tables.iter().map(|t| count(&mut conn, t)).collect();
    let added: Vec<i64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(added, [2, 1, 1, 1], "two history rows, one audit entry, one event, one invalidation");
    assert!(committed.wakes());
    assert_eq!(committed.invalidated(), [Invalidated::Connection { user_id, service: "dropbox".into() }]);
    let caches = Caches::new(60);
    let key = (user_id, "dropbox".to_string());
    let ticket = caches.connections.ticket();
    caches.connections.fill(ticket, key.clone(), std::sync::Arc::new(Vec::new()));
    assert!(caches.connections.get(&key).is_some());
    assert_eq!(committed.settle(super::Effects { caches: Some(&caches), ..Default::default() }), 42);
    assert!(caches.connections.get(&key).is_none(), "settling dropped the cached copy");
    assert!(crate::audit::verify(&mut conn, &cipher).unwrap().is_ok(), "the chain still verifies");

    // A compare-and-swap that lost: nothing is recorded, but this process's copy goes on settling.
    let before: Vec<i64> = tables.iter().map(|t| count(&mut conn, t)).collect();
    let stale = Invalidated::Connection { user_id, service: "dropbox".into() };
    let committed = super::write(&mut conn, &cipher, 10, |tx| {
        tx.saw_stale(stale.clone());
        tx.saw_stale(stale.clone());
        Ok(false)
    })
    .unwrap();
    assert_eq!(tables.iter().map(|t| count(&mut conn, t)).collect::<Vec<_>>(), before, "no row of any projection");
    assert_eq!((committed.invalidated(), committed.wakes()), (&[stale][..], false));
    caches.connections.fill(caches.connections.ticket(), key.clone(), std::sync::Arc::new(Vec::new()));
    assert!(!committed.settle(super::Effects { caches: Some(&caches), ..Default::default() }));
    assert!(caches.connections.get(&key).is_none(), "the stale copy was dropped");
}

/// A unit that queued a job wakes the jobs' workers on settling (and only then); one without a
/// bell to ring (the CLI) just hands back its value.
#[test]
fn a_unit_that_queued_a_job_wakes_the_jobs_workers() {
    use crate::db::Db;
    use crate::vault::Cipher;
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    let bell = crate::jobs::Wake::default();
    let quiet = super::write_no_history(&mut conn, &cipher, |_| Ok(1)).unwrap();
    assert!(!quiet.wakes_jobs());
    assert_eq!(quiet.settle(super::Effects { jobs: Some(&bell), ..Default::default() }), 1);
    assert!(bell.notified().now_or_never().is_none(), "nothing queued, nobody woken");
    let queued = super::write_no_history(&mut conn, &cipher, |tx| {
        tx.job_queued();
        Ok(2)
    })
    .unwrap();
    assert!(queued.wakes_jobs() && !queued.wakes());
    assert_eq!(queued.settle(super::Effects { jobs: Some(&bell), ..Default::default() }), 2);
    assert!(bell.notified().now_or_never().is_some(), "the workers were woken");
}

/// `vault rotate-key` through the unit of work: each re-sealed connection is recorded as
/// `ConnectionResealed`, so running servers drop their copies of the old ciphertext; a second
/// run re-seals (and records) nothing.
#[test]
fn a_key_rotation_records_each_resealed_connection() {
    use crate::db::models::connections::{self, ConnectionStatus, NewConnection};
    use crate::db::models::invalidations;
    use crate::db::Db;
    use crate::vault::{Aad, Cipher};
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let old = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &old).unwrap().unwrap();
    let user_id = crate::db::models::users::for_tests(&mut conn, "ann");
    for service in ["dropbox", "google"] {
        let access = old.seal_str("AT", Aad::AccessToken { user_id, service, account: "" });
        let new = NewConnection {
            user_id,
            service,
            access_token: &access,
            refresh_token: None,
            token_type: "Bearer",
            scopes: "",
            expires_at: None,
            obtained_at: 1,
            status: ConnectionStatus::Active,
            version: 1,
            updated_at: 1,
            refresh_token_expires_at: None,
            account_id: "",
            account_label: None,
            requested_scopes: None,
        };
        connections::upsert(&mut conn, &new).unwrap();
    }
    let key = |seed: u8| crate::util::b64_encode(&[seed; 32]);
    let ring = Cipher::from_base64(&key(4), &[key(3)]).unwrap();
    let done = super::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap();
    assert_eq!(done.connections, 2);
    let recorded: Vec<_> = invalidations::after(&mut conn, 0).unwrap().into_iter().map(|i| i.target.unwrap()).collect();
    let conn_of = |service: &str| Invalidated::Connection { user_id, service: service.into() };
    assert_eq!(recorded, [conn_of("dropbox"), conn_of("google")]);
    let again = super::rotate_vault_key(&mut conn, &ring, |_, _| {}).unwrap();
    assert_eq!(again.connections, 0);
    assert_eq!(invalidations::after(&mut conn, 0).unwrap().len(), 2, "nothing re-sealed, nothing recorded");
}

/// The webhook worker is woken after an event was recorded or the endpoints changed.
#[test]
fn wake_projection() {
    let woken: Vec<&str> = samples().iter().filter(|(_, c)| wakes_webhooks(c)).map(|(n, _)| *n).collect();
    let mut want: Vec<&str> = samples().iter().filter(|(_, c)| outbox_of(c).is_some()).map(|(n, _)| *n).collect();
    want.extend([
        "hook_added",
        "hook_updated",
        "hook_rotated",
        "hook_deleted",
        "hook_reverted",
        "hook_test",
        "checkpointed",
        "grant_created",
        "grant_by_user",
        "grant_code_reused",
        "grant_password",
        "grant_provider_deleted",
        "provider_added",
        "provider_edited",
        "provider_disabled",
        "provider_enabled",
        "provider_reverted",
        "provider_deleted",
        "grant_client_deleted",
    ]);
    assert_eq!(woken, want);
}

/// A grant's creation and revocation are `grant.*` events carrying the grant (never a token).
#[test]
fn grant_events_carry_the_grant() {
    use crate::db::Db;
    use crate::vault::Cipher;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let user_id = crate::db::models::users::for_tests(&mut conn, "ann");
    let g = GrantSubject { user_id, ..grant() };
    let committed = super::write_no_history(&mut conn, &cipher, |tx| {
        tx.record(Change::GrantCreated { grant: g.clone(), address: None })?;
        tx.record(Change::GrantRevoked { by: Actor::User(user_id), grant: g.clone(), why: GrantEnd::ByUser })?;
        tx.record(Change::GrantTokensIssued { grant: g.clone(), how: Issued::Code, resource: "r".into() })?;
        Ok(tx.events().len())
    })
    .unwrap();
    assert!(committed.wakes());
    assert_eq!(committed.recorded_only(), 2, "two events: created and revoked; issuing tokens sends none");
    let bodies: Vec<String> = {
        use crate::db::schema::webhook_events::dsl::*;
        use diesel::prelude::*;
        crate::on_conn!(&mut conn, c => webhook_events.select(body).order(id).load::<String>(c)).unwrap()
    };
    let parsed: Vec<serde_json::Value> = bodies.iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    assert_eq!(parsed[0]["type"], "grant.created");
    assert_eq!(parsed[0]["data"]["user"], "ann");
    assert_eq!(parsed[0]["data"]["status"], "active");
    assert_eq!(parsed[0]["data"]["services"], serde_json::json!(["dropbox"]));
    assert_eq!(parsed[1]["type"], "grant.revoked");
    assert_eq!(parsed[1]["data"]["reason"], "revoked_by_user");
    assert!(crate::audit::verify(&mut conn, &cipher).unwrap().is_ok());
}

/// A queued test event is one `webhook.test` event for its endpoint only, with its delivery ready
/// (no history, no audit entry, no invalidation); the unit knows its `webhook-id` and wakes the worker.
#[test]
fn a_test_event_is_recorded_for_its_one_endpoint() {
    use crate::db::models::webhooks as rows;
    use crate::db::Db;
    use crate::vault::Cipher;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let committed = super::write_no_history(&mut conn, &cipher, |tx| {
        tx.record(Change::WebhookTestQueued { endpoint: "ops".into(), by: "root".into() })?;
        assert_eq!(tx.events().len(), 1);
        Ok(tx.events()[0].clone())
    })
    .unwrap();
    assert!(committed.wakes());
    assert!(committed.invalidated().is_empty());
    let id = committed.recorded_only();
    assert!(id.starts_with("msg_"), "{id}");
    let recent = rows::recent(&mut conn, "ops", 10).unwrap();
    assert_eq!(recent.len(), 1);
    let (_, event) = &recent[0];
    assert_eq!(event.msg_id, id);
    let body: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["data"], serde_json::json!({"endpoint": "ops", "requested_by": "root"}));
    assert!(rows::recent(&mut conn, "other", 10).unwrap().is_empty(), "no other endpoint gets it");
}

/// A published checkpoint is one `audit.checkpoint` event carrying it, for every endpoint that asks
/// for it by name, when one does; none is recorded otherwise. No audit entry: it is the log's own.
#[test]
fn a_checkpoint_event_is_recorded_only_when_an_endpoint_wants_it() {
    use crate::db::Db;
    use crate::vault::Cipher;
    use crate::webhooks::Webhooks;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let hooks = |endpoints: &[(&str, Option<&str>)]| {
        let raw = endpoints.iter().map(|(name, filter)| {
            let raw = crate::config::RawWebhook {
                url: format!("https://hooks.example/{name}"),
                secret: crate::util::secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                events: filter.map(|f| vec![f.to_string()]),
            };
            (name.to_string(), raw)
        });
        Webhooks::build(&raw.collect()).unwrap()
    };
    let events = |conn: &mut crate::db::Conn| -> Vec<String> {
        use crate::db::schema::webhook_events::dsl::*;
        use diesel::prelude::*;
        crate::on_conn!(conn, c => webhook_events.select(body).order(id).load::<String>(c)).unwrap()
    };

    let none = hooks(&[("all", None), ("connections", Some("connection.*"))]);
    let committed = super::checkpoint_event(&mut conn, &cipher, &none, &checkpoint()).unwrap();
    assert!(!committed.wakes(), "no endpoint asks for it: nothing recorded, nobody woken");
    committed.recorded_only();
    assert!(events(&mut conn).is_empty());

    let audit = hooks(&[("all", None), ("audit", Some("audit.*"))]);
    let committed = super::checkpoint_event(&mut conn, &cipher, &audit, &checkpoint()).unwrap();
    assert!(committed.wakes());
    assert!(committed.invalidated().is_empty());
    committed.recorded_only();
    let bodies = events(&mut conn);
    assert_eq!(bodies.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["type"], "audit.checkpoint");
    assert_eq!(body["data"], serde_json::to_value(checkpoint()).unwrap());
    assert!(crate::audit::verify(&mut conn, &cipher).unwrap().is_ok(), "the chain is untouched");
}

/// A provider change is one `provider.changed` event for every endpoint (names, never a secret),
/// an audit entry and the `providers` invalidation that makes every instance rebuild its catalog.
#[test]
fn a_provider_change_is_audited_sent_and_invalidated() {
    use crate::db::Db;
    use crate::vault::Cipher;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("t.sqlite").to_string_lossy()).unwrap();
    let cipher = Cipher::for_tests(3);
    let mut conn = db.conn().unwrap();
    crate::audit::open(&mut conn, &cipher).unwrap().unwrap();
    let action =
        ProviderAction::Edited { keys: vec!["client_secret".into()], authorize_origin: "https://p.example".into() };
    let committed = super::write_no_history(&mut conn, &cipher, |tx| tx.record(provider(Actor::Cli, action))).unwrap();
    assert!(committed.wakes());
    assert_eq!(committed.invalidated(), [Invalidated::Providers("acme".into())]);
    committed.recorded_only();
    let bodies = {
        use crate::db::schema::webhook_events::dsl::*;
        use diesel::prelude::*;
        let conn = &mut conn;
        crate::on_conn!(conn, c => webhook_events.select(body).order(id).load::<String>(c)).unwrap()
    };
    assert_eq!(bodies.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(body["type"], "provider.changed");
    assert_eq!(
        body["data"],
        serde_json::json!({"provider": "acme", "action": "edited", "by": "cli", "keys": ["client_secret"],
                           "authorize_origin": "https://p.example"})
    );
    assert!(crate::audit::verify(&mut conn, &cipher).unwrap().is_ok());
}

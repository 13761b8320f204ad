//! The projections of a [`Change`]: its connection history row, its audit entry, its webhook
//! event and its cache invalidation. Each is a pure mapping (`*_of`, unit-tested per variant)
//! and a writer used by `Tx::record` only. Every match is exhaustive: a new variant does not
//! compile until each projection says what it makes of it.

use super::{
    Change, ClientSubject, EndpointChange, GrantEnd, GrantSubject, Issued, KeyRevoked, ProviderAction, SessionsEnd,
    Subject,
};
use crate::audit::{Actor, Entry, Kind};
use crate::db::models::connections::ConnectionStatus;
use crate::db::models::events::{self, EventKind, EventOutcome, NewEvent};
use crate::db::models::invalidations::{self, Invalidated};
use crate::db::Conn;
use crate::error::AppResult;
use crate::util::now;
use crate::vault::Cipher;
use crate::webhooks::{
    outbox::{self, EventData},
    EventType,
};

/// A `connection_events` row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow<'a> {
    pub user_id: i64,
    pub service: &'a str,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    pub detail: &'a str,
}

/// The history row of `change`, if it has one.
pub fn history_of(change: &Change) -> Option<HistoryRow<'_>> {
    fn row<'a>(c: &'a Subject, kind: EventKind, outcome: EventOutcome, detail: &'a str) -> HistoryRow<'a> {
        HistoryRow { user_id: c.user_id, service: &c.service, kind, outcome, detail }
    }
    match change {
        Change::ConnectionCreated { conn, detail } | Change::ConnectionReconnected { conn, detail } => {
            Some(row(conn, EventKind::Connect, EventOutcome::Ok, detail))
        }
        Change::ConnectRefused { user_id, service, cancelled, detail } => Some(HistoryRow {
            user_id: *user_id,
            service,
            kind: EventKind::Connect,
            outcome: if *cancelled { EventOutcome::Cancelled } else { EventOutcome::Failed },
            detail,
        }),
        Change::ConnectionDeleted { conn, outcome, detail } => Some(row(conn, EventKind::Delete, *outcome, detail)),
        Change::ConnectionRevoked { conn, outcome, detail } => Some(row(conn, EventKind::Revoke, *outcome, detail)),
        Change::ConnectionRefreshed { conn, rotated, .. } => {
            let detail = if *rotated { "new refresh token stored" } else { "refresh token kept" };
            Some(row(conn, EventKind::Refresh, EventOutcome::Ok, detail))
        }
        Change::ReconnectRequired { conn, detail, .. } => {
            Some(row(conn, EventKind::Refresh, EventOutcome::ReconnectRequired, detail))
        }
        Change::ConnectionDegraded { conn, detail, .. } => {
            Some(row(conn, EventKind::Refresh, EventOutcome::FailedRetryable, detail))
        }
        Change::RefreshNeedsAdmin { user_id, service, detail } => Some(HistoryRow {
            user_id: *user_id,
            service,
            kind: EventKind::Refresh,
            outcome: EventOutcome::FailedAdmin,
            detail,
        }),
        Change::ExpiryWarned { .. }
        | Change::ConnectionResealed { .. }
        | Change::SignedIn { .. }
        | Change::SignInRefused { .. }
        | Change::SignedOut { .. }
        | Change::SessionsEnded { .. }
        | Change::UserAdded { .. }
        | Change::UserRenamed { .. }
        | Change::PasswordChanged { .. }
        | Change::ApiKeyCreated { .. }
        | Change::ApiKeyRevoked { .. }
        | Change::VaultValueSet { .. }
        | Change::VaultValueDeleted { .. }
        | Change::WebhookTestQueued { .. }
        | Change::WebhookEndpointChanged { .. }
        | Change::AuditCheckpointed { .. }
        | Change::ProviderChanged { .. }
        | Change::GrantCreated { .. }
        | Change::GrantRevoked { .. }
        | Change::GrantTokensIssued { .. }
        | Change::GrantTokenRevoked { .. }
        | Change::ClientRegistered { .. }
        | Change::ClientDeleted { .. } => None,
    }
}

/// Write the history row of `change`, keeping the newest `keep` of its connection's.
pub(super) fn history(conn: &mut Conn, keep: Option<i64>, change: &Change) -> AppResult<()> {
    if let Some(h) = history_of(change) {
        let Some(keep) = keep else {
            return Err(crate::error::AppError::internal(
                "a connection's history recorded without events_per_connection",
            ));
        };
        let new = NewEvent {
            user_id: h.user_id,
            service: h.service,
            at: now(),
            kind: h.kind,
            outcome: h.outcome,
            detail: h.detail,
        };
        events::insert(conn, &new)?;
        events::prune(conn, h.user_id, h.service, keep)?;
    }
    Ok(())
}

/// The audit entry of `change`, if it has one.
pub fn audit_of(change: &Change) -> Option<Entry> {
    let connection = |kind, c: &Subject| {
        let entry = Entry::new(kind, Actor::User(c.user_id)).user(c.user_id).service(&c.service).connection(c.id);
        match &c.account {
            Some(a) => entry.with("account", a.id.clone()),
            None => entry,
        }
    };
    match change {
        Change::ConnectionCreated { conn, .. } => Some(connection(Kind::ConnectionCreated, conn)),
        Change::ConnectionReconnected { conn, .. } => Some(connection(Kind::ConnectionReconnected, conn)),
        Change::ConnectionDeleted { conn, .. } => Some(connection(Kind::ConnectionDeleted, conn)),
        Change::ConnectionRevoked { conn, .. } => Some(connection(Kind::ConnectionRevoked, conn)),
        Change::ConnectRefused { .. }
        | Change::ConnectionRefreshed { .. }
        | Change::ReconnectRequired { .. }
        | Change::ConnectionDegraded { .. }
        | Change::RefreshNeedsAdmin { .. }
        | Change::ExpiryWarned { .. }
        | Change::WebhookTestQueued { .. } => None,
        // The rotation is the operator's act; the tokens are the same.
        Change::ConnectionResealed { .. } => None,
        // The checkpoint is the audit log's own statement about itself, not an entry in it.
        Change::AuditCheckpointed { .. } => None,
        Change::SignedIn { user_id, address } => {
            Some(Entry::new(Kind::SigninSuccess, Actor::User(*user_id)).user(*user_id).address(*address))
        }
        // The name's keyed hash is added when it is written, under the chain's lock (see `audit`).
        Change::SignInRefused { user_id, address, .. } => {
            let mut e = Entry::new(Kind::SigninFailure, Actor::System).address(*address);
            e.user_id = *user_id;
            Some(e)
        }
        Change::SignedOut { user_id, address } => {
            Some(Entry::new(Kind::SessionEnd, Actor::User(*user_id)).user(*user_id).address(*address))
        }
        Change::SessionsEnded { user_id, address, why } => {
            let e = Entry::new(Kind::SessionEnd, Actor::User(*user_id)).user(*user_id).address(*address);
            Some(match why {
                SessionsEnd::PasswordChanged { count } => {
                    e.with("reason", "password_changed").with("count", *count as i64)
                }
                SessionsEnd::FromSettings { session } => {
                    e.with("reason", "ended_from_settings").with("session", session.as_str()).with("count", 1)
                }
                SessionsEnd::OthersFromSettings { count } => {
                    e.with("reason", "ended_from_settings").with("scope", "others").with("count", *count as i64)
                }
            })
        }
        Change::UserAdded { user_id, by, admin, address } => {
            let e = Entry::new(Kind::UserAdded, by.clone()).user(*user_id).address(*address);
            Some(match admin {
                Some(admin) => e.with("admin", *admin),
                None => e,
            })
        }
        Change::UserRenamed { user_id } => Some(Entry::new(Kind::UserRenamed, Actor::Cli).user(*user_id)),
        Change::PasswordChanged { user_id, address, sessions_ended, api_keys_revoked } => Some(
            Entry::new(Kind::PasswordChanged, Actor::User(*user_id))
                .user(*user_id)
                .address(*address)
                .with("sessions_ended", *sessions_ended as i64)
                .with("api_keys_revoked", *api_keys_revoked as i64),
        ),
        Change::ApiKeyCreated { by, user_id, key_id } => {
            Some(Entry::new(Kind::ApiKeyCreated, by.clone()).user(*user_id).with("key_id", *key_id))
        }
        Change::ApiKeyRevoked { by, user_id, key_id, why, address, .. } => {
            let e =
                Entry::new(Kind::ApiKeyRevoked, by.clone()).user(*user_id).address(*address).with("key_id", *key_id);
            Some(match why {
                KeyRevoked::ByUser => e.with("reason", "revoked_by_user"),
                KeyRevoked::OverLimit { max_keys } => {
                    e.with("reason", "over_limit").with("max_api_keys_per_user", *max_keys)
                }
                KeyRevoked::PasswordChanged => e.with("reason", "password_changed"),
                KeyRevoked::ProviderDeleted => e.with("reason", "provider_deleted"),
            })
        }
        Change::VaultValueSet { by, path } => {
            Some(by_user(Entry::new(Kind::VaultSet, by.clone())).with("path", path.as_str()))
        }
        Change::VaultValueDeleted { by, path } => {
            Some(by_user(Entry::new(Kind::VaultDelete, by.clone())).with("path", path.as_str()))
        }
        Change::WebhookEndpointChanged { user_id, endpoint, change } => {
            let e = |change: &str| {
                Entry::new(Kind::WebhookChanged, Actor::User(*user_id))
                    .user(*user_id)
                    .with("endpoint", endpoint.as_str())
                    .with("change", change)
            };
            let described = |change: &str, url_origin: &str, events: &[String]| {
                let filters: serde_json::Value = if events.is_empty() {
                    "all".into()
                } else {
                    events.iter().map(String::as_str).collect::<Vec<_>>().into()
                };
                e(change).with("url_origin", url_origin).with("events", filters)
            };
            Some(match change {
                EndpointChange::Added { url_origin, events } => described("added", url_origin, events),
                EndpointChange::Updated { url_origin, events } => described("updated", url_origin, events),
                EndpointChange::SecretRotated { previous_valid_until } => {
                    e("secret_rotated").with("previous_valid_until", *previous_valid_until)
                }
                EndpointChange::Deleted => e("deleted"),
                EndpointChange::Reverted => e("reverted"),
            })
        }
        Change::GrantCreated { grant, address } => {
            let services: serde_json::Value = match &grant.services {
                None => "all".into(),
                Some(s) => s.iter().map(String::as_str).collect::<Vec<_>>().into(),
            };
            Some(
                grant_entry(Kind::GrantCreated, Actor::User(grant.user_id), grant)
                    .address(*address)
                    .with("services", services)
                    .with("capabilities", grant.capabilities.join(" "))
                    .with("expires_at", grant.expires_at),
            )
        }
        Change::GrantRevoked { by, grant, why } => {
            Some(grant_entry(Kind::GrantRevoked, by.clone(), grant).with("reason", grant_end_reason(*why)))
        }
        Change::GrantTokenRevoked { grant } => {
            Some(grant_entry(Kind::GrantTokenRevoked, Actor::System, grant).with("token_type", "access_token"))
        }
        Change::GrantTokensIssued { grant, how, resource } => {
            let how = match how {
                Issued::Code => "authorization_code",
                Issued::Refresh => "refresh_token",
                Issued::RefreshRetry => "refresh_token_retry",
            };
            Some(
                grant_entry(Kind::GrantTokensIssued, Actor::Grant(grant.id), grant)
                    .with("grant_type", how)
                    .with("resource", resource.as_str()),
            )
        }
        Change::ClientRegistered { by, client, confidential, address } => {
            Some(client_entry(Kind::ClientRegistered, by, client).address(*address).with("confidential", *confidential))
        }
        Change::ClientDeleted { by, client, grants_revoked } => {
            Some(client_entry(Kind::ClientDeleted, by, client).with("grants_revoked", *grants_revoked))
        }
        Change::ProviderChanged { by, name, action } => {
            let e = by_user(Entry::new(Kind::ProviderChanged, by.clone()))
                .service(name)
                .with("provider", name.as_str())
                .with("action", action.as_str());
            Some(match action {
                ProviderAction::Added { authorize_origin } => e.with("authorize_origin", authorize_origin.as_str()),
                ProviderAction::Edited { keys, authorize_origin } => e
                    .with("keys", keys.iter().map(String::as_str).collect::<Vec<_>>())
                    .with("authorize_origin", authorize_origin.as_str()),
                ProviderAction::Disabled
                | ProviderAction::Enabled
                | ProviderAction::Reverted
                | ProviderAction::Deleted => e,
            })
        }
    }
}

/// The audit entry of something done with a grant: its user, grant id and client.
fn grant_entry(kind: Kind, by: Actor, grant: &GrantSubject) -> Entry {
    Entry::new(kind, by).user(grant.user_id).with("grant_id", grant.id).with("client_id", grant.client_id.as_str())
}

/// The audit entry of a client's registration or deletion: its client id, name and kind (never
/// its secret).
fn client_entry(kind: Kind, by: &Actor, client: &ClientSubject) -> Entry {
    by_user(Entry::new(kind, by.clone()))
        .with("client", client.id)
        .with("client_id", client.client_id.as_str())
        .with("client_name", client.name.as_str())
        .with("client_kind", client.kind)
}

/// The reason code of a grant's end, as its audit entry and `grant.revoked` event say it.
pub fn grant_end_reason(why: GrantEnd) -> &'static str {
    match why {
        GrantEnd::ByUser => "revoked_by_user",
        GrantEnd::ByAdmin => "revoked_by_admin",
        GrantEnd::ByClient => "revoked_by_client",
        GrantEnd::CodeReused => "code_reused",
        GrantEnd::RefreshReplayed => "refresh_token_replayed",
        GrantEnd::PasswordChanged => "password_changed",
        GrantEnd::ProviderDeleted => "provider_deleted",
        GrantEnd::ClientDeleted => "client_deleted",
    }
}

/// The entry of something a signed-in user did names them as its user too.
fn by_user(e: Entry) -> Entry {
    match e.actor {
        Actor::User(id) => e.user(id),
        Actor::Key(_) | Actor::Grant(_) | Actor::Cli | Actor::System => e,
    }
}

pub(super) fn audit(conn: &mut Conn, cipher: &Cipher, change: &Change) -> AppResult<()> {
    if let Change::SignInRefused { user_id, username, address } = change {
        return crate::audit::record_signin_failure(conn, cipher, *user_id, username, *address);
    }
    match audit_of(change) {
        Some(entry) => crate::audit::record(conn, cipher, entry),
        None => Ok(()),
    }
}

/// A webhook event to record: its type, the connection it is about, the connection's status after
/// the change and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent<'a> {
    pub event_type: EventType,
    pub conn: &'a Subject,
    pub status: &'a str,
    pub reason: Option<&'a str>,
}

/// The webhook event of `change`, if it has one.
pub fn outbox_of(change: &Change) -> Option<OutboxEvent<'_>> {
    let event = |event_type, conn, status, reason| Some(OutboxEvent { event_type, conn, status, reason });
    let active = ConnectionStatus::Active.as_str();
    match change {
        Change::ConnectionCreated { conn, .. } => event(EventType::ConnectionCreated, conn, active, None),
        Change::ConnectionReconnected { conn, .. } => event(EventType::ConnectionReconnected, conn, active, None),
        Change::ConnectionDeleted { conn, outcome, .. } => {
            let reason = (*outcome == EventOutcome::ProviderFailed).then_some("provider_revocation_failed");
            event(EventType::ConnectionDeleted, conn, "deleted", reason)
        }
        Change::ConnectionRevoked { conn, outcome, .. } => {
            let reason = (*outcome == EventOutcome::ProviderFailed).then_some("provider_revocation_failed");
            event(EventType::ConnectionRevoked, conn, "revoked", reason)
        }
        // Back from `degraded`: `connection.recovered` (a routine refresh sends nothing).
        Change::ConnectionRefreshed { conn, recovered: true, .. } => {
            event(EventType::ConnectionRecovered, conn, active, None)
        }
        Change::ConnectionRefreshed { recovered: false, .. } => None,
        Change::ReconnectRequired { conn, reason, .. } => event(
            EventType::ConnectionReconnectRequired,
            conn,
            ConnectionStatus::ReconnectRequired.as_str(),
            Some(reason),
        ),
        // Entering `degraded` (not each retry while in it) raises `connection.refresh_failed`.
        Change::ConnectionDegraded { conn, reason, entering: true, .. } => {
            event(EventType::ConnectionRefreshFailed, conn, ConnectionStatus::Degraded.as_str(), Some(reason))
        }
        Change::ConnectionDegraded { entering: false, .. } => None,
        Change::ExpiryWarned { conn, status } => {
            event(EventType::ConnectionExpiring, conn, status, Some("refresh_token_expiring"))
        }
        Change::ConnectRefused { .. }
        | Change::RefreshNeedsAdmin { .. }
        | Change::ConnectionResealed { .. }
        | Change::SignedIn { .. }
        | Change::SignInRefused { .. }
        | Change::SignedOut { .. }
        | Change::SessionsEnded { .. }
        | Change::UserAdded { .. }
        | Change::UserRenamed { .. }
        | Change::PasswordChanged { .. }
        | Change::ApiKeyCreated { .. }
        | Change::ApiKeyRevoked { .. }
        | Change::VaultValueSet { .. }
        | Change::VaultValueDeleted { .. }
        | Change::WebhookEndpointChanged { .. } => None,
        // Clients are the instance's configuration, not a user's: no webhook event (the grants a
        // deletion ends each send their `grant.revoked`).
        Change::GrantTokensIssued { .. }
        | Change::GrantTokenRevoked { .. }
        | Change::ClientRegistered { .. }
        | Change::ClientDeleted { .. } => None,
        // Not a connection's event: recorded by `outbox` with its own `data`.
        Change::ProviderChanged { .. } => None,
        // Not connection events: recorded by `outbox` itself (a test for its one endpoint, a
        // checkpoint with the checkpoint as its `data`, a grant's with the grant).
        Change::WebhookTestQueued { .. }
        | Change::AuditCheckpointed { .. }
        | Change::GrantCreated { .. }
        | Change::GrantRevoked { .. } => None,
    }
}

/// The `grant.*` event of `change`, if it is one: its type, the grant, and why it ended.
pub fn grant_event_of(change: &Change) -> Option<(EventType, &GrantSubject, Option<&'static str>)> {
    match change {
        Change::GrantCreated { grant, .. } => Some((EventType::GrantCreated, grant, None)),
        Change::GrantRevoked { grant, why, .. } => Some((EventType::GrantRevoked, grant, Some(grant_end_reason(*why)))),
        _ => None,
    }
}

/// Record the webhook event of `change`; its `webhook-id` when there was one. A test event goes to
/// its one endpoint, ready to deliver ([`outbox::record_test`]); a checkpoint's event carries the
/// checkpoint ([`outbox::record_audit_checkpoint`]).
pub(super) fn outbox(conn: &mut Conn, change: &Change) -> AppResult<Option<String>> {
    // The two events that are not a connection's (`outbox_of` has none for them).
    if let Change::WebhookTestQueued { endpoint, by } = change {
        return Ok(Some(outbox::record_test(conn, endpoint, by)?));
    }
    if let Change::AuditCheckpointed { checkpoint } = change {
        return Ok(Some(outbox::record_audit_checkpoint(conn, checkpoint)?));
    }
    if let Some((event_type, grant, reason)) = grant_event_of(change) {
        let user = crate::db::models::users::find(conn, grant.user_id)?.map(|u| u.username).unwrap_or_default();
        let data = outbox::GrantData {
            grant_id: grant.id,
            user,
            client_id: grant.client_id.clone(),
            client_name: grant.client_name.clone(),
            services: grant.services.clone(),
            capabilities: grant.capabilities.clone(),
            expires_at: crate::util::rfc3339(grant.expires_at),
            status: if reason.is_some() { "revoked" } else { "active" }.into(),
            reason: reason.map(str::to_string),
        };
        return Ok(Some(outbox::record_grant(conn, event_type, &data)?));
    }
    if let Change::ProviderChanged { by, name, action } = change {
        let (keys, authorize_origin) = match action {
            ProviderAction::Added { authorize_origin } => (None, Some(authorize_origin.as_str())),
            ProviderAction::Edited { keys, authorize_origin } => {
                (Some(keys.as_slice()), Some(authorize_origin.as_str()))
            }
            ProviderAction::Disabled | ProviderAction::Enabled | ProviderAction::Reverted | ProviderAction::Deleted => {
                (None, None)
            }
        };
        let data = outbox::ProviderChangedData {
            provider: name,
            action: action.as_str(),
            by: by.to_string(),
            keys,
            authorize_origin,
        };
        return Ok(Some(outbox::record_provider_changed(conn, &data)?));
    }
    let Some(e) = outbox_of(change) else { return Ok(None) };
    let c = e.conn;
    let data = EventData::named(conn, c.id, c.user_id, &c.service, c.account.clone(), e.status, e.reason)?;
    Ok(Some(outbox::record(conn, e.event_type, &data)?))
}

/// Whether the webhook worker must look again once `change` is committed: it recorded an event,
/// or the endpoints changed (a new one may have events waiting).
pub fn wakes_webhooks(change: &Change) -> bool {
    match change {
        Change::WebhookEndpointChanged { .. }
        | Change::WebhookTestQueued { .. }
        | Change::AuditCheckpointed { .. }
        | Change::ProviderChanged { .. } => true,
        other => outbox_of(other).is_some() || grant_event_of(other).is_some(),
    }
}

/// What `change` makes every instance drop from its caches, if anything.
pub fn invalidation_of(change: &Change) -> Option<Invalidated> {
    let connection = |c: &Subject| Some(Invalidated::Connection { user_id: c.user_id, service: c.service.clone() });
    match change {
        Change::ConnectionCreated { conn, .. }
        | Change::ConnectionReconnected { conn, .. }
        | Change::ConnectionDeleted { conn, .. }
        | Change::ConnectionRevoked { conn, .. }
        | Change::ConnectionRefreshed { conn, .. }
        | Change::ReconnectRequired { conn, .. }
        | Change::ConnectionDegraded { conn, .. } => connection(conn),
        Change::ConnectionResealed { user_id, service, .. } => {
            Some(Invalidated::Connection { user_id: *user_id, service: service.clone() })
        }
        // The warned mark is not cached; history rows are not cached.
        Change::ApiKeyRevoked { key_hash, .. } => Some(Invalidated::ApiKey(key_hash.clone())),
        // Every instance rebuilds its provider catalog (`crate::oauth::managed`).
        Change::ProviderChanged { name, .. } => Some(Invalidated::Providers(name.clone())),
        // Sessions, accounts and vault values are not cached (a session is read per request).
        Change::ExpiryWarned { .. }
        | Change::ConnectRefused { .. }
        | Change::RefreshNeedsAdmin { .. }
        | Change::SignedIn { .. }
        | Change::SignInRefused { .. }
        | Change::SignedOut { .. }
        | Change::SessionsEnded { .. }
        | Change::UserAdded { .. }
        | Change::UserRenamed { .. }
        | Change::PasswordChanged { .. }
        | Change::ApiKeyCreated { .. }
        | Change::VaultValueSet { .. }
        | Change::VaultValueDeleted { .. }
        | Change::WebhookTestQueued { .. }
        | Change::WebhookEndpointChanged { .. }
        | Change::AuditCheckpointed { .. } => None,
        // Checked access tokens are cached by grant (`Caches::access_tokens`): a grant that ends, a
        // token its client revokes, and a retried refresh (which revokes the tokens of the first
        // try) drop the grant's cached tokens on every instance.
        Change::GrantRevoked { grant, .. } | Change::GrantTokenRevoked { grant } => Some(Invalidated::Grant(grant.id)),
        Change::GrantTokensIssued { grant, how: Issued::RefreshRetry, .. } => Some(Invalidated::Grant(grant.id)),
        // A new grant, or new tokens that revoke nothing: nothing cached is stale.
        Change::GrantCreated { .. } | Change::GrantTokensIssued { .. } => None,
        // A client's registration changes nothing cached; its deletion revokes each live grant
        // first (`GrantRevoked` above drops their tokens).
        Change::ClientRegistered { .. } | Change::ClientDeleted { .. } => None,
    }
}

pub(super) fn invalidate(conn: &mut Conn, what: &Invalidated) -> AppResult<()> {
    invalidations::record(conn, what)?;
    Ok(())
}

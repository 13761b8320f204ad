//! Grants and their scopes: what a user allowed a client — capabilities (`connections:read`,
//! `proxy:read`, `proxy:write`, `token:read`) and services (`service:<name>`, or every service
//! including those connected later) — until when. A grant limits its tokens exactly as a
//! limited API key is limited ([`GrantScope::key_scope`]).

use crate::changes::{Actor, Change, GrantEnd, GrantSubject};
use crate::db::models::authz::{self as model, Client, Grant};
use crate::db::models::key_scope::{Capability, KeyScope};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::util::now;

crate::db::text_enum::text_enum! {
    /// A capability a client may ask for and a grant may hold (an OAuth scope).
    pub enum GrantCapability {
        /// List the user's connections (never a token).
        ConnectionsRead = "connections:read",
        /// Call the user's services through the proxy with `GET` and `HEAD`.
        ProxyRead = "proxy:read",
        /// Call the user's services through the proxy with every method.
        ProxyWrite = "proxy:write",
        /// Read the provider's access token itself (dangerous: it leaves tokenvault).
        TokenRead = "token:read",
    }
}

/// The scope that names one service.
pub const SERVICE_SCOPE: &str = "service:";

impl GrantCapability {
    /// The API key capability it is.
    pub fn capability(self) -> Capability {
        match self {
            GrantCapability::ConnectionsRead => Capability::ConnectionsRead,
            GrantCapability::ProxyRead => Capability::ProxyRead,
            GrantCapability::ProxyWrite => Capability::Proxy,
            GrantCapability::TokenRead => Capability::TokenRead,
        }
    }

    /// The scope to ask for to get API key capability `c`.
    pub fn for_capability(c: Capability) -> GrantCapability {
        match c {
            Capability::ConnectionsRead => GrantCapability::ConnectionsRead,
            Capability::ProxyRead => GrantCapability::ProxyRead,
            Capability::Proxy => GrantCapability::ProxyWrite,
            Capability::TokenRead => GrantCapability::TokenRead,
        }
    }

    /// What the consent page says it allows.
    pub fn label(self) -> &'static str {
        match self {
            GrantCapability::ConnectionsRead => "see which services and accounts you connected",
            GrantCapability::ProxyRead => "read from your services through tokenvault (GET and HEAD)",
            GrantCapability::ProxyWrite => "read and change data in your services through tokenvault (every method)",
            GrantCapability::TokenRead => {
                "read your services' access tokens themselves (dangerous: they leave tokenvault)"
            }
        }
    }
}

/// Every scope this server knows, as the metadata documents list them: the capabilities, then
/// `service:<name>` for each configured service.
pub fn scopes_supported<'a>(services: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut all: Vec<String> = GrantCapability::ALL.iter().map(|c| c.as_str().to_string()).collect();
    all.extend(services.map(|s| format!("{SERVICE_SCOPE}{s}")));
    all
}

/// What a grant allows (or what a client asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantScope {
    /// `None`: every service, also those connected later.
    pub services: Option<Vec<String>>,
    pub capabilities: Vec<GrantCapability>,
}

impl GrantScope {
    /// The scope a client asked for (`scope`, space-separated): the capabilities named and the
    /// services named by `service:<name>` (none named: every service). Nothing asked: listing
    /// connections and read-only calls, the least a client of this API can do anything with.
    /// `Err`: an unknown scope (RFC 6749 `invalid_scope`), as a message.
    pub fn requested(scope: Option<&str>, known_service: impl Fn(&str) -> bool) -> Result<GrantScope, String> {
        let mut capabilities = Vec::new();
        let mut services: Vec<String> = Vec::new();
        for item in scope.unwrap_or("").split_whitespace() {
            if let Some(service) = item.strip_prefix(SERVICE_SCOPE) {
                if !known_service(service) {
                    return Err(format!("unknown service in scope: {}", crate::util::capped(service, 40)));
                }
                if !services.iter().any(|s| s == service) {
                    services.push(service.to_string());
                }
                continue;
            }
            let c = item
                .parse::<GrantCapability>()
                .map_err(|_| format!("unknown scope: {}", crate::util::capped(item, 40)))?;
            if !capabilities.contains(&c) {
                capabilities.push(c);
            }
        }
        if capabilities.is_empty() {
            capabilities = vec![GrantCapability::ConnectionsRead, GrantCapability::ProxyRead];
        }
        capabilities.sort_by_key(|c| GrantCapability::ALL.iter().position(|a| a == c));
        Ok(GrantScope { services: (!services.is_empty()).then_some(services), capabilities })
    }

    /// The scope of a stored grant (an unknown stored capability is dropped: less, never more).
    pub fn of(grant: &Grant) -> GrantScope {
        GrantScope {
            services: grant.services.as_deref().map(|s| s.split_whitespace().map(str::to_string).collect()),
            capabilities: grant.capabilities.split_whitespace().filter_map(|c| c.parse().ok()).collect(),
        }
    }

    /// The limits its tokens are held to: a limited API key's, expiring with the grant.
    pub fn key_scope(&self, expires_at: i64) -> KeyScope {
        let mut caps: Vec<Capability> = self.capabilities.iter().map(|c| c.capability()).collect();
        if caps.contains(&Capability::Proxy) && !caps.contains(&Capability::ProxyRead) {
            caps.push(Capability::ProxyRead);
        }
        KeyScope { services: self.services.clone(), capabilities: Some(caps), expires_at: Some(expires_at) }
    }

    /// As an OAuth `scope` value.
    pub fn scope_text(&self) -> String {
        let mut parts: Vec<String> = self.capabilities.iter().map(|c| c.as_str().to_string()).collect();
        for s in self.services.iter().flatten() {
            parts.push(format!("{SERVICE_SCOPE}{s}"));
        }
        parts.join(" ")
    }

    pub fn capability_names(&self) -> Vec<String> {
        self.capabilities.iter().map(|c| c.as_str().to_string()).collect()
    }
}

/// The change subject of `grant` of `client`.
pub fn subject(grant: &Grant, client: &Client) -> GrantSubject {
    let scope = GrantScope::of(grant);
    GrantSubject {
        id: grant.id,
        user_id: grant.user_id,
        client_id: client.client_id.clone(),
        client_name: client.name.clone(),
        services: scope.services.clone(),
        capabilities: scope.capability_names(),
        expires_at: grant.expires_at,
    }
}

/// Revoke a live grant (of `user_id` when given: a user revokes only their own); `false` when
/// there is none such. Its tokens stop working at the next request on every instance.
pub async fn revoke(
    db: &Db,
    ledger: crate::changes::Ledger,
    effects: crate::changes::Effects<'_>,
    grant_id: i64,
    user_id: Option<i64>,
    by: Actor,
    why: GrantEnd,
) -> AppResult<bool> {
    let revoked = db
        .write(ledger, move |tx| {
            let Some(grant) = model::revoke_grant(tx.conn(), grant_id, user_id, now())? else { return Ok(false) };
            let client = model::client_by_pk(tx.conn(), grant.client_pk)?.ok_or(AppError::NotFound)?;
            tx.record(Change::GrantRevoked { by, grant: subject(&grant, &client), why })?;
            Ok(true)
        })
        .await?;
    Ok(revoked.settle(effects))
}

/// A provider added in the app is deleted (in its unit of work): every grant limited to a list
/// naming it loses the name, and a grant whose list becomes empty is revoked (an empty list is
/// never written: no list means every service), recorded with reason `provider_deleted`.
pub fn forget_service(tx: &mut crate::changes::Tx<'_>, service: &str, by: &Actor) -> AppResult<()> {
    for (grant, client) in model::grants_naming_service(tx.conn(), service)? {
        let rest = grant.services.as_deref().unwrap_or("").split_whitespace().filter(|s| *s != service);
        let rest = rest.collect::<Vec<_>>().join(" ");
        if !rest.is_empty() {
            model::set_grant_services(tx.conn(), grant.id, &rest)?;
        } else if let Some(grant) = model::revoke_grant(tx.conn(), grant.id, None, now())? {
            let (by, grant) = (by.clone(), subject(&grant, &client));
            tx.record(Change::GrantRevoked { by, grant, why: GrantEnd::ProviderDeleted })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(s: &str) -> bool {
        ["demo", "dropbox"].contains(&s)
    }

    #[test]
    fn requested_scopes_are_checked_and_least_privilege_by_default() {
        let s = GrantScope::requested(Some("proxy:write service:demo connections:read service:demo"), known).unwrap();
        assert_eq!(s.capabilities, [GrantCapability::ConnectionsRead, GrantCapability::ProxyWrite]);
        assert_eq!(s.services, Some(vec!["demo".to_string()]));
        assert_eq!(s.scope_text(), "connections:read proxy:write service:demo");
        let none = GrantScope::requested(None, known).unwrap();
        assert_eq!(none.capabilities, [GrantCapability::ConnectionsRead, GrantCapability::ProxyRead]);
        assert_eq!(none.services, None, "no service named: every service, also later ones");
        assert!(GrantScope::requested(Some("admin"), known).unwrap_err().contains("admin"));
        assert!(GrantScope::requested(Some("service:nope"), known).unwrap_err().contains("nope"));
    }

    #[test]
    fn a_grant_limits_like_a_limited_key() {
        let s = GrantScope { services: Some(vec!["demo".into()]), capabilities: vec![GrantCapability::ProxyRead] };
        let k = s.key_scope(100);
        assert!(k.require(Capability::ProxyRead, Some("demo")).is_ok());
        assert!(k.require(Capability::Proxy, Some("demo")).is_err(), "read only");
        assert!(k.require(Capability::ProxyRead, Some("dropbox")).is_err(), "one service");
        assert!(k.require(Capability::TokenRead, Some("demo")).is_err());
        assert!(k.is_expired(100));
        let w = GrantScope { services: None, capabilities: vec![GrantCapability::ProxyWrite] }.key_scope(100);
        assert!(w.require(Capability::ProxyRead, Some("anything")).is_ok(), "write includes read");
        assert_eq!(GrantCapability::for_capability(Capability::Proxy).as_str(), "proxy:write");
        crate::db::text_enum::assert_text_round_trips!(GrantCapability);
    }
}

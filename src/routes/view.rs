//! One connection as the dashboard's cards, My Settings → OAuth2 Services and
//! `GET /api/v1/connections` show it: built once from its row and its provider, its health read as
//! one [`Health`] value. Never a token: the sealed columns do not reach it.

use std::sync::Arc;

use crate::db::models::connections::{Connection, Health};
use crate::oauth::providers::{Catalog, Provider};

pub struct ConnectionView {
    pub id: i64,
    pub service: String,
    /// The provider, when it is still configured (a connection can outlive its configuration).
    pub provider: Option<Arc<Provider>>,
    /// The provider's name for people (the service's name when it is not configured).
    pub display_name: String,
    /// The provider's id of the account ("" when the provider does not say), and its label.
    pub account_id: String,
    pub account_label: Option<String>,
    /// Granted scopes, and the ones asked for (the granted ones when none were recorded).
    pub scopes: Vec<String>,
    pub requested: Vec<String>,
    pub obtained_at: i64,
    pub expires_at: Option<i64>,
    pub refresh_token_expires_at: Option<i64>,
    pub has_refresh_token: bool,
    /// Failed refresh attempts since the last success.
    pub attempts: i64,
    pub health: Health,
}

impl ConnectionView {
    pub fn of(c: &Connection, catalog: &Catalog) -> ConnectionView {
        let provider = catalog.get_any(&c.service);
        ConnectionView {
            id: c.id,
            service: c.service.clone(),
            display_name: provider.as_ref().map(|p| p.display_name.clone()).unwrap_or_else(|| c.service.clone()),
            provider,
            account_id: c.account_id.clone(),
            account_label: c.account_label.clone(),
            scopes: c.granted(),
            requested: c.requested(),
            obtained_at: c.obtained_at,
            expires_at: c.expires_at,
            refresh_token_expires_at: c.refresh_token_expires_at,
            has_refresh_token: c.refresh_token.is_some(),
            attempts: c.attempts,
            health: c.health(),
        }
    }

    /// The provider's id of the account, when it says.
    pub fn account_id(&self) -> Option<&str> {
        (!self.account_id.is_empty()).then_some(self.account_id.as_str())
    }

    /// How the account is named to people: its label, else its id.
    pub fn account_name(&self) -> Option<String> {
        self.account_label.clone().or_else(|| self.account_id().map(str::to_string))
    }

    /// Scopes asked for and not granted.
    pub fn not_granted(&self) -> Vec<String> {
        self.requested.iter().filter(|s| !self.scopes.contains(s)).cloned().collect()
    }

    /// The provider's optional scopes this connection does not have yet (what an upgrade asks).
    pub fn more_scopes(&self) -> Vec<String> {
        let optional = self.provider.as_ref().map(|p| p.optional_scopes.as_slice()).unwrap_or_default();
        optional.iter().filter(|s| !self.scopes.contains(s)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::connections::ConnectionStatus;

    fn row(status: ConnectionStatus) -> Connection {
        Connection {
            id: 3,
            user_id: 1,
            service: "fake".into(),
            access_token: vec![1],
            refresh_token: Some(vec![2]),
            token_type: "Bearer".into(),
            scopes: "read write".into(),
            expires_at: Some(100),
            obtained_at: 50,
            version: 2,
            updated_at: 50,
            refresh_lease_until: None,
            refresh_after_401_at: None,
            status,
            status_reason: Some("provider said 503".into()),
            attempts: 2,
            next_attempt_at: Some(200),
            refresh_token_expires_at: None,
            account_id: String::new(),
            account_label: None,
            requested_scopes: Some("read write admin".into()),
            expiry_warned_for: None,
        }
    }

    /// What each status carries, and only that: the columns a status does not use are not read.
    #[test]
    fn health_carries_what_its_status_says() {
        assert_eq!(row(ConnectionStatus::Active).health(), Health::Active);
        assert_eq!(row(ConnectionStatus::Active).health().reason(), None);
        let degraded = row(ConnectionStatus::Degraded).health();
        assert_eq!(
            degraded,
            Health::Degraded { reason: Some("provider said 503".into()), attempts: 2, next_attempt_at: Some(200) }
        );
        assert_eq!((degraded.label(), degraded.next_attempt_at()), ("Degraded", Some(200)));
        let gone = row(ConnectionStatus::ReconnectRequired).health();
        assert_eq!(gone, Health::ReconnectRequired { reason: Some("provider said 503".into()) });
        assert_eq!((gone.next_attempt_at(), gone.status()), (None, ConnectionStatus::ReconnectRequired));
        let mut ranks: Vec<_> =
            [ConnectionStatus::Active, ConnectionStatus::ReconnectRequired, ConnectionStatus::Degraded]
                .into_iter()
                .map(|s| (row(s).health().severity_rank(), s))
                .collect();
        ranks.sort_by_key(|(rank, _)| *rank);
        assert_eq!(
            ranks.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
            [ConnectionStatus::ReconnectRequired, ConnectionStatus::Degraded, ConnectionStatus::Active]
        );
    }

    #[test]
    fn the_view_of_a_row_whose_provider_is_gone() {
        let catalog = Catalog::default();
        let view = ConnectionView::of(&row(ConnectionStatus::Active), &catalog);
        assert_eq!((view.display_name.as_str(), view.provider.is_none()), ("fake", true));
        assert_eq!((view.account_id(), view.account_name()), (None, None));
        assert_eq!(view.not_granted(), ["admin"]);
        assert!(view.more_scopes().is_empty());
        assert!(view.has_refresh_token);
    }
}

//! One module per table. Functions take the connection first; inserts use separate `New*` types.

pub mod api_keys;
pub mod audit;
/// tokenvault's own authorization server: clients, grants, codes, tokens (`crate::authz`).
pub mod authz;
pub mod connections;
pub mod demo;
pub mod events;
pub mod flows;
pub mod invalidations;
pub mod jobs;
/// What the limit columns of `api_keys` mean (not a table of its own).
pub mod key_scope;
pub mod meta;
/// Providers added, edited or disabled in the app (`oauth::managed`).
pub mod providers;
/// Replaced and discarded tokens waiting to be revoked at the provider (`oauth::retire`).
pub mod revocations;
pub mod sessions;
pub mod users;
pub mod vault;
pub mod webhook_endpoints;
pub mod webhooks;

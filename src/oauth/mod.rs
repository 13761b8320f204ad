//! Everything OAuth: the provider catalog, the outbound HTTP client, the authorization flow
//! (Redirector → provider → Callback) and the token store.

pub mod access;
pub mod account;
pub mod flow;
pub mod http;
pub mod id_token;
pub mod keepalive;
pub mod managed;
pub mod metrics;
pub mod parameters;
pub mod preset_table;
pub mod providers;
pub mod proxy;
pub mod refresh;
pub mod retire;
pub mod revoke;
pub mod store;
pub mod tokens;

//! tokenvault: connect third-party OAuth 2.0 accounts and use them on a user's behalf.
//!
//! The layout is described in `docs/ARCHITECTURE.md`.

pub mod app;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod cache;
pub mod changes;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod oauth;
pub mod routes;
pub mod schedule;
pub mod state;
pub mod util;
pub mod vault;
pub mod web;
pub mod webhooks;

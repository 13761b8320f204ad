//! The integration tests: one test binary (`cargo test --test it`), one module per area. Each
//! module drives the app through Rocket's local client (`common::TestApp`) or runs the real binary
//! (`common::server`, the one harness that starts it on a free port; `common::cli` for commands).
//! The other two test binaries are `tests/browser/` (headless Chromium) and `tests/abuse/`.
//!
//! A new area is a new file here plus its `mod` line below. Tests share one process: pass
//! settings explicitly (a `Builder` key, a child's environment) instead of `std::env::set_var`,
//! and keep state per test (its own temp dir, database, fake provider and server).

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod api;
mod api_keys;
mod audit;
mod canary_crawl;
mod catalog_presets;
mod cli;
mod connect_flow;
mod console;
mod cors;
mod crash_safety;
mod demo_provider;
mod deploy;
mod faults;
mod fuzz_regressions;
mod health;
mod jobs;
mod logging;
mod mcp;
mod mcp_conformance;
mod multi_instance;
mod oauth_server;
mod oidc;
mod provider_accounts;
mod providers;
mod refresh;
mod revoke_presets;
mod settings_vault;
mod webhooks;

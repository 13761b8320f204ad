//! Real-browser end-to-end tests: headless Chromium, driven through chromedriver, uses tokenvault
//! the way a person does, against the real binary serving on a free port.
//!
//! Each test starts its own app (fresh data directory, keys and database; `cross_origin` starts a
//! second one as the provider on another site) and its own chromedriver with a fresh browser
//! profile, so the tests run in parallel. Without chromedriver or Chromium the
//! browser tests print one line and pass, unless `TOKENVAULT_REQUIRE_BROWSER=1` (CI) makes that a
//! failure. Screenshots of the main pages go to `target/screenshots/`, or to
//! `TOKENVAULT_SCREENSHOTS_DIR` when set (`docs/screenshots` refreshes the documentation's).

// Two files of `tests/common`: the `it` binary uses all of them (its dead-code check covers
// them); this suite uses a part.
#[allow(dead_code)]
#[path = "../common/binary.rs"]
mod binary;
mod harness;
#[allow(dead_code)]
#[path = "../common/node.rs"]
mod node;

mod account;
mod accounts;
mod admin;
mod connect;
mod console;
mod cross_origin;
mod headers;
mod mcp_sdk_oauth;
mod oauth_consent;
mod phone;
mod provider_accounts;
mod providers;
mod revocation;
mod sessions;
#[allow(dead_code)]
#[path = "../common/webhook_receiver.rs"]
mod webhook_receiver;
mod webhooks;

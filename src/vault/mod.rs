//! Secrets at rest: the AEAD cipher (XChaCha20-Poly1305 with a key ring) and the project vault.
//!
//! Every sealed value carries the id of the key that sealed it and is bound to associated data
//! naming what it belongs to (an [`Aad`]: `vault_entries/dropbox.client_secret`,
//! `connections/7/dropbox/access_token`…), so a ciphertext copied to another row does not open.

mod aad;
mod cipher;
pub mod rotation;
pub mod store;

pub use aad::Aad;

/// The `meta` row holding the audit log's chain key (sealed with [`Aad::AuditChainKey`]).
pub const AUDIT_CHAIN_KEY: &str = "audit_chain_key";
pub use cipher::{Cipher, DerivedKey, VaultError, KEY_LEN};

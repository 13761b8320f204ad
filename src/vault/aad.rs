//! What a sealed value belongs to: the associated data every seal and open is bound to.
//!
//! The cipher authenticates these bytes with the ciphertext, so a value copied to another row
//! (another user, service, column, path or flow) does not open. The strings are part of every
//! ciphertext already stored: their formats never change (see the golden test below).

use std::fmt;

/// The row (and column) a sealed value belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aad<'a> {
    /// A project vault entry, by path (`dropbox.client_secret`).
    VaultEntry(&'a str),
    /// A user's access token for an account at a service (`account`: the provider's account id,
    /// `""` when not known — the format of the tokens stored before accounts were).
    AccessToken { user_id: i64, service: &'a str, account: &'a str },
    /// A user's refresh token for an account at a service (`account` as for the access token).
    RefreshToken { user_id: i64, service: &'a str, account: &'a str },
    /// The PKCE verifier of an authorization flow in flight, by the SHA-256 of its state.
    PkceVerifier { state_hash: &'a str },
    /// The value in `meta` that tells whether the configured key opens this database.
    KeyCheck,
    /// The audit log's chain key in `meta` (a random key, sealed so that it survives key rotation).
    AuditChainKey,
    /// The signing secret (`whsec_…`) of a webhook endpoint edited on `/admin/webhooks`, by name.
    WebhookSecret(&'a str),
    /// The secret a rotation replaced, still signed with for a while, by endpoint name.
    WebhookPreviousSecret(&'a str),
    /// A token tokenvault replaced or threw away, waiting in `token_revocations` to be revoked at
    /// the provider: whose it was (user, service, account) and which (`access_token` or
    /// `refresh_token`).
    RetiredToken { user_id: i64, service: &'a str, account: &'a str, column: &'a str },
}

impl fmt::Display for Aad<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Aad::VaultEntry(path) => write!(f, "vault_entries/{path}"),
            // The account last: a service name has no `/`, so no two (service, account) pairs
            // write the same text, and an unknown account writes the original format.
            Aad::AccessToken { user_id, service, account } => {
                write!(f, "connections/{user_id}/{service}/access_token")?;
                if !account.is_empty() {
                    write!(f, "/{account}")?;
                }
                Ok(())
            }
            Aad::RefreshToken { user_id, service, account } => {
                write!(f, "connections/{user_id}/{service}/refresh_token")?;
                if !account.is_empty() {
                    write!(f, "/{account}")?;
                }
                Ok(())
            }
            Aad::PkceVerifier { state_hash } => write!(f, "oauth_flows/{state_hash}/pkce_verifier"),
            Aad::KeyCheck => f.write_str("meta/vault_key_check"),
            Aad::AuditChainKey => f.write_str("meta/audit_chain_key"),
            Aad::WebhookSecret(name) => write!(f, "webhook_endpoints/{name}/secret"),
            Aad::WebhookPreviousSecret(name) => write!(f, "webhook_endpoints/{name}/previous_secret"),
            Aad::RetiredToken { user_id, service, account, column } => {
                write!(f, "token_revocations/{user_id}/{service}/{column}")?;
                if !account.is_empty() {
                    write!(f, "/{account}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Aad;

    /// The formats of every ciphertext already stored: changing one would make those values
    /// unreadable.
    #[test]
    fn formats_are_those_of_the_stored_ciphertexts() {
        let golden = [
            (Aad::VaultEntry("dropbox.client_secret"), "vault_entries/dropbox.client_secret"),
            (Aad::AccessToken { user_id: 7, service: "dropbox", account: "" }, "connections/7/dropbox/access_token"),
            (Aad::RefreshToken { user_id: 7, service: "dropbox", account: "" }, "connections/7/dropbox/refresh_token"),
            (
                Aad::AccessToken { user_id: 7, service: "dropbox", account: "dbid:AAH4f9" },
                "connections/7/dropbox/access_token/dbid:AAH4f9",
            ),
            (
                Aad::RefreshToken { user_id: 7, service: "dropbox", account: "dbid:AAH4f9" },
                "connections/7/dropbox/refresh_token/dbid:AAH4f9",
            ),
            (Aad::PkceVerifier { state_hash: "ab12" }, "oauth_flows/ab12/pkce_verifier"),
            (Aad::KeyCheck, "meta/vault_key_check"),
            (Aad::AuditChainKey, "meta/audit_chain_key"),
            (Aad::WebhookSecret("ops"), "webhook_endpoints/ops/secret"),
            (Aad::WebhookPreviousSecret("ops"), "webhook_endpoints/ops/previous_secret"),
            (
                Aad::RetiredToken { user_id: 7, service: "dropbox", account: "", column: "refresh_token" },
                "token_revocations/7/dropbox/refresh_token",
            ),
            (
                Aad::RetiredToken { user_id: 7, service: "dropbox", account: "dbid:AAH4f9", column: "access_token" },
                "token_revocations/7/dropbox/access_token/dbid:AAH4f9",
            ),
        ];
        for (aad, text) in golden {
            assert_eq!(aad.to_string(), text);
        }
    }
}

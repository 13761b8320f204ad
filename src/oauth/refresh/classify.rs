//! What the provider's answer to a refresh means for the connection (a pure function).

use super::health::reason;
use crate::oauth::tokens::{TokenError, TokenSet};

/// The verdict on a refresh answer.
#[derive(Debug)]
pub enum Verdict {
    /// New tokens to store.
    Refreshed(TokenSet),
    /// The grant is dead (`invalid_grant`): the user must authorize again; why.
    ReconnectRequired(Dead),
    /// The provider refused tokenvault's client credentials: an administrator's problem; the
    /// tokens are kept.
    AdminProblem(TokenError),
    /// Anything else (5xx, timeout, network, garbage): the tokens are kept, it is retried.
    Transient(TokenError),
}

impl Verdict {
    /// The `outcome` label of the refresh metric.
    pub fn metric(&self) -> &'static str {
        match self {
            Verdict::Refreshed(_) => "ok",
            Verdict::ReconnectRequired(_) => "invalid_grant",
            Verdict::AdminProblem(_) => "client_error",
            Verdict::Transient(_) => "transient_error",
        }
    }
}

/// Why a connection needs a reconnect: the `status_reason` code and the event's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dead {
    pub reason: &'static str,
    pub detail: &'static str,
}

pub const INVALID_GRANT: Dead =
    Dead { reason: reason::INVALID_GRANT, detail: "the provider no longer accepts the refresh token (invalid_grant)" };
pub const REVOKED: Dead =
    Dead { reason: reason::REVOKED, detail: "the provider says the grant was revoked (invalid_grant)" };
pub const NO_REFRESH_TOKEN: Dead =
    Dead { reason: reason::NO_REFRESH_TOKEN, detail: "no refresh token to renew access" };
pub const REFRESH_TOKEN_EXPIRED: Dead = Dead {
    reason: reason::REFRESH_TOKEN_EXPIRED,
    detail: "the refresh token expired (the provider said when); nothing was sent to the provider",
};

pub fn classify(answer: Result<TokenSet, TokenError>) -> Verdict {
    match answer {
        Ok(set) => Verdict::Refreshed(set),
        Err(TokenError::GrantRevoked) => Verdict::ReconnectRequired(REVOKED),
        Err(e) if e.is_invalid_grant() => Verdict::ReconnectRequired(INVALID_GRANT),
        Err(e) if e.is_client_error() => Verdict::AdminProblem(e),
        Err(e) => Verdict::Transient(e),
    }
}

#[cfg(test)]
mod tests {
    use super::{classify, Verdict};
    use crate::oauth::tokens::{TokenError, TokenSet};
    use crate::util::Secret;

    #[test]
    fn answers_are_classified() {
        let set = TokenSet {
            access_token: Secret::from("a"),
            refresh_token: None,
            token_type: "Bearer".into(),
            scopes: vec![],
            expires_at: None,
            obtained_at: 0,
            refresh_expires_at: None,
        };
        let verdict = |r| {
            let v = classify(r);
            (v.metric(), matches!(v, Verdict::Refreshed(_) | Verdict::ReconnectRequired(_)))
        };
        let rejected = |code: &str| Err(TokenError::Rejected(code.into()));
        assert_eq!(verdict(Ok(set)), ("ok", true));
        assert_eq!(verdict(rejected("invalid_grant")), ("invalid_grant", true));
        match classify(Err(TokenError::GrantRevoked)) {
            Verdict::ReconnectRequired(dead) => assert_eq!(dead.reason, "revoked"),
            other => panic!("{other:?}"),
        }
        match classify(rejected("invalid_grant")) {
            Verdict::ReconnectRequired(dead) => assert_eq!(dead.reason, "invalid_grant"),
            other => panic!("{other:?}"),
        }
        assert_eq!(verdict(rejected("invalid_client")), ("client_error", false));
        assert_eq!(verdict(rejected("unauthorized_client")), ("client_error", false));
        assert_eq!(verdict(rejected("invalid_scope")), ("transient_error", false));
        assert_eq!(verdict(Err(TokenError::Timeout)), ("transient_error", false));
        assert_eq!(verdict(Err(TokenError::Network("x".into()))), ("transient_error", false));
        assert_eq!(verdict(Err(TokenError::InvalidResponse("x".into()))), ("transient_error", false));
        assert_eq!(verdict(Err(TokenError::RateLimited(Some(30)))), ("transient_error", false));
    }
}

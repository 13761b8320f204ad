//! What an API key may do: the services it may use, its capabilities and its expiry. A key
//! without limits (every key made before scopes existed, and any made without them) may do
//! everything its user may.

use crate::db::models::api_keys::ApiKey;
use crate::error::AppError;

crate::db::text_enum::text_enum! {
    /// One thing an API key may be allowed to do (`api_keys.capabilities`, space-separated).
    pub enum Capability {
        /// `GET /api/v1/connections`.
        ConnectionsRead = "connections:read",
        /// `GET /api/v1/services/<service>/token`.
        TokenRead = "token:read",
        /// `/api/v1/services/<service>/proxy/…`, every method.
        Proxy = "proxy",
        /// `/api/v1/services/<service>/proxy/…` with `GET` and `HEAD` only (`proxy` includes it).
        ProxyRead = "proxy:read",
    }
}

/// The longest expiry a key may be given (ten years).
const MAX_EXPIRY_SECS: i64 = 10 * 365 * 86_400;

/// A key's limits. `None` in a field means unrestricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    pub services: Option<Vec<String>>,
    pub capabilities: Option<Vec<Capability>>,
    pub expires_at: Option<i64>,
}

impl KeyScope {
    /// The limits stored with a key. An unknown capability in the row (written by a newer
    /// version) is dropped: the key may do less, never more.
    pub fn of(key: &ApiKey) -> KeyScope {
        KeyScope {
            services: key.services.as_deref().map(|s| s.split_whitespace().map(str::to_string).collect()),
            capabilities: key
                .capabilities
                .as_deref()
                .map(|c| c.split_whitespace().filter_map(|c| c.parse::<Capability>().ok()).collect()),
            expires_at: key.expires_at,
        }
    }

    /// Limits from what a user or an operator typed: service names (checked with `known`),
    /// capability names and an expiry such as `30d` (see [`parse_expiry`]), from `now`. Empty
    /// lists mean unrestricted, but an empty name in a list is refused (a script passing
    /// `--service "$UNSET"` must not get a key for every service). `Err` is a message for the user.
    pub fn from_input(
        services: &[String],
        capabilities: &[String],
        expires: Option<&str>,
        known: impl Fn(&str) -> bool,
        now: i64,
    ) -> Result<KeyScope, String> {
        let mut names: Vec<String> = Vec::new();
        if services.iter().chain(capabilities).any(|v| v.trim().is_empty()) {
            return Err("A service or capability was given but empty.".into());
        }
        for s in services.iter().map(|s| s.trim()) {
            if !known(s) {
                return Err(format!("There is no service named \"{}\".", s.chars().take(40).collect::<String>()));
            }
            if !names.iter().any(|n| n == s) {
                names.push(s.to_string());
            }
        }
        let mut caps: Vec<Capability> = Vec::new();
        for c in capabilities.iter().map(|c| c.trim()) {
            let cap = c.parse::<Capability>().map_err(|_| {
                let all: Vec<_> = Capability::ALL.iter().map(|c| c.as_str()).collect();
                format!(
                    "\"{}\" is not a capability; choose from {}.",
                    c.chars().take(40).collect::<String>(),
                    all.join(", ")
                )
            })?;
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caps.sort_by_key(|c| Capability::ALL.iter().position(|a| a == c));
        let expires_at = match expires.map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => Some(now + parse_expiry(e)?),
            None => None,
        };
        Ok(KeyScope {
            services: (!names.is_empty()).then_some(names),
            capabilities: (!caps.is_empty()).then_some(caps),
            expires_at,
        })
    }

    /// The `services` column.
    pub fn services_column(&self) -> Option<String> {
        self.services.as_ref().map(|s| s.join(" "))
    }

    /// The `capabilities` column.
    pub fn capabilities_column(&self) -> Option<String> {
        self.capabilities.as_ref().map(|c| c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" "))
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now)
    }

    pub fn allows_service(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.iter().any(|n| n == service))
    }

    pub fn allows_capability(&self, capability: Capability) -> bool {
        self.capabilities.as_ref().is_none_or(|c| {
            c.contains(&capability) || capability == Capability::ProxyRead && c.contains(&Capability::Proxy)
        })
    }

    /// `Ok` when the key may use `capability` (on `service`, when one is named); else the
    /// `forbidden_scope` error saying what it lacks.
    pub fn require(&self, capability: Capability, service: Option<&str>) -> Result<(), AppError> {
        if !self.allows_capability(capability) {
            return Err(AppError::ForbiddenScope(format!("This API key may not use {capability}.")));
        }
        match service {
            Some(s) if !self.allows_service(s) => {
                Err(AppError::ForbiddenScope(format!("This API key may not be used for {s}.")))
            }
            _ => Ok(()),
        }
    }

    /// "all services" or the list.
    pub fn services_text(&self) -> String {
        match &self.services {
            None => "all services".into(),
            Some(s) => s.join(", "),
        }
    }

    /// "full access" or the list.
    pub fn capabilities_text(&self) -> String {
        match &self.capabilities {
            None => "full access".into(),
            Some(c) => c.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "),
        }
    }
}

/// A lifetime such as `30d`, `12h`, `2w` or `90m` (a number and a unit), in seconds: at least
/// one minute, at most ten years.
pub fn parse_expiry(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "\"{}\" is not a lifetime: write a number and a unit, as 30d, 12h, 2w or 90m.",
            text.chars().take(20).collect::<String>()
        )
    };
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit.trim() {
        "m" | "min" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit_secs).filter(|s| (60..=MAX_EXPIRY_SECS).contains(s));
    secs.ok_or_else(|| "A key's lifetime must be between one minute and ten years.".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(s: &str) -> bool {
        ["demo", "dropbox"].contains(&s)
    }

    #[test]
    fn capabilities_are_stored_as_their_names() {
        let names: Vec<_> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names, ["connections:read", "token:read", "proxy", "proxy:read"]);
    }

    #[test]
    fn no_limits_means_full_access_and_limits_are_each_enforced() {
        let open = KeyScope::default();
        for cap in Capability::ALL {
            assert!(open.require(*cap, Some("anything")).is_ok());
        }
        let s = KeyScope::from_input(&["demo".into()], &["token:read".into()], None, known, 0).unwrap();
        assert!(s.require(Capability::TokenRead, Some("demo")).is_ok());
        let err = s.require(Capability::TokenRead, Some("dropbox")).unwrap_err();
        assert_eq!((err.status().code, err.code()), (403, "forbidden_scope"));
        assert!(err.user_message().contains("dropbox"));
        let err = s.require(Capability::Proxy, Some("demo")).unwrap_err();
        assert!(err.user_message().contains("proxy"));
        let read = KeyScope::from_input(&[], &["proxy:read".into()], None, known, 0).unwrap();
        assert!(read.require(Capability::ProxyRead, Some("demo")).is_ok());
        assert!(read.require(Capability::Proxy, Some("demo")).is_err(), "read methods only");
        let all = KeyScope::from_input(&[], &["proxy".into()], None, known, 0).unwrap();
        assert!(all.require(Capability::ProxyRead, Some("demo")).is_ok(), "proxy includes proxy:read");
        assert!(s.require(Capability::ConnectionsRead, None).is_err());
    }

    #[test]
    fn input_is_checked_deduplicated_and_round_trips_through_the_columns() {
        let s = KeyScope::from_input(
            &["dropbox".into(), " demo ".into(), "dropbox".into()],
            &["proxy".into(), "token:read".into(), "proxy".into()],
            Some("30d"),
            known,
            1_000,
        )
        .unwrap();
        assert_eq!(s.services_column().as_deref(), Some("dropbox demo"));
        assert_eq!(s.capabilities_column().as_deref(), Some("token:read proxy"));
        assert_eq!(s.expires_at, Some(1_000 + 30 * 86_400));
        assert!(!s.is_expired(1_000 + 30 * 86_400 - 1) && s.is_expired(1_000 + 30 * 86_400));

        let row = ApiKey {
            id: 1,
            user_id: 1,
            name: "k".into(),
            prefix: "tvk_".into(),
            key_hash: "h".into(),
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            services: s.services_column(),
            capabilities: Some("token:read from:the:future proxy".into()),
            expires_at: s.expires_at,
            last_used_ip: None,
        };
        let read = KeyScope::of(&row);
        assert_eq!(read, s, "an unknown stored capability is dropped: less access, never more");

        assert!(KeyScope::from_input(&["nope".into()], &[], None, known, 0).unwrap_err().contains("nope"));
        assert!(KeyScope::from_input(&[], &["admin".into()], None, known, 0).unwrap_err().contains("token:read"));
        assert_eq!(KeyScope::from_input(&[], &[], Some(""), known, 0).unwrap(), KeyScope::default());
        for empty in [vec![String::new()], vec!["demo".into(), " ".into()]] {
            assert!(KeyScope::from_input(&empty, &[], None, known, 0).unwrap_err().contains("empty"));
            assert!(KeyScope::from_input(&[], &empty, None, known, 0).unwrap_err().contains("empty"));
        }
    }

    #[test]
    fn lifetimes() {
        assert_eq!(parse_expiry("30d"), Ok(30 * 86_400));
        assert_eq!(parse_expiry("12h"), Ok(12 * 3_600));
        assert_eq!(parse_expiry("2w"), Ok(14 * 86_400));
        assert_eq!(parse_expiry("90m"), Ok(90 * 60));
        for bad in ["", "d", "30", "30x", "-1d", "0d", "30s", "99999999999999999999d", "3651d"] {
            assert!(parse_expiry(bad).is_err(), "{bad:?} is refused");
        }
    }
}

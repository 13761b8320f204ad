//! Clients of tokenvault's authorization server: registered by an administrator (confidential,
//! with a secret shown once and stored as its SHA-256, or public), registered dynamically (RFC
//! 7591; public unless it asks for a secret; deleted when unused after [`UNUSED_REGISTRATION`]),
//! or named by a Client ID Metadata Document (`metadata_doc`). Redirect URIs are matched exactly,
//! except that the port of a loopback IP literal may vary (RFC 8252 §7.3).

use url::Url;

use crate::changes::{Actor, Change, ClientSubject, Effects, GrantEnd, Ledger, Tx};
use crate::db::models::authz::{self as model, Client, ClientKind, NewClient};
use crate::db::{Conn, Db};
use crate::error::{AppError, AppResult};
use crate::util::{ct_eq, now, random_token, sha256_hex, Secret};

/// Client ids of registered clients: `tvcl_` + 128 random bits.
pub const CLIENT_PREFIX: &str = "tvcl_";
/// Client secrets: `tvcs_` + 256 random bits.
pub const SECRET_PREFIX: &str = "tvcs_";
/// A dynamic registration never used within this many seconds is deleted.
pub const UNUSED_REGISTRATION: i64 = 86_400;
/// The most redirect URIs a client may have.
pub const MAX_REDIRECT_URIS: usize = 10;

/// Whether `host` is a loopback host (an IP literal, or `localhost`).
fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A redirect URI a client may register: absolute, no fragment, and https, or http on a loopback
/// host (a native app, RFC 8252 §7.3), or a private-use scheme with a dot (`com.example.app:/cb`,
/// §7.1). `Err`: why not, for the client or the administrator.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    let url = Url::parse(uri).map_err(|_| format!("not an absolute URI: {}", crate::util::capped(uri, 80)))?;
    if url.fragment().is_some() {
        return Err("a redirect URI must not have a fragment".into());
    }
    if uri.chars().any(char::is_whitespace) || uri.len() > 2000 {
        return Err("a redirect URI must be at most 2000 characters, without spaces".into());
    }
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        "http" => Err("plain http is allowed only for loopback redirect URIs (127.0.0.1, [::1], localhost)".into()),
        "javascript" | "data" | "file" | "vbscript" | "blob" => Err("this scheme is not allowed".into()),
        scheme if scheme.contains('.') => Ok(()),
        _ => Err("use https, http on a loopback host, or a private-use scheme such as com.example.app:/cb".into()),
    }
}

/// Whether `given` is one of the client's redirect URIs: the same string, or — for an http URI on a
/// loopback IP literal — the same but for the port (RFC 8252 §7.3).
pub fn redirect_matches(client: &Client, given: &str) -> bool {
    client.redirect_uris().any(|registered| {
        if registered == given {
            return true;
        }
        let (Ok(r), Ok(g)) = (Url::parse(registered), Url::parse(given)) else { return false };
        let literal = matches!(r.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(r.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        if r.scheme() != "http" || !literal || g.scheme() != "http" {
            return false;
        }
        let (mut r, mut g) = (r, g);
        let _ = r.set_port(None);
        let _ = g.set_port(None);
        r == g
    })
}

/// The host shown beside a client's name on the consent page (never a client-chosen name alone).
pub fn redirect_host(uri: &str) -> String {
    match Url::parse(uri) {
        Ok(u) => match u.host_str() {
            Some(h) => h.to_string(),
            None => format!("{}:", u.scheme()),
        },
        Err(_) => "?".into(),
    }
}

/// A client just registered, and its secret (shown once) when it is confidential.
pub struct Registered {
    pub client: Client,
    pub secret: Option<Secret>,
}

/// What a registration says: how, by whom and from where (a dynamic registration's address).
pub struct Registration<'a> {
    pub kind: ClientKind,
    pub name: &'a str,
    pub redirect_uris: &'a [String],
    pub confidential: bool,
    pub by: Actor,
    pub address: Option<std::net::IpAddr>,
}

/// Register a client (an administrator's, or a dynamic registration), recording
/// [`Change::ClientRegistered`] in the unit of work `tx`.
pub fn register(tx: &mut Tx<'_>, r: Registration<'_>) -> AppResult<Registered> {
    let name = r.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(AppError::BadRequest("Give the client a name of 1 to 100 characters.".into()));
    }
    if r.redirect_uris.is_empty() || r.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(AppError::BadRequest(format!("Give 1 to {MAX_REDIRECT_URIS} redirect URIs.")));
    }
    for uri in r.redirect_uris {
        check_redirect_uri(uri).map_err(AppError::BadRequest)?;
    }
    let client_id = format!("{CLIENT_PREFIX}{}", random_token(16));
    let secret = r.confidential.then(|| format!("{SECRET_PREFIX}{}", random_token(32)));
    let hash = secret.as_deref().map(sha256_hex);
    let expires_at = (r.kind == ClientKind::Dynamic).then(|| now() + UNUSED_REGISTRATION);
    let address = r.address.map(|a| a.to_string());
    let client = model::insert_client(
        tx.conn(),
        &NewClient {
            client_id: &client_id,
            kind: r.kind,
            name,
            redirect_uris: &r.redirect_uris.join(" "),
            secret_hash: hash.as_deref(),
            created_at: now(),
            expires_at,
            registered_from: address.as_deref(),
        },
    )?;
    let subject = ClientSubject::of(&client);
    tx.record(Change::ClientRegistered {
        by: r.by,
        client: subject,
        confidential: r.confidential,
        address: r.address,
    })?;
    Ok(Registered { client, secret: secret.map(crate::util::secret) })
}

/// Delete client `pk` (an administrator's act): its live grants revoked, each recorded as
/// [`Change::GrantRevoked`], then the client deleted with its grants, codes and tokens, in one
/// unit of work. Its tokens stop working at the next request on every instance (each check
/// reads the grant). `false`: no such client.
pub async fn delete(db: &Db, ledger: Ledger, effects: Effects<'_>, pk: i64, by: Actor) -> AppResult<bool> {
    let deleted = db
        .write(ledger, move |tx| {
            let Some(client) = model::client_by_pk(tx.conn(), pk)? else { return Ok(false) };
            let grants = model::live_grants_for_client(tx.conn(), pk, now())?;
            for g in &grants {
                if model::revoke_grant(tx.conn(), g.id, None, now())?.is_some() {
                    let grant = crate::authz::grants::subject(g, &client);
                    tx.record(Change::GrantRevoked { by: by.clone(), grant, why: GrantEnd::ClientDeleted })?;
                }
            }
            model::delete_client(tx.conn(), pk)?;
            let client = ClientSubject::of(&client);
            tx.record(Change::ClientDeleted { by, client, grants_revoked: grants.len() })?;
            Ok(true)
        })
        .await?;
    Ok(deleted.settle(effects))
}

/// Why a client could not be authenticated at the token, revocation or introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthError {
    /// No such client, a wrong secret, or a confidential client without one (401 `invalid_client`).
    Invalid,
}

/// The client a request authenticates as: a confidential client must present its secret
/// (`client_secret_basic` or `client_secret_post`); a public client names itself and presents none.
pub fn authenticate(conn: &mut Conn, client: Option<Client>, secret: Option<&str>) -> Result<Client, ClientAuthError> {
    let Some(client) = client else { return Err(ClientAuthError::Invalid) };
    match (&client.secret_hash, secret) {
        (Some(hash), Some(given)) if ct_eq(&sha256_hex(given), hash) => {}
        (None, None) => {}
        _ => return Err(ClientAuthError::Invalid),
    }
    let _ = model::touch_client(conn, client.id, now());
    Ok(client)
}

/// Dynamic registrations allowed per client address per hour.
pub const REGISTRATIONS_PER_HOUR: u32 = 10;
/// Addresses the limiter remembers at most (beyond: the oldest windows are dropped).
const LIMITER_CAPACITY: usize = 10_000;

/// The rate limit of `/oauth/register`: [`REGISTRATIONS_PER_HOUR`] per client address (an IPv6
/// address counted per /64), in memory (per instance), at most [`LIMITER_CAPACITY`] addresses: when
/// that many have registered within the hour, a new address is refused until a window ends.
#[derive(Default)]
pub struct RegistrationLimiter {
    windows: std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, (i64, u32)>>,
}

/// The key an address is counted under: an IPv6 address by its /64.
fn address_key(ip: Option<std::net::IpAddr>) -> Option<std::net::IpAddr> {
    match ip {
        Some(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            Some(std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
        }
        Some(std::net::IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4),
        other => other,
    }
}

impl RegistrationLimiter {
    /// Whether one more registration from `ip` is allowed at `now` (and count it).
    pub fn allow(&self, ip: Option<std::net::IpAddr>, now: i64) -> bool {
        let ip = address_key(ip);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() >= LIMITER_CAPACITY && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| *start > now - 3600);
            if windows.len() >= LIMITER_CAPACITY {
                return false;
            }
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if entry.0 <= now - 3600 {
            *entry = (now, 0);
        }
        if entry.1 >= REGISTRATIONS_PER_HOUR {
            return false;
        }
        entry.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_limited_per_address_per_hour() {
        let l = RegistrationLimiter::default();
        let a = Some(std::net::IpAddr::from([192, 0, 2, 1]));
        for _ in 0..REGISTRATIONS_PER_HOUR {
            assert!(l.allow(a, 1000));
        }
        assert!(!l.allow(a, 1000));
        assert!(l.allow(Some(std::net::IpAddr::from([192, 0, 2, 2])), 1000), "another address");
        assert!(l.allow(a, 1000 + 3600), "the next hour");
        let v6 = |last: u16| Some(std::net::IpAddr::from([0x2001, 0xdb8, 1, 2, 3, 4, 5, last]));
        for i in 0..REGISTRATIONS_PER_HOUR as u16 {
            assert!(l.allow(v6(i), 1000));
        }
        assert!(!l.allow(v6(999), 1000), "an IPv6 /64 counts as one address");
        let full = RegistrationLimiter::default();
        for i in 0..LIMITER_CAPACITY as u32 {
            assert!(full.allow(Some(std::net::IpAddr::from(i.to_be_bytes())), 1000));
        }
        assert!(!full.allow(Some(std::net::IpAddr::from([203, 0, 113, 1])), 1000), "the map is bounded");
        assert!(full.allow(Some(std::net::IpAddr::from([203, 0, 113, 1])), 1000 + 3600), "until windows end");
        assert!(full.windows.lock().unwrap().len() <= LIMITER_CAPACITY);
    }

    fn client(uris: &str) -> Client {
        Client {
            id: 1,
            client_id: "c".into(),
            kind: ClientKind::Admin,
            name: "n".into(),
            redirect_uris: uris.into(),
            secret_hash: None,
            created_at: 0,
            expires_at: None,
            last_used_at: None,
            registered_from: None,
        }
    }

    #[test]
    fn redirect_uris_match_exactly_but_for_loopback_ports() {
        let c = client("https://app.example/cb http://127.0.0.1:4000/cb http://[::1]/cb com.example.app:/cb");
        assert!(redirect_matches(&c, "https://app.example/cb"));
        for bad in [
            "https://app.example/cb/",
            "https://app.example/cb?x=1",
            "https://app.example/CB",
            "https://app.example.evil/cb",
            "http://app.example/cb",
            "http://127.0.0.1:4000/other",
            "http://127.0.0.2:4000/cb",
            "http://localhost:4000/cb",
            "https://127.0.0.1:4000/cb",
        ] {
            assert!(!redirect_matches(&c, bad), "{bad}");
        }
        assert!(redirect_matches(&c, "http://127.0.0.1:53111/cb"), "the port of a loopback literal may vary");
        assert!(redirect_matches(&c, "http://[::1]:8080/cb"));
        assert!(redirect_matches(&c, "com.example.app:/cb"));
        assert!(!redirect_matches(&client("http://localhost:4000/cb"), "http://localhost:4001/cb"), "names: exact");
    }

    #[test]
    fn redirect_uris_that_may_be_registered() {
        for ok in ["https://a.example/cb", "http://127.0.0.1/cb", "http://localhost:3000/x", "com.example.app:/cb"] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in ["http://a.example/cb", "https://a.example/cb#f", "javascript:alert(1)", "cb", "myapp:/cb"] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        assert_eq!(redirect_host("https://app.example:8443/cb"), "app.example");
        assert_eq!(redirect_host("com.example.app:/cb"), "com.example.app:");
    }
}

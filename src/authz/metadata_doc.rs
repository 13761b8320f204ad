//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document, as MCP 2025-11-25
//! uses them): a `client_id` that is an https URL names a JSON document saying the client's name
//! and redirect URIs. It is fetched under the egress rules of webhook URLs set on the admin page —
//! https and public addresses only (checked on the URL, and again by the resolver when the
//! connection is made), unless the operator allows private addresses (`webhook_private_urls`, on
//! in `debug`), where http on a loopback host is accepted too — with a small size cap
//! ([`MAX_DOCUMENT_BYTES`]) and timeout ([`FETCH_TIMEOUT_SECS`]), no redirects, and cached in
//! `authz_clients` for as long as its `Cache-Control: max-age` says (between
//! [`MIN_CACHE_SECS`] and [`MAX_CACHE_SECS`], [`DEFAULT_CACHE_SECS`] without one). Its
//! `client_id` must be the URL it was fetched from. Such clients are public (no secret).

use std::sync::Arc;

use serde::Deserialize;
use url::Url;

use super::clients::check_redirect_uri;
use crate::changes::{Actor, Change, ClientSubject};
use crate::config::HttpLimits;
use crate::db::models::authz::{self as model, Client, ClientKind, NewClient};
use crate::error::AppResult;
use crate::oauth::http::Outbound;
use crate::state::AppState;
use crate::util::now;

pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
pub const FETCH_TIMEOUT_SECS: u64 = 5;
pub const MIN_CACHE_SECS: i64 = 60;
pub const MAX_CACHE_SECS: i64 = 86_400;
pub const DEFAULT_CACHE_SECS: i64 = 3_600;
/// Metadata documents fetched at once, at most (any visitor can make the server fetch one).
pub const MAX_CONCURRENT_FETCHES: usize = 4;

static FETCHES: rocket::tokio::sync::Semaphore = rocket::tokio::sync::Semaphore::const_new(MAX_CONCURRENT_FETCHES);

/// Whether `client_id` names a metadata document (rather than a registered client).
pub fn is_document_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// Whether `url` may be fetched: https with a path (draft §3), no credentials or fragment; with
/// `private_allowed`, http on a loopback host too; without it, a public host.
pub fn check_url(client_id: &str, private_allowed: bool) -> Result<Url, String> {
    let url = Url::parse(client_id).map_err(|_| "the client_id is not a URL".to_string())?;
    if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
        return Err("a client_id URL must not have a fragment or credentials".into());
    }
    if url.path() == "/" || url.path().is_empty() {
        return Err("a client_id URL must have a path".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if private_allowed && loopback => {}
        _ => return Err("a client_id URL must be https".into()),
    }
    if !private_allowed {
        crate::webhooks::egress::check_public_host(&url)?;
    }
    Ok(url)
}

#[derive(Deserialize)]
struct Document {
    client_id: String,
    client_name: Option<String>,
    redirect_uris: Vec<String>,
    token_endpoint_auth_method: Option<String>,
}

/// What a fetched document says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// Seconds it may be cached.
    pub max_age: i64,
}

/// How long an answer with these headers may be cached.
fn cache_secs(headers: &reqwest::header::HeaderMap) -> i64 {
    let Some(cc) = headers.get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()) else {
        return DEFAULT_CACHE_SECS;
    };
    let mut secs = DEFAULT_CACHE_SECS;
    for directive in cc.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            secs = MIN_CACHE_SECS;
        } else if let Some(v) = lower.strip_prefix("max-age=") {
            secs = v.trim_matches('"').parse().unwrap_or(DEFAULT_CACHE_SECS);
        }
    }
    secs.clamp(MIN_CACHE_SECS, MAX_CACHE_SECS)
}

/// Fetch and check the document at `url` (at most [`MAX_CONCURRENT_FETCHES`] at once; one that
/// waits longer than the fetch timeout for its turn is refused).
pub async fn fetch(limits: &HttpLimits, url: &Url, private_allowed: bool) -> Result<Fetched, String> {
    let wait = std::time::Duration::from_secs(FETCH_TIMEOUT_SECS.min(limits.timeout));
    let _turn = match rocket::tokio::time::timeout(wait, FETCHES.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => return Err("tokenvault is fetching too many client metadata documents; try again".into()),
    };
    let capped = HttpLimits {
        timeout: FETCH_TIMEOUT_SECS.min(limits.timeout),
        connect_timeout: FETCH_TIMEOUT_SECS.min(limits.connect_timeout),
        max_response_bytes: MAX_DOCUMENT_BYTES,
    };
    let http = if private_allowed {
        Outbound::new(&capped)
    } else {
        Outbound::with_resolver(&capped, Arc::new(crate::webhooks::egress::PublicOnly))
    }?;
    let request = http.client().get(url.clone()).header(reqwest::header::ACCEPT, "application/json");
    let (status, headers, body) = http.send(request).await.map_err(|e| match e {
        crate::oauth::http::HttpError::TooLarge(_) => {
            format!("the client metadata document is larger than {MAX_DOCUMENT_BYTES} bytes")
        }
        crate::oauth::http::HttpError::Timeout => "the client metadata document did not arrive in time".into(),
        other => format!("the client metadata document could not be fetched: {other}"),
    })?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("the client metadata document answered HTTP {}", status.as_u16()));
    }
    let doc: Document =
        serde_json::from_slice(&body).map_err(|_| "the client metadata document is not valid JSON metadata")?;
    if doc.client_id != url.as_str() {
        return Err("the client metadata document's client_id is not its URL".into());
    }
    if doc.token_endpoint_auth_method.as_deref().is_some_and(|m| m != "none") {
        return Err("only public clients (token_endpoint_auth_method none) may use a metadata document".into());
    }
    if doc.redirect_uris.is_empty() || doc.redirect_uris.len() > super::clients::MAX_REDIRECT_URIS {
        return Err("the client metadata document must list 1 to 10 redirect_uris".into());
    }
    for uri in &doc.redirect_uris {
        check_redirect_uri(uri)?;
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let name = doc.client_name.map(|n| n.trim().chars().take(100).collect::<String>()).filter(|n| !n.is_empty());
    Ok(Fetched { name: name.unwrap_or(host), redirect_uris: doc.redirect_uris, max_age: cache_secs(&headers) })
}

/// The client `client_id` (a document URL) names: the cached copy while it is fresh, else the
/// document fetched again and cached. `Ok(Err(why))`: the document is refused or unreachable.
pub async fn resolve(app: &AppState, private_allowed: bool, client_id: &str) -> AppResult<Result<Client, String>> {
    let id = client_id.to_string();
    let cached = app.db.run(move |conn| Ok(model::find_client(conn, &id)?)).await?;
    if let Some(c) = &cached {
        if c.kind != ClientKind::Metadata {
            return Ok(Err("this client_id is not a metadata document's".into()));
        }
        if c.expires_at.is_some_and(|e| e > now()) {
            return Ok(Ok(c.clone()));
        }
    }
    let url = match check_url(client_id, private_allowed) {
        Ok(url) => url,
        Err(why) => return Ok(Err(why)),
    };
    let fetched = match fetch(&app.settings.http, &url, private_allowed).await {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    let id = client_id.to_string();
    let client = app
        .db
        .write(app.ledger(), move |tx| {
            let uris = fetched.redirect_uris.join(" ");
            let expires_at = now() + fetched.max_age;
            if let Some(c) = model::find_client(tx.conn(), &id)? {
                model::refresh_metadata_client(tx.conn(), c.id, &fetched.name, &uris, expires_at)?;
                return Ok(model::client_by_pk(tx.conn(), c.id)?.unwrap_or(c));
            }
            let new = NewClient {
                client_id: &id,
                kind: ClientKind::Metadata,
                name: &fetched.name,
                redirect_uris: &uris,
                secret_hash: None,
                created_at: now(),
                expires_at: Some(expires_at),
                registered_from: None,
            };
            let client = model::insert_client(tx.conn(), &new)?;
            // First seen: a client known from now on (a refreshed copy is not a new one).
            let subject = ClientSubject::of(&client);
            tx.record(Change::ClientRegistered {
                by: Actor::System,
                client: subject,
                confidential: false,
                address: None,
            })?;
            Ok(client)
        })
        .await?
        .settle(app.effects());
    Ok(Ok(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_urls_follow_the_webhook_egress_rules() {
        assert!(check_url("https://agent.example/client.json", false).is_ok());
        for bad in [
            "http://agent.example/client.json",
            "https://agent.example/",
            "https://127.0.0.1/client.json",
            "https://10.0.0.1/c.json",
            "https://localhost/c.json",
            "https://u:p@agent.example/c.json",
            "https://agent.example/c.json#x",
            "http://127.0.0.1:9/c.json",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(
            check_url("http://127.0.0.1:9/c.json", true).is_ok(),
            "loopback http where private addresses are allowed"
        );
        assert!(check_url("http://agent.example/c.json", true).is_err(), "http only on loopback");
    }

    #[test]
    fn cache_lifetimes_follow_cache_control_within_bounds() {
        let h = |v: &str| {
            let mut m = reqwest::header::HeaderMap::new();
            m.insert(reqwest::header::CACHE_CONTROL, v.parse().unwrap());
            m
        };
        assert_eq!(cache_secs(&reqwest::header::HeaderMap::new()), DEFAULT_CACHE_SECS);
        assert_eq!(cache_secs(&h("public, max-age=600")), 600);
        assert_eq!(cache_secs(&h("max-age=5")), MIN_CACHE_SECS);
        assert_eq!(cache_secs(&h("max-age=99999999")), MAX_CACHE_SECS);
        assert_eq!(cache_secs(&h("no-store")), MIN_CACHE_SECS);
    }
}

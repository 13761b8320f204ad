//! OpenID Connect: the id_token of a code exchange, verified (OpenID Connect Core §3.1.3.7) — its
//! JWS signature against the provider's JWKS (asymmetric algorithms only, the key chosen by
//! `kid`), `iss` (the provider's issuer), `aud` (tokenvault's client id), `azp` (see below), `exp`
//! (60 s leeway) and the `nonce` the flow sent — and read as the provider account (`sub`, labelled
//! by `email` or `preferred_username`). Nothing of the token is logged or shown.
//!
//! Audiences and the authorized party (§3.1.3.7 items 3–5): `aud` must name our client id; an
//! `azp`, when present, must be our client id; a token with several audiences is accepted only when
//! its `azp` is present and is our client id. No other audience is "trusted" as such: with `azp` =
//! us, the provider says the token was issued to tokenvault (the party that redeemed the code, with
//! its client credentials), and the other audiences are parties it may also be shown to — which
//! tokenvault never does. Without `azp`, a token meant for several clients could be one obtained by
//! another of them, so it is refused.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rocket::http::Status;
use serde::Deserialize;

use crate::db::models::connections::Account;
use crate::error::AppError;
use crate::oauth::http::Outbound;
use crate::oauth::providers::Provider;
use crate::util::{ct_eq, sha256_hex, ExposeSecret, Secret};

/// Signature algorithms accepted: never `none`, never an HMAC (whose key would be the client
/// secret, or a JWKS entry anyone could have written).
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// `aud`: one audience or several (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(#[allow(dead_code)] String),
    Several(Vec<String>),
}

impl Audience {
    /// How many distinct audiences it names.
    fn count(&self) -> usize {
        match self {
            Audience::One(_) => 1,
            Audience::Several(list) => list.iter().collect::<std::collections::HashSet<_>>().len(),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    /// The authorized party: the client the token was issued to.
    azp: Option<String>,
    nonce: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
}

/// Why an id_token was refused (logged; the user sees one message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no id_token in the token response")]
    Missing,
    #[error("malformed or unsupported header: {0}")]
    Header(String),
    #[error("the JWKS could not be read: {0}")]
    Keys(String),
    #[error("no usable key for kid {0:?}")]
    NoKey(Option<String>),
    #[error("{0}")]
    Invalid(String),
    #[error("issuer {0:?} is not the provider's")]
    Issuer(String),
    #[error("the nonce does not match the one sent")]
    Nonce,
    #[error("the authorized party (azp) is another client")]
    AuthorizedParty,
    #[error("several audiences and no azp naming tokenvault's client")]
    Audiences,
}

/// Check `id_token` with the keys in `jwks` (already fetched) for `provider` and `client_id`,
/// and the nonce whose SHA-256 the flow stored.
pub fn check(
    jwks: &JwkSet,
    provider: &Provider,
    client_id: &str,
    id_token: &str,
    nonce_hash: Option<&str>,
) -> Result<Account, Refused> {
    let header = jsonwebtoken::decode_header(id_token).map_err(|e| Refused::Header(e.to_string()))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(Refused::Header(format!("algorithm {:?} is not accepted", header.alg)));
    }
    let usable = |k: &&jsonwebtoken::jwk::Jwk| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_));
    let jwk = match &header.kid {
        Some(kid) => jwks.find(kid).filter(usable),
        // Without a kid, only an unambiguous set will do.
        None => match jwks.keys.iter().filter(usable).collect::<Vec<_>>().as_slice() {
            [only] => Some(*only),
            _ => None,
        },
    }
    .ok_or_else(|| Refused::NoKey(header.kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Refused::Keys(e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 60;
    let claims = jsonwebtoken::decode::<Claims>(id_token, &key, &validation)
        .map_err(|e| Refused::Invalid(e.to_string()))?
        .claims;
    // `aud` contains our client id (checked by the decoder); the authorized party must be us.
    if claims.azp.as_deref().is_some_and(|azp| azp != client_id) {
        return Err(Refused::AuthorizedParty);
    }
    if claims.aud.count() > 1 && claims.azp.as_deref() != Some(client_id) {
        return Err(Refused::Audiences);
    }
    // Google documents both `https://accounts.google.com` and `accounts.google.com`.
    if !provider.issuer_matches(&claims.iss) && format!("https://{}", claims.iss) != provider.issuer {
        return Err(Refused::Issuer(claims.iss.chars().take(100).collect()));
    }
    if let Some(expected) = nonce_hash {
        let sent = claims.nonce.as_deref().map(sha256_hex).unwrap_or_default();
        if !ct_eq(&sent, expected) {
            return Err(Refused::Nonce);
        }
    }
    let id: String = claims.sub.chars().filter(|c| !c.is_control()).take(255).collect();
    if id.is_empty() {
        return Err(Refused::Invalid("empty sub".into()));
    }
    let label = claims
        .email
        .or(claims.preferred_username)
        .map(|l| l.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
        .filter(|l| !l.is_empty());
    Ok(Account { id, label })
}

/// Fetch the provider's JWKS and [`check`] the id_token; a refusal fails the connect (502, nothing
/// stored), with the reason logged.
pub async fn verify(
    http: &Outbound,
    provider: &Provider,
    client_id: &str,
    id_token: Option<&Secret>,
    nonce_hash: Option<&str>,
) -> Result<Account, AppError> {
    let refused = |why: Refused| AppError::Upstream {
        status: Status::BadGateway,
        message: format!(
            "{}'s sign-in answer could not be verified, so nothing was stored. Please try again.",
            provider.display_name
        ),
        detail: format!("{}: id_token refused: {why}", provider.name),
    };
    let token = id_token.ok_or(Refused::Missing).map_err(refused)?;
    let url = provider.jwks_url.clone().ok_or_else(|| AppError::internal("verify without a jwks_url"))?;
    let http = http.for_provider(provider);
    let (status, _, body) = http
        .send(http.client().get(url).header(reqwest::header::ACCEPT, "application/json"))
        .await
        .map_err(|e| refused(Refused::Keys(e.to_string())))?;
    if !status.is_success() {
        return Err(refused(Refused::Keys(format!("HTTP {}", status.as_u16()))));
    }
    let jwks: JwkSet = serde_json::from_slice(&body).map_err(|e| refused(Refused::Keys(e.to_string())))?;
    check(&jwks, provider, client_id, token.expose_secret(), nonce_hash).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    /// The test key (tests/fixtures/oidc-test-key.pem, P-256) as the provider's JWKS.
    const X: &str = "YBIYt2d8I_jDPlMiKLa7XgfQ8Z-9fpvgLdEYIqQBB8Y";
    const Y: &str = "JEJuMkTE7b97N2VE2IRv9rsTldvOqhG_SOYxlPFHRBU";
    const KEY: &[u8] = include_bytes!("../../tests/fixtures/oidc-test-key.pem");

    fn jwks() -> JwkSet {
        serde_json::from_value(json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "k1", "use": "sig", "alg": "ES256"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
        ]}))
        .unwrap()
    }

    fn provider() -> Provider {
        let settings = crate::config::Settings::resolve(&crate::config::RawConfig::default(), "debug").unwrap();
        let mut p = crate::oauth::providers::demo(&settings);
        p.issuer = "https://issuer.example".into();
        p
    }

    fn sign(claims: serde_json::Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &EncodingKey::from_ec_pem(KEY).unwrap()).unwrap()
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://issuer.example", "aud": "client-1", "sub": "user-42",
               "exp": crate::util::now() + 300, "iat": crate::util::now(), "nonce": "n-1",
               "email": "ann@example.com"})
    }

    fn with(field: &str, value: serde_json::Value) -> serde_json::Value {
        let mut c = claims();
        c[field] = value;
        c
    }

    #[test]
    fn a_valid_id_token_names_the_account() {
        let nonce = sha256_hex("n-1");
        let account = check(&jwks(), &provider(), "client-1", &sign(claims(), Some("k1")), Some(&nonce)).unwrap();
        assert_eq!(account, Account { id: "user-42".into(), label: Some("ann@example.com".into()) });
        let mut bare = claims();
        bare.as_object_mut().unwrap().remove("email");
        bare["iss"] = json!("issuer.example");
        let account = check(&jwks(), &provider(), "client-1", &sign(bare, Some("k1")), None).unwrap();
        assert_eq!(account.label, None, "a scheme-less iss (Google's other spelling) is the same issuer");
    }

    #[test]
    fn every_check_refuses_what_it_should() {
        let nonce = sha256_hex("n-1");
        let refuse = |token: String, nonce: Option<&str>| check(&jwks(), &provider(), "client-1", &token, nonce);
        assert!(matches!(
            refuse(sign(with("aud", json!("someone-else")), Some("k1")), Some(&nonce)),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            refuse(sign(with("iss", json!("https://evil.example")), Some("k1")), Some(&nonce)),
            Err(Refused::Issuer(_))
        ));
        let expired = with("exp", json!(crate::util::now() - 3600));
        assert!(matches!(refuse(sign(expired, Some("k1")), Some(&nonce)), Err(Refused::Invalid(_))));
        assert_eq!(refuse(sign(with("nonce", json!("n-2")), Some("k1")), Some(&nonce)), Err(Refused::Nonce));
        let mut no_nonce = claims();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert_eq!(refuse(sign(no_nonce, Some("k1")), Some(&nonce)), Err(Refused::Nonce));
        assert_eq!(refuse(sign(claims(), Some("k9")), Some(&nonce)), Err(Refused::NoKey(Some("k9".into()))));
        // Without a kid the one asymmetric key is used (the HMAC entry never is).
        assert!(refuse(sign(claims(), None), Some(&nonce)).is_ok());
        // A signature by another key: change the payload, keep the signature.
        let token = sign(claims(), Some("k1"));
        let parts: Vec<&str> = token.split('.').collect();
        let other = sign(with("sub", json!("admin")), Some("k1"));
        let forged = format!("{}.{}.{}", parts[0], other.split('.').nth(1).unwrap(), parts[2]);
        assert!(matches!(refuse(forged, Some(&nonce)), Err(Refused::Invalid(_))));
        // `alg: none` and HMAC (key confusion with the JWKS's oct entry) are never accepted.
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims()));
        assert!(matches!(refuse(none, Some(&nonce)), Err(Refused::Header(_))));
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("hmac".into());
        let hmac = encode(&hs, &claims(), &EncodingKey::from_secret(b"secret")).unwrap();
        assert!(matches!(refuse(hmac, Some(&nonce)), Err(Refused::Header(_))));
    }

    /// OpenID Connect Core §3.1.3.7 items 3–5: `azp` names the client the token was issued to.
    #[test]
    fn the_authorized_party_must_be_tokenvault() {
        let nonce = sha256_hex("n-1");
        let check_claims =
            |c: serde_json::Value| check(&jwks(), &provider(), "client-1", &sign(c, Some("k1")), Some(&nonce));
        let several = json!(["client-1", "client-2"]);
        // Several audiences: only with azp = our client id.
        assert_eq!(check_claims(with("aud", several.clone())).err(), Some(Refused::Audiences));
        let mut theirs = with("aud", several.clone());
        theirs["azp"] = json!("client-2");
        assert_eq!(check_claims(theirs).err(), Some(Refused::AuthorizedParty));
        let mut ours = with("aud", several);
        ours["azp"] = json!("client-1");
        assert_eq!(check_claims(ours).unwrap().id, "user-42");
        // One audience: an azp, when present, must be ours too.
        assert_eq!(check_claims(with("azp", json!("client-2"))).err(), Some(Refused::AuthorizedParty));
        assert!(check_claims(with("azp", json!("client-1"))).is_ok());
        // The same audience twice is one audience; a list of one is one.
        assert!(check_claims(with("aud", json!(["client-1", "client-1"]))).is_ok());
        assert!(check_claims(with("aud", json!(["client-1"]))).is_ok());
        // Our client id must be among the audiences whatever azp says.
        let mut elsewhere = with("aud", json!(["client-2", "client-3"]));
        elsewhere["azp"] = json!("client-1");
        assert!(matches!(check_claims(elsewhere), Err(Refused::Invalid(_))));
    }
}

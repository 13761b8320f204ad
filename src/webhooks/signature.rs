//! The Standard Webhooks signature: `v1,` + base64 of HMAC-SHA256 over `"<id>.<timestamp>.<body>"`,
//! keyed with the endpoint secret's bytes (`whsec_` + base64 in the configuration).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// An endpoint's signing key: the decoded bytes of `whsec_<base64>`. No `Debug` of the bytes.
pub struct SigningKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

/// Why a configured secret is unusable (the message never contains the secret).
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    NoPrefix,
    NotBase64,
    TooShort(usize),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::NoPrefix => f.write_str("must start with `whsec_` (the Standard Webhooks secret format)"),
            KeyError::NotBase64 => f.write_str("must be `whsec_` followed by base64"),
            KeyError::TooShort(n) => {
                write!(f, "decodes to {n} bytes; use at least 24 random bytes (e.g. `whsec_` + `tokenvault keygen`)")
            }
        }
    }
}

/// Shortest key accepted, bytes (the spec recommends 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;

impl SigningKey {
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let b64 = secret.trim().strip_prefix("whsec_").ok_or(KeyError::NoPrefix)?;
        let bytes = Zeroizing::new(crate::util::b64_decode(b64).ok_or(KeyError::NotBase64)?);
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(SigningKey(bytes))
    }

    /// A new random secret (32 bytes, within the spec's 24 to 64), as `whsec_` + base64.
    pub fn generate() -> crate::util::Secret {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        crate::util::secret(format!("whsec_{}", crate::util::b64_encode(bytes.as_ref())))
    }

    /// The key written back in the secret format (to seal a configured secret when its endpoint
    /// is first edited on the page).
    pub fn to_secret(&self) -> crate::util::Secret {
        crate::util::secret(format!("whsec_{}", crate::util::b64_encode(&self.0)))
    }

    /// The `webhook-signature` header value of message `id` sent at `timestamp` with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body.as_bytes());
        format!("v1,{}", crate::util::b64_encode(&mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::{KeyError, SigningKey};

    /// The reference vector of the Standard Webhooks libraries (secret, id, timestamp, payload →
    /// signature), which Python's `hmac` reproduces independently:
    /// `base64(hmac.new(b64decode("MfKQ…"), b"msg_p5j….1614265330.{\"test\": 2432232314}", sha256))`.
    /// Its key is 24 bytes, the shortest accepted.
    #[test]
    fn signs_the_specification_vector() {
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, r#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // Every part is signed: another id, timestamp or body gives another signature.
        assert_ne!(key.sign("msg_p5jXN8AQM9LWM0D4loKWxJel", 1614265330, r#"{"test": 2432232314}"#), sig);
        assert_ne!(key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, r#"{"test": 2432232314}"#), sig);
        assert_ne!(key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, r#"{"test": 2432232315}"#), sig);
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_them() {
        assert_eq!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err(), KeyError::NoPrefix);
        assert_eq!(SigningKey::parse("whsec_not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(SigningKey::parse("whsec_c2hvcnQ=").unwrap_err(), KeyError::TooShort(5));
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert!(!format!("{key:?}").contains("MfKQ"));
    }

    #[test]
    fn generated_secrets_are_random_parse_back_and_round_trip() {
        use crate::util::ExposeSecret;
        let (a, b) = (SigningKey::generate(), SigningKey::generate());
        assert_ne!(a.expose_secret(), b.expose_secret());
        let key = SigningKey::parse(a.expose_secret()).unwrap();
        assert_eq!(key.0.len(), 32);
        assert_eq!(key.to_secret().expose_secret(), a.expose_secret());
        let spec = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(SigningKey::parse(spec).unwrap().to_secret().expose_secret(), spec);
    }
}

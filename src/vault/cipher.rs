use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::Aad;
use crate::util::{b64_decode, Secret};

/// Length of a vault key in bytes (256 bits).
pub const KEY_LEN: usize = 32;
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the vault key is invalid: {0}")]
    InvalidKey(String),
    #[error("a sealed value is malformed")]
    Malformed,
    #[error("a sealed value was written with a key that is not configured (key id {0})")]
    UnknownKey(String),
    #[error("a sealed value does not decrypt with its key (wrong key, tampered value, or moved to another row)")]
    Decrypt,
}

impl From<VaultError> for crate::error::AppError {
    fn from(e: VaultError) -> Self {
        crate::error::AppError::Vault(e.to_string())
    }
}

struct Key {
    id: [u8; KEY_ID_LEN],
    aead: XChaCha20Poly1305,
    /// HMAC-SHA256(key, "tokenvault derived keys v1"): the root of the keys [`Cipher::derived`]
    /// hands out for other purposes (never the key itself, never used to encrypt).
    derive_root: Zeroizing<[u8; 32]>,
}

impl Key {
    fn from_bytes(mut bytes: Vec<u8>) -> Result<Key, VaultError> {
        if bytes.len() != KEY_LEN {
            let len = bytes.len();
            bytes.zeroize();
            return Err(VaultError::InvalidKey(format!("expected {KEY_LEN} bytes after base64 decoding, got {len}")));
        }
        let mut hasher = Sha256::new();
        hasher.update(b"tokenvault key id\0");
        hasher.update(&bytes);
        let digest = hasher.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let aead =
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| VaultError::InvalidKey("bad length".into()))?;
        let derive_root = hmac_sha256(&bytes, &[b"tokenvault derived keys v1"]);
        bytes.zeroize();
        Ok(Key { id, aead, derive_root })
    }

    /// The key derived for `label` (one purpose, one label).
    fn derived(&self, label: &str) -> DerivedKey {
        DerivedKey { key_id: crate::util::hex(&self.id), key: hmac_sha256(&self.derive_root[..], &[label.as_bytes()]) }
    }
}

/// HMAC-SHA256 of the concatenated parts.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    use hmac::{Hmac, Mac};
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&m.finalize().into_bytes());
    out
}

/// A key derived from one vault key of the ring for a purpose other than sealing (e.g. signing
/// audit checkpoints), and the id of the vault key it comes from. Anyone holding that vault key
/// derives the same bytes; the database never holds them. No `Debug` of the bytes; zeroed on drop.
pub struct DerivedKey {
    /// The vault key's id (hex, as [`Cipher::active_key_id`]).
    pub key_id: String,
    pub key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Seals and opens secrets. One active key encrypts; older keys only decrypt.
pub struct Cipher {
    active: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("active_key_id", &crate::util::hex(&self.active.id))
            .field("old_keys", &self.old.len())
            .finish()
    }
}

fn decode_key(text: &str) -> Result<Vec<u8>, VaultError> {
    b64_decode(text).ok_or_else(|| VaultError::InvalidKey("not valid base64".into()))
}

impl Cipher {
    /// A cipher from the active key and any older keys, each 32 bytes in base64.
    pub fn from_base64(active: &str, old: &[String]) -> Result<Cipher, VaultError> {
        let active = Key::from_bytes(decode_key(active)?)?;
        let old = old.iter().map(|k| decode_key(k).and_then(Key::from_bytes)).collect::<Result<Vec<_>, _>>()?;
        Ok(Cipher { active, old })
    }

    /// A fresh random key, base64-encoded (for `tokenvault keygen` and first starts in debug).
    pub fn generate_key() -> String {
        crate::util::random_key_b64(KEY_LEN)
    }

    /// A cipher with a fixed key, for tests.
    pub fn for_tests(seed: u8) -> Cipher {
        Cipher::from_base64(&crate::util::b64_encode(&[seed; KEY_LEN]), &[]).expect("valid test key")
    }

    /// The id of the key that seals new values (hex), safe to log.
    pub fn active_key_id(&self) -> String {
        crate::util::hex(&self.active.id)
    }

    /// Encrypt `plaintext` bound to `aad`: `version | key id | nonce | ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: Aad<'_>) -> Vec<u8> {
        let aad = aad.to_string();
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .active
            .aead
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&self.active.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn seal_str(&self, plaintext: &str, aad: Aad<'_>) -> Vec<u8> {
        self.seal(plaintext.as_bytes(), aad)
    }

    /// Decrypt a value sealed by [`Cipher::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: Aad<'_>) -> Result<Secret, VaultError> {
        if sealed.len() < HEADER_LEN + 16 || sealed[0] != VERSION {
            return Err(VaultError::Malformed);
        }
        let id = &sealed[1..1 + KEY_ID_LEN];
        let key = std::iter::once(&self.active)
            .chain(self.old.iter())
            .find(|k| k.id == id)
            .ok_or_else(|| VaultError::UnknownKey(crate::util::hex(id)))?;
        let nonce = XNonce::from_slice(&sealed[1 + KEY_ID_LEN..HEADER_LEN]);
        let aad = aad.to_string();
        let mut plain = key
            .aead
            .decrypt(nonce, Payload { msg: &sealed[HEADER_LEN..], aad: aad.as_bytes() })
            .map_err(|_| VaultError::Decrypt)?;
        let text = String::from_utf8(std::mem::take(&mut plain)).map_err(|e| {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            VaultError::Malformed
        })?;
        Ok(crate::util::secret(text))
    }

    /// The key derived from the active vault key for `label` (see [`DerivedKey`]).
    pub fn derived(&self, label: &str) -> DerivedKey {
        self.active.derived(label)
    }

    /// The key derived for `label` from the key of the ring whose id is `key_id` (hex), if that key
    /// is configured (active or old).
    pub fn derived_with(&self, key_id: &str, label: &str) -> Option<DerivedKey> {
        std::iter::once(&self.active)
            .chain(self.old.iter())
            .find(|k| crate::util::hex(&k.id).eq_ignore_ascii_case(key_id))
            .map(|k| k.derived(label))
    }

    /// Whether a sealed value was written with an old key (for key rotation).
    pub fn needs_rotation(&self, sealed: &[u8]) -> bool {
        sealed.len() > KEY_ID_LEN && sealed[1..1 + KEY_ID_LEN] != self.active.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::ExposeSecret;

    const X: Aad<'static> = Aad::VaultEntry("x");
    /// HMAC-SHA256(HMAC-SHA256([7; 32], "tokenvault derived keys v1"), "tokenvault audit checkpoint v1"),
    /// computed independently of this code.
    const GOLDEN_DERIVED: &str = "2133f06b92033888b1cc88ac1408725062a7792dadae31bdc0903bf88c0c80b2";

    #[test]
    fn round_trip_with_associated_data() {
        let c = Cipher::for_tests(1);
        let sealed = c.seal_str("RT-CANARY-xyz", Aad::RefreshToken { user_id: 1, service: "demo", account: "" });
        assert!(!String::from_utf8_lossy(&sealed).contains("RT-CANARY"));
        assert_eq!(
            c.open(&sealed, Aad::RefreshToken { user_id: 1, service: "demo", account: "" }).unwrap().expose_secret(),
            "RT-CANARY-xyz"
        );
    }

    #[test]
    fn moved_ciphertext_does_not_open() {
        let c = Cipher::for_tests(1);
        let sealed = c.seal_str("secret", Aad::AccessToken { user_id: 1, service: "demo", account: "" });
        assert!(matches!(
            c.open(&sealed, Aad::AccessToken { user_id: 2, service: "demo", account: "" }),
            Err(VaultError::Decrypt)
        ));
    }

    #[test]
    fn flipped_byte_is_an_error_not_a_panic() {
        let c = Cipher::for_tests(1);
        let sealed = c.seal_str("secret", X);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(c.open(&bad, X).is_err(), "flipping byte {i} must fail");
        }
        assert!(matches!(c.open(&sealed[..10], X), Err(VaultError::Malformed)));
        assert!(matches!(c.open(&[], X), Err(VaultError::Malformed)));
    }

    #[test]
    fn nonces_are_random() {
        let c = Cipher::for_tests(1);
        assert_ne!(c.seal_str("same", X), c.seal_str("same", X));
    }

    #[test]
    fn old_keys_decrypt_and_wrong_keys_do_not() {
        let old = Cipher::for_tests(1);
        let sealed = old.seal_str("v", X);
        let new_key = crate::util::b64_encode(&[2u8; KEY_LEN]);
        let old_key = crate::util::b64_encode(&[1u8; KEY_LEN]);
        let ring = Cipher::from_base64(&new_key, &[old_key]).unwrap();
        assert_eq!(ring.open(&sealed, X).unwrap().expose_secret(), "v");
        assert!(ring.needs_rotation(&sealed));
        assert!(!ring.needs_rotation(&ring.seal_str("v", X)));
        let other = Cipher::for_tests(3);
        assert!(matches!(other.open(&sealed, X), Err(VaultError::UnknownKey(_))));
    }

    #[test]
    fn derived_keys_depend_on_the_vault_key_and_the_label_only() {
        let a = Cipher::for_tests(1);
        let d = a.derived("one");
        assert_eq!(d.key_id, a.active_key_id());
        assert_eq!(*d.key, *Cipher::for_tests(1).derived("one").key, "the same key derives the same bytes");
        assert_ne!(*d.key, *a.derived("two").key);
        assert_ne!(*d.key, *Cipher::for_tests(2).derived("one").key);
        assert!(!format!("{d:?}").contains(&crate::util::hex(&d.key[..])));
        // An old key of the ring still derives its own, found by its id.
        let ring =
            Cipher::from_base64(&crate::util::b64_encode(&[2u8; KEY_LEN]), &[crate::util::b64_encode(&[1u8; KEY_LEN])])
                .unwrap();
        assert_eq!(*ring.derived_with(&a.active_key_id(), "one").unwrap().key, *d.key);
        assert!(Cipher::for_tests(3).derived_with(&a.active_key_id(), "one").is_none());
        // A golden value: checkpoint signatures made today must verify for as long as the key lives.
        assert_eq!(
            crate::util::hex(&Cipher::for_tests(7).derived("tokenvault audit checkpoint v1").key[..]),
            GOLDEN_DERIVED
        );
    }

    #[test]
    fn bad_keys_are_rejected_clearly() {
        assert!(matches!(Cipher::from_base64("not base64!!", &[]), Err(VaultError::InvalidKey(_))));
        let short = crate::util::b64_encode(&[1u8; 16]);
        let err = Cipher::from_base64(&short, &[]).unwrap_err();
        assert!(err.to_string().contains("expected 32 bytes"));
    }

    /// A value sealed by this format (version byte, key id, nonce, XChaCha20-Poly1305) under the
    /// test key 7 for connection 7's Dropbox access token: it must open for as long as databases
    /// sealed today exist. A change of the layout or of `Aad`'s text breaks this test.
    #[test]
    fn a_value_sealed_in_2026_still_opens() {
        const SEALED: &str = "AeYvP3gpIUes7kCQ9TYTuJLVo+MEd35EphhhmTtR4Lpc2aABqAeYN2zg5GMQMj5enLaK5kSSlr4=";
        let sealed = crate::util::b64_decode(SEALED).unwrap();
        let c = Cipher::for_tests(7);
        let aad = Aad::AccessToken { user_id: 7, service: "dropbox", account: "" };
        assert_eq!(c.open(&sealed, aad).unwrap().expose_secret(), "AT-GOLDEN-7");
        assert!(c.open(&sealed, Aad::RefreshToken { user_id: 7, service: "dropbox", account: "" }).is_err());
        assert!(c.open(&sealed, Aad::AccessToken { user_id: 8, service: "dropbox", account: "" }).is_err());
    }
}

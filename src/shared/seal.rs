//! Values in Redis, encrypted and authenticated: XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), a key derived with BLAKE3 from the secret in
//! `shared.encryption_key_env`, a random 24-byte nonce per value, and the Redis key as
//! associated data, so that a value moved to another key does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE: usize = 24;

pub struct Seal(XChaCha20Poly1305);

impl Seal {
    pub fn new(secret: &[u8]) -> Self {
        let key = blake3::derive_key("cardgate shared values v1", secret);
        Seal(XChaCha20Poly1305::new((&key).into()))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain`, bound to `key`.
    pub fn seal(&self, key: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        getrandom::getrandom(&mut nonce).ok()?;
        let sealed = self
            .0
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: key })
            .ok()?;
        let mut out = Vec::with_capacity(NONCE.saturating_add(sealed.len()));
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The plain value, if `sealed` was sealed for `key` with this secret.
    pub fn open(&self, key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let nonce = sealed.get(..NONCE)?;
        let body = sealed.get(NONCE..)?;
        self.0
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad: key })
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_and_secret() {
        let seal = Seal::new(&[7u8; 32]);
        let sealed = seal.seal(b"k1", b"Ivanov").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"Ivanov"));
        assert_eq!(seal.open(b"k1", &sealed).unwrap(), b"Ivanov");
        assert!(seal.open(b"k2", &sealed).is_none(), "moved to another key");
        assert!(
            Seal::new(&[8u8; 32]).open(b"k1", &sealed).is_none(),
            "another secret"
        );
        let mut bent = sealed.clone();
        if let Some(last) = bent.last_mut() {
            *last ^= 1;
        }
        assert!(seal.open(b"k1", &bent).is_none(), "tampered");
        assert_ne!(
            seal.seal(b"k1", b"Ivanov").unwrap(),
            sealed,
            "a new nonce each time"
        );
    }
}

//! Values in Redis, encrypted and authenticated: XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`), a key derived with BLAKE3 from the secret in
//! `shared.encryption_key_env`, a 24-byte nonce per value, and the Redis key as associated
//! data, so that a value moved to another key does not open. A nonce is 16 random bytes
//! drawn once per process, then a count: unique without asking the kernel for randomness
//! on every value (XChaCha's long nonce is what makes a random prefix safe).

use std::sync::atomic::{AtomicU64, Ordering};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

const NONCE: usize = 24;
const PREFIX: usize = 16;
const TAG: usize = 16;

pub struct Seal {
    aead: XChaCha20Poly1305,
    prefix: [u8; PREFIX],
    count: AtomicU64,
}

impl Seal {
    pub fn new(secret: &[u8]) -> Self {
        let key = blake3::derive_key("cardgate shared values v1", secret);
        let mut prefix = [0u8; PREFIX];
        if getrandom::getrandom(&mut prefix).is_err() {
            // No kernel randomness: a prefix no other process derives.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let seed = format!("{}-{}", std::process::id(), now.as_nanos());
            prefix.copy_from_slice(&blake3::hash(seed.as_bytes()).as_bytes()[..PREFIX]);
        }
        Seal {
            aead: XChaCha20Poly1305::new((&key).into()),
            prefix,
            count: AtomicU64::new(0),
        }
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain`, bound to `key`.
    pub fn seal(&self, key: &[u8], plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_with(key, plain.len(), |out| out.extend_from_slice(plain))
    }

    /// [`Self::seal`] of the `len` bytes `write` appends, encrypted where they are written:
    /// one allocation.
    pub fn seal_with(&self, key: &[u8], len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE];
        nonce[..PREFIX].copy_from_slice(&self.prefix);
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        nonce[PREFIX..].copy_from_slice(&n.to_le_bytes());
        let mut out = Vec::with_capacity(NONCE.saturating_add(len).saturating_add(TAG));
        out.extend_from_slice(&nonce);
        write(&mut out);
        let tag = self
            .aead
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), key, out.get_mut(NONCE..)?)
            .ok()?;
        out.extend_from_slice(&tag);
        Some(out)
    }

    /// The plain value, if `sealed` was sealed for `key` with this secret (opened where it
    /// is).
    pub fn open(&self, key: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
        let body_end = sealed.len().checked_sub(TAG).filter(|end| *end >= NONCE)?;
        let tag = Tag::clone_from_slice(sealed.get(body_end..)?);
        let (nonce, body) = sealed.get_mut(..body_end)?.split_at_mut(NONCE);
        self.aead
            .decrypt_in_place_detached(XNonce::from_slice(nonce), key, body, &tag)
            .ok()?;
        sealed.truncate(body_end);
        sealed.drain(..NONCE);
        Some(sealed)
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
        assert_eq!(seal.open(b"k1", sealed.clone()).unwrap(), b"Ivanov");
        assert!(seal.open(b"k2", sealed.clone()).is_none(), "moved to another key");
        assert!(
            Seal::new(&[8u8; 32]).open(b"k1", sealed.clone()).is_none(),
            "another secret"
        );
        assert!(seal.open(b"k1", sealed[..20].to_vec()).is_none(), "too short");
        let mut bent = sealed.clone();
        if let Some(last) = bent.last_mut() {
            *last ^= 1;
        }
        assert!(seal.open(b"k1", bent).is_none(), "tampered");
        assert_ne!(
            seal.seal(b"k1", b"Ivanov").unwrap(),
            sealed,
            "a new nonce each time"
        );
    }
}

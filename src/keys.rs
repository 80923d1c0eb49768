//! Keyed hashes of tokens: the only form in which a token is kept or shown.
//!
//! A cache key is the full 256-bit keyed BLAKE3 hash of the token; a log fingerprint is
//! 4 bytes (8 hex digits) of a second, independently keyed hash (SipHash-2-4) of that
//! cache key, so a fingerprint says nothing about the cache key, and costs a request a
//! hundred instructions rather than a second BLAKE3 of the token. The secret is random per process, or
//! read from the environment variable named by `cache.hash_key_env` so that several
//! instances agree.

use std::hash::{BuildHasher, Hasher};

/// A cache key: the keyed hash of a token, never the token.
pub type CacheKey = [u8; 32];

/// Hashing for maps keyed by a [`CacheKey`]. The key already is a keyed 256-bit hash, so
/// folding its bytes is as good a table hash as any, and clients cannot aim collisions at
/// it without the secret; SipHash on top would only cost time on every lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHashBuilder;

#[derive(Debug, Default)]
pub struct KeyHash(u64);

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHash;

    fn build_hasher(&self) -> KeyHash {
        KeyHash(0)
    }
}

impl Hasher for KeyHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(chunk) {
                *w = *b;
            }
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Clone)]
pub struct TokenHasher {
    cache_key: [u8; 32],
    fingerprint_key: [u8; 16],
}

impl TokenHasher {
    /// Derive both keys from a secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        TokenHasher {
            cache_key: blake3::derive_key("cardgate 2026 token cache key", secret),
            fingerprint_key: {
                let k = blake3::derive_key("cardgate 2026 token log fingerprint", secret);
                let mut short = [0u8; 16];
                short.copy_from_slice(&k[..16]);
                short
            },
        }
    }

    /// A random secret, for a single instance.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).expect("the OS random source is available");
        Self::from_secret(&secret)
    }

    pub fn cache_key(&self, token: &[u8]) -> CacheKey {
        *blake3::keyed_hash(&self.cache_key, token).as_bytes()
    }

    /// The keyed hash of an identifier other than a token (a search stepId or client
    /// identifier), separated by `domain` so equal strings of two kinds never share a key.
    pub fn id_key(&self, domain: &str, id: &[u8]) -> CacheKey {
        let mut h = blake3::Hasher::new_keyed(&self.cache_key);
        h.update(domain.as_bytes());
        h.update(&[0]);
        h.update(id);
        *h.finalize().as_bytes()
    }

    /// 8 hex digits that tell requests for one token apart in logs.
    pub fn fingerprint(&self, token: &[u8]) -> Fingerprint {
        self.fingerprint_of(&self.cache_key(token))
    }

    /// The fingerprint of the token whose cache key this is.
    pub fn fingerprint_of(&self, key: &CacheKey) -> Fingerprint {
        let mut h = siphasher::sip::SipHasher24::new_with_key(&self.fingerprint_key);
        h.write(key);
        let bytes = h.finish().to_le_bytes();
        let mut text = [b'0'; 8];
        for (pair, byte) in text.chunks_exact_mut(2).zip(&bytes) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Fingerprint(text)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Append the hex digits of `bytes` (without `format!`, which costs a request some
/// thousand instructions).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// The hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    push_hex(&mut s, bytes);
    s
}

/// A cache key from its 64 hex digits.
pub fn key_from_hex(hex: &[u8]) -> Option<CacheKey> {
    let mut key = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    for (out, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        *out = digit(pair[0])?.checked_mul(16)?.checked_add(digit(pair[1])?)?;
    }
    Some(key)
}

/// A token's fingerprint for the logs: 8 hex digits of a keyed hash, kept on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }

    /// `text` (something the CRM said about `token`) with the token replaced by this
    /// fingerprint wherever it is spelled out: as it is or percent-encoded (either case of
    /// hex digit, any byte), a space also as `+`, letters in either case. None for a text
    /// over [`REDACT_MAX`] bytes: too long to scan, and to log.
    pub fn redact(&self, text: &str, token: &[u8]) -> Option<String> {
        let bytes = text.as_bytes();
        if bytes.len() > REDACT_MAX {
            return None;
        }
        if token.is_empty() {
            return Some(text.to_string());
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while let Some(rest) = bytes.get(at..).filter(|r| !r.is_empty()) {
            match spelled_at(rest, token) {
                Some(len) => {
                    out.extend_from_slice(&self.0);
                    at += len;
                }
                None => {
                    out.push(rest[0]);
                    at += 1;
                }
            }
        }
        // Only runs of ASCII bytes were replaced: what is left is still UTF-8.
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

/// The longest text [`Fingerprint::redact`] looks at.
pub const REDACT_MAX: usize = 1024;

/// The length of the longest spelling of `token` (see [`Fingerprint::redact`]) that
/// `text` starts with. Every place a spelling could have reached is followed at once, so
/// `%` in the token and `%25` in the text are both tried.
fn spelled_at(text: &[u8], token: &[u8]) -> Option<usize> {
    let digit = |at: usize| text.get(at).and_then(|c| char::from(*c).to_digit(16));
    let mut ends = vec![0usize];
    for &t in token {
        let mut next = Vec::with_capacity(ends.len());
        for &p in &ends {
            let Some(&c) = text.get(p) else { continue };
            if c.eq_ignore_ascii_case(&t) || (t == b' ' && c == b'+') {
                next.push(p + 1);
            }
            if let (b'%', Some(hi), Some(lo)) = (c, digit(p + 1), digit(p + 2)) {
                if u8::try_from(hi * 16 + lo).is_ok_and(|b| b.eq_ignore_ascii_case(&t)) {
                    next.push(p + 3);
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        next.sort_unstable();
        next.dedup();
        ends = next;
    }
    ends.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_per_secret_and_independent() {
        let a = TokenHasher::from_secret(b"0123456789abcdef");
        let b = TokenHasher::from_secret(b"0123456789abcdef");
        let c = TokenHasher::from_secret(b"fedcba9876543210");
        assert_eq!(a.cache_key(b"tok"), b.cache_key(b"tok"));
        assert_ne!(a.cache_key(b"tok"), c.cache_key(b"tok"));
        assert_ne!(a.cache_key(b"tok"), a.cache_key(b"tok2"));
        let fp = a.fingerprint(b"tok");
        let fp = fp.as_str();
        assert_eq!(fp.len(), 8);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!hex(&a.cache_key(b"tok")).starts_with(fp));
    }

    #[test]
    fn key_hashes_spread_over_buckets() {
        let h = TokenHasher::random();
        let mut buckets = [0u32; 64];
        for i in 0..64_000u32 {
            let key = h.cache_key(&i.to_le_bytes());
            buckets[(KeyHashBuilder.hash_one(key) % 64) as usize] += 1;
        }
        // 1000 expected per bucket; a skewed hash would leave some far off.
        assert!(buckets.iter().all(|&n| (800..1200).contains(&n)), "{buckets:?}");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn a_token_the_crm_spells_out_becomes_its_fingerprint() {
        let fp = TokenHasher::from_secret(b"0123456789abcdef").fingerprint(b"Tk7Q2mZ9pLx3");
        let r = |text: &str, token: &str| fp.redact(text, token.as_bytes()).unwrap();
        let f = fp.as_str();
        assert_eq!(r("echo-Tk7Q2mZ9pLx3", "Tk7Q2mZ9pLx3"), format!("echo-{f}"));
        assert_eq!(r("Tk7Q2mZ9pLx3", "Tk7Q2mZ9pLx3"), f);
        assert_eq!(
            r("BAD_TOKEN_TK7Q2MZ9PLX3", "Tk7Q2mZ9pLx3"),
            format!("BAD_TOKEN_{f}")
        );
        assert_eq!(r("x-ab-ab-y", "ab"), format!("x-{f}-{f}-y"));
        assert_eq!(r("1001", "Tk7Q2mZ9pLx3"), "1001");
        // Percent-encoded, in either case, a space as %20 or +, a % itself as %25.
        for spelled in ["a%2Fb%20c%2Bd", "a%2fb+c+d", "%61/b c%2bd", "a/b%20c+d"] {
            assert_eq!(
                r(&format!("no:{spelled}!"), "a/b c+d"),
                format!("no:{f}!"),
                "{spelled}"
            );
        }
        assert_eq!(r("t%25x", "t%x"), f);
        assert_eq!(r("t%x", "t%x"), f);
        assert_eq!(r("caf\u{e9} t", "t"), format!("caf\u{e9} {f}"));
        assert_eq!(fp.redact(&"a".repeat(REDACT_MAX + 1), b"zz"), None);
    }

    #[test]
    fn hex_round_trips_and_matches_format() {
        let key = [0xa5u8, 0x0f].repeat(16);
        assert_eq!(super::hex(&key), hex(&key));
        assert_eq!(key_from_hex(hex(&key).as_bytes()).map(|k| k.to_vec()), Some(key));
        assert_eq!(key_from_hex(b"*"), None);
        assert_eq!(key_from_hex(&[b'z'; 64]), None);
    }
}

//! Admin secrets: pre-auth keys and API keys.
//!
//! A key is `<kind>-<12 hex prefix>-<64 hex secret>`. Only the prefix is stored
//! in clear (to find the row and to show in listings); the secret is stored as
//! its SHA-256. The secret is 256 random bits, so a fast hash is enough: there
//! is nothing to brute-force, and registration stays cheap.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) const PREAUTH_KEY_KIND: &str = "mskey-auth";
pub(crate) const API_KEY_KIND: &str = "mskey-api";
const PREFIX_HEX: usize = 12;
const SECRET_HEX: usize = 64;

/// A freshly generated key: the whole text is shown to the admin once, then dropped.
pub(crate) struct NewKey {
    pub full: String,
    pub prefix: String,
    pub hash: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) fn generate(kind: &str) -> NewKey {
    let mut prefix = [0u8; PREFIX_HEX / 2];
    let mut secret = [0u8; SECRET_HEX / 2];
    rand::rng().fill_bytes(&mut prefix);
    rand::rng().fill_bytes(&mut secret);
    let prefix = hex::encode(prefix);
    let secret = hex::encode(secret);
    NewKey {
        full: format!("{kind}-{prefix}-{secret}"),
        hash: hash_secret(&secret),
        prefix,
    }
}

fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A presented key split into its stored prefix and its secret; `None` if malformed.
pub(crate) struct PresentedKey<'a> {
    pub prefix: &'a str,
    secret: &'a str,
}

impl std::fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub(crate) fn parse<'a>(kind: &str, key: &'a str) -> Option<PresentedKey<'a>> {
    let rest = key.strip_prefix(kind)?.strip_prefix('-')?;
    let (prefix, secret) = rest.split_once('-')?;
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(prefix, PREFIX_HEX) || !is_hex(secret, SECRET_HEX) {
        return None;
    }
    Some(PresentedKey { prefix, secret })
}

impl PresentedKey<'_> {
    /// Constant-time comparison against the stored hash, so timing says nothing about it.
    pub(crate) fn matches(&self, stored_hash: &str) -> bool {
        let presented = hash_secret(&self.secret.to_ascii_lowercase());
        presented.as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

/// What listings show in place of a key.
pub(crate) fn masked(kind: &str, prefix: &str) -> String {
    format!("{kind}-{prefix}-***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_mismatch() {
        let k = generate(PREAUTH_KEY_KIND);
        assert!(k.full.starts_with("mskey-auth-"));
        assert_eq!(k.full.len(), "mskey-auth-".len() + 12 + 1 + 64);
        let p = parse(PREAUTH_KEY_KIND, &k.full).unwrap();
        assert_eq!(p.prefix, k.prefix);
        assert!(p.matches(&k.hash));
        let other = generate(PREAUTH_KEY_KIND);
        assert!(!p.matches(&other.hash));
        assert!(
            !format!("{k:?}").contains(&k.full[k.full.len() - 64..]),
            "Debug must not show the secret"
        );
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let k = generate(API_KEY_KIND);
        assert!(parse(PREAUTH_KEY_KIND, &k.full).is_none());
        for bad in [
            "",
            "mskey-api-",
            "mskey-api-abc-def",
            &format!("{}x", k.full),
            &k.full[..k.full.len() - 1],
        ] {
            assert!(parse(API_KEY_KIND, bad).is_none(), "{bad:?}");
        }
    }
}

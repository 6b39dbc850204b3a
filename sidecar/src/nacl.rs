//! NaCl `crypto_box` (Curve25519-XSalsa20-Poly1305) as Tailscale uses it for
//! disco messages and the DERP handshake: `nonce(24) || ciphertext`.

use crypto_box::aead::Aead;
use crypto_box::{Nonce, PublicKey, SalsaBox, SecretKey};

pub const NONCE_LEN: usize = 24;
/// Poly1305 tag added by the box.
pub const OVERHEAD: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    #[error("sealed box shorter than nonce and tag")]
    Short,
    #[error("box does not open (wrong key or corrupted)")]
    Open,
    #[error("box could not be sealed")]
    Seal,
}

/// Seals `plain` from `ours` to `theirs` with a random nonce.
pub fn seal(ours: &[u8; 32], theirs: &[u8; 32], plain: &[u8]) -> Result<Vec<u8>, BoxError> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    seal_with_nonce(ours, theirs, &nonce, plain)
}

/// [`seal`] with a given nonce (for known-answer tests).
pub fn seal_with_nonce(
    ours: &[u8; 32],
    theirs: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    plain: &[u8],
) -> Result<Vec<u8>, BoxError> {
    let b = SalsaBox::new(&PublicKey::from(*theirs), &SecretKey::from(*ours));
    let ct = b
        .encrypt(Nonce::from_slice(nonce), plain)
        .map_err(|_| BoxError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens `nonce || ciphertext` sent by `theirs` to `ours`.
pub fn open(ours: &[u8; 32], theirs: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, BoxError> {
    if sealed.len() < NONCE_LEN + OVERHEAD {
        return Err(BoxError::Short);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let b = SalsaBox::new(&PublicKey::from(*theirs), &SecretKey::from(*ours));
    b.decrypt(Nonce::from_slice(nonce), ct)
        .map_err(|_| BoxError::Open)
}

/// X25519 public key of a private scalar.
#[cfg(test)]
pub fn public_of(private: &[u8; 32]) -> [u8; 32] {
    SecretKey::from(*private).public_key().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let a: [u8; 32] = rand::random();
        let b: [u8; 32] = rand::random();
        let sealed = seal(&a, &public_of(&b), b"hello").unwrap();
        assert_eq!(open(&b, &public_of(&a), &sealed).unwrap(), b"hello");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open(&b, &public_of(&a), &bad), Err(BoxError::Open));
        assert_eq!(
            open(&b, &public_of(&a), &sealed[..30]),
            Err(BoxError::Short)
        );
    }
}

//! The "early payload": a message the server writes through the Noise stream
//! right after the handshake, before HTTP/2 starts (Tailscale
//! `control/ts2021/conn.go: readHeader`, Headscale `noise.go: earlyNoise`).
//!
//! The framing (magic, BE u32 length, JSON `tailcfg.EarlyNoise`) is shared
//! with the client in [`meshscale_ts2021::early`]; this module decides what
//! the server puts in it.

use super::key::ServerKey;

pub use meshscale_ts2021::early::{EARLY_PAYLOAD_MAGIC, MAX_EARLY_PAYLOAD, encode_early_payload};

/// Capability version that introduced the early payload (Headscale's
/// `earlyNoiseCapabilityVersion`); older clients would choke on it.
pub const EARLY_NOISE_MIN_VERSION: u16 = 49;

const CHALLENGE_PREFIX: &str = "chalpub:";

/// A fresh `nodeKeyChallenge` public key, as `chalpub:<hex>`.
///
/// Tailscale makes it a real Curve25519 public key (so that a client could
/// seal a proof of node-key ownership to it). Nothing in today's client uses
/// it, and this server keeps no private half, but the value stays well-formed.
pub fn new_challenge() -> String {
    let public = match ServerKey::generate() {
        Ok(k) => *k.public(),
        // The OS RNG failing is not worth failing a connection over: any
        // 32 bytes parse as a key on the client side.
        Err(_) => rand::random(),
    };
    format!("{CHALLENGE_PREFIX}{}", hex::encode(public))
}

/// The bytes to write into the Noise stream for a given challenge text.
pub fn encode(challenge: &str) -> Vec<u8> {
    let json = serde_json::json!({ "nodeKeyChallenge": challenge }).to_string();
    encode_early_payload(json.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let challenge = new_challenge();
        assert!(challenge.starts_with("chalpub:"));
        assert_eq!(challenge.len(), 8 + 64);

        let bytes = encode(&challenge);
        assert_eq!(&bytes[..5], b"\xff\xff\xffTS");
        let len = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        assert_eq!(len, bytes.len() - 9);
        let json: serde_json::Value = serde_json::from_slice(&bytes[9..]).unwrap();
        assert_eq!(json, serde_json::json!({ "nodeKeyChallenge": challenge }));
    }

    #[test]
    fn challenges_differ() {
        assert_ne!(new_challenge(), new_challenge());
    }
}

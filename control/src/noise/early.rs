//! The "early payload": a message the server writes through the Noise stream
//! right after the handshake, before HTTP/2 starts (Tailscale
//! `control/ts2021/conn.go: readHeader`, Headscale `noise.go: earlyNoise`).
//!
//! Layout: 5 magic bytes `ff ff ff 'T' 'S'`, a BE u32 length, then that many
//! bytes of JSON `tailcfg.EarlyNoise`. The client reads 9 bytes first; if they
//! don't start with the magic it takes them for an HTTP/2 frame header, so
//! the payload is optional. The magic can't start an HTTP/2 frame the server
//! sends first (a SETTINGS frame: its 4th byte, the type, would be 0x04).

use super::key::ServerKey;

pub const EARLY_PAYLOAD_MAGIC: [u8; 5] = *b"\xff\xff\xffTS";
/// Capability version that introduced the early payload (Headscale's
/// `earlyNoiseCapabilityVersion`); older clients would choke on it.
pub const EARLY_NOISE_MIN_VERSION: u16 = 49;
/// The client refuses early payloads above 10 MiB.
pub const MAX_EARLY_PAYLOAD: usize = 10 << 20;

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
    // A 73-char challenge is nowhere near 4 GiB.
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(EARLY_PAYLOAD_MAGIC.len() + 4 + json.len());
    out.extend_from_slice(&EARLY_PAYLOAD_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(json.as_bytes());
    out
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

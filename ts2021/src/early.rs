//! The "early payload"'s framing: a message the server writes through the
//! Noise stream right after the handshake, before HTTP/2 starts (Tailscale
//! `control/ts2021/conn.go: readHeader`, Headscale `noise.go: earlyNoise`).
//!
//! Layout: 5 magic bytes `ff ff ff 'T' 'S'`, a BE u32 length, then that many
//! bytes of JSON `tailcfg.EarlyNoise`. The client reads 9 bytes first; if they
//! don't start with the magic it takes them for an HTTP/2 frame header, so
//! the payload is optional. The magic can't start an HTTP/2 frame the server
//! sends first (a SETTINGS frame: its 4th byte, the type, would be 0x04).
//!
//! Only the framing lives here; what goes in the JSON (server) and the lazy
//! reader in front of HTTP/2 (client) stay with their roles.

use crate::error::EarlyPayloadError;

pub const EARLY_PAYLOAD_MAGIC: [u8; 5] = *b"\xff\xff\xffTS";
/// The early header is exactly as long as an HTTP/2 frame header.
pub const EARLY_HEADER_LEN: usize = 9;
/// The Go client refuses early payloads above 10 MiB (`epLen > 10<<20`).
pub const MAX_EARLY_PAYLOAD: usize = 10 << 20;

/// What the first 9 plaintext bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyHeader {
    /// An early payload of `len` bytes follows.
    Payload { len: usize },
    /// No early payload: these bytes start the HTTP/2 stream.
    Absent,
}

/// Classifies the first 9 plaintext bytes; refuses lengths above `max`.
pub fn parse_early_header(
    hdr: &[u8; EARLY_HEADER_LEN],
    max: usize,
) -> Result<EarlyHeader, EarlyPayloadError> {
    if hdr[..5] != EARLY_PAYLOAD_MAGIC {
        return Ok(EarlyHeader::Absent);
    }
    let len = u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]);
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok(EarlyHeader::Payload { len }),
        _ => Err(EarlyPayloadError::TooLarge {
            len: u64::from(len),
            max,
        }),
    }
}

/// Frames `json` as an early payload: magic, BE u32 length, the JSON.
pub fn encode_early_payload(json: &[u8]) -> Vec<u8> {
    // Callers send a small JSON object, nowhere near 4 GiB.
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(EARLY_HEADER_LEN + json.len());
    out.extend_from_slice(&EARLY_PAYLOAD_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(json);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse() {
        let bytes = encode_early_payload(b"{}");
        assert_eq!(bytes, b"\xff\xff\xffTS\x00\x00\x00\x02{}");
        let hdr: [u8; 9] = bytes[..9].try_into().unwrap();
        assert_eq!(
            parse_early_header(&hdr, 100).unwrap(),
            EarlyHeader::Payload { len: 2 }
        );
        assert!(matches!(
            parse_early_header(&hdr, 1),
            Err(EarlyPayloadError::TooLarge { len: 2, max: 1 })
        ));
        let settings = [0, 0, 0x12, 0x04, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_early_header(&settings, 100).unwrap(),
            EarlyHeader::Absent
        );
    }
}

//! Byte layout of controlbase messages (Tailscale `control/controlbase/messages.go`
//! and `conn.go`). Pure data, no I/O.
//!
//! Every message but the initiation starts with a 3-byte header: type, then a
//! big-endian u16 payload length. The initiation has two more leading bytes,
//! the protocol version.

/// Handshake initiation, client to server.
pub const MSG_INITIATION: u8 = 0x01;
/// Handshake response, server to client.
pub const MSG_RESPONSE: u8 = 0x02;
/// Unauthenticated, human-readable refusal, server to client, sent instead
/// of a response.
pub const MSG_ERROR: u8 = 0x03;
/// Transport record carrying ciphertext.
pub const MSG_RECORD: u8 = 0x04;

/// Header of every message except the initiation: type + BE u16 length.
pub const HEADER_LEN: usize = 3;
/// Header of the initiation: BE u16 version + type + BE u16 length.
pub const INITIATION_HEADER_LEN: usize = 5;
/// Noise IK `-> e, es, s, ss` with an empty payload: e (32) + encrypted s
/// (32 + 16) + tag of the empty payload (16).
pub const INITIATION_PAYLOAD_LEN: usize = 96;
pub const INITIATION_LEN: usize = INITIATION_HEADER_LEN + INITIATION_PAYLOAD_LEN;
/// Noise IK `<- e, ee, se` with an empty payload: e (32) + tag (16).
pub const RESPONSE_PAYLOAD_LEN: usize = 48;
pub const RESPONSE_LEN: usize = HEADER_LEN + RESPONSE_PAYLOAD_LEN;

/// ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Largest frame on the wire, header included (`maxMessageSize`).
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// `maxCiphertextSize`.
pub const MAX_CIPHERTEXT_SIZE: usize = MAX_MESSAGE_SIZE - HEADER_LEN;
/// `maxPlaintextSize`: 4077 bytes of data per record.
pub const MAX_PLAINTEXT_SIZE: usize = MAX_CIPHERTEXT_SIZE - TAG_LEN;

/// The longest text an error message can carry (its length field is a u16).
const MAX_ERROR_TEXT: usize = u16::MAX as usize;

/// The Noise protocol controlbase speaks, the client as initiator.
pub const PROTOCOL_NAME: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
pub const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";

/// The prologue mixed into the handshake for a given protocol version.
pub fn prologue(version: u16) -> Vec<u8> {
    format!("{PROLOGUE_PREFIX}{version}").into_bytes()
}

/// Parses a 3-byte header into (type, payload length).
pub fn parse_header(header: [u8; HEADER_LEN]) -> (u8, usize) {
    (
        header[0],
        usize::from(u16::from_be_bytes([header[1], header[2]])),
    )
}

/// Builds a 3-byte header.
pub fn header(msg_type: u8, payload_len: u16) -> [u8; HEADER_LEN] {
    let [hi, lo] = payload_len.to_be_bytes();
    [msg_type, hi, lo]
}

/// An error message (type 0x03) carrying `text` (servers send it; clients
/// parse it, and tests and fake servers build it), cut to what the length field
/// can express (on a char boundary, so the client still gets valid UTF-8).
pub fn error_message(text: &str) -> Vec<u8> {
    let mut end = text.len().min(MAX_ERROR_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text.as_bytes()[..end];
    // `end` <= u16::MAX by construction.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + text.len());
    out.extend_from_slice(&header(MSG_ERROR, len));
    out.extend_from_slice(text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_controlbase() {
        assert_eq!(INITIATION_LEN, 101);
        assert_eq!(RESPONSE_LEN, 51);
        assert_eq!(MAX_CIPHERTEXT_SIZE, 4093);
        assert_eq!(MAX_PLAINTEXT_SIZE, 4077);
    }

    #[test]
    fn prologue_text() {
        assert_eq!(prologue(130), b"Tailscale Control Protocol v130");
        assert_eq!(prologue(0), b"Tailscale Control Protocol v0");
        assert_eq!(prologue(65535), b"Tailscale Control Protocol v65535");
    }

    #[test]
    fn header_round_trip() {
        assert_eq!(header(MSG_RECORD, 0x0102), [4, 1, 2]);
        assert_eq!(parse_header([4, 0x0f, 0xfd]), (4, 4093));
    }

    #[test]
    fn error_message_layout() {
        let msg = error_message("nope");
        assert_eq!(msg, b"\x03\x00\x04nope");
    }

    #[test]
    fn error_message_is_cut_on_a_char_boundary() {
        let long = "é".repeat(40_000); // 80,000 bytes
        let msg = error_message(&long);
        let (ty, len) = parse_header([msg[0], msg[1], msg[2]]);
        assert_eq!(ty, MSG_ERROR);
        assert_eq!(len, msg.len() - HEADER_LEN);
        assert!(len <= usize::from(u16::MAX));
        assert!(std::str::from_utf8(&msg[HEADER_LEN..]).is_ok());
    }
}

//! Byte layout of controlbase messages (Tailscale
//! `control/controlbase/messages.go` and `conn.go`). Pure data, no I/O.
//!
//! Every message but the initiation starts with a 3-byte header: type, then a
//! big-endian u16 payload length. The initiation has two more leading bytes,
//! the protocol version (the client's capability version).

/// Handshake initiation, client to server.
pub const MSG_INITIATION: u8 = 0x01;
/// Handshake response, server to client.
pub const MSG_RESPONSE: u8 = 0x02;
/// Unauthenticated, human-readable refusal, sent by the server instead of a
/// response.
pub const MSG_ERROR: u8 = 0x03;
/// Transport record carrying ciphertext.
pub const MSG_RECORD: u8 = 0x04;

/// Type + BE u16 length.
pub const HEADER_LEN: usize = 3;
/// BE u16 version + type + BE u16 length.
pub const INITIATION_HEADER_LEN: usize = 5;
/// IK `-> e, es, s, ss` with an empty payload: e (32) + sealed s (32 + 16) +
/// tag of the empty payload (16).
pub const INITIATION_PAYLOAD_LEN: usize = 96;
pub const INITIATION_LEN: usize = INITIATION_HEADER_LEN + INITIATION_PAYLOAD_LEN;
/// IK `<- e, ee, se` with an empty payload: e (32) + tag (16).
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

/// Splits a 3-byte header into (type, payload length).
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
    fn header_round_trip() {
        assert_eq!(header(MSG_RECORD, 0x0102), [4, 1, 2]);
        assert_eq!(parse_header([4, 0x0f, 0xfd]), (4, 4093));
    }
}

//! Errors of the Noise layer: the handshake and the record stream.

use std::io;

/// The handshake did not produce a transport.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("noise handshake state: {0}")]
    Noise(#[source] snow::Error),
    /// controlbase's refusal message (type 0x03). Unauthenticated: a hint
    /// for humans, e.g. "unsupported client version".
    #[error("server error: {0:?}")]
    Server(String),
    #[error("unexpected handshake response message type {0}")]
    UnexpectedType(u8),
    #[error("wrong length {0} received for handshake response")]
    WrongLength(usize),
    #[error("server sent a low-order curve25519 point as its ephemeral key")]
    LowOrderKey,
    /// The server does not hold the private half of the key we were given
    /// (a stale `/key`), or the response was tampered with.
    #[error("handshake response does not decrypt")]
    Decrypt,
    #[error("reading the handshake response: {0}")]
    Io(#[source] io::Error),
}

/// A transport record could not be sent or accepted; the stream is unusable
/// afterwards (controlbase drops it too: the nonces are out of step).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("received noise message of type {0:#04x}, want record (0x04)")]
    UnexpectedType(u8),
    #[error("noise frame of {0} bytes exceeds the maximum of 4096")]
    TooLarge(usize),
    #[error("noise record failed to decrypt")]
    Decrypt,
    #[error("noise cipher exhausted, no nonces left")]
    NonceExhausted,
    #[error("noise connection ended in the middle of a record")]
    Truncated,
    #[error("noise connection is closed after an earlier error")]
    Closed,
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        let kind = match e {
            RecordError::Truncated => io::ErrorKind::UnexpectedEof,
            RecordError::Closed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// The early payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EarlyPayloadError {
    #[error("early payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("early payload is not valid JSON: {0}")]
    Json(String),
    #[error("connection ended inside the early payload")]
    Truncated,
}

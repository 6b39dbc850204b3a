//! Errors of the Noise layer: the handshake here, the record stream and the
//! early payload shared with the server.

use std::io;

pub use meshscale_ts2021::{EarlyPayloadError, RecordError};

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

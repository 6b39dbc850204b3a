//! Errors of the TS2021 layer, one enum per concern, gathered in [`NoiseError`].

use std::io;
use std::path::PathBuf;

pub use meshscale_ts2021::RecordError;

/// Anything that can go wrong in the Noise layer, from the key file to the
/// transport.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("noise connection i/o: {0}")]
    Io(#[from] io::Error),
    #[error("noise handshake did not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("HTTP upgrade to the noise transport failed: {0}")]
    Upgrade(#[source] hyper::Error),
    #[error("HTTP/2 over noise: {0}")]
    Http2(#[source] hyper::Error),
}

/// The server's Noise key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading noise key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing noise key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("creating directory {path} for the noise key file: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    // Never include the file's content: it is (or was meant to be) a secret.
    #[error(
        "noise key file {path} is malformed ({reason}); expected `privkey:` followed by 64 hex \
         digits. Fix the file or move it away to have a new key generated (clients will then \
         fetch the new key from /key)"
    )]
    Malformed { path: PathBuf, reason: &'static str },
    #[error("generating a noise key: {0}")]
    Generate(#[source] snow::Error),
}

/// The client's handshake initiation was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake initiation is {got} bytes, want {want}")]
    WrongSize { got: usize, want: usize },
    #[error("handshake message type {0:#04x}, want initiation (0x01)")]
    WrongType(u8),
    #[error("handshake initiation claims a {got}-byte payload, want {want}")]
    WrongLength { got: u16, want: u16 },
    #[error("client protocol version {version} is older than the minimum {minimum}")]
    UnsupportedVersion { version: u16, minimum: u16 },
    #[error("client sent a low-order curve25519 point as its {0} key")]
    LowOrderKey(&'static str),
    /// Wrong server key on the client side (it has a stale `/key`), a
    /// prologue/version mismatch, or a forged message.
    #[error("handshake initiation does not decrypt: {0}")]
    Decrypt(#[source] snow::Error),
    #[error("noise handshake state: {0}")]
    Noise(#[source] snow::Error),
}

impl HandshakeError {
    /// The text to send back in a controlbase error message (type 0x03), if
    /// this refusal is one the client should be told about. Tailscale's client
    /// prints it as `server error: "<text>"` instead of failing with EOF.
    ///
    /// The wording of the structural errors is controlbase's own. Crypto
    /// failures get no message, as in controlbase: an unauthenticated peer
    /// learns nothing about why its handshake failed.
    pub fn client_message(&self) -> Option<String> {
        match self {
            Self::WrongSize { .. } => Some("wrong handshake initiation size".into()),
            Self::WrongType(_) => Some("unexpected handshake message type".into()),
            Self::WrongLength { .. } => Some("wrong handshake initiation length".into()),
            Self::UnsupportedVersion { version, minimum } => Some(format!(
                "unsupported client version: capability version {version} is older than the \
                 minimum {minimum} this server accepts; upgrade Tailscale"
            )),
            Self::LowOrderKey(_) | Self::Decrypt(_) | Self::Noise(_) => None,
        }
    }
}

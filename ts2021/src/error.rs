//! Errors shared by both roles: the record stream and the early payload.
//! Handshake errors differ per role and stay with the roles.

use std::io;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_errors_map_to_io_kinds() {
        let kind = |e: RecordError| io::Error::from(e).kind();
        assert_eq!(kind(RecordError::Truncated), io::ErrorKind::UnexpectedEof);
        assert_eq!(kind(RecordError::Closed), io::ErrorKind::BrokenPipe);
        assert_eq!(kind(RecordError::Decrypt), io::ErrorKind::InvalidData);
    }
}

//! Tailscale's "TS2021" Noise transport, client side, as pure pieces:
//! message layout ([`wire`]), the initiator ([`handshake`]), the transport
//! cipher with controlbase's big-endian nonces, the record stream
//! ([`stream`]) and the early payload ([`early`]). The HTTP upgrade that
//! carries them is in [`crate::dial`].
//!
//! The parts both roles share (layout, cipher, record stream, early-payload
//! framing, record errors, known-answer vectors) live in the
//! `meshscale-ts2021` crate and are re-exported here.
//!
//! Facts come from tailscale `control/controlbase/{handshake,conn,messages}.go`
//! and `control/ts2021/conn.go`.

pub mod early;
mod error;
pub mod handshake;
pub mod stream;
pub mod wire;

#[cfg(test)]
mod kat;

pub use early::{EarlyPayload, EarlyPayloadReader};
pub use error::{EarlyPayloadError, HandshakeError, RecordError};
pub use handshake::{AnswerHeader, Initiator, parse_answer_header};
pub use meshscale_ts2021::TransportCipher;
pub use stream::NoiseStream;

//! Tailscale's "TS2021" Noise transport, the parts both roles share: the
//! message layout ([`wire`]), the transport cipher with controlbase's
//! big-endian nonces ([`cipher`]), the record stream ([`stream`]), the early
//! payload's framing ([`early`]), the errors of those layers and the
//! known-answer vectors ([`kat`]) both roles are checked against.
//!
//! The handshake roles are not here: the responder is in
//! `meshscale-control` (`noise::handshake`), the initiator in
//! `meshscale-controlclient` (`noise::handshake`).
//!
//! Facts come from tailscale `control/controlbase/{conn,messages}.go` and
//! `control/ts2021/conn.go`.
#![forbid(unsafe_code)]

pub mod cipher;
pub mod early;
pub mod error;
#[doc(hidden)]
pub mod kat;
pub mod stream;
pub mod wire;

pub use cipher::TransportCipher;
pub use error::{EarlyPayloadError, RecordError};
pub use stream::NoiseStream;

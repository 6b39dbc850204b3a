//! Tailscale's "TS2021" control transport, server side: the Noise IK
//! handshake carried in an HTTP upgrade, the framed Noise stream, and HTTP/2
//! inside it.
//!
//! Wiring it in:
//!
//! ```ignore
//! let key = noise::ServerKey::load_or_create(&path)?;
//! let machine_api: axum::Router = /* /machine/register, /machine/map */;
//! let server = Arc::new(noise::NoiseServer::new(key, move |conn| {
//!     let api = machine_api.clone();
//!     Box::pin(async move {
//!         if let Err(e) = noise::serve_http2(conn, api).await {
//!             tracing::debug!(error = %e, "noise connection ended");
//!         }
//!     })
//! }));
//! let app = main_router.merge(noise::router(server));
//! // handlers: `Extension(peer): Extension<noise::NoisePeer>`
//! ```
//!
//! Layers, bottom up: [`wire`] (message layout), [`handshake`] (pure
//! responder), [`conn`] (the stream),
//! [`early`] (the early payload), `upgrade` (HTTP entry points), `http2`.
//! Facts come from tailscale `control/controlbase`, `control/controlhttp`,
//! `control/ts2021`, `tailcfg` and Headscale `hscontrol/noise.go`.
//!
//! What both roles share (message layout, transport cipher, record stream,
//! early-payload framing, record errors, known-answer vectors) is in the
//! `meshscale-ts2021` crate; `wire` and `conn` re-export it.

pub mod admission;
pub mod conn;
pub mod early;
mod error;
pub mod handshake;
mod http2;
mod key;
mod upgrade;
pub mod wire;

#[cfg(test)]
mod kat;
#[cfg(test)]
mod tests;

pub use conn::NoiseStream;
pub use error::{HandshakeError, KeyError, NoiseError, RecordError};
pub use http2::{Http2Limits, NoisePeer, serve_http2, serve_http2_stream, serve_http2_with};
pub use key::{ServerKey, machine_key_text};
pub use meshscale_ts2021::TransportCipher;
pub use upgrade::{
    BoxFuture, ConnectionHandler, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MIN_PROTOCOL_VERSION,
    HANDSHAKE_HEADER, NOISE_CAPABILITY_VERSION, NoiseConnection, NoiseServer, UPGRADE_PROTOCOL,
    UpgradeRefusal, parse_upgrade_request, router,
};

//! The embedded DERP relay (Tailscale's Designated Encrypted Relay for
//! Packets), speaking DERP v2 so official Tailscale clients and our node
//! agent can relay WireGuard and disco packets through the control server.
//!
//! - [`frame`]: the wire format (pure).
//! - [`crypto`]: the handshake's NaCl boxes and JSON (pure).
//! - [`server`]: [`Relay`], the handshake and the per-connection loops.
//! - [`http`]: the `/derp` upgrade and probe routes for the main router.
//! - [`fast_start`]: a listener wrapper for clients that skip the HTTP 101.
//! - [`keyfile`]: the server's private key on disk.
//!
//! Wiring: load the key with [`load_or_create_server_key`], build a
//! [`Relay`] with a [`RelayConfig`] (its `verifier` is the admission
//! hook), merge [`router`] into the main router, and call
//! [`Relay::shutdown`] when the server stops.

pub mod crypto;
pub mod fast_start;
pub mod frame;
pub mod http;
pub mod keyfile;
mod outbox;
mod registry;
pub mod server;
#[cfg(test)]
mod test_client;

pub use fast_start::FastStartListener;
pub use frame::NodeKey;
pub use http::router;
pub use keyfile::{KeyFileError, load_or_create_server_key};
pub use server::{Relay, RelayConfig, Verdict, Verifier};

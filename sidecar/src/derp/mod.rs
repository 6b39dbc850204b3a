//! DERP client: the relay path to peers (Tailscale `derp/derp_client.go`).
//! `frame` is the pure wire format; `client` does TLS, the HTTP upgrade, the
//! handshake and the reconnecting session.

pub mod client;
pub mod frame;

pub use client::{DerpEvent, DerpHandle, DerpTarget, spawn};

//! The client side of the Tailscale control protocol, for the Meshscale node
//! agent, load generator and tests.
//!
//! ```text
//! GET /key?v=<capver>          -> the server's Noise key      (dial)
//! POST /ts2021 (HTTP upgrade)  -> Noise IK handshake          (dial, noise)
//!   Noise records              -> early payload, then HTTP/2  (noise, http2)
//!     POST /machine/register   -> RegisterResponse            (client)
//!     POST /machine/map        -> LE-length + zstd frames      (client, map)
//! ```
//!
//! Start at [`ControlClient::connect`]. The lower layers are public so that
//! tests can misbehave on purpose at any of them.
//!
//! Sources read: tailscale `control/controlbase/*`,
//! `control/controlhttp/client.go`, `control/ts2021/*`,
//! `control/controlclient/direct.go`.
//!
//! Server input is never trusted: every length is bounded ([`Limits`]),
//! every parse returns a typed error, nothing panics on it.

#![forbid(unsafe_code)]

pub mod client;
pub mod dial;
pub mod http2;
pub mod keys;
pub mod map;
pub mod noise;
pub mod requests;
pub mod url;

pub use client::{ClientError, ConnectOptions, ControlClient, Limits, RawResponse};
pub use keys::{DiscoKey, KeyError, MachineKey, NodeKey};
pub use map::{MapError, MapMessage, MapStream};
pub use url::ServerUrl;

//! The node agent's modules, as a library so that `fuzz/` can reach the
//! parsers of untrusted input (disco, DERP frames, STUN, the local API);
//! the `meshscale-sidecar` binary (`main.rs`) is a thin command line on top.

pub mod backoff;
pub mod control;
pub mod derp;
pub mod disco;
pub mod endpoints;
pub mod engine;
#[cfg(test)]
mod fuzz;
pub mod handshake;
pub mod localapi;
pub mod nacl;
pub mod netmap;
pub mod offload;
pub mod paths;
pub mod peers;
pub mod pings;
pub mod relays;
pub mod state;
pub mod stun;
pub mod tun;
pub mod udp;
pub mod wg;

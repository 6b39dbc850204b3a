//! The node protocol end to end with the official Tailscale client
//! (v1.96.4): every test builds its own namespaces, runs `meshscale serve`
//! and `tailscaled` inside them, checks one scenario and tears it all down.
//!
//! Needs root, the `meshscale` binary and the tailscale tools; see the
//! harness docs in `e2e/src/lib.rs`. `MESHSCALE_E2E_SKIP=1` skips.

mod common;
mod lan;
mod lifecycle;
mod login;
mod nat;
mod policy;
mod restart;

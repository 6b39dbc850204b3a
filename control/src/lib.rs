//! The Meshscale control server: a Tailscale-compatible coordination server
//! with a Headscale-style admin API and CLI. Start reading at [`server::run`]
//! (what `meshscale serve` does) and [`store`] (the data model).

pub mod admin;
pub mod cli;
pub mod config;
pub mod duration;
pub mod http;
pub mod ipam;
pub mod keys;
pub mod metrics;
pub mod names;
pub mod pending;
pub mod presence;
pub mod server;
pub mod state;
pub mod store;

//! The Meshscale control server: a Tailscale-compatible coordination server
//! with a Headscale-style admin API and CLI. Start reading at [`server::run`]
//! (what `meshscale serve` does) and [`store`] (the data model).

pub mod acl;
pub mod admin;
pub mod capture;
pub mod cli;
pub mod config;
pub mod derp;
pub mod derpmap;
pub mod duration;
pub mod http;
pub mod ipam;
pub mod keys;
pub mod listener;
pub mod mapper;
pub mod metrics;
pub mod names;
pub mod noise;
pub mod pending;
pub mod protocol;
pub mod server;
pub mod state;
pub mod store;
pub mod stun;

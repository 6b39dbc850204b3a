//! The Meshscale control server: a Tailscale-compatible coordination server
//! with a Headscale-style admin API and CLI. Start reading at `server::run`
//! (what `meshscale serve` does) and [`store`] (the data model).
//!
//! Modules other crates (tests, benches, fuzz targets, the loadgen) do not
//! use are private, and `unreachable_pub` keeps their items `pub(crate)`.
#![warn(unreachable_pub)]

pub mod acl;
mod admin;
mod capture;
pub mod cli;
pub mod config;
pub mod derp;
pub mod derpmap;
mod duration;
mod http;
pub mod ipam;
mod keys;
mod listener;
pub mod mapper;
pub mod metrics;
mod names;
pub mod noise;
pub mod pending;
pub mod protocol;
mod server;
pub mod state;
pub mod store;
pub mod stun;

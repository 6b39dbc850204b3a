//! The Tailscale node protocol inside the Noise channel: `/machine/register`
//! and `/machine/map`, plus the interactive-login page on the plain listener.
//! Every handler knows the peer's machine key from the Noise handshake and
//! checks that the node key in a request belongs to it.

mod ephemeral;
mod map;
mod page;
mod register;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use ephemeral::{schedule_all_ephemeral, schedule_ephemeral_deletion};

use crate::state::SharedState;

/// Register and map requests are a few KiB; Headscale caps them at 1 MiB too.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Clients older than this are refused with a message, as Headscale does
/// (capability version 113 = Tailscale v1.80).
pub const MIN_CAPABILITY_VERSION: i64 = 113;

/// The router served over HTTP/2 inside each Noise connection.
pub fn noise_router(state: SharedState) -> Router {
    Router::new()
        .route("/machine/register", post(register::register))
        .route("/machine/map", post(map::map))
        .fallback(|| async { (StatusCode::NOT_IMPLEMENTED, "not implemented") })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// Routes on the main (plain HTTP/TLS) listener.
pub fn public_router(state: SharedState) -> Router {
    Router::new()
        .route("/register/{id}", get(page::register_page))
        .with_state(state)
}

fn unsupported_version(version: i64) -> (StatusCode, String) {
    (
        StatusCode::BAD_REQUEST,
        format!(
            "unsupported client version: capability version {version} is older than {MIN_CAPABILITY_VERSION} (Tailscale v1.80); upgrade the client"
        ),
    )
}

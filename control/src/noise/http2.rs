//! HTTP/2 inside the Noise stream: the client speaks h2c with prior knowledge
//! (Go `net/http` with unencrypted HTTP/2) over the Noise connection, and the
//! server answers `/machine/*` there. Each request carries the peer's machine
//! key as a [`NoisePeer`] extension, so handlers can check that the node key
//! in a request belongs to the machine on the other end.

use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

use super::admission::PrefaceDeadline;
use super::conn::NoiseStream;
use super::error::NoiseError;
use super::key::machine_key_text;
use super::upgrade::NoiseConnection;

/// Who is on the other end of the Noise connection a request came in on.
/// Present in the extensions of every request [`serve_http2`] routes; take it
/// with `axum::Extension<NoisePeer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoisePeer {
    /// The client's Noise static key (its machine key), authenticated by the
    /// handshake.
    pub machine_key: [u8; 32],
    /// The version from the handshake: the client's capability version.
    pub protocol_version: u16,
}

impl NoisePeer {
    /// `mkey:<hex>`.
    pub fn machine_key_text(&self) -> String {
        machine_key_text(&self.machine_key)
    }
}

/// Limits for the HTTP/2 server on one Noise connection. One client uses one
/// connection for everything (register, the map long-poll, small calls), so
/// these are per device.
#[derive(Debug, Clone)]
pub struct Http2Limits {
    pub max_concurrent_streams: u32,
    /// Bytes of decoded headers per request; hyper's default is 16 MiB, far
    /// more than a Tailscale client ever sends.
    pub max_header_list_size: u32,
    /// Ping an idle connection this often, to notice clients that vanished
    /// while holding a long-poll.
    pub keep_alive_interval: Option<Duration>,
    /// Close the connection if a ping isn't answered within this.
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_header_list_size: 64 * 1024,
            keep_alive_interval: Some(Duration::from_secs(60)),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `router` over an accepted Noise connection with default limits,
/// until the client goes away.
pub async fn serve_http2(conn: NoiseConnection, router: Router) -> Result<(), NoiseError> {
    serve_http2_with(conn, router, &Http2Limits::default()).await
}

/// [`serve_http2`] with explicit limits.
pub async fn serve_http2_with(
    conn: NoiseConnection,
    router: Router,
    limits: &Http2Limits,
) -> Result<(), NoiseError> {
    let peer = conn.peer();
    serve_io(
        PrefaceDeadline::new(conn.stream, conn.admission),
        peer,
        router,
        limits,
    )
    .await
}

/// Serves `router` over any Noise stream (tests use in-memory pipes).
pub async fn serve_http2_stream<S>(
    stream: NoiseStream<S>,
    peer: NoisePeer,
    router: Router,
    limits: &Http2Limits,
) -> Result<(), NoiseError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_io(stream, peer, router, limits).await
}

async fn serve_io<I>(
    io: I,
    peer: NoisePeer,
    router: Router,
    limits: &Http2Limits,
) -> Result<(), NoiseError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer);
        router.clone().oneshot(req)
    });
    let io = crate::capture::tap(io, "noise_h2");
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(limits.keep_alive_interval)
        .keep_alive_timeout(limits.keep_alive_timeout);
    builder
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(NoiseError::Http2)
}

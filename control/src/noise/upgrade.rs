//! The plain-HTTP entry points of the TS2021 transport: `GET /key` and the
//! `/ts2021` upgrade (Tailscale `controlhttpserver.AcceptHTTP`, Headscale
//! `KeyHandler` and `NoiseUpgradeHandler`).
//!
//! The client puts its handshake initiation in the `X-Tailscale-Handshake`
//! header to save a round trip. The server answers `101 Switching Protocols`
//! and then, on the raw connection: the handshake response, and through the
//! Noise stream the early payload. Both leave in one write. From then on the
//! connection belongs to the [`NoiseServer`]'s handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::admission::{
    Admission, MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_IP, PendingLimiter, PendingSlot,
};
use super::conn::NoiseStream;
use super::early;
use super::error::{HandshakeError, NoiseError};
use super::handshake::{self, Accepted};
use super::http2::NoisePeer;
use super::key::{ServerKey, machine_key_text};
use super::wire;
use crate::metrics::Metrics;

/// The `Upgrade` token of the control protocol.
pub const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// Request header carrying the base64 (standard, padded) initiation.
pub const HANDSHAKE_HEADER: &str = "x-tailscale-handshake";
/// `/key` only answers clients at or above this capability version, the one
/// that brought Noise (Headscale's `NoiseCapabilityVersion`); older ones get
/// an empty 200, as from Headscale.
pub const NOISE_CAPABILITY_VERSION: i64 = 39;
/// Oldest client capability version accepted by default: Headscale's
/// `MinSupportedCapabilityVersion` (113, Tailscale 1.74).
pub const DEFAULT_MIN_PROTOCOL_VERSION: u16 = 113;
/// Time allowed from the upgrade request to the client's HTTP/2 preface
/// inside Noise (config `timeouts.noise_handshake`).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The initiation is 101 bytes, 136 in base64; anything much longer is junk
/// and isn't worth decoding.
const MAX_HANDSHAKE_HEADER: usize = 256;

/// The future a connection handler returns.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
/// Called once per established Noise connection, on its own task.
pub type ConnectionHandler = Arc<dyn Fn(NoiseConnection) -> BoxFuture + Send + Sync>;

/// An established Noise connection, handed to the [`NoiseServer`]'s handler.
pub struct NoiseConnection {
    /// Plaintext stream; the early payload has already been sent, so the
    /// next bytes either way are HTTP/2.
    pub stream: NoiseStream<TokioIo<Upgraded>>,
    /// The client's machine key, authenticated by the handshake.
    pub machine_key: [u8; 32],
    /// The client's capability version from the handshake.
    pub protocol_version: u16,
    /// Until its HTTP/2 preface arrives the connection holds a pending
    /// slot and runs against the handshake deadline.
    pub admission: Admission,
}

impl NoiseConnection {
    /// `mkey:<hex>`.
    pub fn machine_key_text(&self) -> String {
        machine_key_text(&self.machine_key)
    }

    pub fn peer(&self) -> NoisePeer {
        NoisePeer {
            machine_key: self.machine_key,
            protocol_version: self.protocol_version,
        }
    }
}

impl std::fmt::Debug for NoiseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseConnection")
            .field("machine_key", &self.machine_key_text())
            .field("protocol_version", &self.protocol_version)
            .finish_non_exhaustive()
    }
}

/// The server side of TS2021: its key, its policy, and who gets connections.
pub struct NoiseServer {
    key: ServerKey,
    on_conn: ConnectionHandler,
    min_protocol_version: u16,
    handshake_timeout: Duration,
    pending: Arc<PendingLimiter>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for NoiseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseServer")
            .field("key", &self.key)
            .field("min_protocol_version", &self.min_protocol_version)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl NoiseServer {
    pub fn new<F>(key: ServerKey, on_conn: F) -> Self
    where
        F: Fn(NoiseConnection) -> BoxFuture + Send + Sync + 'static,
    {
        Self {
            key,
            on_conn: Arc::new(on_conn),
            min_protocol_version: DEFAULT_MIN_PROTOCOL_VERSION,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            pending: PendingLimiter::new(MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_IP),
            metrics: None,
        }
    }

    /// Where refused upgrades are counted.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How many connections may be between the upgrade and their HTTP/2
    /// preface at once, in total and per source address.
    pub fn with_pending_limits(mut self, total: usize, per_ip: usize) -> Self {
        self.pending = PendingLimiter::new(total, per_ip);
        self
    }

    /// Connections between the upgrade and their HTTP/2 preface now.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.pending()
    }

    /// Clients below this version get a controlbase error message telling
    /// them to upgrade, instead of a connection.
    pub fn with_min_protocol_version(mut self, version: u16) -> Self {
        self.min_protocol_version = version;
        self
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    pub fn key(&self) -> &ServerKey {
        &self.key
    }
}

/// `GET /key` and `GET|POST /ts2021`, ready to merge into the main router.
pub fn router<S>(server: Arc<NoiseServer>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/key", get(key_handler))
        .route("/ts2021", get(ts2021_handler).post(ts2021_handler))
        .with_state(server)
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    // Same body shape as Go's http.Error.
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        format!("{message}\n"),
    )
        .into_response()
}

async fn key_handler(
    State(server): State<Arc<NoiseServer>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let version = params
        .iter()
        .find(|(k, _)| k == "v")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if version.is_empty() {
        return plain_error(StatusCode::BAD_REQUEST, "capability version must be set");
    }
    let Ok(version) = version.parse::<i64>() else {
        return plain_error(StatusCode::BAD_REQUEST, "invalid capability version");
    };
    if version < NOISE_CAPABILITY_VERSION {
        // Pre-Noise clients would want the legacy NaCl key, which this
        // server doesn't have.
        return StatusCode::OK.into_response();
    }
    let body = serde_json::json!({
        "legacyPublicKey": machine_key_text(&[0; 32]),
        "publicKey": server.key.public_text(),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        format!("{body}\n"),
    )
        .into_response()
}

/// Why an upgrade request is answered with a plain HTTP error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRefusal {
    pub status: StatusCode,
    pub message: &'static str,
}

impl UpgradeRefusal {
    fn bad_request(message: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

/// Validates the upgrade headers and returns the decoded initiation, with
/// controlhttpserver's status codes and messages.
pub fn parse_upgrade_request(headers: &HeaderMap) -> Result<Vec<u8>, UpgradeRefusal> {
    let next = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if next.is_empty() {
        return Err(UpgradeRefusal::bad_request("missing next protocol"));
    }
    if next.eq_ignore_ascii_case("websocket") {
        // Only browser (wasm) clients use it; not implemented here.
        return Err(UpgradeRefusal::bad_request(
            "websocket transport not supported",
        ));
    }
    if !next.eq_ignore_ascii_case(UPGRADE_PROTOCOL) {
        return Err(UpgradeRefusal::bad_request("unknown next protocol"));
    }
    let init = headers
        .get(HANDSHAKE_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if init.is_empty() {
        return Err(UpgradeRefusal::bad_request(
            "missing Tailscale handshake header",
        ));
    }
    if init.len() > MAX_HANDSHAKE_HEADER {
        return Err(UpgradeRefusal::bad_request(
            "invalid tailscale handshake header",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(init)
        .map_err(|_| UpgradeRefusal::bad_request("invalid tailscale handshake header"))
}

async fn ts2021_handler(State(server): State<Arc<NoiseServer>>, mut req: Request) -> Response {
    let init = match parse_upgrade_request(req.headers()) {
        Ok(init) => init,
        Err(refusal) => {
            if refusal.message == "missing next protocol" {
                tracing::warn!(
                    "/ts2021 request without an Upgrade header; if this server is behind a \
                     reverse proxy, make it pass Upgrade and Connection through"
                );
            }
            return plain_error(refusal.status, refusal.message);
        }
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<OnUpgrade>() else {
        return plain_error(StatusCode::BAD_REQUEST, "make request over HTTP/1");
    };
    // Checked before the Diffie-Hellman work, so a flood costs us little.
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let slot = match server.pending.admit(ip) {
        Ok(slot) => slot,
        Err(full) => {
            tracing::debug!(?ip, error = %full, "/ts2021 refused");
            if let Some(m) = &server.metrics {
                m.noise_upgrade_refused(full.reason());
            }
            let mut response = plain_error(StatusCode::SERVICE_UNAVAILABLE, &full.to_string());
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            // Free the socket too, not just the slot.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    let deadline = tokio::time::Instant::now() + server.handshake_timeout;

    // The handshake is pure computation on the header, so it runs now; its
    // outcome, good or bad, is sent after the 101 because that is the only
    // place a Tailscale client reads a handshake answer from.
    crate::capture::record("noise_initiation", &init);
    let outcome = handshake::respond(&server.key, &init, server.min_protocol_version);
    tokio::spawn(run_connection(server, on_upgrade, outcome, slot, deadline));

    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

async fn run_connection(
    server: Arc<NoiseServer>,
    on_upgrade: OnUpgrade,
    outcome: Result<Accepted, HandshakeError>,
    slot: PendingSlot,
    deadline: tokio::time::Instant,
) {
    let finished = tokio::time::timeout_at(
        deadline,
        finish_handshake(on_upgrade, outcome, Admission::new(Some(slot), deadline)),
    )
    .await;
    let conn = match finished {
        Ok(Ok(conn)) => conn,
        Ok(Err(NoiseError::Handshake(e @ HandshakeError::UnsupportedVersion { .. }))) => {
            tracing::info!(error = %e, "refused noise connection from an old client");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "noise handshake failed");
            return;
        }
        Err(_) => {
            let e = NoiseError::HandshakeTimeout(server.handshake_timeout);
            tracing::debug!(error = %e, "noise handshake failed");
            return;
        }
    };
    tracing::debug!(machine_key = %conn.machine_key_text(), version = conn.protocol_version, "noise connection established");
    (server.on_conn)(conn).await;
}

/// Waits for the upgrade, then answers the handshake on the connection.
async fn finish_handshake(
    on_upgrade: OnUpgrade,
    outcome: Result<Accepted, HandshakeError>,
    admission: Admission,
) -> Result<NoiseConnection, NoiseError> {
    let io = TokioIo::new(on_upgrade.await.map_err(NoiseError::Upgrade)?);
    let (stream, peer) = answer_handshake(io, outcome).await?;
    Ok(NoiseConnection {
        stream,
        machine_key: peer.machine_key,
        protocol_version: peer.protocol_version,
        admission,
    })
}

/// Sends the handshake's answer on `io`: an error message if refused, else
/// the response plus the early payload, in one write.
pub(crate) async fn answer_handshake<S>(
    mut io: S,
    outcome: Result<Accepted, HandshakeError>,
) -> Result<(NoiseStream<S>, NoisePeer), NoiseError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let accepted = match outcome {
        Ok(accepted) => accepted,
        Err(e) => {
            if let Some(message) = e.client_message() {
                // Best effort: the client may already be gone.
                let _ = io.write_all(&wire::error_message(&message)).await;
                let _ = io.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let Accepted {
        response,
        machine_key,
        protocol_version,
        transport,
    } = accepted;
    let mut stream = NoiseStream::new(io, transport);
    stream.queue_cleartext(&response);
    if protocol_version >= early::EARLY_NOISE_MIN_VERSION {
        stream
            .write_all(&early::encode(&early::new_challenge()))
            .await?;
    }
    stream.flush().await?;
    Ok((
        stream,
        NoisePeer {
            machine_key,
            protocol_version,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn upgrade_header_checks() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 101]);
        let refusal = |h: &HeaderMap| parse_upgrade_request(h).unwrap_err().message;

        assert_eq!(refusal(&headers(&[])), "missing next protocol");
        assert_eq!(
            refusal(&headers(&[("upgrade", "h2c")])),
            "unknown next protocol"
        );
        assert_eq!(
            refusal(&headers(&[
                ("upgrade", "websocket"),
                (HANDSHAKE_HEADER, &b64)
            ])),
            "websocket transport not supported"
        );
        assert_eq!(
            refusal(&headers(&[("upgrade", UPGRADE_PROTOCOL)])),
            "missing Tailscale handshake header"
        );
        assert_eq!(
            refusal(&headers(&[
                ("upgrade", UPGRADE_PROTOCOL),
                (HANDSHAKE_HEADER, "not base64!")
            ])),
            "invalid tailscale handshake header"
        );
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(
            refusal(&headers(&[
                ("upgrade", UPGRADE_PROTOCOL),
                (HANDSHAKE_HEADER, unpadded)
            ])),
            "invalid tailscale handshake header"
        );
        let huge = "A".repeat(4000);
        assert_eq!(
            refusal(&headers(&[
                ("upgrade", UPGRADE_PROTOCOL),
                (HANDSHAKE_HEADER, &huge)
            ])),
            "invalid tailscale handshake header"
        );

        let ok = headers(&[
            ("upgrade", "Tailscale-Control-Protocol"),
            (HANDSHAKE_HEADER, &b64),
        ]);
        assert_eq!(parse_upgrade_request(&ok).unwrap(), vec![1u8; 101]);
    }
}

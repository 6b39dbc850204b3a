//! [`ControlClient`]: one Noise connection to a control server and the
//! `/machine/*` calls over it (Tailscale `control/controlclient/direct.go`
//! and `control/ts2021/client.go`).
//!
//! Every request goes to `https://<host>/machine/...` (Go rewrites `http:`
//! to `https:` even over plain Noise; servers ignore the scheme), with
//! `Content-Type: application/json` and one `Ts-Lb: nodekey:…` header per
//! non-zero node key involved (a load-balancer hint).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use meshscale_wire::tailcfg::{
    CURRENT_CAPABILITY_VERSION, EarlyNoise, MapRequest, RegisterRequest, RegisterResponse,
};
use meshscale_wire::{MachinePublic, NodePublic};
use tokio::sync::watch;

use crate::dial::{DialError, Dialer};
use crate::http2::Http2Conn;
use crate::keys::MachineKey;
use crate::map::{MapDecoder, MapError, MapMessage, MapStream};
use crate::noise::early::MAX_EARLY_PAYLOAD;
use crate::noise::{EarlyPayload, EarlyPayloadError, EarlyPayloadReader};
use crate::url::{ServerUrl, UrlError};

/// `tailcfg.LBHeader`.
pub const LB_HEADER: &str = "Ts-Lb";
/// How much of an error response's body is kept for the error message.
const MAX_ERROR_BODY: usize = 1024;

/// Size and time bounds on what the server may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Register and other JSON responses (Go reads at most 1 MiB).
    pub max_response_body: usize,
    /// One map frame as it arrives (compressed).
    pub max_map_frame: usize,
    /// One map message after decompression.
    pub max_map_json: usize,
    pub max_early_payload: usize,
    /// A map stream with no message for this long is dead (Go's
    /// `watchdogTimeout`, 120 s; servers send keep-alives every ~60 s).
    pub map_watchdog: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_response_body: 1 << 20,
            max_map_frame: 16 << 20,
            max_map_json: 64 << 20,
            max_early_payload: MAX_EARLY_PAYLOAD,
            map_watchdog: Some(Duration::from_secs(120)),
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Sent as the Noise header version and as `Version` in requests that
    /// leave it 0.
    pub protocol_version: u16,
    /// The server's Noise key, if already known; else fetched from `/key`.
    pub server_key: Option<MachinePublic>,
    /// Extra trusted CAs (PEM) for `https://` servers.
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Bound on each connection step (key fetch, upgrade + handshake,
    /// HTTP/2 setup) and on waiting for the early payload.
    pub timeout: Duration,
    pub limits: Limits,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            // The crate's constant is 133; a u16 by construction.
            protocol_version: u16::try_from(CURRENT_CAPABILITY_VERSION).unwrap_or(133),
            server_key: None,
            extra_ca_pem: None,
            timeout: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

/// Anything that can go wrong talking to the control server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("HTTP/2 over noise: {0}")]
    Http2(#[source] hyper::Error),
    #[error("the noise connection is closed")]
    Closed,
    #[error("{path}: HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("{path}: rate limited; retry after {retry_after:?}")]
    RateLimited {
        path: String,
        retry_after: Option<Duration>,
    },
    #[error("{path}: response body larger than {max} bytes")]
    BodyTooLarge { path: String, max: usize },
    #[error("{path}: invalid JSON response: {reason}")]
    Json { path: String, reason: String },
    #[error("invalid request: {0}")]
    Request(String),
    #[error("early payload: {0}")]
    EarlyPayload(#[from] EarlyPayloadError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

/// A response to [`ControlClient::raw_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// At most [`Limits::max_response_body`] bytes.
    pub body: Bytes,
}

/// One Noise connection to a control server. Methods take `&self`: HTTP/2
/// multiplexes, so a register long-poll, a map stream and endpoint updates
/// can run concurrently. Dropping the last handle (including open
/// [`MapStream`]s) closes the connection.
#[derive(Debug, Clone)]
pub struct ControlClient {
    conn: Http2Conn,
    early: watch::Receiver<EarlyPayload>,
    authority: String,
    server_key: MachinePublic,
    machine_key: MachinePublic,
    protocol_version: u16,
    timeout: Duration,
    limits: Limits,
}

impl ControlClient {
    /// Connects to `server_url` (`http://` or `https://`) as `machine_key`.
    pub async fn connect(
        server_url: &str,
        machine_key: &MachineKey,
        opts: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let url: ServerUrl = server_url.parse()?;
        let dialer = Dialer::new(url, opts.extra_ca_pem.as_deref(), opts.timeout)?;
        Self::connect_with(&dialer, machine_key, opts).await
    }

    /// [`ControlClient::connect`] with a prepared [`Dialer`], which many
    /// clients can share (TLS roots are loaded once).
    pub async fn connect_with(
        dialer: &Dialer,
        machine_key: &MachineKey,
        opts: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let server_key = match opts.server_key {
            Some(k) => k,
            None => dialer.fetch_server_key(opts.protocol_version).await?,
        };
        let stream = dialer
            .handshake(machine_key, &server_key, opts.protocol_version)
            .await?;
        let (reader, early) = EarlyPayloadReader::new(stream, opts.limits.max_early_payload);
        let conn = tokio::time::timeout(opts.timeout, Http2Conn::handshake(reader))
            .await
            .map_err(|_| ClientError::Timeout {
                what: "HTTP/2 handshake",
                after: opts.timeout,
            })?
            .map_err(ClientError::Http2)?;
        Ok(Self {
            conn,
            early,
            authority: dialer.url().host_header(),
            server_key,
            machine_key: machine_key.public(),
            protocol_version: opts.protocol_version,
            timeout: opts.timeout,
            limits: opts.limits,
        })
    }

    pub fn server_key(&self) -> MachinePublic {
        self.server_key
    }

    pub fn machine_key(&self) -> MachinePublic {
        self.machine_key
    }

    pub fn protocol_version(&self) -> u16 {
        self.protocol_version
    }

    /// Whether the connection has ended; a closed client must be replaced.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// The server's early payload, or `None` if it went straight to HTTP/2.
    pub async fn early_payload(&self) -> Result<Option<EarlyNoise>, ClientError> {
        let mut rx = self.early.clone();
        let state =
            tokio::time::timeout(self.timeout, rx.wait_for(|s| *s != EarlyPayload::Pending))
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "early payload",
                    after: self.timeout,
                })?
                .map_err(|_| ClientError::Closed)?
                .clone();
        match state {
            EarlyPayload::Received(e) => Ok(Some(e)),
            EarlyPayload::Absent | EarlyPayload::Pending => Ok(None),
            EarlyPayload::Failed(e) => Err(e.into()),
        }
    }

    fn version(&self, v: i64) -> i64 {
        if v == 0 {
            i64::from(self.protocol_version)
        } else {
            v
        }
    }

    /// `POST /machine/register`. The answer is returned as the server gave
    /// it: a refusal is `Ok` with `error` set, interactive login is `Ok`
    /// with `auth_url` set (poll again with `followup`). A `version` of 0
    /// is replaced by the connection's protocol version.
    pub async fn register(
        &self,
        mut req: RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        req.version = self.version(req.version);
        let path = "/machine/register";
        let body = encode(&req)?;
        // Go adds OldNodeKey first, then NodeKey.
        let resp = self
            .send(Method::POST, path, body, &[req.old_node_key, req.node_key])
            .await?;
        let body = self.ok_body(path, resp).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Json {
            path: path.into(),
            reason: e.to_string(),
        })
    }

    /// `POST /machine/map` as a long poll: `stream` is forced on and
    /// `omit_peers` off. Decoding follows `req.compress` (`"zstd"`, which
    /// official clients always send, or plain JSON).
    pub async fn map_stream(&self, mut req: MapRequest) -> Result<MapStream, ClientError> {
        req.stream = true;
        req.omit_peers = false;
        self.open_map(req).await
    }

    /// `POST /machine/map` without streaming: one full map, then the end.
    pub async fn map_once(&self, mut req: MapRequest) -> Result<MapMessage, ClientError> {
        req.stream = false;
        req.omit_peers = false;
        let mut stream = self.open_map(req).await?;
        match stream.next_message().await {
            Some(Ok(m)) => Ok(m),
            Some(Err(e)) => Err(e.into()),
            None => Err(ClientError::Closed),
        }
    }

    /// `POST /machine/map` with `Stream: false, OmitPeers: true`: pushes new
    /// endpoints, disco key or Hostinfo without disturbing the long poll.
    /// The body is read (bounded) and discarded, as Go does.
    pub async fn map_update(&self, mut req: MapRequest) -> Result<(), ClientError> {
        req.stream = false;
        req.omit_peers = true;
        req.version = self.version(req.version);
        let path = "/machine/map";
        let resp = self
            .send(Method::POST, path, encode(&req)?, &[req.node_key])
            .await?;
        self.ok_body(path, resp).await.map(|_| ())
    }

    async fn open_map(&self, mut req: MapRequest) -> Result<MapStream, ClientError> {
        req.version = self.version(req.version);
        let path = "/machine/map";
        let body = encode(&req)?;
        // Go's watchdog also covers the wait for the response headers.
        let lb = [req.node_key];
        let send = self.send(Method::POST, path, body, &lb);
        let resp = match self.limits.map_watchdog {
            Some(d) => {
                tokio::time::timeout(d, send)
                    .await
                    .map_err(|_| ClientError::Timeout {
                        what: "map response",
                        after: d,
                    })??
            }
            None => send.await?,
        };
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(path, resp).await);
        }
        let decoder = MapDecoder::new(
            req.compress == "zstd",
            self.limits.max_map_frame,
            self.limits.max_map_json,
        );
        Ok(MapStream::new(
            resp.into_body(),
            decoder,
            self.limits.map_watchdog,
            self.conn.keep_alive(),
        ))
    }

    /// Any request, for tests and tools: `body` is sent as is, the status
    /// and (bounded) body come back whatever they are.
    pub async fn raw_request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        lb_keys: &[NodePublic],
    ) -> Result<RawResponse, ClientError> {
        let resp = self.send(method, path, body, lb_keys).await?;
        let status = resp.status().as_u16();
        let body = self.read_body(path, resp.into_body()).await?;
        Ok(RawResponse { status, body })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        lb_keys: &[NodePublic],
    ) -> Result<Response<Incoming>, ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed);
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header(header::CONTENT_TYPE, "application/json");
        for key in lb_keys.iter().filter(|k| !k.is_zero()) {
            builder = builder.header(LB_HEADER, key.to_string());
        }
        let req = builder
            .body(Full::new(body))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let mut sender = self.conn.sender();
        sender.ready().await.map_err(|e| self.http2_error(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.http2_error(e))
    }

    fn http2_error(&self, e: hyper::Error) -> ClientError {
        if e.is_closed() || self.is_closed() {
            ClientError::Closed
        } else {
            ClientError::Http2(e)
        }
    }

    /// The body of a 200 response, else the matching error.
    async fn ok_body(&self, path: &str, resp: Response<Incoming>) -> Result<Bytes, ClientError> {
        if resp.status() != StatusCode::OK {
            return Err(self.status_error(path, resp).await);
        }
        self.read_body(path, resp.into_body()).await
    }

    async fn read_body(&self, path: &str, body: Incoming) -> Result<Bytes, ClientError> {
        let max = self.limits.max_response_body;
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) => match e.downcast::<hyper::Error>() {
                Ok(e) => Err(self.http2_error(*e)),
                Err(_) => Err(ClientError::BodyTooLarge {
                    path: path.into(),
                    max,
                }),
            },
        }
    }

    async fn status_error(&self, path: &str, resp: Response<Incoming>) -> ClientError {
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return ClientError::RateLimited {
                path: path.into(),
                retry_after: retry_after(resp.headers().get(header::RETRY_AFTER)),
            };
        }
        let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        ClientError::Status {
            path: path.into(),
            status: status.as_u16(),
            body,
        }
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ClientError::Request(e.to_string()))
}

/// `Retry-After` in seconds (the form Tailscale's control sends).
fn retry_after(value: Option<&hyper::header::HeaderValue>) -> Option<Duration> {
    let secs: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn retry_after_seconds_only() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("30"))),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("Wed, 21 Oct 2015"))),
            None
        );
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn default_protocol_version_is_the_crates() {
        assert_eq!(
            i64::from(ConnectOptions::default().protocol_version),
            CURRENT_CAPABILITY_VERSION
        );
    }
}

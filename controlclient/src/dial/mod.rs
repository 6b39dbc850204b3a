//! Reaching the server before the Noise channel exists: `GET /key?v=<capver>`
//! for its Noise key (Tailscale `direct.go: loadServerPubKeys`), then the
//! `POST /ts2021` upgrade carrying the handshake initiation in the
//! `X-Tailscale-Handshake` header (`controlhttp/client.go: tryURLUpgrade`),
//! over TCP or TLS.
//!
//! Each step is separately callable so that tests can send malformed
//! upgrades and records on purpose.

mod tls;
mod transport;

use std::io;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use meshscale_wire::MachinePublic;
use meshscale_wire::tailcfg::OverTlsPublicKeyResponse;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

pub use tls::{TlsConfigs, TlsSetupError, parse_ca_pem};
pub use transport::Transport;

use crate::keys::MachineKey;
use crate::noise::handshake::{AnswerHeader, Initiator, parse_answer_header};
use crate::noise::wire::{HEADER_LEN, RESPONSE_LEN};
use crate::noise::{HandshakeError, NoiseStream};
use crate::url::ServerUrl;

/// The `Upgrade` token of the control protocol.
pub const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// Request header carrying the base64 (standard, padded) initiation.
pub const HANDSHAKE_HEADER: &str = "X-Tailscale-Handshake";
/// Go reads at most this much of a `/key` answer.
pub const MAX_KEY_RESPONSE: usize = 64 << 10;
/// How much of a refused upgrade's body is kept for the error message.
const MAX_ERROR_BODY: usize = 1024;

/// The upgraded connection the Noise records run over.
pub type UpgradedIo = TokioIo<Upgraded>;

/// Why the server could not be reached or the Noise channel set up.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS handshake with {host}: {source}")]
    Tls { host: String, source: io::Error },
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error(transparent)]
    TlsSetup(#[from] TlsSetupError),
    #[error("HTTP/1 to the server: {0}")]
    Http(#[source] hyper::Error),
    #[error("invalid request: {0}")]
    Request(String),
    #[error("fetch control key: HTTP {0}")]
    KeyStatus(u16),
    #[error("fetch control key response: more than {MAX_KEY_RESPONSE} bytes")]
    KeyTooLarge,
    #[error("fetch control key response: {0}")]
    KeyJson(String),
    #[error("control server is too old; no noise key")]
    NoNoiseKey,
    /// The server answered the upgrade with something other than 101.
    #[error("unexpected HTTP response to the noise upgrade: {status}: {body}")]
    UpgradeRefused { status: u16, body: String },
    #[error("server switched to unexpected protocol {0:?}")]
    WrongProtocol(String),
    #[error("noise upgrade: {0}")]
    Upgrade(#[source] hyper::Error),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// How to reach one control server; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Dialer {
    url: ServerUrl,
    tls: Option<TlsConfigs>,
    timeout: Duration,
}

impl Dialer {
    /// `extra_ca_pem` adds trusted CAs for `https://` servers; `timeout`
    /// bounds each operation (Go allows 5–60 s for a dial).
    pub fn new(
        url: ServerUrl,
        extra_ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, DialError> {
        let tls = if url.is_tls() {
            Some(TlsConfigs::new(extra_ca_pem)?)
        } else {
            None
        };
        Ok(Self { url, tls, timeout })
    }

    pub fn url(&self) -> &ServerUrl {
        &self.url
    }

    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, DialError>>,
    ) -> Result<T, DialError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| DialError::Timeout(self.timeout))?
    }

    /// Opens TCP, then TLS for `https://` (`strict`: verify the certificate).
    pub async fn connect_transport(&self, strict: bool) -> Result<Transport, DialError> {
        self.timed(self.connect_transport_inner(strict)).await
    }

    async fn connect_transport_inner(&self, strict: bool) -> Result<Transport, DialError> {
        let (host, port) = self.url.socket_target();
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|source| DialError::Connect {
                addr: format!("{}:{port}", self.url.host_header()),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Transport::Tcp(tcp));
        };
        let config = if strict {
            tls.strict.clone()
        } else {
            tls.log_only.clone()
        };
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| DialError::ServerName(host.to_string()))?;
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| DialError::Tls {
                host: host.to_string(),
                source,
            })?;
        Ok(Transport::Tls(Box::new(stream)))
    }

    /// `GET /key?v=<capver>`: the server's Noise public key.
    pub async fn fetch_server_key(
        &self,
        capability_version: u16,
    ) -> Result<MachinePublic, DialError> {
        self.timed(async {
            let transport = self.connect_transport_inner(true).await?;
            let req = Request::get(self.url.key_path(capability_version))
                .header(header::HOST, self.url.host_header())
                .body(Empty::<Bytes>::new())
                .map_err(|e| DialError::Request(e.to_string()))?;
            let (resp, _conn) = send_http1(transport, req, false).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_KEY_RESPONSE)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => DialError::Http(*e),
                    Err(_) => DialError::KeyTooLarge,
                })?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(DialError::KeyStatus(status.as_u16()));
            }
            parse_key_response(&body)
        })
        .await
    }

    /// `POST /ts2021` with `handshake_header` as the `X-Tailscale-Handshake`
    /// value, sent as given (tests pass malformed ones). Returns the switched
    /// connection after checking the 101 the way Go does.
    pub async fn upgrade(&self, handshake_header: &str) -> Result<UpgradedIo, DialError> {
        self.timed(self.upgrade_inner(handshake_header)).await
    }

    async fn upgrade_inner(&self, handshake_header: &str) -> Result<UpgradedIo, DialError> {
        let transport = self.connect_transport_inner(false).await?;
        let req = Request::post(self.url.upgrade_path())
            .header(header::HOST, self.url.host_header())
            .header(header::UPGRADE, UPGRADE_PROTOCOL)
            .header(header::CONNECTION, "upgrade")
            .header(HANDSHAKE_HEADER, handshake_header)
            .body(Empty::<Bytes>::new())
            .map_err(|e| DialError::Request(e.to_string()))?;
        let (resp, conn) = send_http1(transport, req, true).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(DialError::UpgradeRefused { status, body });
        }
        // Exact comparison, as Go's `resp.Header.Get("Upgrade") != ...`.
        let next = resp
            .headers()
            .get(header::UPGRADE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if next != UPGRADE_PROTOCOL {
            return Err(DialError::WrongProtocol(next));
        }
        let upgraded = hyper::upgrade::on(resp).await.map_err(DialError::Upgrade)?;
        // The HTTP/1 connection task has handed the socket over and ends.
        drop(conn);
        Ok(TokioIo::new(upgraded))
    }

    /// The whole Noise dial: initiation in the upgrade, response read and
    /// checked, transport ready. The early payload (if any) is still unread.
    pub async fn handshake(
        &self,
        machine: &MachineKey,
        server: &MachinePublic,
        protocol_version: u16,
    ) -> Result<NoiseStream<UpgradedIo>, DialError> {
        self.timed(async {
            let init = Initiator::new(machine, server, protocol_version)?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(init.initiation());
            let mut io = self.upgrade_inner(&encoded).await?;
            let response = read_handshake_response(&mut io).await?;
            let cipher = init.finish(&response)?;
            Ok(NoiseStream::new(io, cipher))
        })
        .await
    }
}

/// Aborts the HTTP/1 connection task when dropped.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one HTTP/1.1 request on a fresh connection.
async fn send_http1(
    transport: Transport,
    req: Request<Empty<Bytes>>,
    upgrades: bool,
) -> Result<(Response<Incoming>, ConnTask), DialError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(transport))
        .await
        .map_err(DialError::Http)?;
    let task = if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "HTTP/1 connection to the control server ended");
            }
        })
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/1 connection to the control server ended");
            }
        })
    };
    let task = ConnTask(task);
    let resp = sender.send_request(req).await.map_err(DialError::Http)?;
    Ok((resp, task))
}

/// Parses a `/key` answer. Go falls back to a bare legacy key when the body
/// is not JSON, but such a server has no Noise key either, so that ends in
/// the same error here.
pub fn parse_key_response(body: &[u8]) -> Result<MachinePublic, DialError> {
    let resp: OverTlsPublicKeyResponse = serde_json::from_slice(body).map_err(|e| {
        if body.is_empty() {
            DialError::NoNoiseKey
        } else {
            DialError::KeyJson(e.to_string())
        }
    })?;
    if resp.public_key.is_zero() {
        return Err(DialError::NoNoiseKey);
    }
    Ok(resp.public_key)
}

/// Reads the server's answer to the initiation: the 51-byte response, or
/// its refusal text as [`HandshakeError::Server`].
pub async fn read_handshake_response<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<[u8; RESPONSE_LEN], HandshakeError> {
    let mut response = [0u8; RESPONSE_LEN];
    io.read_exact(&mut response[..HEADER_LEN])
        .await
        .map_err(HandshakeError::Io)?;
    match parse_answer_header([response[0], response[1], response[2]])? {
        AnswerHeader::Response => {
            io.read_exact(&mut response[HEADER_LEN..])
                .await
                .map_err(HandshakeError::Io)?;
            Ok(response)
        }
        AnswerHeader::Error { len } => {
            // len <= u16::MAX: bounded by the header itself.
            let mut text = vec![0u8; len];
            io.read_exact(&mut text).await.map_err(HandshakeError::Io)?;
            Err(HandshakeError::Server(
                String::from_utf8_lossy(&text).into_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_responses() {
        let key = format!("mkey:{}", "ab".repeat(32));
        let body = format!(
            r#"{{"legacyPublicKey":"mkey:{}","publicKey":"{key}"}}"#,
            "0".repeat(64)
        );
        assert_eq!(
            parse_key_response(body.as_bytes()).unwrap().to_string(),
            key
        );
        assert!(matches!(
            parse_key_response(format!(r#"{{"publicKey":"mkey:{}"}}"#, "0".repeat(64)).as_bytes()),
            Err(DialError::NoNoiseKey)
        ));
        assert!(matches!(
            parse_key_response(b""),
            Err(DialError::NoNoiseKey)
        ));
        assert!(matches!(
            parse_key_response(b"{}"),
            Err(DialError::NoNoiseKey)
        ));
        assert!(matches!(
            parse_key_response(b"<html>"),
            Err(DialError::KeyJson(_))
        ));
        assert!(matches!(
            parse_key_response(br#"{"publicKey":"nodekey:00"}"#),
            Err(DialError::KeyJson(_))
        ));
    }

    #[tokio::test]
    async fn handshake_answers() {
        use crate::noise::handshake::error_message;
        let mut refusal = &error_message("unsupported client version")[..];
        assert!(matches!(
            read_handshake_response(&mut refusal).await,
            Err(HandshakeError::Server(t)) if t == "unsupported client version"
        ));
        let mut resp = vec![2u8, 0, 48];
        resp.extend_from_slice(&[7; 48]);
        assert_eq!(
            read_handshake_response(&mut &resp[..]).await.unwrap()[3..],
            [7; 48]
        );
        assert!(matches!(
            read_handshake_response(&mut &resp[..20]).await,
            Err(HandshakeError::Io(_))
        ));
        assert!(matches!(
            read_handshake_response(&mut &b"HTTP/1.1 400"[..]).await,
            Err(HandshakeError::UnexpectedType(b'H'))
        ));
    }
}

//! End-to-end tests against a client written here after controlbase's client
//! side (`ClientDeferred` / `continueClientHandshake`) and ts2021's
//! `readHeader`, using snow as the initiator.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::NoiseStream;
use super::early::EARLY_PAYLOAD_MAGIC;
use super::error::{NoiseError, RecordError};
use super::handshake::{self, noise_params, prologue};
use super::http2::{Http2Limits, NoisePeer, serve_http2, serve_http2_stream};
use super::kat;
use super::key::ServerKey;
use super::upgrade::{NoiseServer, answer_handshake, router};
use super::wire::{HEADER_LEN, MSG_ERROR, MSG_RECORD, MSG_RESPONSE, RESPONSE_PAYLOAD_LEN};
use meshscale_ts2021::TransportCipher;

// ---- the test client ----

/// A client mid-handshake: the initiation has been built, the response not
/// yet read.
struct Initiator {
    hs: snow::HandshakeState,
    init: Vec<u8>,
}

fn initiate(
    server_public: &[u8; 32],
    client_private: &[u8; 32],
    version: u16,
    fixed_ephemeral: Option<&[u8; 32]>,
) -> Initiator {
    let prologue = prologue(version);
    let mut builder = snow::Builder::new(noise_params())
        .prologue(&prologue)
        .unwrap()
        .local_private_key(client_private)
        .unwrap()
        .remote_public_key(server_public)
        .unwrap();
    if let Some(e) = fixed_ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder.build_initiator().unwrap();
    let mut init = Vec::with_capacity(101);
    init.extend_from_slice(&version.to_be_bytes());
    init.extend_from_slice(&[0x01, 0x00, 96]);
    let mut msg = [0u8; 96];
    assert_eq!(hs.write_message(&[], &mut msg).unwrap(), 96);
    init.extend_from_slice(&msg);
    Initiator { hs, init }
}

impl Initiator {
    /// Checks and consumes the 51-byte response.
    fn finish(mut self, response: &[u8]) -> TransportCipher {
        assert_eq!(response[0], MSG_RESPONSE);
        assert_eq!(u16::from_be_bytes([response[1], response[2]]), 48);
        let mut payload = [0u8; 48];
        assert_eq!(
            self.hs.read_message(&response[3..], &mut payload).unwrap(),
            0
        );
        TransportCipher::from_handshake(self.hs).unwrap()
    }
}

/// The client cipher for the KAT keys, after checking that snow's initiator
/// builds the very initiation the Python reference built.
pub(crate) fn client_for_kat(response: &[u8]) -> TransportCipher {
    let server_pub = *ServerKey::from_private(kat::SERVER_PRIV).public();
    let client = initiate(
        &server_pub,
        &kat::CLIENT_PRIV,
        kat::VERSION,
        Some(&kat::CLIENT_EPHEMERAL),
    );
    assert_eq!(client.init, kat::initiation());
    client.finish(response)
}

/// What the server answered the initiation with.
#[derive(Debug)]
enum Answer {
    Response(Vec<u8>),
    /// A controlbase error message (what Go prints as `server error: %q`).
    Error(String),
}

/// Reads the handshake answer like `continueClientHandshake`.
async fn read_answer<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Answer> {
    let mut hdr = [0u8; HEADER_LEN];
    io.read_exact(&mut hdr).await?;
    let len = usize::from(u16::from_be_bytes([hdr[1], hdr[2]]));
    match hdr[0] {
        MSG_RESPONSE => {
            assert_eq!(len, RESPONSE_PAYLOAD_LEN);
            let mut rest = vec![0u8; len];
            io.read_exact(&mut rest).await?;
            let mut whole = hdr.to_vec();
            whole.extend_from_slice(&rest);
            Ok(Answer::Response(whole))
        }
        MSG_ERROR => {
            let mut text = vec![0u8; len];
            io.read_exact(&mut text).await?;
            Ok(Answer::Error(String::from_utf8(text).unwrap()))
        }
        other => panic!("unexpected response message type {other}"),
    }
}

/// Reads the optional early payload like ts2021's `readHeader`; this server
/// always sends one.
async fn read_early_payload<S: AsyncRead + Unpin>(stream: &mut S) -> serde_json::Value {
    let mut hdr = [0u8; 9];
    stream.read_exact(&mut hdr).await.unwrap();
    assert_eq!(hdr[..5], EARLY_PAYLOAD_MAGIC);
    let len = u32::from_be_bytes([hdr[5], hdr[6], hdr[7], hdr[8]]) as usize;
    assert!(len <= 10 << 20);
    let mut json = vec![0u8; len];
    stream.read_exact(&mut json).await.unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// One HTTP/2 (prior knowledge) GET over a client Noise stream.
async fn h2_get<S>(stream: NoiseStream<S>, path: &str) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://control.example{path}"))
        .body(String::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn echo_router() -> Router {
    Router::new().route(
        "/whoami",
        get(
            |axum::Extension(peer): axum::Extension<NoisePeer>| async move {
                format!("{} v{}", peer.machine_key_text(), peer.protocol_version)
            },
        ),
    )
}

fn client_key() -> ServerKey {
    ServerKey::generate().unwrap()
}

// ---- in-memory: handshake, early payload, HTTP/2 ----

#[tokio::test]
async fn full_session_over_a_pipe() {
    let server_key = ServerKey::generate().unwrap();
    let client = client_key();
    let initiator = initiate(server_key.public(), client.private(), 130, None);

    let (server_io, mut client_io) = tokio::io::duplex(8192);
    let outcome = handshake::respond(&server_key, &initiator.init, 113);
    let server = tokio::spawn(async move {
        let (stream, peer) = answer_handshake(server_io, outcome).await.unwrap();
        serve_http2_stream(stream, peer, echo_router(), &Http2Limits::default()).await
    });

    let Answer::Response(response) = read_answer(&mut client_io).await.unwrap() else {
        panic!("handshake refused")
    };
    let mut stream = NoiseStream::new(client_io, initiator.finish(&response));
    let early = read_early_payload(&mut stream).await;
    let challenge = early["nodeKeyChallenge"].as_str().unwrap();
    assert!(
        challenge.starts_with("chalpub:") && challenge.len() == 72,
        "{challenge}"
    );

    let (status, body) = h2_get(stream, "/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("{} v130", client.public_text()));
    server.abort();
}

#[tokio::test]
async fn tampered_record_ends_the_http2_session() {
    let server_key = ServerKey::generate().unwrap();
    let client = client_key();
    let initiator = initiate(server_key.public(), client.private(), 130, None);
    let (server_io, mut client_io) = tokio::io::duplex(8192);
    let outcome = handshake::respond(&server_key, &initiator.init, 113);
    let server = tokio::spawn(async move {
        let (stream, peer) = answer_handshake(server_io, outcome).await.unwrap();
        serve_http2_stream(stream, peer, echo_router(), &Http2Limits::default()).await
    });
    let Answer::Response(response) = read_answer(&mut client_io).await.unwrap() else {
        panic!("handshake refused")
    };
    let mut cipher = initiator.finish(&response);
    // A record sealed with the right key, then flipped: fails its tag.
    let mut sealed = vec![0u8; 24 + 16];
    let n = cipher
        .seal(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut sealed)
        .unwrap();
    let mut record = vec![MSG_RECORD, 0, n as u8];
    record.extend_from_slice(&sealed[..n]);
    record[5] ^= 0xff;
    client_io.write_all(&record).await.unwrap();

    let result = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let NoiseError::Http2(e) = result.unwrap_err() else {
        panic!("want an HTTP/2 error")
    };
    let record_error = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<RecordError>());
    assert_eq!(record_error, Some(&RecordError::Decrypt), "{e:?}");
}

// ---- over real HTTP: axum::serve, raw TCP client ----

struct TestServer {
    addr: std::net::SocketAddr,
    public: [u8; 32],
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_server(min_version: u16) -> TestServer {
    let key = ServerKey::generate().unwrap();
    let public = *key.public();
    let server = NoiseServer::new(key, |conn| {
        Box::pin(async move {
            let _ = serve_http2(conn, echo_router()).await;
        })
    })
    .with_min_protocol_version(min_version);
    // Mounted the way the main server will: merged into its router.
    let app = Router::new().merge(router(Arc::new(server)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer { addr, public, task }
}

/// Sends an HTTP/1.1 request head and reads the response head, byte by byte
/// so that nothing after it is consumed.
async fn http_head(
    tcp: &mut TcpStream,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: control.example\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
        assert!(head.len() < 8192);
    }
    String::from_utf8(head).unwrap()
}

/// A whole HTTP/1.1 exchange with `Connection: close`.
async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut headers = vec![("Connection", "close")];
    headers.extend_from_slice(extra);
    let head = http_head(&mut tcp, method, path, &headers).await;
    let mut body = Vec::new();
    tcp.read_to_end(&mut body).await.unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Upgrade with the given initiation; returns the 101 head and the socket.
async fn upgrade(addr: std::net::SocketAddr, method: &str, init: &[u8]) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let encoded = b64(init);
    let head = http_head(
        &mut tcp,
        method,
        "/ts2021",
        &[
            ("Upgrade", "tailscale-control-protocol"),
            ("Connection", "upgrade"),
            ("X-Tailscale-Handshake", &encoded),
        ],
    )
    .await;
    (head, tcp)
}

fn assert_switched(head: &str) {
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nupgrade: tailscale-control-protocol\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
}

#[tokio::test]
async fn upgrade_handshake_and_http2_over_tcp() {
    let server = start_server(113).await;
    for method in ["POST", "GET"] {
        let client = client_key();
        let initiator = initiate(&server.public, client.private(), 131, None);
        let (head, mut tcp) = upgrade(server.addr, method, &initiator.init).await;
        assert_switched(&head);

        let Answer::Response(response) = read_answer(&mut tcp).await.unwrap() else {
            panic!("handshake refused")
        };
        let mut stream = NoiseStream::new(tcp, initiator.finish(&response));
        let early = read_early_payload(&mut stream).await;
        assert!(
            early["nodeKeyChallenge"]
                .as_str()
                .unwrap()
                .starts_with("chalpub:")
        );

        let (status, body) = h2_get(stream, "/whoami").await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("{} v131", client.public_text()));
    }
}

#[tokio::test]
async fn refused_handshakes_get_controlbase_error_messages() {
    let server = start_server(113).await;
    let client = client_key();

    let old = initiate(&server.public, client.private(), 100, None);
    let (head, mut tcp) = upgrade(server.addr, "POST", &old.init).await;
    assert_switched(&head);
    let Answer::Error(text) = read_answer(&mut tcp).await.unwrap() else {
        panic!("accepted")
    };
    assert!(
        text.starts_with("unsupported client version") && text.contains("113"),
        "{text}"
    );
    assert_eq!(
        tcp.read(&mut [0u8; 1]).await.unwrap(),
        0,
        "closed after the error"
    );

    let good = initiate(&server.public, client.private(), 130, None);
    let mut wrong_type = good.init.clone();
    wrong_type[2] = 0x02;
    let (_, mut tcp) = upgrade(server.addr, "POST", &wrong_type).await;
    let Answer::Error(text) = read_answer(&mut tcp).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(text, "unexpected handshake message type");

    let (_, mut tcp) = upgrade(server.addr, "POST", &good.init[..100]).await;
    let Answer::Error(text) = read_answer(&mut tcp).await.unwrap() else {
        panic!("accepted")
    };
    assert_eq!(text, "wrong handshake initiation size");

    // Crypto failures: no hint, just a closed connection (as controlbase).
    let mut tampered = good.init.clone();
    tampered[60] ^= 1;
    let (head, mut tcp) = upgrade(server.addr, "POST", &tampered).await;
    assert_switched(&head);
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // A handshake for another server key: same.
    let other = initiate(
        ServerKey::generate().unwrap().public(),
        client.private(),
        130,
        None,
    );
    let (_, mut tcp) = upgrade(server.addr, "POST", &other.init).await;
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn bad_upgrade_requests_get_400() {
    let server = start_server(113).await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("X-Tailscale-Handshake", "AAAA")],
            "missing next protocol",
        ),
        (
            &[("Upgrade", "h2c"), ("X-Tailscale-Handshake", "AAAA")],
            "unknown next protocol",
        ),
        (
            &[("Upgrade", "tailscale-control-protocol")],
            "missing Tailscale handshake header",
        ),
        (
            &[
                ("Upgrade", "tailscale-control-protocol"),
                ("X-Tailscale-Handshake", "!!not base64"),
            ],
            "invalid tailscale handshake header",
        ),
    ];
    for (headers, want) in cases {
        let (head, body) = http_request(server.addr, "POST", "/ts2021", headers).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert_eq!(body, format!("{want}\n"));
    }
}

#[tokio::test]
async fn key_endpoint() {
    let server = start_server(113).await;
    let (head, body) = http_request(server.addr, "GET", "/key?v=130", &[]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "legacyPublicKey": format!("mkey:{}", "0".repeat(64)),
            "publicKey": format!("mkey:{}", hex::encode(server.public)),
        })
    );

    for path in ["/key", "/key?v=", "/key?v=abc", "/key?x=1"] {
        let (head, _) = http_request(server.addr, "GET", path, &[]).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }

    // Pre-Noise clients: an empty 200, as from Headscale.
    let (head, body) = http_request(server.addr, "GET", "/key?v=38", &[]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.is_empty());
    let (head, _) = http_request(server.addr, "GET", "/key?v=39", &[]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// A client that completes the handshake but never starts HTTP/2 holds a
/// pending slot until the handshake deadline; while the slots are taken,
/// further upgrades get 503 before any handshake work.
#[tokio::test]
async fn stalled_sessions_hold_pending_slots_until_the_deadline() {
    let key = ServerKey::generate().unwrap();
    let public = *key.public();
    let server = Arc::new(
        NoiseServer::new(key, |conn| {
            Box::pin(async move {
                let _ = serve_http2(conn, echo_router()).await;
            })
        })
        .with_pending_limits(2, 2)
        .with_handshake_timeout(std::time::Duration::from_millis(300)),
    );
    let app = Router::new().merge(router(server.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let mut stalled = Vec::new();
    for _ in 0..2 {
        let client = client_key();
        let initiator = initiate(&public, client.private(), 131, None);
        let (head, mut tcp) = upgrade(addr, "POST", &initiator.init).await;
        assert_switched(&head);
        assert!(matches!(
            read_answer(&mut tcp).await.unwrap(),
            Answer::Response(_)
        ));
        stalled.push(tcp);
    }
    assert_eq!(server.pending_handshakes(), 2);
    let client = client_key();
    let third = initiate(&public, client.private(), 131, None);
    let (head, _tcp) = upgrade(addr, "POST", &third.init).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );

    // Past the deadline the server hangs up on both and frees the slots.
    for mut tcp in stalled {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tcp.read_to_end(&mut rest),
        )
        .await;
        assert!(read.is_ok(), "stalled session not closed");
    }
    for _ in 0..100 {
        if server.pending_handshakes() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.pending_handshakes(), 0);
    let (head, _tcp) = upgrade(addr, "POST", &third.init).await;
    assert_switched(&head);
    task.abort();
}

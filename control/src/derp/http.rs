//! HTTP endpoints of the embedded DERP server, mounted on the main
//! listener: the `/derp` upgrade (`derp/derpserver/handler.go`), the
//! latency probes and the captive-portal check (`cmd/derper/derper.go`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{CACHE_CONTROL, CONNECTION, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;

use super::server::Relay;

pub const FAST_START_HEADER: &str = "Derp-Fast-Start";
pub const IDEAL_NODE_HEADER: &str = "Ideal-Node";
const CHALLENGE_HEADER: &str = "X-Tailscale-Challenge";
const RESPONSE_HEADER: HeaderName = HeaderName::from_static("x-tailscale-response");
const DERP_VERSION_HEADER: HeaderName = HeaderName::from_static("derp-version");
const DERP_PUBLIC_KEY_HEADER: HeaderName = HeaderName::from_static("derp-public-key");
const MAX_CHALLENGE_LEN: usize = 64;

/// The DERP routes: `GET /derp` (upgrade), `GET|HEAD /derp/probe` and
/// `/derp/latency-check`, `GET|HEAD /generate_204`. Generic over the outer
/// router's state so it can be merged into any router.
pub fn router<S>(relay: Arc<Relay>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/derp", get(upgrade).post(upgrade))
        // Two names for one probe: different client versions use each.
        .route("/derp/probe", get(probe))
        .route("/derp/latency-check", get(probe))
        .route("/generate_204", get(generate_204))
        .with_state(relay)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn upgrade(State(relay): State<Arc<Relay>>, mut req: Request) -> Response {
    let upgrade = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match upgrade.as_deref() {
        Some("derp") => {}
        // Browsers (Tailscale's wasm client) tunnel DERP in WebSocket
        // frames; native clients never do. Not implemented here.
        Some("websocket") => {
            return text(
                StatusCode::UPGRADE_REQUIRED,
                "DERP over WebSocket is not supported by this server",
            );
        }
        other => {
            if other.is_some() {
                tracing::debug!(upgrade = ?other, "DERP: unexpected Upgrade header");
            }
            // Usually a reverse proxy that drops the Upgrade header.
            return text(
                StatusCode::UPGRADE_REQUIRED,
                "DERP requires connection upgrade",
            );
        }
    }

    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "unknown".to_string(),
            |ConnectInfo(addr)| addr.to_string(),
        );
    if req
        .headers()
        .get(FAST_START_HEADER)
        .is_some_and(|v| v == "1")
    {
        // The client will read our 101 as DERP frames and fail. It only
        // asks for fast start after seeing a DERP meta-certificate in the
        // TLS chain, so this means TLS is set up for fast start but the
        // listener is not wrapped in `FastStartListener`.
        tracing::warn!(%remote, "DERP fast start requested; it needs derp::FastStartListener on the listener");
    }
    if let Some(ideal) = req
        .headers()
        .get(IDEAL_NODE_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        tracing::debug!(%remote, ideal_node = ideal, "DERP client is not on its ideal node");
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let accepting = relay.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => accepting.accept(TokioIo::new(upgraded), remote).await,
            Err(e) => tracing::debug!(%remote, error = %e, "DERP: HTTP upgrade did not complete"),
        }
    });

    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("DERP"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        DERP_VERSION_HEADER,
        HeaderValue::from(super::frame::PROTOCOL_VERSION),
    );
    if let Ok(key) = HeaderValue::from_str(&relay.public_key_hex()) {
        h.insert(DERP_PUBLIC_KEY_HEADER, key);
    }
    resp
}

/// Netcheck's fallback latency measurement when UDP is blocked.
async fn probe() -> Response {
    (
        [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")],
        StatusCode::OK,
    )
        .into_response()
}

/// Captive-portal detection: a 204, echoing a well-formed challenge so the
/// client knows no portal rewrote the response.
async fn generate_204(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    let challenge = headers
        .get(CHALLENGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|c| valid_challenge(c));
    if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&format!("response {c}")).ok()) {
        h.insert(RESPONSE_HEADER, v);
    }
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, no-transform, max-age=0"),
    );
    resp
}

fn valid_challenge(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_CHALLENGE_LEN
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::crypto;
    use crate::derp::frame::ServerMessage;
    use crate::derp::server::RelayConfig;
    use crate::derp::test_client::TestClient;
    use bytes::{Bytes, BytesMut};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn serve(relay: Arc<Relay>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: Router = router(relay);
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// Sends `request` and reads up to the end of the response head.
    /// Returns the head and any bytes already read past it.
    async fn exchange(stream: &mut TcpStream, request: &str) -> (String, BytesMut) {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf.split_to(end + 4).to_vec()).unwrap();
                return (head, buf);
            }
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed before the response head");
        }
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    async fn upgraded_client(addr: SocketAddr, relay: &Relay) -> TestClient<TcpStream> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let (head, rest) = exchange(
            &mut stream,
            "GET /derp HTTP/1.1\r\nHost: derp.example\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert_eq!(header(&head, "upgrade"), Some("DERP"));
        assert_eq!(header(&head, "connection"), Some("Upgrade"));
        assert_eq!(header(&head, "derp-version"), Some("2"));
        assert_eq!(
            header(&head, "derp-public-key"),
            Some(relay.public_key_hex().as_str())
        );
        TestClient::handshake_buffered(stream, crypto::generate_private_key(), rest)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn upgrade_and_exchange_a_packet() {
        let relay = Relay::new(crypto::generate_private_key(), RelayConfig::default());
        let addr = serve(relay.clone()).await;
        let mut a = upgraded_client(addr, &relay).await;
        let mut b = upgraded_client(addr, &relay).await;
        assert_eq!(a.server_key, relay.public_key());
        a.send_packet(&b.public, b"over http").await.unwrap();
        assert_eq!(
            b.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: a.public,
                packet: Bytes::from_static(b"over http")
            }
        );
    }

    #[tokio::test]
    async fn upgrade_header_is_case_insensitive() {
        let relay = Relay::new(crypto::generate_private_key(), RelayConfig::default());
        let addr = serve(relay.clone()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let (head, rest) = exchange(
            &mut stream,
            "GET /derp HTTP/1.1\r\nHost: x\r\nupgrade: dErP\r\nconnection: upgrade\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        TestClient::handshake_buffered(stream, crypto::generate_private_key(), rest)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn refuses_requests_without_derp_upgrade() {
        let relay = Relay::new(crypto::generate_private_key(), RelayConfig::default());
        let addr = serve(relay).await;
        for request in [
            "GET /derp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let (head, _) = exchange(&mut stream, request).await;
            assert!(head.starts_with("HTTP/1.1 426 "), "{request}: {head}");
        }
    }

    #[tokio::test]
    async fn probes_and_generate_204() {
        let relay = Relay::new(crypto::generate_private_key(), RelayConfig::default());
        let addr = serve(relay).await;
        for (request, status) in [
            ("GET /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
            ("HEAD /derp/probe HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
            ("GET /derp/latency-check HTTP/1.1\r\nHost: x\r\n\r\n", "200"),
            (
                "POST /derp/probe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "405",
            ),
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let (head, _) = exchange(&mut stream, request).await;
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request}: {head}"
            );
            if status == "200" {
                assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
            }
        }

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let (head, _) = exchange(
            &mut stream,
            "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: ts_abc-1.2:3\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 204 "), "{head}");
        assert_eq!(
            header(&head, "x-tailscale-response"),
            Some("response ts_abc-1.2:3")
        );
        assert_eq!(
            header(&head, "cache-control"),
            Some("no-cache, no-store, must-revalidate, no-transform, max-age=0")
        );

        let too_long = "a".repeat(65);
        for bad in ["bad/char", "sp ace", too_long.as_str()] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let (head, _) = exchange(
                &mut stream,
                &format!(
                    "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: {bad}\r\n\r\n"
                ),
            )
            .await;
            assert!(head.starts_with("HTTP/1.1 204 "), "{head}");
            assert_eq!(header(&head, "x-tailscale-response"), None, "{bad}");
        }
    }

    #[test]
    fn challenge_rules() {
        assert!(valid_challenge("AZaz09._-:"));
        assert!(valid_challenge(&"x".repeat(64)));
        assert!(!valid_challenge(&"x".repeat(65)));
        assert!(!valid_challenge(""));
        assert!(!valid_challenge("é"));
    }
}

//! DERP "fast start": a client that already knows the server's key sends
//! `GET /derp` with `Derp-Fast-Start: 1` and starts speaking DERP right
//! after its request head, expecting *no* HTTP response at all.
//!
//! hyper always writes a response, so this cannot be served from a
//! handler. [`FastStartListener`] wraps the main listener instead: it
//! looks at the first bytes of each new connection, hands fast-start DERP
//! connections straight to the relay, and passes every other connection
//! (with the bytes it read replayed) on to axum unchanged.
//!
//! Tailscale's client only asks for fast start when the server's TLS chain
//! carries a DERP meta-certificate, so without one this wrapper is
//! optional; our own node agent may use it knowingly.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::task::JoinSet;

use super::server::Relay;

const DERP_REQUEST_PREFIX: &[u8] = b"GET /derp";
/// Request heads longer than this are not DERP upgrades we care about.
const MAX_SNIFF: usize = 8 << 10;
/// A connection that has not sent its first request head by then is
/// handed to hyper as is; hyper applies its own limits.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// An `axum::serve` listener that peels off fast-start DERP connections.
///
/// `axum::serve(FastStartListener::new(tcp, relay), app)`. For
/// `ConnectInfo<SocketAddr>`, add `.tap_io(|_| ())` (axum's
/// `ListenerExt`), which makes axum take the address from this listener.
pub struct FastStartListener<L: Listener> {
    inner: L,
    relay: Arc<Relay>,
    /// Connections being classified; `Some` when one is ready for axum.
    sniffing: JoinSet<Option<Passed<L>>>,
}

type Passed<L> = (PrefixedIo<<L as Listener>::Io>, <L as Listener>::Addr);

impl<L: Listener> FastStartListener<L> {
    pub fn new(inner: L, relay: Arc<Relay>) -> Self {
        FastStartListener {
            inner,
            relay,
            sniffing: JoinSet::new(),
        }
    }
}

enum Next<A, S> {
    Accepted(A),
    Sniffed(Option<S>),
}

impl<L> Listener for FastStartListener<L>
where
    L: Listener,
    L::Addr: fmt::Debug + Send + 'static,
{
    type Io = PrefixedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let next = tokio::select! {
                conn = self.inner.accept() => Next::Accepted(conn),
                Some(done) = self.sniffing.join_next() => Next::Sniffed(done.ok().flatten()),
            };
            match next {
                Next::Accepted((io, addr)) => {
                    let relay = self.relay.clone();
                    self.sniffing.spawn(async move {
                        let remote = format!("{addr:?}");
                        intercept(io, relay, remote).await.map(|io| (io, addr))
                    });
                }
                Next::Sniffed(Some(conn)) => return conn,
                // Served as fast-start DERP (now finished), or the task
                // failed: nothing to hand to axum.
                Next::Sniffed(None) => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    NeedMore,
    /// Not a fast-start DERP request: let HTTP have it.
    Http,
    /// A fast-start DERP request whose head is this many bytes long.
    FastStart {
        head_len: usize,
    },
}

fn classify(buf: &[u8]) -> Sniff {
    if buf.len() < DERP_REQUEST_PREFIX.len() {
        return if DERP_REQUEST_PREFIX.starts_with(buf) {
            Sniff::NeedMore
        } else {
            Sniff::Http
        };
    }
    if !buf.starts_with(DERP_REQUEST_PREFIX) {
        return Sniff::Http;
    }
    // "/derp" exactly, not "/derp/probe".
    match buf.get(DERP_REQUEST_PREFIX.len()) {
        None => return Sniff::NeedMore,
        Some(b' ' | b'?') => {}
        Some(_) => return Sniff::Http,
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Sniff::NeedMore;
    };
    let head = &buf[..end];
    let mut fast_start = false;
    let mut upgrade_derp = false;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"derp-fast-start") {
            fast_start = value == b"1";
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_derp = value.eq_ignore_ascii_case(b"derp");
        }
    }
    if fast_start && upgrade_derp {
        Sniff::FastStart { head_len: end + 4 }
    } else {
        Sniff::Http
    }
}

/// Reads just enough of a new connection to classify it. Fast-start DERP
/// is served here (returns `None` when it ends); anything else comes back
/// with the bytes read so far queued for replay, ready for hyper. Use it
/// directly in a hand-written accept loop (after TLS), or through
/// [`FastStartListener`] with `axum::serve`.
pub async fn intercept<IO>(mut io: IO, relay: Arc<Relay>, remote: String) -> Option<PrefixedIo<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        match classify(&buf) {
            Sniff::Http => return Some(PrefixedIo::new(buf.freeze(), io)),
            Sniff::FastStart { head_len } => {
                buf.advance(head_len);
                tracing::debug!(%remote, "DERP fast start");
                relay
                    .accept(PrefixedIo::new(buf.freeze(), io), remote)
                    .await;
                return None;
            }
            Sniff::NeedMore if buf.len() >= MAX_SNIFF => {
                return Some(PrefixedIo::new(buf.freeze(), io));
            }
            Sniff::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            // EOF, error or timeout: hyper will see the same and close.
            _ => return Some(PrefixedIo::new(buf.freeze(), io)),
        }
    }
}

/// An I/O stream with some already-read bytes put back in front.
pub struct PrefixedIo<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> PrefixedIo<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Self {
        PrefixedIo { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PrefixedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::crypto;
    use crate::derp::frame::ServerMessage;
    use crate::derp::server::RelayConfig;
    use crate::derp::test_client::TestClient;
    use axum::serve::ListenerExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn classifies_request_heads() {
        let fast = b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n";
        assert_eq!(
            classify(fast),
            Sniff::FastStart {
                head_len: fast.len()
            }
        );
        let mut with_frames = fast.to_vec();
        with_frames.extend_from_slice(&[2, 0, 0, 0, 60]);
        assert_eq!(
            classify(&with_frames),
            Sniff::FastStart {
                head_len: fast.len()
            }
        );
        assert_eq!(classify(&fast[..20]), Sniff::NeedMore);
        assert_eq!(classify(b""), Sniff::NeedMore);
        assert_eq!(classify(b"GET /de"), Sniff::NeedMore);
        assert_eq!(classify(b"POST /"), Sniff::Http);
        assert_eq!(classify(b"GET /health HTTP/1.1\r\n"), Sniff::Http);
        assert_eq!(classify(b"GET /derp/probe HTTP/1.1\r\n\r\n"), Sniff::Http);
        assert_eq!(
            classify(b"GET /derp HTTP/1.1\r\nUpgrade: DERP\r\n\r\n"),
            Sniff::Http,
            "no fast-start header"
        );
        let terse = b"GET /derp HTTP/1.1\r\nderp-fast-start:1\r\nupgrade:derp\r\n\r\n";
        assert_eq!(
            classify(terse),
            Sniff::FastStart {
                head_len: terse.len()
            }
        );
    }

    async fn serve(relay: Arc<Relay>) -> std::net::SocketAddr {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app: axum::Router = super::super::http::router(relay.clone());
        let listener = FastStartListener::new(tcp, relay).tap_io(|_| ());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn fast_start_and_plain_http_share_the_listener() {
        let relay = Relay::new(crypto::generate_private_key(), RelayConfig::default());
        let addr = serve(relay.clone()).await;

        let mut fast = TcpStream::connect(addr).await.unwrap();
        fast.write_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Fast-Start: 1\r\n\r\n")
            .await
            .unwrap();
        let mut a =
            TestClient::fast_start(fast, crypto::generate_private_key(), relay.public_key())
                .await
                .unwrap();

        // A normal upgrade on the same listener still goes through axum.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(
                b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n",
            )
            .await
            .unwrap();
        let mut head = BytesMut::new();
        let rest = loop {
            plain.read_buf(&mut head).await.unwrap();
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(head.starts_with(b"HTTP/1.1 101 "));
                break head.split_off(end + 4);
            }
        };
        let mut b = TestClient::handshake_buffered(plain, crypto::generate_private_key(), rest)
            .await
            .unwrap();

        a.send_packet(&b.public, b"fast").await.unwrap();
        assert_eq!(
            b.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: a.public,
                packet: Bytes::from_static(b"fast")
            }
        );
        b.send_packet(&a.public, b"slow").await.unwrap();
        assert_eq!(
            a.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: b.public,
                packet: Bytes::from_static(b"slow")
            }
        );

        // And ordinary requests are replayed intact to the router.
        let mut probe = TcpStream::connect(addr).await.unwrap();
        probe
            .write_all(b"GET /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut resp = Vec::new();
        probe.read_to_end(&mut resp).await.unwrap();
        assert!(
            resp.starts_with(b"HTTP/1.1 200 "),
            "{}",
            String::from_utf8_lossy(&resp)
        );
    }
}

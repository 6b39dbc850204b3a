//! The relay: the DERP handshake and the per-connection read and write
//! loops (`derp/derpserver/derpserver.go` is the reference behaviour).
//!
//! Each connection runs as one task with two halves: the reader decodes
//! client frames and queues packets into the destination's outbox; the
//! writer drains its own outbox onto the wire. Neither ever waits on
//! another client, so one slow or hostile client only hurts itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crypto_box::SecretKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

use super::crypto::{self, ClientInfo, ServerInfo};
use super::frame::{
    self, ClientMessage, Frame, FrameDecoder, FrameError, FrameType, KEY_LEN, MAX_CLIENT_INFO_LEN,
    MAX_PACKET_SIZE, NodeKey, PeerGoneReason,
};
use super::outbox::{Packet, Queued};
use super::registry::{Peer, Registry};
use crate::metrics::Metrics;

/// Largest frame accepted from an authenticated client: a full packet plus
/// two keys (ForwardPacket's size). Nothing a client legitimately sends
/// is bigger, and it bounds each connection's read buffer.
const MAX_CLIENT_FRAME: usize = MAX_PACKET_SIZE + 2 * KEY_LEN;
const READ_CHUNK: usize = 16 << 10;
/// Bytes of queued frames written under one write deadline.
const WRITE_BATCH: usize = 64 << 10;
/// Tailscale's server adds up to 5 s to each connection's 60 s keep-alive
/// period so that connections made together do not tick together; we keep
/// that proportion for other periods.
const KEEP_ALIVE_JITTER_DIVISOR: u32 = 12;

pub type VerifyFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// A verifier's answer about one node key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// The check could not be made (store unavailable). New connections
    /// are refused; connected clients are kept until a definite answer, so
    /// a store outage does not cut the whole mesh off its relay.
    Unknown,
}

impl From<bool> for Verdict {
    fn from(allowed: bool) -> Self {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

/// Admission control, called with a client's node public key once its
/// ClientInfo has been authenticated, and again every
/// [`RelayConfig::verify_interval`] while it stays connected. A refusal
/// closes the connection: before it can send or receive anything at the
/// handshake (Headscale's `verify_clients`), or as soon as the node is gone
/// (deleted, expired, key rotated away) later on.
#[derive(Clone)]
pub struct Verifier(Arc<dyn Fn(NodeKey) -> VerifyFuture + Send + Sync>);

impl Verifier {
    /// From a synchronous check, e.g. against an in-memory node set.
    pub fn new<V: Into<Verdict>>(f: impl Fn(NodeKey) -> V + Send + Sync + 'static) -> Self {
        Verifier(Arc::new(move |k| {
            let verdict = f(k).into();
            Box::pin(async move { verdict })
        }))
    }

    /// From an asynchronous check, e.g. a database lookup.
    pub fn new_async<F, Fut>(f: F) -> Self
    where
        F: Fn(NodeKey) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Into<Verdict>,
    {
        Verifier(Arc::new(move |k| {
            let fut = f(k);
            Box::pin(async move { fut.await.into() })
        }))
    }

    async fn verify(&self, key: NodeKey) -> Verdict {
        (self.0)(key).await
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// Tunables; the defaults are Tailscale's.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `None` admits every client that completes the handshake.
    pub verifier: Option<Verifier>,
    /// Packets buffered per connection (per queue: data and disco).
    pub send_queue_depth: usize,
    /// A write to a client that takes longer closes that client.
    pub write_timeout: Duration,
    /// ServerKey out and ClientInfo in must complete within this.
    pub handshake_timeout: Duration,
    /// A verifier that does not answer within this rejects the client.
    pub verify_timeout: Duration,
    /// Period of KeepAlive frames (plus up to 1/12 of jitter). Tailscale's
    /// client gives up after 120 s of silence, so keep it well below.
    pub keep_alive: Duration,
    /// For clients that declared `CanAckPings`: a client we have heard
    /// nothing from (not even a pong) for this long is considered dead.
    /// Idle clients are pinged at each keep-alive, so a live one is never
    /// silent for long. Clients that cannot ack pings are never timed out
    /// on reads, as in Tailscale.
    pub idle_timeout: Duration,
    /// How often each connected client's key is put to the verifier again
    /// (plus up to 1/12 of jitter, so clients are not re-checked in step).
    pub verify_interval: Duration,
    /// Where refusals are counted (`meshscale_derp_refused_*`).
    pub metrics: Option<Metrics>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            verifier: None,
            verify_interval: Duration::from_secs(30),
            metrics: None,
            send_queue_depth: 32,
            write_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(150),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection closed during the handshake")]
    ClosedDuringHandshake,
    #[error("bad ClientInfo: {0}")]
    BadClientInfo(String),
    #[error("node key refused by the verify hook")]
    Rejected,
    #[error("node key no longer allowed (node deleted or expired)")]
    Revoked,
    #[error("client sent mesh-only frame {0}; this server has no mesh")]
    MeshOnly(FrameType),
}

/// The embedded DERP server. Create one per process and hand connections
/// to [`Relay::accept`] (the HTTP handlers in `derp::http` do).
pub struct Relay {
    secret: SecretKey,
    public: NodeKey,
    config: RelayConfig,
    registry: Registry,
    next_conn_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("public_key", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(private_key: [u8; 32], config: RelayConfig) -> Arc<Self> {
        let secret = SecretKey::from_bytes(private_key);
        let public = secret.public_key().to_bytes();
        Arc::new(Relay {
            secret,
            public,
            config,
            registry: Registry::default(),
            next_conn_id: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        })
    }

    /// The server's public key, as sent in the ServerKey frame.
    pub fn public_key(&self) -> NodeKey {
        self.public
    }

    /// Untyped lowercase hex, as in Tailscale's `Derp-Public-Key` header.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public)
    }

    pub fn is_connected(&self, node_key: &NodeKey) -> bool {
        self.registry.is_connected(node_key)
    }

    /// Authenticated connections, duplicates included.
    pub fn connection_count(&self) -> usize {
        self.registry.connection_count()
    }

    /// Closes every connection and refuses new ones. Clients reconnect
    /// (elsewhere, or here after a restart) on their own.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Speaks DERP on `io` until the client leaves, misbehaves, or the relay
    /// shuts down. `io` must already be past any HTTP upgrade. `remote` is
    /// only for logs.
    pub async fn accept<IO>(self: Arc<Self>, io: IO, remote: String)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = crate::capture::tap(io, "derp_frames");
        let span = tracing::info_span!("derp_conn", %remote, node = tracing::field::Empty);
        let mut stop = self.shutdown.subscribe();
        async move {
            if *stop.borrow_and_update() {
                return;
            }
            let result = tokio::select! {
                r = self.serve_conn(io) => r,
                _ = stop.wait_for(|s| *s) => Ok(()),
            };
            match result {
                Ok(()) => tracing::debug!("DERP client disconnected"),
                Err(ConnError::Rejected) => {
                    self.count_refused_connection("not_a_node");
                    tracing::info!("DERP client refused: node key not allowed")
                }
                Err(ConnError::Revoked) => {
                    self.count_refused_connection("revoked");
                    tracing::info!("DERP client cut off: its node was deleted or expired")
                }
                Err(e) => tracing::debug!(error = %e, "DERP connection closed"),
            }
        }
        .instrument(span)
        .await
    }

    async fn serve_conn<IO>(&self, io: IO) -> Result<(), ConnError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let mut decoder = FrameDecoder::new(MAX_CLIENT_INFO_LEN);

        let (key, info) = tokio::time::timeout(
            self.config.handshake_timeout,
            self.handshake(&mut rd, &mut wr, &mut rbuf, &decoder),
        )
        .await
        .map_err(|_| ConnError::Timeout("handshake"))??;
        tracing::Span::current().record("node", hex::encode(key));

        if let Some(verifier) = &self.config.verifier {
            match tokio::time::timeout(self.config.verify_timeout, verifier.verify(key)).await {
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Deny | Verdict::Unknown) => return Err(ConnError::Rejected),
                Err(_) => return Err(ConnError::Timeout("verify hook")),
            }
        }

        let peer = Arc::new(Peer::new(
            self.next_conn_id.fetch_add(1, Ordering::Relaxed),
            key,
            self.config.send_queue_depth,
        ));
        self.registry.register(peer.clone());
        // Unregisters however this function ends, including cancellation.
        let _registered = Registered {
            registry: &self.registry,
            peer: &peer,
        };
        tracing::debug!(
            version = info.version,
            can_ack_pings = info.can_ack_pings,
            app = %info.app_name,
            "DERP client connected"
        );

        let mut out = BytesMut::new();
        let server_info = serde_json::to_vec(&ServerInfo::default())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        frame::server_info_frame(&mut out, &crypto::seal(&self.secret, &key, &server_info))?;
        write_timeout(&mut wr, &out, self.config.write_timeout).await?;

        decoder.set_max_len(MAX_CLIENT_FRAME);
        let liveness = Liveness::new();
        tokio::select! {
            r = self.read_loop(&peer, &mut rd, rbuf, &decoder, &liveness) => r,
            r = self.write_loop(&peer, &mut wr, info.can_ack_pings, &liveness) => r,
            r = self.reverify_loop(key) => r,
        }
    }

    /// Puts `key` to the verifier again every `verify_interval`; ends with
    /// [`ConnError::Revoked`] once it is refused. Without a verifier, never
    /// ends.
    async fn reverify_loop(&self, key: NodeKey) -> Result<(), ConnError> {
        let Some(verifier) = &self.config.verifier else {
            return std::future::pending().await;
        };
        let max_jitter = self.config.verify_interval / KEEP_ALIVE_JITTER_DIVISOR;
        let period = self.config.verify_interval + max_jitter.mul_f64(rand::random::<f64>());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::time::timeout(self.config.verify_timeout, verifier.verify(key)).await {
                Ok(Verdict::Deny) => return Err(ConnError::Revoked),
                Ok(Verdict::Allow) => {}
                Ok(Verdict::Unknown) | Err(_) => {
                    tracing::debug!("DERP re-verification inconclusive; keeping the client")
                }
            }
        }
    }

    fn count_refused_connection(&self, reason: &str) {
        if let Some(m) = &self.config.metrics {
            m.derp_refused_connection(reason);
        }
    }

    /// Sends ServerKey, then reads and authenticates ClientInfo.
    async fn handshake<R, W>(
        &self,
        rd: &mut R,
        wr: &mut W,
        rbuf: &mut BytesMut,
        decoder: &FrameDecoder,
    ) -> Result<(NodeKey, ClientInfo), ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = BytesMut::new();
        frame::server_key_frame(&mut out, &self.public);
        wr.write_all(&out).await?;
        wr.flush().await?;

        let frame = read_frame(rd, rbuf, decoder)
            .await?
            .ok_or(ConnError::ClosedDuringHandshake)?;
        let (key, sealed) = frame::parse_client_info(&frame)?;
        if key == [0u8; KEY_LEN] {
            return Err(ConnError::BadClientInfo("all-zero node key".into()));
        }
        let json = crypto::open(&self.secret, &key, &sealed).ok_or_else(|| {
            ConnError::BadClientInfo("box does not open with the claimed key".into())
        })?;
        let info = serde_json::from_slice(&json)
            .map_err(|e| ConnError::BadClientInfo(format!("JSON: {e}")))?;
        Ok((key, info))
    }

    async fn read_loop<R>(
        &self,
        peer: &Peer,
        rd: &mut R,
        mut rbuf: BytesMut,
        decoder: &FrameDecoder,
        liveness: &Liveness,
    ) -> Result<(), ConnError>
    where
        R: AsyncRead + Unpin,
    {
        let mut not_here = NotHereLimiter::new();
        while let Some(frame) = read_frame(rd, &mut rbuf, decoder).await? {
            liveness.note_read();
            self.registry.note_activity(peer);
            match ClientMessage::parse(&frame)? {
                ClientMessage::SendPacket { to, packet } => {
                    self.relay_packet(peer, to, packet, &mut not_here)
                }
                ClientMessage::NotePreferred(preferred) => {
                    tracing::trace!(preferred, "NotePreferred")
                }
                ClientMessage::Ping(data) => {
                    if !peer.outbox.set_pong(data) {
                        tracing::trace!(
                            "pings faster than pongs can be written; answering the latest"
                        );
                    }
                }
                ClientMessage::Pong(_) => {}
                ClientMessage::MeshOnly(t) => return Err(ConnError::MeshOnly(t)),
                ClientMessage::Unknown(t) => {
                    tracing::trace!(frame_type = %t, "ignoring unknown frame")
                }
            }
        }
        Ok(())
    }

    fn relay_packet(&self, from: &Peer, to: NodeKey, packet: Bytes, not_here: &mut NotHereLimiter) {
        match self.registry.route(&from.key, &to) {
            Some(dst) => {
                if dst.outbox.push_packet(Packet {
                    src: from.key,
                    data: packet,
                }) == Queued::DroppedOldest
                {
                    tracing::trace!(dst = %hex::encode(to), "send queue full, dropped its oldest packet");
                }
            }
            None => {
                // Not a connected, admitted node: nobody this client has
                // business with here.
                if let Some(m) = &self.config.metrics {
                    m.derp_refused_frame("no_such_peer");
                }
                // Only disco gets an answer, so the sender stops trying a
                // path through us; data to an absent peer is just dropped.
                if frame::looks_like_disco(&packet) && not_here.allow() {
                    from.outbox.push_peer_gone(to, PeerGoneReason::NotHere);
                }
            }
        }
    }

    async fn write_loop<W>(
        &self,
        peer: &Peer,
        wr: &mut W,
        can_ack_pings: bool,
        liveness: &Liveness,
    ) -> Result<(), ConnError>
    where
        W: AsyncWrite + Unpin,
    {
        let max_jitter = self.config.keep_alive / KEEP_ALIVE_JITTER_DIVISOR;
        let period = self.config.keep_alive + max_jitter.mul_f64(rand::random::<f64>());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = BytesMut::with_capacity(READ_CHUNK);
        loop {
            tokio::select! {
                _ = peer.outbox.ready() => {}
                _ = tick.tick() => {
                    peer.outbox.set_keep_alive();
                    if can_ack_pings {
                        let silent = liveness.silent_for();
                        if silent >= self.config.idle_timeout {
                            return Err(ConnError::Timeout("idle client"));
                        }
                        if silent >= self.config.keep_alive {
                            peer.outbox.set_ping(rand::random());
                        }
                    }
                }
            }
            // Write in bounded batches, each under its own deadline, so the
            // write timeout measures a stalled client rather than a backlog
            // (Tailscale sets its deadline per frame).
            loop {
                out.clear();
                if peer.outbox.drain_into(&mut out, WRITE_BATCH) == 0 {
                    break;
                }
                write_timeout(wr, &out, self.config.write_timeout).await?;
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn all_peers(&self) -> Vec<Arc<Peer>> {
        self.registry.all_peers()
    }
}

struct Registered<'a> {
    registry: &'a Registry,
    peer: &'a Peer,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.unregister(self.peer);
    }
}

/// When the client last sent anything, for the idle check.
struct Liveness {
    start: Instant,
    last_read_ms: AtomicU64,
}

impl Liveness {
    fn new() -> Self {
        Liveness {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
        }
    }

    fn note_read(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(
            self.last_read_ms.load(Ordering::Relaxed),
        ))
    }
}

/// Tailscale answers disco to unknown peers with PeerGone(NotHere) at most
/// once a second per sender, with a burst of three.
struct NotHereLimiter {
    tokens: f64,
    last: Instant,
}

impl NotHereLimiter {
    const BURST: f64 = 3.0;

    fn new() -> Self {
        NotHereLimiter {
            tokens: Self::BURST,
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64()).min(Self::BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads until one whole frame is buffered. `Ok(None)` is a clean EOF
/// between frames.
async fn read_frame<R>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Option<Frame>, ConnError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(Some(frame));
        }
        buf.reserve(decoder.bytes_wanted(buf).max(READ_CHUNK));
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated {
                    buffered: buf.len(),
                }
                .into())
            };
        }
    }
}

async fn write_timeout<W>(wr: &mut W, bytes: &[u8], limit: Duration) -> Result<(), ConnError>
where
    W: AsyncWrite + Unpin,
{
    tokio::time::timeout(limit, async {
        wr.write_all(bytes).await?;
        wr.flush().await
    })
    .await
    .map_err(|_| ConnError::Timeout("write"))?
    .map_err(ConnError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derp::frame::ServerMessage;
    use crate::derp::test_client::TestClient;

    fn relay_with(config: RelayConfig) -> Arc<Relay> {
        Relay::new(crypto::generate_private_key(), config)
    }

    /// Connects a client to `relay` over an in-memory pipe.
    async fn connect(relay: &Arc<Relay>) -> TestClient<tokio::io::DuplexStream> {
        let (server_io, client_io) = tokio::io::duplex(256 << 10);
        tokio::spawn(relay.clone().accept(server_io, "test".into()));
        TestClient::handshake(client_io).await.expect("handshake")
    }

    async fn wait_until(mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn relays_packet_with_sender_key() {
        let relay = relay_with(RelayConfig::default());
        let mut a = connect(&relay).await;
        let mut b = connect(&relay).await;
        assert_eq!(a.server_key, relay.public_key());
        wait_until(|| relay.is_connected(&a.public) && relay.is_connected(&b.public)).await;

        a.send_packet(&b.public, b"hello b").await.unwrap();
        assert_eq!(
            b.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: a.public,
                packet: Bytes::from_static(b"hello b")
            }
        );
        // And back, with a maximum-size packet.
        let big = vec![0x5a; MAX_PACKET_SIZE];
        b.send_packet(&a.public, &big).await.unwrap();
        assert_eq!(
            a.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: b.public,
                packet: Bytes::from(big)
            }
        );
    }

    #[tokio::test]
    async fn ping_gets_pong_and_note_preferred_is_accepted() {
        let relay = relay_with(RelayConfig::default());
        let mut a = connect(&relay).await;
        a.note_preferred(true).await.unwrap();
        a.ping(*b"pingpong").await.unwrap();
        assert_eq!(
            a.recv_data().await.unwrap(),
            ServerMessage::Pong(*b"pingpong")
        );
    }

    #[tokio::test]
    async fn verify_hook_refusal_closes_connection() {
        let allowed = Arc::new(std::sync::Mutex::new(None::<NodeKey>));
        let check = allowed.clone();
        let relay = relay_with(RelayConfig {
            verifier: Some(Verifier::new(move |k| *check.lock().unwrap() == Some(k))),
            ..RelayConfig::default()
        });
        // Unknown key: the server closes after ClientInfo, without ServerInfo.
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(server_io, "test".into()));
        let err = match TestClient::handshake(client_io).await {
            Ok(_) => panic!("a refused key completed the handshake"),
            Err(e) => e,
        };
        assert!(err.contains("closed"), "{err}");
        assert_eq!(relay.connection_count(), 0);

        // A known key gets in.
        let key = crypto::generate_private_key();
        *allowed.lock().unwrap() = Some(crypto::public_key(&key));
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(server_io, "test".into()));
        TestClient::handshake_with_key(client_io, key)
            .await
            .unwrap();
        assert_eq!(relay.connection_count(), 1);
    }

    #[tokio::test]
    async fn revoked_key_is_cut_off_and_strangers_are_counted() {
        let key = crypto::generate_private_key();
        let allowed = Arc::new(std::sync::Mutex::new(Verdict::Allow));
        let checks = Arc::new(AtomicU64::new(0));
        let (check, counted) = (allowed.clone(), checks.clone());
        let metrics = Metrics::new();
        let relay = relay_with(RelayConfig {
            verifier: Some(Verifier::new(move |_k| {
                counted.fetch_add(1, Ordering::Relaxed);
                *check.lock().unwrap()
            })),
            verify_interval: Duration::from_millis(50),
            metrics: Some(metrics.clone()),
            ..RelayConfig::default()
        });
        let (s1, c1) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(s1, "doomed".into()));
        let mut doomed = TestClient::handshake_with_key(c1, key).await.unwrap();
        let mut other = connect(&relay).await;
        wait_until(|| relay.connection_count() == 2).await;

        // To a key that is no connected node: dropped and counted.
        doomed.send_packet(&[0x42; 32], b"to nobody").await.unwrap();
        wait_until(|| {
            metrics
                .encode()
                .contains(r#"meshscale_derp_refused_frames_total{reason="no_such_peer"} 1"#)
        })
        .await;

        // Inconclusive checks (store down) keep the clients.
        *allowed.lock().unwrap() = Verdict::Unknown;
        let seen = checks.load(Ordering::Relaxed);
        wait_until(|| checks.load(Ordering::Relaxed) >= seen + 4).await;
        other.ping([7; 8]).await.unwrap();
        assert_eq!(
            other.recv_data().await.unwrap(),
            ServerMessage::Pong([7; 8])
        );
        assert_eq!(relay.connection_count(), 2);

        // Its node is deleted: every connection of that key is closed at
        // the next re-check.
        *allowed.lock().unwrap() = Verdict::Deny;
        loop {
            match doomed.recv_data().await {
                Ok(ServerMessage::KeepAlive | ServerMessage::Ping(_)) => continue,
                Ok(m) => panic!("unexpected {m:?}"),
                Err(_) => break,
            }
        }
        wait_until(|| !relay.is_connected(&doomed.public)).await;
        assert!(
            metrics
                .encode()
                .contains(r#"meshscale_derp_refused_connections_total{reason="revoked"}"#)
        );
    }

    #[tokio::test]
    async fn async_verifier_is_awaited() {
        let relay = relay_with(RelayConfig {
            verifier: Some(Verifier::new_async(|_k| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                true
            })),
            ..RelayConfig::default()
        });
        let _a = connect(&relay).await;
        assert_eq!(relay.connection_count(), 1);
    }

    #[tokio::test]
    async fn peer_gone_reaches_receiver_when_sender_leaves() {
        let relay = relay_with(RelayConfig::default());
        let a = connect(&relay).await;
        let mut b = connect(&relay).await;
        wait_until(|| relay.connection_count() == 2).await;
        let mut a = a;
        a.send_packet(&b.public, b"x").await.unwrap();
        assert!(matches!(
            b.recv_data().await.unwrap(),
            ServerMessage::RecvPacket { .. }
        ));
        let a_key = a.public;
        drop(a);
        assert_eq!(
            b.recv_data().await.unwrap(),
            ServerMessage::PeerGone {
                peer: a_key,
                reason: PeerGoneReason::Disconnected
            }
        );
    }

    #[tokio::test]
    async fn disco_to_absent_peer_gets_not_here() {
        let relay = relay_with(RelayConfig::default());
        let mut a = connect(&relay).await;
        let mut disco = b"TS\xf0\x9f\x92\xac".to_vec();
        disco.extend_from_slice(&[1; 80]);
        a.send_packet(&[0x77; 32], b"plain data").await.unwrap();
        a.send_packet(&[0x77; 32], &disco).await.unwrap();
        assert_eq!(
            a.recv_data().await.unwrap(),
            ServerMessage::PeerGone {
                peer: [0x77; 32],
                reason: PeerGoneReason::NotHere
            }
        );
    }

    #[tokio::test]
    async fn duplicate_key_last_connection_wins() {
        let relay = relay_with(RelayConfig::default());
        let key = crypto::generate_private_key();
        let (s1, c1) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(s1, "first".into()));
        let mut first = TestClient::handshake_with_key(c1, key).await.unwrap();
        let (s2, c2) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(s2, "second".into()));
        let mut second = TestClient::handshake_with_key(c2, key).await.unwrap();
        let mut sender = connect(&relay).await;
        wait_until(|| relay.connection_count() == 3).await;

        sender
            .send_packet(&first.public, b"to newest")
            .await
            .unwrap();
        assert!(matches!(
            second.recv_data().await.unwrap(),
            ServerMessage::RecvPacket { .. }
        ));
        // The older connection speaks up and becomes the active one.
        first.ping([1; 8]).await.unwrap();
        assert_eq!(
            first.recv_data().await.unwrap(),
            ServerMessage::Pong([1; 8])
        );
        sender
            .send_packet(&first.public, b"to first")
            .await
            .unwrap();
        assert_eq!(
            first.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: sender.public,
                packet: Bytes::from_static(b"to first")
            }
        );
    }

    #[tokio::test]
    async fn oversize_and_malformed_frames_close_only_that_client() {
        let relay = relay_with(RelayConfig::default());
        let mut a = connect(&relay).await;
        let mut b = connect(&relay).await;
        let mut bad = connect(&relay).await;
        wait_until(|| relay.connection_count() == 3).await;

        // Header announcing a frame far past the limit.
        bad.write_raw(&[0x04, 0x00, 0x10, 0x00, 0x00])
            .await
            .unwrap();
        assert!(
            bad.recv_data().await.is_err(),
            "server must close the oversize sender"
        );
        wait_until(|| relay.connection_count() == 2).await;

        // A malformed known frame (NotePreferred with 2 bytes) also closes.
        let mut bad2 = connect(&relay).await;
        bad2.write_raw(&[0x07, 0, 0, 0, 2, 1, 1]).await.unwrap();
        assert!(bad2.recv_data().await.is_err());
        // And so does a mesh-only frame from a non-mesh client.
        let mut bad3 = connect(&relay).await;
        bad3.write_raw(&[0x10, 0, 0, 0, 0]).await.unwrap();
        assert!(bad3.recv_data().await.is_err());
        wait_until(|| relay.connection_count() == 2).await;

        // Unknown frame types are skipped, not fatal.
        a.write_raw(&[0x7e, 0, 0, 0, 3, 1, 2, 3]).await.unwrap();
        a.send_packet(&b.public, b"still works").await.unwrap();
        assert_eq!(
            b.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: a.public,
                packet: Bytes::from_static(b"still works")
            }
        );
    }

    #[tokio::test]
    async fn garbage_handshake_is_refused() {
        let relay = relay_with(RelayConfig::default());
        // Wrong first frame type.
        let (server_io, mut client_io) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(relay.clone().accept(server_io, "test".into()));
        client_io.write_all(&[0x04, 0, 0, 0, 40]).await.unwrap();
        client_io.write_all(&[0; 40]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();

        // A ClientInfo whose box does not open.
        let (server_io, mut client_io) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(relay.clone().accept(server_io, "test".into()));
        let mut f = BytesMut::new();
        frame::client_info_frame(&mut f, &[3; 32], &[9; 60]).unwrap();
        client_io.write_all(&f).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(relay.connection_count(), 0);
    }

    #[tokio::test]
    async fn handshake_times_out() {
        let relay = relay_with(RelayConfig {
            handshake_timeout: Duration::from_millis(100),
            ..RelayConfig::default()
        });
        let (server_io, _client_io) = tokio::io::duplex(64 << 10);
        let task = tokio::spawn(relay.clone().accept(server_io, "silent".into()));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn keep_alive_and_idle_ping() {
        let relay = relay_with(RelayConfig {
            keep_alive: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(60),
            ..RelayConfig::default()
        });
        let mut a = connect(&relay).await;
        let mut seen_keep_alive = false;
        let mut seen_ping = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(seen_keep_alive && seen_ping) && tokio::time::Instant::now() < deadline {
            match a.recv_data().await.unwrap() {
                ServerMessage::KeepAlive => seen_keep_alive = true,
                ServerMessage::Ping(_) => seen_ping = true,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(seen_keep_alive && seen_ping);
    }

    #[tokio::test]
    async fn silent_client_that_acks_pings_is_dropped() {
        let relay = relay_with(RelayConfig {
            keep_alive: Duration::from_millis(20),
            idle_timeout: Duration::from_millis(60),
            ..RelayConfig::default()
        });
        let _a = connect(&relay).await;
        wait_until(|| relay.connection_count() == 1).await;
        // Never answers the pings: gone after the idle timeout.
        for _ in 0..100 {
            if relay.connection_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("idle client was not dropped");
    }

    #[tokio::test]
    async fn slow_receiver_does_not_block_sender() {
        let relay = relay_with(RelayConfig {
            send_queue_depth: 4,
            ..RelayConfig::default()
        });
        let mut a = connect(&relay).await;
        // B's pipe is tiny and B never reads.
        let (server_io, client_io) = tokio::io::duplex(1024);
        tokio::spawn(relay.clone().accept(server_io, "slow".into()));
        let b = TestClient::handshake(client_io).await.unwrap();
        let mut c = connect(&relay).await;
        wait_until(|| relay.connection_count() == 3).await;
        for _ in 0..200 {
            a.send_packet(&b.public, &[0; 1000]).await.unwrap();
        }
        // A's reads are still served promptly.
        a.send_packet(&c.public, b"after flood").await.unwrap();
        assert_eq!(
            c.recv_data().await.unwrap(),
            ServerMessage::RecvPacket {
                from: a.public,
                packet: Bytes::from_static(b"after flood")
            }
        );
        // The stuck writer hits its write timeout and B is dropped.
        wait_until(|| !relay.is_connected(&b.public)).await;
        assert!(relay.all_peers().iter().all(|p| p.key != b.public));
    }

    #[tokio::test]
    async fn shutdown_closes_everyone() {
        let relay = relay_with(RelayConfig::default());
        let mut a = connect(&relay).await;
        wait_until(|| relay.connection_count() == 1).await;
        relay.shutdown();
        assert!(a.recv_data().await.is_err());
        assert_eq!(relay.connection_count(), 0);
        // New connections are refused once shut down.
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        tokio::spawn(relay.clone().accept(server_io, "late".into()));
        assert!(TestClient::handshake(client_io).await.is_err());
    }
}

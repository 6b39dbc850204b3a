//! The reconnecting DERP session to our home region: TLS, `GET /derp`
//! upgrade, `ServerKey → ClientInfo → ServerInfo`, then packets both ways.
//! Outbound packets go through a bounded queue and are dropped while the
//! relay is down (WireGuard retransmits; queueing stale packets would only
//! add latency).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshscale_controlclient::NodeKey;
use meshscale_wire::NodePublic;
use meshscale_wire::tailcfg::{DerpMap, DerpRegionId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::{Instrument, debug, info, warn};

use super::frame::{self, FrameError, FrameType};
use crate::backoff::Backoff;
use crate::nacl;

/// Outbound packets waiting for the relay.
const OUTBOUND_QUEUE: usize = 512;
/// Frame buffers kept for reuse, and the largest one worth keeping (a
/// WireGuard datagram of the TUN MTU, framed, with room to spare).
const POOL_BUFFERS: usize = 256;
const POOL_BUF_MAX: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Servers send KeepAlive every 60 s; twice that without any frame is dead.
const READ_IDLE: Duration = Duration::from_secs(120);
const MAX_HTTP_HEADER: usize = 8 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DerpError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DERP {0} timed out")]
    Timeout(&'static str),
    #[error("TLS to {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("DERP upgrade refused: {0}")]
    Upgrade(String),
    #[error("DERP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("DERP handshake: expected {expected}, got frame type {got:#04x}")]
    Unexpected { expected: &'static str, got: u8 },
    #[error("DERP handshake: server info box: {0}")]
    Box(#[from] nacl::BoxError),
}

/// Where the relay of one region is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerpTarget {
    pub region_id: DerpRegionId,
    pub region_code: String,
    pub host_name: String,
    pub port: u16,
    /// Forced address (the map's `IPv4`/`IPv6`), else DNS of `host_name`.
    pub ip: Option<IpAddr>,
    pub insecure_for_tests: bool,
    /// Our home region: the session sends NotePreferred so the relay
    /// tells peers to find us here. Sessions to peers' regions do not.
    pub preferred: bool,
}

impl DerpTarget {
    /// The first non-STUN-only node of `region` in `map`.
    pub fn from_map(map: &DerpMap, region: DerpRegionId) -> Option<DerpTarget> {
        let r = map.regions.as_ref()?.get(&region)?;
        let n = r.nodes.iter().find(|n| !n.stun_only)?;
        let port = match n.derp_port {
            0 => 443,
            p => u16::try_from(p).ok()?,
        };
        let ip = [n.ipv4.as_str(), n.ipv6.as_str()]
            .iter()
            .find_map(|s| s.parse::<IpAddr>().ok());
        Some(DerpTarget {
            region_id: region,
            region_code: r.region_code.clone(),
            host_name: n.host_name.clone(),
            port,
            ip,
            insecure_for_tests: n.insecure_for_tests,
            preferred: false,
        })
    }

    /// The region to call home: the lowest id, as a deterministic choice
    /// until latency measurement picks the nearest.
    pub fn home(map: &DerpMap) -> Option<DerpTarget> {
        let regions = map.regions.as_ref()?;
        regions
            .keys()
            .find_map(|id| DerpTarget::from_map(map, *id))
            .map(|t| DerpTarget {
                preferred: true,
                ..t
            })
    }
}

/// What the relay tells the data plane.
#[derive(Debug)]
pub enum DerpEvent {
    Connected(DerpRegionId),
    Disconnected(DerpRegionId),
    Packet { src: NodePublic, data: Vec<u8> },
    PeerGone(NodePublic),
}

/// TLS settings: verified, and (only for `InsecureForTests` nodes)
/// unverified.
#[derive(Clone)]
pub struct DerpTls {
    pub verified: Arc<ClientConfig>,
    pub insecure: Arc<ClientConfig>,
}

/// Frame buffers shared by the data plane (which fills them) and the
/// session's writer (which hands them back once written): a packet
/// relayed in steady state allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// An empty buffer: a used one when there is one.
    pub fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Keeps `buf` for reuse, unless the pool is full or the buffer grew
    /// larger than a relayed packet needs.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() > POOL_BUF_MAX {
            return;
        }
        buf.clear();
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(buf);
        }
    }

    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a packet was not queued for the relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("DERP queue full")]
    QueueFull,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// The live session; dropping it stops the relay.
#[derive(Debug)]
pub struct DerpHandle {
    pub target: DerpTarget,
    /// Complete `SendPacket` frames, in pooled buffers.
    tx: mpsc::Sender<Vec<u8>>,
    pool: BufPool,
    task: JoinHandle<()>,
}

impl DerpHandle {
    /// Queues `packet` for `dst`, framed into a pooled buffer.
    pub fn send(&self, dst: NodePublic, packet: &[u8]) -> Result<(), SendError> {
        let mut buf = self.pool.take();
        if let Err(e) = frame::write_send_packet(&mut buf, &dst, packet) {
            self.pool.give(buf);
            return Err(e.into());
        }
        self.tx.try_send(buf).map_err(|e| {
            self.pool.give(e.into_inner());
            SendError::QueueFull
        })
    }
}

impl Drop for DerpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the session to `target` as `node`.
pub fn spawn(
    target: DerpTarget,
    node: NodeKey,
    tls: DerpTls,
    events: mpsc::Sender<DerpEvent>,
) -> DerpHandle {
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let pool = BufPool::default();
    let span = tracing::info_span!("derp", region = target.region_id, host = %target.host_name);
    let task =
        tokio::spawn(run(target.clone(), node, tls, events, rx, pool.clone()).instrument(span));
    DerpHandle {
        target,
        tx,
        pool,
        task,
    }
}

async fn run(
    target: DerpTarget,
    node: NodeKey,
    tls: DerpTls,
    events: mpsc::Sender<DerpEvent>,
    mut outbound: mpsc::Receiver<Vec<u8>>,
    pool: BufPool,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let started = tokio::time::Instant::now();
        match session(&target, &node, &tls, &events, &mut outbound, &pool).await {
            Ok(()) => return, // the data plane went away
            Err(e) => {
                // A session that lived a while was a success: retry fast.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let _ = events.send(DerpEvent::Disconnected(target.region_id)).await;
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "DERP session ended");
                tokio::time::sleep(wait).await;
            }
        }
        // Packets queued while down are stale by now.
        while let Ok(buf) = outbound.try_recv() {
            pool.give(buf);
        }
        if events.is_closed() {
            return;
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

async fn dial(target: &DerpTarget, tls: &DerpTls) -> Result<Box<dyn Stream>, DerpError> {
    let addr_text = format!("{}:{}", target.host_name, target.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, async {
        match target.ip {
            Some(ip) => TcpStream::connect(SocketAddr::new(ip, target.port)).await,
            None => TcpStream::connect(&addr_text).await,
        }
    })
    .await
    .map_err(|_| DerpError::Timeout("connect"))?
    .map_err(|source| DerpError::Connect {
        addr: addr_text.clone(),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let config = if target.insecure_for_tests {
        tls.insecure.clone()
    } else {
        tls.verified.clone()
    };
    let name = ServerName::try_from(target.host_name.clone())
        .map_err(|_| DerpError::ServerName(target.host_name.clone()))?;
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| DerpError::Timeout("TLS handshake"))?
    .map_err(|source| DerpError::Tls {
        host: target.host_name.clone(),
        source,
    })?;
    Ok(Box::new(stream))
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), DerpError> {
    let mut h = [0u8; frame::HEADER_LEN];
    r.read_exact(&mut h).await?;
    let (t, len) = frame::parse_header(&h, frame::MAX_FRAME)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((t, payload))
}

/// One connection: returns `Ok` only when the data plane is gone.
async fn session(
    target: &DerpTarget,
    node: &NodeKey,
    tls: &DerpTls,
    events: &mpsc::Sender<DerpEvent>,
    outbound: &mut mpsc::Receiver<Vec<u8>>,
    pool: &BufPool,
) -> Result<(), DerpError> {
    let stream = dial(target, tls).await?;
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let handshake = async {
        let req = format!(
            "GET /derp HTTP/1.1\r\nHost: {}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nUser-Agent: meshscale-sidecar\r\n\r\n",
            target.host_name
        );
        w.write_all(req.as_bytes()).await?;
        w.flush().await?;
        let mut status = String::new();
        let mut seen = 0usize;
        loop {
            let mut line = String::new();
            let n = (&mut r)
                .take((MAX_HTTP_HEADER - seen) as u64)
                .read_line(&mut line)
                .await?;
            seen += n;
            if n == 0 || seen >= MAX_HTTP_HEADER {
                return Err(DerpError::Upgrade(
                    "response headers too long or cut".into(),
                ));
            }
            if status.is_empty() {
                status = line.trim().to_string();
            } else if line == "\r\n" || line == "\n" {
                break;
            }
        }
        if !status.contains(" 101") {
            return Err(DerpError::Upgrade(status));
        }
        let (t, payload) = read_frame(&mut r).await?;
        if t != FrameType::ServerKey as u8 {
            return Err(DerpError::Unexpected {
                expected: "ServerKey",
                got: t,
            });
        }
        let server_key = frame::parse_server_key(&payload)?;
        let info = serde_json::json!({"version": frame::PROTOCOL_VERSION, "CanAckPings": true});
        let sealed = nacl::seal(
            node.private().as_bytes(),
            server_key.as_bytes(),
            info.to_string().as_bytes(),
        )?;
        let mut ci = node.public().as_bytes().to_vec();
        ci.extend_from_slice(&sealed);
        w.write_all(&frame::encode(FrameType::ClientInfo, &ci)?)
            .await?;
        w.flush().await?;
        let (t, payload) = read_frame(&mut r).await?;
        if t != FrameType::ServerInfo as u8 {
            return Err(DerpError::Unexpected {
                expected: "ServerInfo",
                got: t,
            });
        }
        // Opening proves the server holds the key it announced.
        nacl::open(node.private().as_bytes(), server_key.as_bytes(), &payload)?;
        // Our home region: the server tells peers to find us here.
        if target.preferred {
            w.write_all(&frame::encode(FrameType::NotePreferred, &[1])?)
                .await?;
        }
        w.flush().await?;
        Ok::<_, DerpError>(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| DerpError::Timeout("handshake"))??;
    info!("DERP connected");
    if events
        .send(DerpEvent::Connected(target.region_id))
        .await
        .is_err()
    {
        return Ok(());
    }

    let (pong_tx, mut pong_rx) = mpsc::channel::<[u8; 8]>(8);
    let reader = async {
        loop {
            let (t, payload) = tokio::time::timeout(READ_IDLE, read_frame(&mut r))
                .await
                .map_err(|_| DerpError::Timeout("read (no frame for 120 s)"))??;
            match t {
                t if t == FrameType::RecvPacket as u8 => {
                    let (src, data) = frame::parse_recv_packet(&payload)?;
                    let ev = DerpEvent::Packet {
                        src,
                        data: data.to_vec(),
                    };
                    if events.send(ev).await.is_err() {
                        return Ok(());
                    }
                }
                t if t == FrameType::Ping as u8 => {
                    let _ = pong_tx.try_send(frame::parse_ping(&payload)?);
                }
                t if t == FrameType::PeerGone as u8 => {
                    let k = frame::parse_peer_gone(&payload)?;
                    let _ = events.send(DerpEvent::PeerGone(k)).await;
                }
                t if t == FrameType::Health as u8 => {
                    let text = String::from_utf8_lossy(&payload);
                    if !text.is_empty() {
                        warn!(health = %text, "DERP server reports a problem");
                    }
                }
                t if t == FrameType::Restarting as u8 => {
                    return Err(DerpError::Upgrade("server is restarting".into()));
                }
                t if t == FrameType::KeepAlive as u8 => {}
                other => debug!(frame_type = other, "ignoring DERP frame"),
            }
        }
    };
    let writer = async {
        loop {
            tokio::select! {
                out = outbound.recv() => {
                    let Some(frame) = out else { return Ok(()) };
                    w.write_all(&frame).await?;
                    pool.give(frame);
                }
                Some(p) = pong_rx.recv() => {
                    w.write_all(&frame::encode(FrameType::Pong, &p)?).await?;
                }
            }
            w.flush().await?;
        }
    };
    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::tailcfg::{DerpNode, DerpRegion};

    #[tokio::test]
    async fn relayed_packets_reuse_pooled_frame_buffers() {
        let (tx, mut rx) = mpsc::channel(2);
        let pool = BufPool::default();
        let target = DerpTarget {
            region_id: 1,
            region_code: "test".into(),
            host_name: "derp.invalid".into(),
            port: 443,
            ip: None,
            insecure_for_tests: false,
            preferred: true,
        };
        let h = DerpHandle {
            target,
            tx,
            pool: pool.clone(),
            task: tokio::spawn(async {}),
        };
        let dst = NodePublic::from_bytes([9; 32]);
        h.send(dst, b"first").expect("queued");
        let f = rx.recv().await.expect("frame");
        assert_eq!(f, frame::send_packet(&dst, b"first").expect("frame"));
        // The writer hands the buffer back; the next packet is framed in
        // the same allocation.
        let at = f.as_ptr();
        pool.give(f);
        assert_eq!(pool.len(), 1);
        h.send(dst, b"second").expect("queued");
        assert!(pool.is_empty());
        let f = rx.recv().await.expect("frame");
        assert_eq!(f.as_ptr(), at, "a new allocation");
        assert_eq!(f, frame::send_packet(&dst, b"second").expect("frame"));
        pool.give(f);

        // Refusals hand the buffer back too.
        let big = vec![0u8; frame::MAX_PACKET + 1];
        assert!(matches!(h.send(dst, &big), Err(SendError::Frame(_))));
        h.send(dst, b"a").expect("queued");
        h.send(dst, b"b").expect("queued");
        assert_eq!(h.send(dst, b"c"), Err(SendError::QueueFull));
        assert_eq!(pool.len(), 1, "refused buffers are kept for reuse");

        // Bounded: oversized buffers are dropped, and at most
        // POOL_BUFFERS are kept.
        let pool = BufPool::default();
        pool.give(Vec::with_capacity(POOL_BUF_MAX + 1));
        assert!(pool.is_empty());
        for _ in 0..POOL_BUFFERS + 10 {
            pool.give(Vec::with_capacity(64));
        }
        assert_eq!(pool.len(), POOL_BUFFERS);
        assert!(pool.take().is_empty(), "handed out cleared");
    }

    fn region(id: DerpRegionId, code: &str, nodes: Vec<DerpNode>) -> (DerpRegionId, DerpRegion) {
        (
            id,
            DerpRegion {
                region_id: id,
                region_code: code.into(),
                nodes,
                ..DerpRegion::default()
            },
        )
    }

    fn node(host: &str, stun_only: bool, port: i64) -> DerpNode {
        DerpNode {
            host_name: host.into(),
            stun_only,
            derp_port: port,
            ..DerpNode::default()
        }
    }

    #[test]
    fn home_is_the_lowest_usable_region_and_preferred() {
        let map = DerpMap {
            regions: Some(
                [
                    region(1, "stunonly", vec![node("s.example", true, 0)]),
                    region(7, "b", vec![node("b.example", false, 0)]),
                    region(9, "c", vec![node("10.0.0.9", false, 8443)]),
                ]
                .into(),
            ),
            ..DerpMap::default()
        };
        let home = DerpTarget::home(&map).unwrap();
        assert_eq!((home.region_id, home.port, home.preferred), (7, 443, true));
        // A peer's region: reachable, but not where we ask to be found.
        let peer = DerpTarget::from_map(&map, 9).unwrap();
        assert_eq!((peer.port, peer.preferred), (8443, false));
        assert_eq!(peer.ip, None, "host names are resolved at dial time");
        assert!(DerpTarget::from_map(&map, 1).is_none());
        assert!(DerpTarget::from_map(&map, 5).is_none());
        // A hostile port is refused, not truncated.
        let bad = DerpMap {
            regions: Some([region(3, "x", vec![node("x", false, 70_000)])].into()),
            ..DerpMap::default()
        };
        assert!(DerpTarget::home(&bad).is_none());
    }
}

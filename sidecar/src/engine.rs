//! The data plane (Tailscale's `wgengine` + `magicsock`, reduced): one task
//! owns the TUN device, the UDP socket, the DERP session and the WireGuard
//! sessions, so no locks are needed around boringtun state.
//!
//! Paths: a peer is reached directly over UDP when a disco pong came back
//! from one of its endpoints recently, else through DERP. WireGuard and
//! disco share the UDP socket, told apart by the disco magic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use meshscale_controlclient::dial::TlsConfigs;
use meshscale_controlclient::{DiscoKey, NodeKey};
use meshscale_packetfilter::{Filter, LocalNets, Policy, Rules, Verdict};
use meshscale_wire::NodePublic;
use meshscale_wire::tailcfg::Node;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::control::LocalInfo;
use crate::derp::client::DerpTls;
use crate::derp::{DerpEvent, DerpHandle};
use crate::disco::{self, Message, Ping, Pong};
use crate::endpoints::{Endpoints, STUN_ROUND, StunOutcome};
use crate::handshake::Handshakes;
use crate::netmap::{self, NetMap};
use crate::offload::{self, Coalescer, VNET_HDR_LEN};
use crate::paths::Via;
use crate::peers::PeerTable;
use crate::pings::{self, Pings};
use crate::relays::Relays;
use crate::stun;
use crate::tun::{self, Tun};
use crate::udp::{self, RecvBatch, SendBatch, Udp};
use crate::wg::{self, WgPeers};

/// Room for a packet of the TUN MTU plus WireGuard overhead, and for any
/// datagram the network hands us.
const BUF: usize = 65_536;
/// One TUN read: a virtio-net header and a TCP super-packet of up to 64 KiB.
const TUN_BUF: usize = VNET_HDR_LEN + 65_536;
/// TUN reads handled per wake-up before the other sources get a turn.
const TUN_READS: usize = 16;
const TICK: Duration = Duration::from_millis(250);
/// How often active peers' endpoints are probed with disco pings (Go's
/// `heartbeatInterval`): keeps a direct path proven while it is used.
const PING_ROUND: Duration = Duration::from_secs(3);
/// Peers without traffic for this long are not probed: an idle mesh of N
/// nodes would otherwise send N² pings every round (Go: `sessionActiveTimeout`).
const ACTIVE_FOR: Duration = Duration::from_secs(45);
/// Traffic to a peer without a direct path starts discovery at once, but
/// at most this often.
const PROBE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// magicsock's fake address for "via DERP" (`127.3.3.40:<region>`).
const DERP_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);
/// Interface addresses reported as endpoints, at most (a host with many
/// addresses would otherwise make every peer probe them all).
const MAX_IFACE_ADDRS: usize = 8;

/// Requests from the local API.
pub enum Command {
    Status(oneshot::Sender<StatusReport>),
    Ping {
        target: String,
        reply: oneshot::Sender<Result<PingResult, String>>,
    },
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub id: i64,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub user: String,
    pub os: String,
    pub online: Option<bool>,
    /// `direct <addr>`, `relay "<code>"` or `idle`.
    pub path: String,
    pub active: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub state: String,
    /// Why the node is not running (e.g. logged out by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub user: String,
    pub derp: Option<String>,
    pub peers: Vec<PeerStatus>,
    /// The inbound packet filter (absent from older sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStatus>,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct FilterStatus {
    /// Whether the map carried a filter yet.
    pub received: bool,
    /// `PacketFilters` chunk names in force.
    pub chunks: Vec<String>,
    /// Compiled per-family rules.
    pub matches: usize,
    /// Inbound packets accepted, and dropped by reason.
    pub accepted: u64,
    pub dropped: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PingResult {
    pub name: String,
    pub ip: Option<IpAddr>,
    /// `DERP(<code>)` or `ip:port`.
    pub via: String,
    pub direct: bool,
    pub latency_ms: f64,
}

pub struct EngineConfig {
    pub tun_name: String,
    pub udp_port: u16,
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Where control lives: used to find the local address other nodes
    /// can reach us at.
    pub control_host: String,
}

pub struct Engine {
    node: NodeKey,
    disco: Arc<DiscoKey>,
    tun: Tun,
    tun_name: String,
    udp: Udp,
    /// WireGuard datagrams for direct paths, sent with one `sendmmsg`
    /// after each event.
    udp_out: SendBatch<NodePublic>,
    /// Our endpoint candidates and the STUN transactions in flight.
    endpoints: Endpoints,
    /// DERP sessions: home region and peers' regions.
    relays: Relays,
    derp_rx: mpsc::Receiver<DerpEvent>,
    wg: WgPeers,
    /// Peers with a handshake under way: fast resends of the initiation.
    handshakes: Handshakes,
    peers: PeerTable,
    netmap: watch::Receiver<Arc<NetMap>>,
    current: Arc<NetMap>,
    self_addrs: Vec<IpAddr>,
    local_tx: watch::Sender<LocalInfo>,
    control_host: String,
    /// Disco pings in flight, and `ping` requests waiting for a pong.
    pings: Pings<oneshot::Sender<Result<PingResult, String>>>,
    ready: Arc<AtomicBool>,
    out: Vec<u8>,
    /// TCP segments decrypted while handling one event, merged for the
    /// TUN (with offloads).
    to_tun: Coalescer,
    /// The DERP map's STUN servers, resolved off the engine task.
    stun_targets_tx: mpsc::Sender<Vec<SocketAddr>>,
    stun_targets_rx: mpsc::Receiver<Vec<SocketAddr>>,
    logged_out: Option<String>,
    /// The inbound packet filter from the map's `PacketFilters`; shared
    /// with `/metrics` for its counters.
    filter: Arc<Filter>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tun(#[from] tun::TunError),
    #[error("UDP socket on port {port}: {source}")]
    Udp {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl Engine {
    pub async fn new(
        cfg: EngineConfig,
        node: NodeKey,
        disco: Arc<DiscoKey>,
        netmap: watch::Receiver<Arc<NetMap>>,
        local_tx: watch::Sender<LocalInfo>,
        ready: Arc<AtomicBool>,
    ) -> Result<Engine, EngineError> {
        let tun = tun::create(&cfg.tun_name)?;
        let udp = Udp::bind(cfg.udp_port)
            .await
            .map_err(|source| EngineError::Udp {
                port: cfg.udp_port,
                source,
            })?;
        let udp_port = udp.port().unwrap_or(cfg.udp_port);
        let tls = TlsConfigs::new(cfg.extra_ca_pem.as_deref())
            .map_err(|e| EngineError::Tls(e.to_string()))?;
        let (derp_tx, derp_rx) = mpsc::channel(1024);
        let relays = Relays::new(
            node.clone(),
            DerpTls {
                verified: tls.strict,
                insecure: tls.log_only,
            },
            derp_tx,
        );
        let (stun_targets_tx, stun_targets_rx) = mpsc::channel(4);
        info!(tun = %cfg.tun_name, udp_port, ipv6 = udp.has_ipv6(), "data plane ready");
        let endpoints = Endpoints::new(udp_port, udp.has_ipv6());
        Ok(Engine {
            wg: WgPeers::new(node.private().as_bytes()),
            handshakes: Handshakes::default(),
            node,
            disco,
            tun,
            tun_name: cfg.tun_name,
            udp,
            udp_out: SendBatch::new(),
            endpoints,
            relays,
            derp_rx,
            peers: PeerTable::default(),
            netmap,
            current: Arc::new(NetMap::default()),
            self_addrs: Vec::new(),
            local_tx,
            control_host: cfg.control_host,
            pings: Pings::default(),
            ready,
            out: vec![0u8; BUF],
            to_tun: Coalescer::new(),
            stun_targets_tx,
            stun_targets_rx,
            logged_out: None,
            // Before a map: nothing is ours, so nothing new comes in (as
            // the official client's AllowNone filter).
            filter: Arc::new(Filter::new(Policy::default())),
        })
    }

    /// The packet filter, for `/metrics`.
    pub fn filter(&self) -> Arc<Filter> {
        self.filter.clone()
    }

    /// Recompiles the filter when the map's chunks or our addresses
    /// changed. Only the policy is replaced: the flow table and counters
    /// carry on, so flows that stay allowed are not disturbed.
    fn refresh_filter(&mut self, nm: &NetMap, addrs_changed: bool) {
        if !addrs_changed && nm.filters == self.current.filters {
            return;
        }
        // No filter in the map means no rules: new inbound connections are
        // refused, as the official client does with an empty PacketFilter.
        let compiled = Rules::compile(&nm.filters.rules());
        for e in &compiled.errors {
            warn!(error = %e, "packet filter entry ignored");
        }
        info!(
            chunks = ?nm.filters.names().collect::<Vec<_>>(),
            matches = compiled.rules.len(),
            "packet filter updated"
        );
        let local = LocalNets::new(self.self_addrs.iter().map(|a| {
            let bits = if a.is_ipv4() { 32 } else { 128 };
            (*a, bits)
        }));
        self.filter.set_policy(Policy {
            rules: compiled.rules,
            local,
        });
    }

    /// Runs until `commands` closes.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tun_buf = vec![0u8; TUN_BUF];
        // Where one segment of a TCP super-packet is built.
        let mut seg_buf = vec![0u8; BUF];
        let mut udp_in = RecvBatch::new();
        let mut tick = tokio::time::interval(TICK);
        let mut last_round = Instant::now();
        let mut last_stun = Instant::now();
        self.discover_local_ip().await;
        self.refresh_interfaces();
        loop {
            tokio::select! {
                r = self.tun.recv(&mut tun_buf) => match r {
                    Ok(n) => {
                        self.on_tun_read(&mut tun_buf[..n], &mut seg_buf);
                        // Take what else is queued, so that one sendmmsg
                        // carries it all.
                        for _ in 1..TUN_READS {
                            match self.tun.try_recv(&mut tun_buf) {
                                Ok(n) => self.on_tun_read(&mut tun_buf[..n], &mut seg_buf),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "TUN read"),
                },
                r = self.udp.recv_batch(&mut udp_in) => match r {
                    Ok(_) => {
                        for (data, src) in udp_in.iter() {
                            self.on_udp(data, src);
                        }
                    }
                    Err(e) => debug!(error = %e, "UDP read"),
                },
                Some(ev) = self.derp_rx.recv() => self.on_derp(ev),
                _ = sleep_until(self.handshakes.next_due()) => self.resend_initiations(),
                Some(t) = self.stun_targets_rx.recv() => {
                    debug!(targets = ?t, "STUN servers");
                    self.endpoints.set_stun_targets(t);
                    last_stun = Instant::now();
                    self.stun_round();
                }
                _ = tick.tick() => {
                    self.timers();
                    if last_stun.elapsed() >= STUN_ROUND {
                        last_stun = Instant::now();
                        self.stun_round();
                    }
                    if last_round.elapsed() >= PING_ROUND {
                        last_round = Instant::now();
                        self.ping_round();
                    }
                }
                r = self.netmap.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let nm = self.netmap.borrow_and_update().clone();
                    self.apply_netmap(nm);
                }
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => return,
                },
            }
            self.flush_tun();
            self.flush_udp();
        }
    }

    /// Writes the TCP super-packet merged while handling one event.
    fn flush_tun(&mut self) {
        let tun = &self.tun;
        self.to_tun.flush(|b| {
            if let Err(e) = tun.try_send(b) {
                debug!(error = %e, "TUN write");
            }
        });
    }

    /// Sends the WireGuard datagrams queued while handling one event;
    /// those the socket would not take go through DERP, as an immediate
    /// send failure would have.
    fn flush_udp(&mut self) {
        if self.udp_out.is_empty() {
            return;
        }
        let mut failed: Vec<(NodePublic, Vec<u8>)> = Vec::new();
        self.udp.flush(&mut self.udp_out, |key, data| {
            failed.push((key, data.to_vec()))
        });
        for (key, data) in failed {
            if let Some(d) = self.derp_for(key)
                && let Err(e) = d.send(key, &data)
            {
                debug!(peer = %key, error = %e, "not relayed; packet dropped");
            }
        }
    }

    /// The address on our LAN that routes towards the control server:
    /// our first endpoint candidate (STUN would add the public one).
    async fn discover_local_ip(&mut self) {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            return;
        };
        let target = match self.control_host.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, 443)),
            Err(_) => tokio::net::lookup_host((self.control_host.as_str(), 443))
                .await
                .ok()
                .and_then(|mut it| it.find(SocketAddr::is_ipv4)),
        };
        if let Some(t) = target
            && sock.connect(t).await.is_ok()
            && let Ok(local) = sock.local_addr()
            && !local.ip().is_unspecified()
        {
            self.endpoints.set_local_ip(local.ip());
        }
        self.publish_local();
    }

    fn refresh_interfaces(&mut self) {
        let addrs = udp::interface_addrs(MAX_IFACE_ADDRS);
        if self.endpoints.set_interfaces(addrs.clone()) {
            debug!(?addrs, "interface addresses");
            self.publish_local();
        }
    }

    /// Sends a binding request to every STUN server from the shared
    /// socket, so the answer names the NAT mapping WireGuard uses too.
    fn stun_round(&mut self) {
        self.refresh_interfaces();
        let (dropped, requests) = self.endpoints.stun_round(Instant::now(), rand::random);
        if dropped {
            self.publish_local();
        }
        for (tx, target) in requests {
            if let Err(e) = self.udp.try_send_to(&stun::request(tx), target) {
                debug!(%target, error = %e, "STUN send");
                self.endpoints.stun_not_sent(&tx);
            }
        }
    }

    fn on_stun(&mut self, data: &[u8], src: SocketAddr) {
        let (tx, addr) = match stun::parse_response(data) {
            Ok(r) => r,
            Err(e) => {
                debug!(%src, error = %e, "bad STUN packet dropped");
                return;
            }
        };
        match self.endpoints.on_stun(tx, addr, Instant::now()) {
            StunOutcome::Unsolicited => debug!(%src, "unsolicited STUN response dropped"),
            StunOutcome::Confirmed => {}
            StunOutcome::New => {
                info!(%addr, via = %src, "STUN: reflexive endpoint");
                self.publish_local();
            }
        }
    }

    /// Resolves the DERP map's STUN servers off the engine task (DNS may
    /// block for seconds) and hands them back through a channel.
    fn resolve_stun_targets(&self, map: &meshscale_wire::tailcfg::DerpMap) {
        let v6 = self.udp.has_ipv6();
        let mut literal = Vec::new();
        let mut names = Vec::new();
        for region in map.regions.iter().flat_map(|r| r.values()) {
            for n in &region.nodes {
                let port = match n.stun_port {
                    0 => 3478,
                    p => match u16::try_from(p) {
                        Ok(p) => p,
                        Err(_) => continue, // -1: STUN disabled
                    },
                };
                let fixed = [n.ipv4.as_str(), n.ipv6.as_str(), n.host_name.as_str()]
                    .iter()
                    .find_map(|s| s.parse::<IpAddr>().ok());
                match fixed {
                    Some(ip) if ip.is_ipv4() || v6 => literal.push(SocketAddr::new(ip, port)),
                    Some(_) => {}
                    None if !n.host_name.is_empty() => names.push((n.host_name.clone(), port)),
                    None => {}
                }
            }
        }
        let tx = self.stun_targets_tx.clone();
        tokio::spawn(async move {
            let mut out = literal;
            for (host, port) in names {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::lookup_host((host.as_str(), port)),
                )
                .await
                {
                    // One address per family: one reflexive endpoint each.
                    Ok(Ok(addrs)) => {
                        let addrs: Vec<SocketAddr> = addrs.collect();
                        out.extend(addrs.iter().find(|a| a.is_ipv4()));
                        if v6 {
                            out.extend(addrs.iter().find(|a| a.is_ipv6()));
                        }
                    }
                    _ => debug!(%host, "cannot resolve a STUN server"),
                }
            }
            out.dedup();
            let _ = tx.send(out).await;
        });
    }

    fn publish_local(&self) {
        let info = LocalInfo {
            endpoints: self.endpoints.local(),
            stun: self.endpoints.reflexive(),
            preferred_derp: self.relays.home_region(),
        };
        self.local_tx.send_if_modified(|cur| {
            let changed = *cur != info;
            *cur = info;
            changed
        });
    }

    fn apply_netmap(&mut self, nm: Arc<NetMap>) {
        if let Some(why) = &nm.logged_out {
            // Nothing may keep flowing for a node the server refused.
            self.logged_out = Some(why.clone());
            self.ready.store(false, Ordering::Relaxed);
            for key in self.wg.keys() {
                self.wg.remove(&key);
                self.handshakes.done(&key);
            }
            self.peers.clear();
            self.relays.clear();
            self.endpoints.clear_stun();
            self.current = nm;
            return;
        }
        let mut addrs_changed = false;
        if let Some(me) = &nm.self_node {
            let addrs = netmap::addresses(me);
            if addrs != self.self_addrs && !addrs.is_empty() {
                match tun::configure(&self.tun_name, &addrs) {
                    Ok(warnings) => {
                        for w in warnings {
                            warn!(warning = %w, "TUN IPv6 setup");
                        }
                        info!(addresses = ?addrs, tun = %self.tun_name, "tunnel up");
                        self.self_addrs = addrs;
                        addrs_changed = true;
                        self.ready.store(true, Ordering::Relaxed);
                    }
                    Err(e) => warn!(error = %e, "cannot configure the TUN device"),
                }
            }
        }
        if let Some(map) = &nm.derp_map {
            let changed = nm.derp_map != self.current.derp_map;
            if changed {
                self.resolve_stun_targets(map);
            }
            if self.relays.set_map(map, changed) {
                self.publish_local();
            }
        }
        // Peers: add, update, and drop what the map no longer has.
        for key in self.peers.sync(nm.peers.values()) {
            debug!(peer = %key, "peer removed: tearing its tunnel down");
            self.wg.remove(&key);
            self.handshakes.done(&key);
        }
        for key in self.peers.keys() {
            self.wg.ensure(*key);
        }
        self.refresh_filter(&nm, addrs_changed);
        self.current = nm;
    }

    /// One TUN read: with offloads, a header and a packet or a TCP
    /// super-packet to cut up first.
    fn on_tun_read(&mut self, read: &mut [u8], scratch: &mut [u8]) {
        if !self.tun.vnet() {
            self.on_tun(read);
            return;
        }
        if let Err(e) = offload::split(read, scratch, |p| self.on_tun(p)) {
            debug!(error = %e, "TUN packet dropped");
        }
    }

    fn on_tun(&mut self, packet: &[u8]) {
        let Some(dst) = Tunn::dst_address(packet) else {
            return;
        };
        // Flows we open: their UDP replies pass the inbound filter.
        self.filter.outbound(packet);
        let Some(key) = self.peers.by_ip(&dst) else {
            trace!(%dst, "no peer for destination");
            return;
        };
        let now = Instant::now();
        let Some(st) = self.peers.get_mut(&key) else {
            return;
        };
        st.tx_bytes += packet.len() as u64;
        st.last_activity = Some(now);
        let direct = st.path.direct(now);
        let probe = direct.is_none()
            && st
                .last_probe
                .is_none_or(|t| now.duration_since(t) >= PROBE_MIN_INTERVAL);
        if direct.is_some() && self.udp_out.is_full() {
            self.flush_udp();
        }
        let Some(peer) = self.wg.get_mut(&key) else {
            return;
        };
        // On a direct path the datagram is encrypted straight into the
        // send batch: no copy, no allocation.
        if let Some(addr) = direct
            && let Some(slot) = self.udp_out.next_slot()
            && packet.len() + 32 <= slot.len()
        {
            let base = slot.as_ptr();
            let len = match peer.tunn.encapsulate(packet, slot) {
                TunnResult::WriteToNetwork(p) if p.as_ptr() == base => {
                    // No session yet: boringtun queued the packet and
                    // wrote an initiation instead.
                    if wg::is_initiation(p) {
                        self.handshakes.on_initiation(key, now);
                    }
                    p.len()
                }
                TunnResult::WriteToNetwork(p) => {
                    let p = p.to_vec();
                    self.send_wg(key, &p);
                    return;
                }
                TunnResult::Err(e) => {
                    debug!(peer = %key, error = ?e, "encapsulate");
                    return;
                }
                _ => return,
            };
            if self.udp.commit(&mut self.udp_out, len, addr, key).is_err()
                && let Some(slot) = self.udp_out.next_slot()
            {
                // Not queueable (no IPv6 socket for this address): the
                // slow path decides, as for any other datagram.
                let p = slot[..len].to_vec();
                self.send_wg(key, &p);
            }
            return;
        }
        let out = match peer.tunn.encapsulate(packet, &mut self.out) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            TunnResult::Err(e) => {
                debug!(peer = %key, error = ?e, "encapsulate");
                return;
            }
            _ => return,
        };
        self.send_wg(key, &out);
        if probe {
            // Path discovery on demand, as magicsock does on send.
            self.probe(key, now);
        }
    }

    /// Sends a WireGuard datagram on the best path: direct when one is
    /// proven, else DERP at once (a relay session still connecting queues
    /// it), never held back for discovery.
    fn send_wg(&mut self, key: NodePublic, data: &[u8]) {
        let now = Instant::now();
        if wg::is_initiation(data) {
            self.handshakes.on_initiation(key, now);
        }
        let direct = self.peers.get(&key).and_then(|p| p.path.direct(now));
        if let Some(addr) = direct {
            if self.udp_out.is_full() {
                self.flush_udp();
            }
            // Queued for this event's sendmmsg; one that does not fit a
            // batch slot goes alone.
            if self.udp.queue(&mut self.udp_out, data, addr, key).is_ok()
                || self.udp.try_send_to(data, addr).is_ok()
            {
                return;
            }
        }
        // Framed straight into a pooled buffer: no allocation per packet.
        if let Some(d) = self.derp_for(key)
            && let Err(e) = d.send(key, data)
        {
            debug!(peer = %key, error = %e, "not relayed; packet dropped");
        }
    }

    /// The relay session to reach `key`: the region the peer calls home
    /// (its `HomeDERP`), since that is where the relay can deliver to it;
    /// ours when the peer has none or its region is unknown.
    fn derp_for(&mut self, key: NodePublic) -> Option<&DerpHandle> {
        let region = self.peers.get(&key).map_or(0, |p| p.node.home_derp);
        self.relays
            .for_region(region, self.current.derp_map.as_ref())
    }

    fn on_udp(&mut self, data: &[u8], src: SocketAddr) {
        if stun::is_stun(data) {
            self.on_stun(data, src);
            return;
        }
        if disco::looks_like_disco(data) {
            self.disco_in(data, Via::Udp(src));
            return;
        }
        match self.wg.identify(data) {
            Some(key) => self.wg_in(key, data, Some(src)),
            None => trace!(%src, "datagram from no known peer dropped"),
        }
    }

    fn on_derp(&mut self, ev: DerpEvent) {
        match ev {
            DerpEvent::Connected(region) => {
                debug!(region, "DERP up");
                self.relays.on_event(&ev);
                self.publish_local();
            }
            DerpEvent::Disconnected(region) => {
                debug!(region, "DERP down");
                self.relays.on_event(&ev);
            }
            DerpEvent::PeerGone(k) => debug!(peer = %k, "peer gone from DERP"),
            DerpEvent::Packet { src, data } => {
                if disco::looks_like_disco(&data) {
                    self.disco_in(&data, Via::Derp(src));
                } else if self.wg.contains(&src) {
                    self.wg_in(src, &data, None);
                } else {
                    trace!(peer = %src, "DERP packet from no known peer dropped");
                }
            }
        }
    }

    fn wg_in(&mut self, key: NodePublic, data: &[u8], src: Option<SocketAddr>) {
        let answer = wg::is_response(data);
        self.decapsulate(key, data, src);
        // The answer to one of our initiations (not a stale one boringtun
        // refused): no more resends.
        if answer
            && self.handshakes.is_pending(&key)
            && self.wg.get_mut(&key).is_some_and(|p| p.has_session())
        {
            debug!(peer = %key, "handshake complete");
            self.handshakes.done(&key);
        }
    }

    /// Resends the initiations whose fast retry is due (see `handshake`).
    fn resend_initiations(&mut self) {
        for key in self.handshakes.due(Instant::now()) {
            let packet = match self.wg.get_mut(&key) {
                Some(p) if !p.has_session() => {
                    match p.tunn.format_handshake_initiation(&mut self.out, true) {
                        TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
                        _ => None,
                    }
                }
                _ => None,
            };
            match packet {
                Some(p) => {
                    debug!(peer = %key, "handshake initiation resent");
                    self.send_wg(key, &p);
                }
                // Answered meanwhile, gone, or boringtun refused.
                None => self.handshakes.done(&key),
            }
        }
    }

    fn decapsulate(&mut self, key: NodePublic, data: &[u8], src: Option<SocketAddr>) {
        enum Out {
            Net(Vec<u8>),
            Tun(usize, IpAddr),
            Nothing,
        }
        // With offloads, TUN writes start with a virtio-net header: all
        // zeroes (no GSO, checksums complete), kept in front of `out`.
        let head = if self.tun.vnet() { VNET_HDR_LEN } else { 0 };
        let mut datagram = data;
        loop {
            let Some(peer) = self.wg.get_mut(&key) else {
                return;
            };
            let out =
                match peer
                    .tunn
                    .decapsulate(src.map(|s| s.ip()), datagram, &mut self.out[head..])
                {
                    TunnResult::WriteToNetwork(p) => Out::Net(p.to_vec()),
                    TunnResult::WriteToTunnelV4(p, ip) => Out::Tun(p.len(), IpAddr::V4(ip)),
                    TunnResult::WriteToTunnelV6(p, ip) => Out::Tun(p.len(), IpAddr::V6(ip)),
                    TunnResult::Err(e) => {
                        debug!(peer = %key, error = ?e, "decapsulate");
                        Out::Nothing
                    }
                    TunnResult::Done => Out::Nothing,
                };
            match out {
                Out::Net(p) => {
                    // A handshake answer, or what boringtun queued while
                    // handshaking: send it and ask for more.
                    self.send_wg(key, &p);
                    datagram = &[];
                    continue;
                }
                Out::Tun(len, ip) => {
                    let Some(st) = self.peers.get_mut(&key) else {
                        return;
                    };
                    // A peer may only speak for its own addresses, else any
                    // peer could inject traffic as another.
                    if !st.addrs.contains(&ip) {
                        debug!(peer = %key, %ip, "packet from an address the peer does not own");
                        return;
                    }
                    st.rx_bytes += len as u64;
                    st.last_activity = Some(Instant::now());
                    if let Verdict::Drop(why) = self.filter.inbound(&self.out[head..head + len]) {
                        trace!(peer = %key, reason = why.as_str(), "inbound packet filtered");
                        return;
                    }
                    self.out[..head].fill(0);
                    let packet = &self.out[..head + len];
                    let tun = &self.tun;
                    let write = |b: &[u8]| {
                        if let Err(e) = tun.try_send(b) {
                            debug!(error = %e, "TUN write");
                        }
                    };
                    if head > 0 {
                        self.to_tun.add(packet, write);
                    } else {
                        write(packet);
                    }
                }
                Out::Nothing => {}
            }
            return;
        }
    }

    fn timers(&mut self) {
        for key in self.wg.keys() {
            let out = match self.wg.get_mut(&key) {
                Some(p) => match p.tunn.update_timers(&mut self.out) {
                    TunnResult::WriteToNetwork(p) => Some(p.to_vec()),
                    TunnResult::Err(_) => {
                        // Expired: boringtun gave the handshake up
                        // (REKEY_ATTEMPT_TIME) and dropped what it queued;
                        // the next packet starts a new attempt, fast
                        // resends included. (Said on every tick while
                        // expired, so not logged.)
                        self.handshakes.done(&key);
                        None
                    }
                    _ => None,
                },
                None => None,
            };
            if let Some(p) = out {
                self.send_wg(key, &p);
            }
        }
        let now = Instant::now();
        self.pings.expire(now);
    }

    /// Probes the endpoints of every peer we exchanged traffic with lately.
    fn ping_round(&mut self) {
        let now = Instant::now();
        let active: Vec<NodePublic> = self
            .peers
            .iter()
            .filter(|(_, st)| {
                st.last_activity
                    .is_some_and(|t| now.duration_since(t) < ACTIVE_FOR)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in active {
            self.probe(key, now);
        }
    }

    /// Pings the peer's candidate endpoints and, without a direct path,
    /// asks it (via DERP) to ping ours, so NATs on both sides open.
    fn probe(&mut self, key: NodePublic, now: Instant) {
        let ours = self.endpoints.all();
        let Some(st) = self.peers.get_mut(&key) else {
            return;
        };
        if st.node.disco_key.is_zero() || st.node.online == Some(false) {
            return;
        }
        st.last_probe = Some(now);
        let targets = st.path.candidates();
        let has_direct = st.path.direct(now).is_some();
        for ep in targets {
            self.send_ping(key, Via::Udp(ep), None);
        }
        if !has_direct && !ours.is_empty() {
            self.send_disco(key, &Message::CallMeMaybe(ours), Via::Derp(key));
        }
    }

    fn send_ping(&mut self, key: NodePublic, via: Via, waiter: Option<u64>) {
        if !self.pings.has_room() {
            return;
        }
        let txid: [u8; 12] = rand::random();
        let msg = Message::Ping(Ping {
            txid,
            node_key: self.node.public(),
            padding: 0,
        });
        if self.send_disco(key, &msg, via) {
            self.pings.sent(txid, key, via, Instant::now(), waiter);
        }
    }

    fn send_disco(&mut self, key: NodePublic, msg: &Message, via: Via) -> bool {
        let Some(st) = self.peers.get(&key) else {
            return false;
        };
        let pkt = match disco::seal(
            self.disco.private_bytes(),
            self.disco.public().as_bytes(),
            st.node.disco_key.as_bytes(),
            msg,
        ) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "disco seal");
                return false;
            }
        };
        match via {
            Via::Udp(addr) => self.udp.try_send_to(&pkt, addr).is_ok(),
            Via::Derp(_) => self
                .derp_for(key)
                .is_some_and(|d| d.send(key, &pkt).is_ok()),
        }
    }

    fn disco_in(&mut self, data: &[u8], via: Via) {
        let Ok(sender) = disco::sender(data) else {
            return;
        };
        let Some(key) = self.peers.by_disco(&sender) else {
            trace!("disco packet from an unknown disco key dropped");
            return;
        };
        let msg = match disco::open(self.disco.private_bytes(), data) {
            Ok((_, m)) => m,
            Err(e) => {
                debug!(peer = %key, error = %e, "bad disco packet");
                return;
            }
        };
        match msg {
            Message::Ping(p) => {
                let src = match via {
                    Via::Udp(a) => a,
                    Via::Derp(_) => SocketAddr::new(
                        IpAddr::V4(DERP_MAGIC_IP),
                        u16::try_from(self.relays.home_region()).unwrap_or(0),
                    ),
                };
                self.send_disco(key, &Message::Pong(Pong { txid: p.txid, src }), via);
                // A ping over UDP proves the path works one way; probe it
                // back so both sides can go direct (hole punching).
                if let Via::Udp(a) = via
                    && let Some(st) = self.peers.get_mut(&key)
                {
                    st.path.add_candidate(a);
                    if st.path.direct(Instant::now()).is_none() {
                        self.send_ping(key, via, None);
                    }
                }
            }
            Message::Pong(p) => {
                let now = Instant::now();
                let (latency, waiter) = match self.pings.on_pong(&p.txid, key, via, now) {
                    pings::Pong::Answer { latency, waiter } => (latency, waiter),
                    pings::Pong::Unknown => return,
                    pings::Pong::Mismatch => {
                        debug!(peer = %key, "pong does not match its ping; ignored");
                        return;
                    }
                };
                if let (Via::Udp(addr), Some(st)) = (via, self.peers.get_mut(&key))
                    && st.path.on_pong(addr, latency, now)
                {
                    info!(peer = %key, %addr, ?latency, "direct path");
                    // A pong also proves the peer knows us now: an
                    // unanswered initiation is worth resending at once,
                    // over the new path.
                    self.handshakes.hurry(&key, now);
                }
                if let Some(tx) = waiter {
                    let _ = tx.send(Ok(self.ping_result(key, via, latency)));
                }
            }
            Message::CallMeMaybe(eps) => {
                if let Some(st) = self.peers.get_mut(&key) {
                    for ep in &eps {
                        st.path.add_candidate(*ep);
                    }
                }
                for ep in eps {
                    self.send_ping(key, Via::Udp(ep), None);
                }
            }
        }
    }

    fn ping_result(&self, key: NodePublic, via: Via, latency: Duration) -> PingResult {
        let node = self.peers.get(&key).map(|p| &p.node);
        let (via_text, direct) = match via {
            Via::Udp(a) => (a.to_string(), true),
            Via::Derp(_) => {
                // The region the ping went through: the peer's home when
                // we hold a session there, else ours.
                let region = node.map_or(0, |n| n.home_derp);
                let code = self.relays.code_for(region).unwrap_or("?");
                (format!("DERP({code})"), false)
            }
        };
        PingResult {
            name: node
                .map(|n| netmap::short_name(n).to_string())
                .unwrap_or_default(),
            ip: node.and_then(|n| netmap::addresses(n).first().copied()),
            via: via_text,
            direct,
            latency_ms: latency.as_secs_f64() * 1000.0,
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Ping { target, reply } => {
                let Some(node) = self.current.find_peer(&target) else {
                    let _ = reply.send(Err(format!("no peer named or addressed {target:?}")));
                    return;
                };
                let key = node.key;
                if node.disco_key.is_zero() {
                    let _ = reply.send(Err(format!("{target} has no disco key; cannot ping")));
                    return;
                }
                let id = self.pings.add_waiter(reply, Instant::now());
                let targets = self
                    .peers
                    .get(&key)
                    .map(|p| p.path.candidates())
                    .unwrap_or_default();
                for ep in targets {
                    self.send_ping(key, Via::Udp(ep), Some(id));
                }
                self.send_ping(key, Via::Derp(key), Some(id));
                // Like `tailscale ping`, start discovery: without a direct
                // path, ask the peer to ping us too, or a NAT on its side
                // never lets our pings in.
                let now = Instant::now();
                let ours = self.endpoints.all();
                if let Some(st) = self.peers.get_mut(&key)
                    && st.path.direct(now).is_none()
                    && !ours.is_empty()
                {
                    st.last_probe = Some(now);
                    self.send_disco(key, &Message::CallMeMaybe(ours), Via::Derp(key));
                }
            }
        }
    }

    fn status(&self) -> StatusReport {
        let now = Instant::now();
        let me = self.current.self_node.as_ref();
        let user_of = |n: &Node| self.current.users.get(&n.user).cloned().unwrap_or_default();
        let relay = self.relays.home_code().unwrap_or_default();
        let mut peers: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| {
                let active = p
                    .last_activity
                    .is_some_and(|t| now.duration_since(t) < Duration::from_secs(120));
                let path = match (p.path.direct(now), active) {
                    (Some(a), _) => format!("direct {a}"),
                    (None, true) => format!("relay {relay:?}"),
                    (None, false) => "idle".into(),
                };
                PeerStatus {
                    id: p.node.id,
                    name: netmap::short_name(&p.node).to_string(),
                    ips: netmap::addresses(&p.node),
                    user: user_of(&p.node),
                    os: p
                        .node
                        .hostinfo
                        .as_ref()
                        .map(|h| h.os.clone())
                        .unwrap_or_default(),
                    online: p.node.online,
                    path,
                    active,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        StatusReport {
            state: if self.logged_out.is_some() {
                "NeedsLogin".into()
            } else if self.ready.load(Ordering::Relaxed) {
                "Running".into()
            } else {
                "Starting".into()
            },
            message: self.logged_out.clone(),
            name: me
                .map(|n| netmap::short_name(n).to_string())
                .unwrap_or_default(),
            ips: self.self_addrs.clone(),
            user: me.map(user_of).unwrap_or_default(),
            derp: self.relays.home_code_if_up().map(String::from),
            peers,
            filter: Some(self.filter_status()),
        }
    }
}

impl Engine {
    fn filter_status(&self) -> FilterStatus {
        let policy = self.filter.policy();
        let c = self.filter.counters();
        FilterStatus {
            received: self.current.filters.received(),
            chunks: self.current.filters.names().map(String::from).collect(),
            matches: policy.rules.len(),
            accepted: c.accepted(),
            dropped: c
                .drops()
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
        }
    }
}

/// Sleeps until `t`; forever without one.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

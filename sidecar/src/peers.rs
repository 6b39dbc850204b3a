//! The peers the data plane talks to: each one's node (as the map has it),
//! the addresses it may send from, its path and traffic counters, with
//! lookups by mesh address (outgoing packets) and by disco key (incoming
//! disco). Kept in step with the netmap by [`PeerTable::sync`]. Pure.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use meshscale_wire::NodePublic;
use meshscale_wire::tailcfg::Node;
use tokio::time::Instant;

use crate::netmap;
use crate::paths::PeerPath;

#[derive(Debug)]
pub struct PeerState {
    pub node: Node,
    /// The node's addresses: the only sources its packets may carry.
    pub addrs: Vec<IpAddr>,
    pub path: PeerPath,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub last_activity: Option<Instant>,
    pub last_probe: Option<Instant>,
}

impl PeerState {
    fn new(node: &Node) -> Self {
        Self {
            node: node.clone(),
            addrs: Vec::new(),
            path: PeerPath::default(),
            tx_bytes: 0,
            rx_bytes: 0,
            last_activity: None,
            last_probe: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<NodePublic, PeerState>,
    by_ip: HashMap<IpAddr, NodePublic>,
    by_disco: HashMap<[u8; 32], NodePublic>,
}

impl PeerTable {
    /// Brings the table in line with the map's peers: adds, updates (a
    /// peer keeps its counters and path, unless its disco key changed:
    /// then it restarted and its old path proofs mean nothing), and drops
    /// the others, whose keys are returned so their tunnels can go.
    /// Peers with a zero or expired key are left out: control no longer
    /// vouches for the key (the official client drops them too).
    pub fn sync<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>) -> Vec<NodePublic> {
        let mut seen = HashSet::new();
        self.by_ip.clear();
        self.by_disco.clear();
        for peer in nodes {
            let key = peer.key;
            if key.is_zero() || peer.expired {
                continue;
            }
            seen.insert(key);
            let addrs = netmap::addresses(peer);
            for ip in &addrs {
                self.by_ip.insert(*ip, key);
            }
            if !peer.disco_key.is_zero() {
                self.by_disco.insert(*peer.disco_key.as_bytes(), key);
            }
            let endpoints: Vec<SocketAddr> = peer
                .endpoints
                .iter()
                .filter_map(|e| e.parse().ok())
                .collect();
            let st = self
                .peers
                .entry(key)
                .or_insert_with(|| PeerState::new(peer));
            if st.node.disco_key != peer.disco_key {
                st.path = PeerPath::default();
            }
            st.path.set_map_endpoints(endpoints);
            st.addrs = addrs;
            st.node = peer.clone();
        }
        let removed: Vec<NodePublic> = self
            .peers
            .keys()
            .filter(|k| !seen.contains(*k))
            .copied()
            .collect();
        for k in &removed {
            self.peers.remove(k);
        }
        removed
    }

    /// Drops every peer (logged out).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.by_ip.clear();
        self.by_disco.clear();
    }

    pub fn get(&self, key: &NodePublic) -> Option<&PeerState> {
        self.peers.get(key)
    }

    pub fn get_mut(&mut self, key: &NodePublic) -> Option<&mut PeerState> {
        self.peers.get_mut(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &NodePublic> {
        self.peers.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodePublic, &PeerState)> {
        self.peers.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.values()
    }

    /// The peer that owns mesh address `ip`.
    pub fn by_ip(&self, ip: &IpAddr) -> Option<NodePublic> {
        self.by_ip.get(ip).copied()
    }

    /// The peer with disco key `disco`.
    pub fn by_disco(&self, disco: &[u8; 32]) -> Option<NodePublic> {
        self.by_disco.get(disco).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::DiscoPublic;
    use std::time::Duration;

    fn node(id: u8, ip: &str, disco: u8, endpoint: &str) -> Node {
        Node {
            id: i64::from(id),
            key: NodePublic::from_bytes([id; 32]),
            disco_key: DiscoPublic::from_bytes([disco; 32]),
            addresses: vec![format!("{ip}/32").parse().unwrap()],
            endpoints: vec![endpoint.into(), "not an endpoint".into()],
            ..Node::default()
        }
    }

    #[test]
    fn sync_adds_indexes_updates_and_drops() {
        let mut t = PeerTable::default();
        let a = node(1, "100.64.0.1", 11, "10.0.0.1:41641");
        let b = node(2, "100.64.0.2", 12, "10.0.0.2:41641");
        assert!(t.sync([&a, &b]).is_empty());
        let ka = a.key;
        assert_eq!(t.by_ip(&"100.64.0.1".parse().unwrap()), Some(ka));
        assert_eq!(t.by_disco(&[12; 32]), Some(b.key));
        assert_eq!(t.by_ip(&"100.64.0.9".parse().unwrap()), None);
        let st = t.get(&ka).unwrap();
        assert_eq!(st.addrs, ["100.64.0.1".parse::<IpAddr>().unwrap()]);
        // Unparsable endpoints are skipped.
        assert_eq!(
            st.path.candidates(),
            ["10.0.0.1:41641".parse::<SocketAddr>().unwrap()]
        );

        // An update keeps counters and a proven path...
        let now = Instant::now();
        let ep: SocketAddr = "10.0.0.1:41641".parse().unwrap();
        let st = t.get_mut(&ka).unwrap();
        st.tx_bytes = 100;
        st.path.on_pong(ep, Duration::from_millis(1), now);
        let mut a2 = a.clone();
        a2.addresses = vec!["100.64.0.7/32".parse().unwrap()];
        assert!(t.sync([&a2, &b]).is_empty());
        let st = t.get(&ka).unwrap();
        assert_eq!(st.tx_bytes, 100);
        assert_eq!(st.path.direct(now), Some(ep));
        assert_eq!(t.by_ip(&"100.64.0.1".parse().unwrap()), None, "old address");
        assert_eq!(t.by_ip(&"100.64.0.7".parse().unwrap()), Some(ka));

        // ...unless the disco key changed (the peer restarted).
        let mut a3 = a2.clone();
        a3.disco_key = DiscoPublic::from_bytes([99; 32]);
        t.sync([&a3, &b]);
        assert_eq!(t.get(&ka).unwrap().path.direct(now), None);
        assert_eq!(t.by_disco(&[11; 32]), None);
        assert_eq!(t.by_disco(&[99; 32]), Some(ka));

        // Gone from the map, or expired: dropped and reported.
        let mut b2 = b.clone();
        b2.expired = true;
        let mut removed = t.sync([&b2]);
        removed.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
        assert_eq!(removed, [ka, b.key]);
        assert_eq!(t.keys().count(), 0);
        assert_eq!(t.by_ip(&"100.64.0.2".parse().unwrap()), None);

        t.sync([&a]);
        t.clear();
        assert_eq!(t.iter().count(), 0);
        assert_eq!(t.by_disco(&[11; 32]), None);
    }

    #[test]
    fn zero_keys_are_never_peers() {
        let mut t = PeerTable::default();
        let mut z = node(0, "100.64.0.3", 0, "10.0.0.3:1");
        z.key = NodePublic::zero();
        assert!(t.sync([&z]).is_empty());
        assert_eq!(t.keys().count(), 0);
        assert_eq!(t.by_ip(&"100.64.0.3".parse().unwrap()), None);
    }
}

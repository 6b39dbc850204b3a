//! The network map as the control server describes it, and the delta rules
//! of `tailcfg.MapResponse` (Tailscale `controlclient/map.go`): `Peers`
//! replaces the peer list; otherwise `PeersChanged` upserts, `PeersRemoved`
//! deletes and `PeersChangedPatch` patches; absent fields leave things as
//! they were. `PacketFilters` chunks merge by key (`Chunks`). Pure: no I/O,
//! so every rule is unit-tested.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshscale_packetfilter::Chunks;
use meshscale_wire::netip::IpPrefix;
use meshscale_wire::tailcfg::{DerpMap, MapResponse, Node, NodeId, PeerChange, UserId};

/// 100.64.0.0/10, Tailscale's CGNAT range.
pub const MESH_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// fd7a:115c:a1e0::/48, Tailscale's ULA range.
pub const MESH_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);

/// Whether `ip` lies in one of the mesh prefixes. Addresses outside them
/// would make us route arbitrary traffic into the tunnel, so they are
/// dropped from the map.
pub fn in_mesh(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            u32::from(*a) >> (32 - MESH_V4.1) == u32::from(MESH_V4.0) >> (32 - MESH_V4.1)
        }
        IpAddr::V6(a) => {
            u128::from(*a) >> (128 - MESH_V6.1) == u128::from(MESH_V6.0) >> (128 - MESH_V6.1)
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NetMap {
    pub self_node: Option<Node>,
    pub peers: BTreeMap<NodeId, Node>,
    pub derp_map: Option<DerpMap>,
    pub domain: String,
    /// User id → login name, for `status`.
    pub users: BTreeMap<UserId, String>,
    /// Set when the server no longer accepts the node: the data plane
    /// tears every tunnel down and reports NeedsLogin.
    pub logged_out: Option<String>,
    /// The packet filter's chunks, as full and delta maps left them.
    pub filters: Chunks,
}

/// What one message changed, for the data plane to react to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub self_changed: bool,
    pub peers_changed: bool,
    pub derp_changed: bool,
    /// The message carried `PacketFilter` or `PacketFilters`.
    pub filter_changed: bool,
    /// Addresses refused because they are outside the mesh prefixes.
    pub refused_addresses: Vec<String>,
}

impl NetMap {
    pub fn apply(&mut self, msg: &MapResponse) -> Applied {
        let mut out = Applied::default();
        if msg.keep_alive {
            return out;
        }
        if let Some(node) = &msg.node {
            let mut node = node.clone();
            sanitize(&mut node, &mut out.refused_addresses);
            self.self_node = Some(node);
            out.self_changed = true;
        }
        if let Some(d) = &msg.derp_map {
            let mut d = d.clone();
            // `Regions` absent means "unchanged", not "no relays".
            if d.regions.is_none() {
                d.regions = self.derp_map.as_ref().and_then(|m| m.regions.clone());
            }
            if self.derp_map.as_ref() != Some(&d) {
                self.derp_map = Some(d);
                out.derp_changed = true;
            }
        }
        out.filter_changed = self
            .filters
            .apply(msg.packet_filter.as_ref(), &msg.packet_filters);
        for u in &msg.user_profiles {
            self.users.insert(u.id, u.login_name.clone());
        }
        if !msg.domain.is_empty() {
            self.domain = msg.domain.clone();
        }
        if !msg.peers.is_empty() {
            self.peers.clear();
            for p in &msg.peers {
                self.upsert(p, &mut out.refused_addresses);
            }
            out.peers_changed = true;
        } else {
            for p in &msg.peers_changed {
                self.upsert(p, &mut out.refused_addresses);
                out.peers_changed = true;
            }
            for id in &msg.peers_removed {
                out.peers_changed |= self.peers.remove(id).is_some();
            }
        }
        for patch in &msg.peers_changed_patch {
            if let Some(peer) = self.peers.get_mut(&patch.node_id) {
                apply_patch(peer, patch);
                out.peers_changed = true;
            }
        }
        for (id, online) in &msg.online_change {
            if let Some(peer) = self.peers.get_mut(id) {
                peer.online = Some(*online);
            }
        }
        out
    }

    fn upsert(&mut self, node: &Node, refused: &mut Vec<String>) {
        let mut node = node.clone();
        sanitize(&mut node, refused);
        self.peers.insert(node.id, node);
    }

    /// The peer owning a mesh address, or named `name` (short name or FQDN).
    pub fn find_peer(&self, query: &str) -> Option<&Node> {
        let q = query.trim_end_matches('.');
        if let Ok(ip) = q.parse::<IpAddr>() {
            return self
                .peers
                .values()
                .find(|p| p.addresses.iter().any(|a| a.addr() == ip));
        }
        self.peers.values().find(|p| {
            let fqdn = p.name.trim_end_matches('.');
            fqdn == q || short_name(p) == q
        })
    }
}

/// The first label of the peer's MagicDNS name, else its hostname.
pub fn short_name(node: &Node) -> &str {
    match node.name.split('.').next() {
        Some(s) if !s.is_empty() => s,
        _ => node
            .hostinfo
            .as_ref()
            .map(|h| h.hostname.as_str())
            .unwrap_or(""),
    }
}

fn sanitize(node: &mut Node, refused: &mut Vec<String>) {
    node.addresses.retain(|a| {
        let ok = in_mesh(&a.addr());
        if !ok {
            refused.push(format!("node {}: {a}", node.id));
        }
        ok
    });
    if let Some(allowed) = node.allowed_ips.as_mut() {
        // Only host routes of mesh addresses: subnet routes are not
        // supported yet, and accepting them would hijack other traffic.
        allowed.retain(|a| in_mesh(&a.addr()) && a.is_host());
    }
}

fn apply_patch(peer: &mut Node, patch: &PeerChange) {
    if patch.derp_region != 0 {
        peer.home_derp = patch.derp_region;
    }
    if patch.cap != 0 {
        peer.cap = patch.cap;
    }
    if !patch.endpoints.is_empty() {
        peer.endpoints = patch.endpoints.clone();
    }
    if let Some(k) = patch.key {
        peer.key = k;
    }
    if let Some(k) = patch.disco_key {
        peer.disco_key = k;
    }
    if let Some(o) = patch.online {
        peer.online = Some(o);
    }
    if let Some(t) = patch.last_seen {
        peer.last_seen = Some(t);
    }
    if let Some(t) = patch.key_expiry {
        peer.key_expiry = Some(t);
    }
}

/// The mesh host addresses of a node.
pub fn addresses(node: &Node) -> Vec<IpAddr> {
    node.addresses
        .iter()
        .filter(|a| a.is_host())
        .map(IpPrefix::addr)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::{DiscoPublic, NodePublic};

    fn node(id: NodeId, ip: &str) -> Node {
        Node {
            id,
            name: format!("n{id}.mesh.example."),
            key: NodePublic::from_bytes([id as u8; 32]),
            addresses: vec![format!("{ip}/32").parse().unwrap()],
            ..Node::default()
        }
    }

    #[test]
    fn peers_replaces_then_deltas_apply() {
        let mut nm = NetMap::default();
        let full = MapResponse {
            node: Some(node(1, "100.64.0.1")),
            peers: vec![node(2, "100.64.0.2"), node(3, "100.64.0.3")],
            ..MapResponse::default()
        };
        let a = nm.apply(&full);
        assert!(a.self_changed && a.peers_changed);
        assert_eq!(nm.peers.len(), 2);

        // Upsert one, add one, remove one.
        let mut changed = node(2, "100.64.0.22");
        changed.endpoints = vec!["10.0.0.2:41641".into()];
        let delta = MapResponse {
            peers_changed: vec![changed, node(4, "100.64.0.4")],
            peers_removed: vec![3],
            ..MapResponse::default()
        };
        nm.apply(&delta);
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), [2, 4]);
        assert_eq!(nm.peers[&2].addresses[0].to_string(), "100.64.0.22/32");

        // Patch: only the named fields change.
        let patch = MapResponse {
            peers_changed_patch: vec![PeerChange {
                node_id: 2,
                derp_region: 999,
                disco_key: Some(DiscoPublic::from_bytes([9; 32])),
                ..PeerChange::default()
            }],
            ..MapResponse::default()
        };
        nm.apply(&patch);
        let p = &nm.peers[&2];
        assert_eq!(p.home_derp, 999);
        assert_eq!(p.disco_key, DiscoPublic::from_bytes([9; 32]));
        assert_eq!(p.endpoints, ["10.0.0.2:41641"]);

        // A new full list replaces everything, ignoring removals alongside.
        let full2 = MapResponse {
            peers: vec![node(5, "100.64.0.5")],
            peers_removed: vec![5],
            ..MapResponse::default()
        };
        nm.apply(&full2);
        assert_eq!(nm.peers.keys().copied().collect::<Vec<_>>(), [5]);
        // The self node was not in that message: unchanged.
        assert_eq!(nm.self_node.as_ref().unwrap().id, 1);
    }

    #[test]
    fn keep_alive_changes_nothing_and_foreign_addresses_are_refused() {
        let mut nm = NetMap::default();
        let a = nm.apply(&MapResponse {
            keep_alive: true,
            peers: vec![node(2, "100.64.0.2")],
            ..MapResponse::default()
        });
        assert_eq!(a, Applied::default());
        let a = nm.apply(&MapResponse {
            peers: vec![node(2, "8.8.8.8")],
            ..MapResponse::default()
        });
        assert_eq!(a.refused_addresses.len(), 1);
        assert!(nm.peers[&2].addresses.is_empty());
    }

    #[test]
    fn derp_map_without_regions_keeps_the_old_ones() {
        use meshscale_wire::tailcfg::{DerpMap, DerpRegion};
        let regions: BTreeMap<_, _> = [(
            999,
            DerpRegion {
                region_id: 999,
                region_code: "meshscale".into(),
                ..DerpRegion::default()
            },
        )]
        .into();
        let mut nm = NetMap::default();
        let a = nm.apply(&MapResponse {
            derp_map: Some(DerpMap {
                regions: Some(regions.clone()),
                ..DerpMap::default()
            }),
            ..MapResponse::default()
        });
        assert!(a.derp_changed);
        let a = nm.apply(&MapResponse {
            derp_map: Some(DerpMap::default()),
            ..MapResponse::default()
        });
        assert!(!a.derp_changed);
        assert_eq!(nm.derp_map.unwrap().regions, Some(regions));
    }

    #[test]
    fn find_by_name_or_ip() {
        let mut nm = NetMap::default();
        nm.apply(&MapResponse {
            peers: vec![node(2, "100.64.0.2")],
            ..MapResponse::default()
        });
        assert_eq!(nm.find_peer("n2").unwrap().id, 2);
        assert_eq!(nm.find_peer("n2.mesh.example").unwrap().id, 2);
        assert_eq!(nm.find_peer("100.64.0.2").unwrap().id, 2);
        assert!(nm.find_peer("100.64.0.3").is_none());
    }

    #[test]
    fn mesh_prefixes() {
        assert!(in_mesh(&"100.64.0.1".parse().unwrap()));
        assert!(in_mesh(&"100.127.255.254".parse().unwrap()));
        assert!(!in_mesh(&"100.128.0.1".parse().unwrap()));
        assert!(in_mesh(&"fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(!in_mesh(&"fd7a:115c:a1e1::1".parse().unwrap()));
    }

    #[test]
    fn packet_filters_follow_full_and_delta_maps() {
        use meshscale_wire::tailcfg::FilterRule;
        let mut nm = NetMap::default();
        assert!(!nm.filters.received());
        let mut chunks = BTreeMap::new();
        chunks.insert("base".to_string(), Some(vec![FilterRule::allow_all()]));
        let a = nm.apply(&MapResponse {
            node: Some(node(1, "100.64.0.1")),
            packet_filters: chunks,
            ..MapResponse::default()
        });
        assert!(a.filter_changed && nm.filters.received());
        assert_eq!(nm.filters.rules(), vec![FilterRule::allow_all()]);
        // A delta without filters leaves them; one with `null` deletes.
        let a = nm.apply(&MapResponse {
            peers_removed: vec![7],
            ..MapResponse::default()
        });
        assert!(!a.filter_changed);
        assert_eq!(nm.filters.rules().len(), 1);
        let mut gone = BTreeMap::new();
        gone.insert("base".to_string(), None);
        let a = nm.apply(&MapResponse {
            packet_filters: gone,
            ..MapResponse::default()
        });
        assert!(a.filter_changed);
        assert!(nm.filters.rules().is_empty());
    }
}

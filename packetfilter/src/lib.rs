//! Meshscale's inbound packet filter with the official Tailscale client's semantics: `PacketFilters` chunks merged, `FilterRule`s compiled, per-packet decisions without allocation, and the table of flows we opened whose replies pass.
//!
//! The decision follows `wgengine/filter` in tailscale/tailscale (`RunIn`):
//! packets from the tunnel are judged only when addressed to our own
//! addresses or routes; TCP segments other than a bare SYN belong to a
//! connection someone was allowed to open and pass; UDP/SCTP replies pass
//! through the table of flows we opened; ICMP echo replies and errors pass;
//! other ICMP needs a rule allowing source → destination (any protocol or
//! port); other protocols need a rule naming them with every port. Later
//! IP fragments pass (the first was judged), fragments that could overlap
//! a transport header, multicast, link-local and unparseable packets do not.
#![forbid(unsafe_code)]

pub mod flows;
pub mod packet;
pub mod rules;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use meshscale_wire::tailcfg::FilterRule;

pub use flows::{FlowTable, Tuple};
pub use packet::{Parsed, Proto, parse};
pub use rules::{Compiled, LocalNets, RuleError, Rules};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an IP header.
    TooShort,
    /// Not IP, truncated, a transport header cut by fragmentation, or an
    /// IPv6 hop-by-hop header.
    UnknownProtocol,
    Multicast,
    LinkLocalUnicast,
    /// Not addressed to one of our addresses or routes.
    NotLocal,
    /// No rule allows it (the policy said no); for protocols without
    /// ports, no rule names the protocol with every port.
    NoRule,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::TooShort,
        DropReason::UnknownProtocol,
        DropReason::Multicast,
        DropReason::LinkLocalUnicast,
        DropReason::NotLocal,
        DropReason::NoRule,
    ];

    /// The label in metrics and status (the official client's
    /// `usermetric.DropReason` names where one exists).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::UnknownProtocol => "unknown_protocol",
            DropReason::Multicast => "multicast",
            DropReason::LinkLocalUnicast => "link_local_unicast",
            DropReason::NotLocal => "not_local",
            DropReason::NoRule => "acl",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The decision for one inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop(DropReason),
}

/// The Google Cloud metadata/DNS address: the one link-local destination
/// the official client lets through.
const GCP_METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

fn is_multicast(ip: IpAddr) -> bool {
    ip.is_multicast()
}

fn is_link_local_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// What an inbound packet is judged against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Rules,
    pub local: LocalNets,
}

/// Decides one inbound packet. `flows` is consulted (and refreshed) for
/// UDP/SCTP replies.
pub fn decide(policy: &Policy, flows: &Mutex<FlowTable>, b: &[u8]) -> Verdict {
    if b.is_empty() {
        // A WireGuard keepalive; never reaches the TUN anyway.
        return Verdict::Accept;
    }
    if b.len() < 20 {
        return Verdict::Drop(DropReason::TooShort);
    }
    let q = parse(b);
    let proto = match q.proto {
        Proto::Unknown => return Verdict::Drop(DropReason::UnknownProtocol),
        Proto::Fragment | Proto::Number(_) if is_multicast(q.dst) => {
            return Verdict::Drop(DropReason::Multicast);
        }
        _ if is_link_local_unicast(q.dst) && q.dst != GCP_METADATA => {
            return Verdict::Drop(DropReason::LinkLocalUnicast);
        }
        Proto::Fragment => return Verdict::Accept,
        Proto::Number(p) => p,
    };
    if !policy.local.contains(q.dst) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    let r = &policy.rules;
    let icmp = if q.version == 4 {
        packet::ICMPV4
    } else {
        packet::ICMPV6
    };
    let ok = match proto {
        p if p == icmp => q.is_echo_reply() || q.is_icmp_error() || r.ips_only(q.src, q.dst),
        packet::TCP => !q.is_tcp_syn() || r.full(proto, q.src, q.dst, q.dst_port),
        packet::UDP | packet::SCTP => {
            let t = Tuple {
                proto,
                src: q.src,
                src_port: q.src_port,
                dst: q.dst,
                dst_port: q.dst_port,
            };
            flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&t)
                || r.full(proto, q.src, q.dst, q.dst_port)
        }
        packet::TSMP => true,
        _ => r.proto_ips_all_ports(proto, q.src, q.dst),
    };
    if ok {
        Verdict::Accept
    } else {
        Verdict::Drop(DropReason::NoRule)
    }
}

/// The reply tuple an outbound packet opens, if its protocol is one whose
/// replies are let in by flow (UDP, SCTP): TCP replies pass as non-SYN.
pub fn outbound_reply(b: &[u8]) -> Option<Tuple> {
    let q = parse(b);
    match q.proto {
        Proto::Number(p @ (packet::UDP | packet::SCTP)) => Some(Tuple {
            proto: p,
            src: q.dst,
            src_port: q.dst_port,
            dst: q.src,
            dst_port: q.src_port,
        }),
        _ => None,
    }
}

/// `PacketFilters` state across map responses (Tailscale
/// `controlclient/map.go`): chunks by name, a `null` value deletes its
/// chunk, `"*": null` clears all first, the legacy `PacketFilter` is the
/// chunk `"base"`; the filter is all chunks concatenated in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chunks {
    chunks: BTreeMap<String, Vec<FilterRule>>,
    /// Whether any filter has been received yet.
    received: bool,
}

impl Chunks {
    /// Applies one response's filter fields; true when they carried any.
    pub fn apply(
        &mut self,
        packet_filter: Option<&Vec<FilterRule>>,
        packet_filters: &BTreeMap<String, Option<Vec<FilterRule>>>,
    ) -> bool {
        let mut changed = false;
        if let Some(pf) = packet_filter {
            self.chunks.insert("base".to_string(), pf.clone());
            changed = true;
        }
        if !packet_filters.is_empty() {
            changed = true;
            if let Some(None) = packet_filters.get("*") {
                self.chunks.clear();
            }
            for (k, v) in packet_filters {
                if k == "*" {
                    continue;
                }
                match v {
                    Some(rules) => {
                        self.chunks.insert(k.clone(), rules.clone());
                    }
                    None => {
                        self.chunks.remove(k);
                    }
                }
            }
        }
        self.received |= changed;
        changed
    }

    pub fn received(&self) -> bool {
        self.received
    }

    /// Every chunk's rules, in key order.
    pub fn rules(&self) -> Vec<FilterRule> {
        self.chunks.values().flatten().cloned().collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.chunks.keys().map(String::as_str)
    }
}

/// Drop counts per reason, and accepts.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    fn count(&self, v: Verdict) {
        let c = match v {
            Verdict::Accept => &self.accepted,
            Verdict::Drop(r) => &self.dropped[r.index()],
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r.index()].load(Ordering::Relaxed)
    }

    /// `(reason, count)` for every reason, zeros included.
    pub fn drops(&self) -> [(DropReason, u64); DropReason::ALL.len()] {
        DropReason::ALL.map(|r| (r, self.dropped(r)))
    }
}

/// The live filter shared by a node's packet paths: the policy is swapped
/// whole on a map update while the flow table and counters carry on, so
/// flows that stay allowed are not disturbed.
#[derive(Debug)]
pub struct Filter {
    policy: RwLock<Arc<Policy>>,
    flows: Mutex<FlowTable>,
    counters: Counters,
}

impl Filter {
    pub fn new(policy: Policy) -> Self {
        Filter {
            policy: RwLock::new(Arc::new(policy)),
            flows: Mutex::new(FlowTable::new()),
            counters: Counters::default(),
        }
    }

    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Judges a packet that arrived from the tunnel, and counts the verdict.
    pub fn inbound(&self, b: &[u8]) -> Verdict {
        let v = {
            let policy = self.policy.read().unwrap_or_else(PoisonError::into_inner);
            decide(&policy, &self.flows, b)
        };
        self.counters.count(v);
        v
    }

    /// Notes a packet we send into the tunnel, so its replies pass.
    pub fn outbound(&self, b: &[u8]) {
        if let Some(t) = outbound_reply(b) {
            self.flows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(t);
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

#[cfg(test)]
mod tests;

//! The compiled filter against a straightforward reference: a loop over the
//! `FilterRule`s as received, parsing every address string again for each
//! packet, written from the official client's `RunIn` rules. Random
//! policies (valid and malformed entries, every address form, protocol
//! lists, port ranges) and random packets (both families, TCP flags, ICMP
//! types, other protocols, reply flows) must get the same verdict.

use std::net::IpAddr;

use meshscale_packetfilter::{DropReason, Filter, LocalNets, Policy, Rules, Verdict};
use meshscale_wire::tailcfg::{FilterRule, NetPortRange, PortRange};
use proptest::prelude::*;

const V4: [&str; 5] = [
    "100.64.0.1",
    "100.64.0.2",
    "100.64.0.3",
    "10.0.0.5",
    "192.168.1.15",
];
const V6: [&str; 3] = ["fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", "fd00::5"];
const LOCAL: [&str; 3] = ["100.64.0.1", "10.0.0.5", "fd7a:115c:a1e0::1"];

const FORMS: [&str; 16] = [
    "*",
    "100.64.0.1",
    "100.64.0.2",
    "100.64.0.0/10",
    "100.64.0.0/31",
    "10.0.0.0/8",
    "100.64.0.2-100.64.0.3",
    "192.168.1.10-192.168.1.20",
    "fd7a:115c:a1e0::/48",
    "fd7a:115c:a1e0::2",
    "fd7a:115c:a1e0::1-fd7a:115c:a1e0::2",
    "100.64.0.1/8",
    "100.64.0.3-100.64.0.2",
    "not-an-ip",
    "cap:something",
    "10.0.0.0/33",
];

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Family and numeric value.
fn num(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(a) => (4, u32::from(a).into()),
        IpAddr::V6(a) => (6, u128::from(a)),
    }
}

/// `None` for an entry the official client skips.
fn contains(form: &str, ip: IpAddr) -> Option<bool> {
    if form == "*" {
        return Some(true);
    }
    if form.starts_with("cap:") {
        return Some(false);
    }
    let (fam, x) = num(ip);
    if let Some((a, bits)) = form.split_once('/') {
        let (afam, a) = num(a.parse().ok()?);
        let width = if afam == 4 { 32 } else { 128 };
        let bits: u32 = bits.parse().ok()?;
        if bits > width {
            return None;
        }
        // Compare the top `bits` bits one by one.
        let same_prefix = (0..bits).all(|i| {
            let bit = width - 1 - i;
            (a >> bit) & 1 == (x >> bit) & 1
        });
        let host_bits_set = (0..width - bits).any(|bit| (a >> bit) & 1 == 1);
        if host_bits_set {
            return None;
        }
        return Some(afam == fam && same_prefix);
    }
    if form.matches('-').count() == 1 {
        let (lo, hi) = form.split_once('-')?;
        let (lf, lo) = num(lo.parse().ok()?);
        let (hf, hi) = num(hi.parse().ok()?);
        if lf != hf || lo > hi {
            return None;
        }
        return Some(lf == fam && lo <= x && x <= hi);
    }
    let (af, a) = num(form.parse().ok()?);
    Some(af == fam && a == x)
}

fn protos_of(r: &FilterRule) -> Vec<u8> {
    if r.ip_proto.is_empty() {
        vec![6, 17, 1, 58]
    } else {
        r.ip_proto
            .iter()
            .filter_map(|&p| u8::try_from(p).ok())
            .collect()
    }
}

fn src_ok(r: &FilterRule, src: IpAddr) -> bool {
    r.src_ips.iter().any(|s| contains(s, src) == Some(true))
}

#[derive(Debug, Clone)]
struct Pkt {
    v6: bool,
    proto: u8,
    src: usize,
    dst: usize,
    sport: u16,
    dport: u16,
    flags: u8,
    icmp_type: u8,
}

impl Pkt {
    fn src(&self) -> IpAddr {
        addr(if self.v6 {
            V6[self.src % 3]
        } else {
            V4[self.src % 5]
        })
    }
    fn dst(&self) -> IpAddr {
        addr(if self.v6 {
            V6[self.dst % 3]
        } else {
            V4[self.dst % 5]
        })
    }

    fn bytes(&self) -> Vec<u8> {
        let mut sub = match self.proto {
            6 => {
                let mut t = vec![0u8; 20];
                t[13] = self.flags;
                t
            }
            1 | 58 => vec![self.icmp_type, 0, 0, 0, 0, 0, 0, 0],
            132 => vec![0u8; 12],
            _ => vec![0u8; 8],
        };
        if matches!(self.proto, 6 | 17 | 132) {
            sub[0..2].copy_from_slice(&self.sport.to_be_bytes());
            sub[2..4].copy_from_slice(&self.dport.to_be_bytes());
        }
        let (s, d) = (self.src(), self.dst());
        match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut b = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, self.proto, 0, 0];
                b[2..4].copy_from_slice(&((20 + sub.len()) as u16).to_be_bytes());
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&sub);
                b
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut b = vec![0x60, 0, 0, 0, 0, 0, self.proto, 64];
                b[4..6].copy_from_slice(&(sub.len() as u16).to_be_bytes());
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&sub);
                b
            }
            _ => unreachable!("one family per packet"),
        }
    }
}

/// The official client's decision, by brute force.
fn reference(rules: &[FilterRule], replies: &[Pkt], p: &Pkt) -> Verdict {
    // A rule with legacy bits voids the whole filter.
    let void = rules
        .iter()
        .any(|r| !r.src_bits.is_empty() || r.dst_ports.iter().any(|d| d.bits.is_some()));
    let rules: &[FilterRule] = if void { &[] } else { rules };
    let (src, dst) = (p.src(), p.dst());
    if !LOCAL.iter().any(|l| addr(l) == dst) {
        return Verdict::Drop(DropReason::NotLocal);
    }
    let dst_ok = |d: &NetPortRange| contains(&d.ip, dst) == Some(true);
    let full = || {
        rules.iter().any(|r| {
            protos_of(r).contains(&p.proto)
                && src_ok(r, src)
                && r.dst_ports
                    .iter()
                    .any(|d| dst_ok(d) && d.ports.first <= p.dport && p.dport <= d.ports.last)
        })
    };
    let icmp = if p.v6 { 58 } else { 1 };
    let ok = if p.proto == icmp {
        let (reply, errors): (u8, &[u8]) = if p.v6 {
            (129, &[1, 2, 3, 4])
        } else {
            (0, &[3, 11, 12])
        };
        p.icmp_type == reply
            || errors.contains(&p.icmp_type)
            || rules
                .iter()
                .any(|r| src_ok(r, src) && r.dst_ports.iter().any(dst_ok))
    } else {
        match p.proto {
            6 => p.flags & 0x12 != 0x02 || full(),
            17 | 132 => {
                replies.iter().any(|o| {
                    o.v6 == p.v6
                        && o.proto == p.proto
                        && o.src() == dst
                        && o.dst() == src
                        && o.sport == p.dport
                        && o.dport == p.sport
                }) || full()
            }
            99 => true,
            _ => rules.iter().any(|r| {
                protos_of(r).contains(&p.proto)
                    && src_ok(r, src)
                    && r.dst_ports
                        .iter()
                        .any(|d| d.ports == PortRange::ANY && dst_ok(d))
            }),
        }
    };
    if ok {
        Verdict::Accept
    } else {
        Verdict::Drop(DropReason::NoRule)
    }
}

fn port_range() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        Just(PortRange::ANY),
        (0u16..100, 0u16..100).prop_map(|(a, b)| PortRange { first: a, last: b }),
        (0u16..100).prop_map(|a| PortRange { first: a, last: a }),
    ]
}

fn rule() -> impl Strategy<Value = FilterRule> {
    let form = (0..FORMS.len()).prop_map(|i| FORMS[i].to_string());
    let dst = (form.clone(), port_range()).prop_map(|(ip, ports)| NetPortRange {
        ip,
        bits: None,
        ports,
    });
    let protos = prop_oneof![
        Just(vec![]),
        Just(vec![6]),
        Just(vec![17]),
        Just(vec![1, 58]),
        Just(vec![47]),
        Just(vec![6, 17, 132]),
        Just(vec![300, -1, 47]),
    ];
    (
        prop::collection::vec(form, 0..4),
        prop::collection::vec(dst, 0..3),
        protos,
        prop::bool::weighted(0.03),
    )
        .prop_map(|(src_ips, dst_ports, ip_proto, legacy)| FilterRule {
            src_ips,
            src_bits: if legacy { vec![32] } else { vec![] },
            dst_ports,
            ip_proto,
            ..FilterRule::default()
        })
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        any::<bool>(),
        prop_oneof![
            Just(6u8),
            Just(17),
            Just(1),
            Just(58),
            Just(132),
            Just(47),
            Just(99)
        ],
        0usize..5,
        0usize..5,
        0u16..100,
        0u16..100,
        prop_oneof![Just(0x02u8), Just(0x12), Just(0x10), Just(0x01), Just(0x03)],
        prop_oneof![
            Just(0u8),
            Just(8),
            Just(3),
            Just(11),
            Just(12),
            Just(128),
            Just(129),
            Just(1),
            Just(2)
        ],
    )
        .prop_map(
            |(v6, proto, src, dst, sport, dport, flags, icmp_type)| Pkt {
                v6,
                proto,
                src,
                dst,
                sport,
                dport,
                flags,
                icmp_type,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_matches_reference(
        rules in prop::collection::vec(rule(), 0..6),
        sent in prop::collection::vec(pkt(), 0..4),
        packets in prop::collection::vec(pkt(), 1..16),
    ) {
        let local = LocalNets::new(LOCAL.iter().map(|l| {
            let a = addr(l);
            (a, if a.is_ipv4() { 32 } else { 128 })
        }));
        let f = Filter::new(Policy { rules: Rules::compile(&rules).rules, local });
        for s in &sent {
            f.outbound(&s.bytes());
        }
        for p in &packets {
            prop_assert_eq!(f.inbound(&p.bytes()), reference(&rules, &sent, p), "{:?}", p);
        }
    }

    /// Whatever the bytes: a verdict, no panic, and a count.
    #[test]
    fn arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..120)) {
        let f = Filter::new(Policy { rules: Rules::allow_all(), local: LocalNets::default() });
        f.outbound(&b);
        let _ = f.inbound(&b);
        let c = f.counters();
        let total: u64 = c.drops().iter().map(|(_, n)| n).sum::<u64>() + c.accepted();
        prop_assert_eq!(total, 1);
    }
}

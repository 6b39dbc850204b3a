use super::*;
use meshscale_wire::tailcfg::{NetPortRange, PortRange};

const US: &str = "100.64.0.1";
const PEER: &str = "100.64.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An IPv4 or IPv6 packet with a transport header.
fn pkt(proto: u8, src: &str, dst: &str, sport: u16, dport: u16, extra: &[u8]) -> Vec<u8> {
    let mut sub = match proto {
        packet::TCP => {
            let mut t = vec![0u8; 20];
            t[12] = 5 << 4;
            t
        }
        packet::UDP => vec![0u8; 8],
        packet::ICMPV4 | packet::ICMPV6 => vec![0u8; 8],
        _ => vec![0u8; 4],
    };
    if proto != packet::ICMPV4 && proto != packet::ICMPV6 {
        sub[0..2].copy_from_slice(&sport.to_be_bytes());
        sub[2..4].copy_from_slice(&dport.to_be_bytes());
    }
    sub.extend_from_slice(extra);
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = (20 + sub.len()) as u16;
            let mut b = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
            b[2..4].copy_from_slice(&total.to_be_bytes());
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
            b.extend_from_slice(&sub);
            b
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut b = vec![0x60, 0, 0, 0, 0, 0, proto, 64];
            b[4..6].copy_from_slice(&(sub.len() as u16).to_be_bytes());
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
            b.extend_from_slice(&sub);
            b
        }
        _ => panic!("mixed families"),
    }
}

fn with_tcp_flags(mut b: Vec<u8>, flags: u8) -> Vec<u8> {
    let off = if b[0] >> 4 == 4 { 20 } else { 40 };
    b[off + 13] = flags;
    b
}

fn with_icmp(mut b: Vec<u8>, ty: u8, code: u8) -> Vec<u8> {
    let off = if b[0] >> 4 == 4 { 20 } else { 40 };
    b[off] = ty;
    b[off + 1] = code;
    b
}

fn rule(src: &str, dst: &str, ports: (u16, u16), protos: &[i64]) -> FilterRule {
    FilterRule {
        src_ips: vec![src.into()],
        dst_ports: vec![NetPortRange {
            ip: dst.into(),
            bits: None,
            ports: PortRange {
                first: ports.0,
                last: ports.1,
            },
        }],
        ip_proto: protos.to_vec(),
        ..FilterRule::default()
    }
}

fn filter(rules: &[FilterRule]) -> Filter {
    let c = Rules::compile(rules);
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    Filter::new(Policy {
        rules: c.rules,
        local: LocalNets::new([(ip(US), 32), (ip("fd7a:115c:a1e0::1"), 128)]),
    })
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[test]
fn tcp_80_only() {
    let f = filter(&[rule(PEER, US, (80, 80), &[])]);
    let syn80 = with_tcp_flags(pkt(packet::TCP, PEER, US, 40000, 80, &[]), SYN);
    let syn22 = with_tcp_flags(pkt(packet::TCP, PEER, US, 40000, 22, &[]), SYN);
    assert_eq!(f.inbound(&syn80), Verdict::Accept);
    assert_eq!(f.inbound(&syn22), Verdict::Drop(DropReason::NoRule));
    // Another source.
    let other = with_tcp_flags(pkt(packet::TCP, "100.64.0.3", US, 40000, 80, &[]), SYN);
    assert_eq!(f.inbound(&other), Verdict::Drop(DropReason::NoRule));
    // Segments of an existing flow, and SYN+ACK answering our SYN, pass.
    let ack22 = with_tcp_flags(pkt(packet::TCP, PEER, US, 22, 40000, &[]), ACK);
    let synack = with_tcp_flags(pkt(packet::TCP, PEER, US, 22, 40000, &[]), SYN | ACK);
    assert_eq!(f.inbound(&ack22), Verdict::Accept);
    assert_eq!(f.inbound(&synack), Verdict::Accept);
    assert_eq!(f.counters().dropped(DropReason::NoRule), 2);
    assert_eq!(f.counters().accepted(), 3);
}

#[test]
fn not_ours_is_dropped() {
    let f = filter(&[FilterRule::allow_all()]);
    let syn = with_tcp_flags(pkt(packet::TCP, PEER, "100.64.0.9", 1, 80, &[]), SYN);
    assert_eq!(f.inbound(&syn), Verdict::Drop(DropReason::NotLocal));
}

#[test]
fn udp_replies_pass_by_flow_table() {
    let f = filter(&[]);
    let reply = pkt(packet::UDP, PEER, US, 53, 5353, &[]);
    assert_eq!(f.inbound(&reply), Verdict::Drop(DropReason::NoRule));
    f.outbound(&pkt(packet::UDP, US, PEER, 5353, 53, &[]));
    assert_eq!(f.inbound(&reply), Verdict::Accept);
    // Another port of the same peer is a different flow.
    let other = pkt(packet::UDP, PEER, US, 54, 5353, &[]);
    assert_eq!(f.inbound(&other), Verdict::Drop(DropReason::NoRule));
    // The flow outlives a policy update.
    f.set_policy(Policy {
        rules: Rules::default(),
        local: f.policy().local.clone(),
    });
    assert_eq!(f.inbound(&reply), Verdict::Accept);
}

#[test]
fn icmp() {
    let f = filter(&[rule(PEER, US, (22, 22), &[packet::TCP.into()])]);
    let echo_req = with_icmp(pkt(packet::ICMPV4, PEER, US, 0, 0, &[]), 8, 0);
    let echo_reply = with_icmp(pkt(packet::ICMPV4, "100.64.0.7", US, 0, 0, &[]), 0, 0);
    let unreachable = with_icmp(pkt(packet::ICMPV4, "100.64.0.7", US, 0, 0, &[]), 3, 1);
    // Any rule from PEER to us admits ICMP, whatever its protocols and ports.
    assert_eq!(f.inbound(&echo_req), Verdict::Accept);
    assert_eq!(f.inbound(&echo_reply), Verdict::Accept);
    assert_eq!(f.inbound(&unreachable), Verdict::Accept);
    let from_other = with_icmp(pkt(packet::ICMPV4, "100.64.0.7", US, 0, 0, &[]), 8, 0);
    assert_eq!(f.inbound(&from_other), Verdict::Drop(DropReason::NoRule));
    let v6 = "fd7a:115c:a1e0::7";
    let reply6 = with_icmp(
        pkt(packet::ICMPV6, v6, "fd7a:115c:a1e0::1", 0, 0, &[]),
        129,
        0,
    );
    let req6 = with_icmp(
        pkt(packet::ICMPV6, v6, "fd7a:115c:a1e0::1", 0, 0, &[]),
        128,
        0,
    );
    assert_eq!(f.inbound(&reply6), Verdict::Accept);
    assert_eq!(f.inbound(&req6), Verdict::Drop(DropReason::NoRule));
}

#[test]
fn other_protocols_need_all_ports() {
    let gre = 47;
    let some_ports = filter(&[rule(PEER, US, (1, 100), &[gre.into()])]);
    let all_ports = filter(&[rule(PEER, US, (0, 65535), &[gre.into()])]);
    let p = pkt(47, PEER, US, 0, 0, &[]);
    assert_eq!(some_ports.inbound(&p), Verdict::Drop(DropReason::NoRule));
    assert_eq!(all_ports.inbound(&p), Verdict::Accept);
    // Empty IPProto is TCP/UDP/ICMP only.
    let default = filter(&[rule(PEER, US, (0, 65535), &[])]);
    assert_eq!(default.inbound(&p), Verdict::Drop(DropReason::NoRule));
    let tsmp = pkt(packet::TSMP, PEER, US, 0, 0, &[0; 8]);
    assert_eq!(default.inbound(&tsmp), Verdict::Accept);
}

#[test]
fn pre_checks() {
    let f = filter(&[FilterRule::allow_all()]);
    assert_eq!(f.inbound(&[]), Verdict::Accept);
    assert_eq!(f.inbound(&[0x45; 10]), Verdict::Drop(DropReason::TooShort));
    assert_eq!(
        f.inbound(&[0u8; 40]),
        Verdict::Drop(DropReason::UnknownProtocol)
    );
    let mcast = pkt(packet::UDP, PEER, "224.0.0.251", 5353, 5353, &[]);
    assert_eq!(f.inbound(&mcast), Verdict::Drop(DropReason::Multicast));
    let ll = pkt(packet::UDP, PEER, "169.254.1.1", 1, 2, &[]);
    assert_eq!(f.inbound(&ll), Verdict::Drop(DropReason::LinkLocalUnicast));
    // The metadata address is exempt from the link-local rule (and then
    // is not ours).
    let gcp = pkt(packet::UDP, PEER, "169.254.169.254", 1, 53, &[]);
    assert_eq!(f.inbound(&gcp), Verdict::Drop(DropReason::NotLocal));
    // Hop-by-hop options are never parsed.
    let hbh = pkt(0, "fd7a:115c:a1e0::2", "fd7a:115c:a1e0::1", 0, 0, &[0; 8]);
    assert_eq!(f.inbound(&hbh), Verdict::Drop(DropReason::UnknownProtocol));
}

#[test]
fn later_fragments_pass_early_ones_do_not() {
    let f = filter(&[]);
    let mut b = pkt(packet::UDP, PEER, US, 1, 2, &[0; 100]);
    b[6..8].copy_from_slice(&20u16.to_be_bytes());
    assert_eq!(f.inbound(&b), Verdict::Accept);
    b[6..8].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(f.inbound(&b), Verdict::Drop(DropReason::UnknownProtocol));
    // A first fragment too short for its TCP header.
    let mut t = pkt(packet::TCP, PEER, US, 1, 22, &[]);
    t.truncate(30);
    t[2..4].copy_from_slice(&30u16.to_be_bytes());
    t[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
    assert_eq!(f.inbound(&t), Verdict::Drop(DropReason::UnknownProtocol));
}

#[test]
fn chunks_merge_and_delete() {
    let a = vec![rule(PEER, US, (80, 80), &[])];
    let b = vec![rule(PEER, US, (22, 22), &[])];
    let mut c = Chunks::default();
    assert!(!c.received());
    let mut m = BTreeMap::new();
    m.insert("base".to_string(), Some(a.clone()));
    m.insert("extra".to_string(), Some(b.clone()));
    assert!(c.apply(None, &m));
    assert_eq!(c.rules(), [a.clone(), b.clone()].concat());
    // Keys not mentioned stay; null deletes.
    let mut m = BTreeMap::new();
    m.insert("extra".to_string(), None);
    assert!(c.apply(None, &m));
    assert_eq!(c.rules(), a);
    // Nothing about filters: unchanged.
    assert!(!c.apply(None, &BTreeMap::new()));
    assert_eq!(c.rules(), a);
    // The legacy field is the "base" chunk.
    assert!(c.apply(Some(&b), &BTreeMap::new()));
    assert_eq!(c.rules(), b);
    // "*": null clears everything before the rest applies.
    let mut m = BTreeMap::new();
    m.insert("*".to_string(), None);
    m.insert("z".to_string(), Some(a.clone()));
    assert!(c.apply(None, &m));
    assert_eq!(c.rules(), a);
    assert_eq!(c.names().collect::<Vec<_>>(), ["z"]);
    assert!(c.received());
}

#[test]
fn v6_rules() {
    let f = filter(&[rule(
        "fd7a:115c:a1e0::/48",
        "fd7a:115c:a1e0::1",
        (443, 443),
        &[],
    )]);
    let ok = with_tcp_flags(
        pkt(
            packet::TCP,
            "fd7a:115c:a1e0::9",
            "fd7a:115c:a1e0::1",
            1,
            443,
            &[],
        ),
        SYN,
    );
    let bad = with_tcp_flags(
        pkt(packet::TCP, "fd00::9", "fd7a:115c:a1e0::1", 1, 443, &[]),
        SYN,
    );
    assert_eq!(f.inbound(&ok), Verdict::Accept);
    assert_eq!(f.inbound(&bad), Verdict::Drop(DropReason::NoRule));
}

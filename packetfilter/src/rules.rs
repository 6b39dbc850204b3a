//! `tailcfg.FilterRule`s compiled into flat per-family tables (Tailscale
//! `wgengine/filter/tailcfg.go`): every address form becomes an inclusive
//! integer range, every `IPProto` list a 256-bit set, so a decision is a few
//! comparisons over slices and never allocates. A malformed entry is
//! skipped and reported, as the official client does; legacy `SrcBits` /
//! `Bits` make the whole filter empty (deny new inbound), also as it does.

use std::net::IpAddr;

use meshscale_wire::tailcfg::FilterRule;

use crate::packet::{ICMPV4, ICMPV6, TCP, UDP};

/// Why part of a filter was not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("invalid IP address {0:?}")]
    InvalidAddress(String),
    #[error("{0} contains non-network bits set")]
    HostBits(String),
    #[error("invalid IP range {0:?}")]
    InvalidRange(String),
    #[error("unexpected capability {0:?} in DstPorts")]
    CapabilityInDestination(String),
    #[error("unexpected {0}; the control server should not send it to this client version")]
    LegacyBits(&'static str),
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span<T> {
    pub lo: T,
    pub hi: T,
}

impl<T: Copy + Ord> Span<T> {
    pub fn contains(&self, a: T) -> bool {
        self.lo <= a && a <= self.hi
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dst<T> {
    net: Span<T>,
    first: u16,
    last: u16,
}

impl<T> Dst<T> {
    fn all_ports(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }
}

/// A set of IP protocol numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ProtoSet([u64; 4]);

impl ProtoSet {
    fn insert(&mut self, p: u8) {
        self.0[usize::from(p >> 6)] |= 1 << (p & 63);
    }
    fn contains(&self, p: u8) -> bool {
        self.0[usize::from(p >> 6)] & (1 << (p & 63)) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Match<T> {
    protos: ProtoSet,
    srcs: Vec<Span<T>>,
    dsts: Vec<Dst<T>>,
}

impl<T: Copy + Ord> Match<T> {
    fn src_ok(&self, src: T) -> bool {
        self.srcs.iter().any(|s| s.contains(src))
    }
}

/// The three questions the decision asks of the rules, for one family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Family<T> {
    matches: Vec<Match<T>>,
}

impl<T: Copy + Ord> Family<T> {
    /// Protocol, source, destination address and port all allowed.
    fn full(&self, proto: u8, src: T, dst: T, port: u16) -> bool {
        self.matches.iter().any(|m| {
            m.protos.contains(proto)
                && m.src_ok(src)
                && m.dsts
                    .iter()
                    .any(|d| d.net.contains(dst) && (d.first..=d.last).contains(&port))
        })
    }

    /// Source and destination address allowed by some rule, whatever its
    /// protocols and ports: how the official client admits ICMP.
    fn ips_only(&self, src: T, dst: T) -> bool {
        self.matches
            .iter()
            .any(|m| m.src_ok(src) && m.dsts.iter().any(|d| d.net.contains(dst)))
    }

    /// For port-less protocols: a rule naming the protocol with every port.
    fn proto_ips_all_ports(&self, proto: u8, src: T, dst: T) -> bool {
        self.matches.iter().any(|m| {
            m.protos.contains(proto)
                && m.src_ok(src)
                && m.dsts.iter().any(|d| d.all_ports() && d.net.contains(dst))
        })
    }
}

/// A compiled packet filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    v4: Family<u32>,
    v6: Family<u128>,
}

/// One parsed `SrcIPs`/`IP` entry.
enum Addrs {
    Spans(Option<Span<u32>>, Option<Span<u128>>),
    Capability,
}

fn one(ip: IpAddr) -> Addrs {
    match ip {
        IpAddr::V4(a) => Addrs::Spans(
            Some(Span {
                lo: a.into(),
                hi: a.into(),
            }),
            None,
        ),
        IpAddr::V6(a) => Addrs::Spans(
            None,
            Some(Span {
                lo: a.into(),
                hi: a.into(),
            }),
        ),
    }
}

fn parse_addrs(s: &str) -> Result<Addrs, RuleError> {
    if s == "*" {
        return Ok(Addrs::Spans(
            Some(Span {
                lo: 0,
                hi: u32::MAX,
            }),
            Some(Span {
                lo: 0,
                hi: u128::MAX,
            }),
        ));
    }
    if s.starts_with("cap:") {
        return Ok(Addrs::Capability);
    }
    if let Some((addr, bits)) = s.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| RuleError::InvalidAddress(s.to_string()))?;
        let bits: u32 = bits
            .parse()
            .map_err(|_| RuleError::InvalidAddress(s.to_string()))?;
        return match addr {
            IpAddr::V4(a) => {
                let host = u32::MAX.checked_shr(bits).unwrap_or(0);
                if bits > 32 {
                    return Err(RuleError::InvalidAddress(s.to_string()));
                }
                let lo = u32::from(a);
                if lo & host != 0 {
                    return Err(RuleError::HostBits(s.to_string()));
                }
                Ok(Addrs::Spans(Some(Span { lo, hi: lo | host }), None))
            }
            IpAddr::V6(a) => {
                let host = u128::MAX.checked_shr(bits).unwrap_or(0);
                if bits > 128 {
                    return Err(RuleError::InvalidAddress(s.to_string()));
                }
                let lo = u128::from(a);
                if lo & host != 0 {
                    return Err(RuleError::HostBits(s.to_string()));
                }
                Ok(Addrs::Spans(None, Some(Span { lo, hi: lo | host })))
            }
        };
    }
    if s.matches('-').count() == 1 {
        let bad = || RuleError::InvalidRange(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let a: IpAddr = a.parse().map_err(|_| bad())?;
        let b: IpAddr = b.parse().map_err(|_| bad())?;
        return match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => Ok(Addrs::Spans(
                Some(Span {
                    lo: a.into(),
                    hi: b.into(),
                }),
                None,
            )),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(Addrs::Spans(
                None,
                Some(Span {
                    lo: a.into(),
                    hi: b.into(),
                }),
            )),
            _ => Err(bad()),
        };
    }
    s.parse::<IpAddr>()
        .map(one)
        .map_err(|_| RuleError::InvalidAddress(s.to_string()))
}

/// The result of compiling a filter: the rules that could be read, and
/// what could not (logged by the caller; the rest still applies).
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub rules: Rules,
    pub errors: Vec<RuleError>,
}

/// Errors kept per compile; the first ones say what is wrong.
const MAX_ERRORS: usize = 16;

impl Rules {
    /// Compiles `rules` (the concatenation of every `PacketFilters` chunk).
    /// Rules with only `CapGrant` grant application capabilities, not
    /// packets, and add nothing here; `cap:` sources need peer
    /// capabilities this filter does not know and match no packet.
    pub fn compile(rules: &[FilterRule]) -> Compiled {
        let mut out = Compiled::default();
        let mut err = |e: RuleError| {
            if out.errors.len() < MAX_ERRORS {
                out.errors.push(e);
            }
        };
        for r in rules {
            if !r.src_bits.is_empty() {
                err(RuleError::LegacyBits("SrcBits"));
                return Compiled {
                    rules: Rules::default(),
                    errors: out.errors,
                };
            }
            if r.dst_ports.iter().any(|d| d.bits.is_some()) {
                err(RuleError::LegacyBits("DstPorts Bits"));
                return Compiled {
                    rules: Rules::default(),
                    errors: out.errors,
                };
            }
            let mut protos = ProtoSet::default();
            if r.ip_proto.is_empty() {
                for p in [TCP, UDP, ICMPV4, ICMPV6] {
                    protos.insert(p);
                }
            } else {
                for p in r.ip_proto.iter().filter_map(|&p| u8::try_from(p).ok()) {
                    protos.insert(p);
                }
            }
            let mut m4 = Match {
                protos,
                srcs: Vec::new(),
                dsts: Vec::new(),
            };
            let mut m6 = Match {
                protos,
                srcs: Vec::new(),
                dsts: Vec::new(),
            };
            for s in &r.src_ips {
                match parse_addrs(s) {
                    Ok(Addrs::Spans(a, b)) => {
                        m4.srcs.extend(a);
                        m6.srcs.extend(b);
                    }
                    Ok(Addrs::Capability) => {}
                    Err(e) => err(e),
                }
            }
            for d in &r.dst_ports {
                let (first, last) = (d.ports.first, d.ports.last);
                match parse_addrs(&d.ip) {
                    Ok(Addrs::Spans(a, b)) => {
                        m4.dsts.extend(a.map(|net| Dst { net, first, last }));
                        m6.dsts.extend(b.map(|net| Dst { net, first, last }));
                    }
                    Ok(Addrs::Capability) => err(RuleError::CapabilityInDestination(d.ip.clone())),
                    Err(e) => err(e),
                }
            }
            // A family with no source or no destination can match nothing.
            if !m4.srcs.is_empty() && !m4.dsts.is_empty() {
                out.rules.v4.matches.push(m4);
            }
            if !m6.srcs.is_empty() && !m6.dsts.is_empty() {
                out.rules.v6.matches.push(m6);
            }
        }
        out
    }

    /// Every TCP/UDP/ICMP packet to anywhere (Go's `FilterAllowAll`).
    pub fn allow_all() -> Self {
        Self::compile(&[FilterRule::allow_all()]).rules
    }

    /// How many per-family match entries there are (for status).
    pub fn len(&self) -> usize {
        self.v4.matches.len() + self.v6.matches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn full(&self, proto: u8, src: IpAddr, dst: IpAddr, port: u16) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.v4.full(proto, s.into(), d.into(), port),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.v6.full(proto, s.into(), d.into(), port),
            _ => false,
        }
    }

    pub(crate) fn ips_only(&self, src: IpAddr, dst: IpAddr) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.v4.ips_only(s.into(), d.into()),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.v6.ips_only(s.into(), d.into()),
            _ => false,
        }
    }

    pub(crate) fn proto_ips_all_ports(&self, proto: u8, src: IpAddr, dst: IpAddr) -> bool {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.v4.proto_ips_all_ports(proto, s.into(), d.into())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.v6.proto_ips_all_ports(proto, s.into(), d.into())
            }
            _ => false,
        }
    }
}

/// The addresses and routes that are ours: only packets to them are
/// judged by the rules; anything else arriving from the tunnel is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalNets {
    v4: Vec<Span<u32>>,
    v6: Vec<Span<u128>>,
}

impl LocalNets {
    /// From `(address, prefix length)` pairs; host bits are ignored (a
    /// node's own address comes as `/32` or `/128`).
    pub fn new(prefixes: impl IntoIterator<Item = (IpAddr, u8)>) -> Self {
        let mut out = LocalNets::default();
        for (addr, bits) in prefixes {
            match addr {
                IpAddr::V4(a) => {
                    let host = u32::MAX.checked_shr(u32::from(bits.min(32))).unwrap_or(0);
                    let lo = u32::from(a) & !host;
                    out.v4.push(Span { lo, hi: lo | host });
                }
                IpAddr::V6(a) => {
                    let host = u128::MAX.checked_shr(u32::from(bits.min(128))).unwrap_or(0);
                    let lo = u128::from(a) & !host;
                    out.v6.push(Span { lo, hi: lo | host });
                }
            }
        }
        out
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|s| s.contains(u32::from(a))),
            IpAddr::V6(a) => self.v6.iter().any(|s| s.contains(u128::from(a))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::tailcfg::{NetPortRange, PortRange};

    fn rule(src: &[&str], dst: &str, ports: (u16, u16), protos: &[i64]) -> FilterRule {
        FilterRule {
            src_ips: src.iter().map(|s| s.to_string()).collect(),
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_forms() {
        let c = Rules::compile(&[rule(
            &[
                "100.64.0.1",
                "10.0.0.0/8",
                "192.168.1.10-192.168.1.20",
                "fd7a::5",
            ],
            "*",
            (80, 80),
            &[],
        )]);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let r = c.rules;
        let d = ip("100.64.0.9");
        for (src, ok) in [
            ("100.64.0.1", true),
            ("100.64.0.2", false),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("192.168.1.9", false),
            ("192.168.1.10", true),
            ("192.168.1.20", true),
            ("192.168.1.21", false),
        ] {
            assert_eq!(r.full(TCP, ip(src), d, 80), ok, "{src}");
        }
        assert!(r.full(TCP, ip("fd7a::5"), ip("fd7a::1"), 80));
        assert!(!r.full(TCP, ip("fd7a::6"), ip("fd7a::1"), 80));
        assert!(!r.full(TCP, ip("100.64.0.1"), d, 81));
    }

    #[test]
    fn bad_entries_are_skipped_and_reported() {
        let c = Rules::compile(&[rule(
            &["10.0.0.1/8", "1.2.3.4-1.2.3.1", "nope", "100.64.0.1"],
            "cap:foo",
            (0, 65535),
            &[],
        )]);
        assert_eq!(
            c.errors,
            vec![
                RuleError::HostBits("10.0.0.1/8".into()),
                RuleError::InvalidRange("1.2.3.4-1.2.3.1".into()),
                RuleError::InvalidAddress("nope".into()),
                RuleError::CapabilityInDestination("cap:foo".into()),
            ]
        );
        // No destination survived: nothing matches.
        assert!(c.rules.is_empty());
    }

    #[test]
    fn legacy_bits_empty_the_filter() {
        let mut r = rule(&["*"], "*", (0, 65535), &[]);
        r.src_bits = vec![32];
        let c = Rules::compile(&[FilterRule::allow_all(), r]);
        assert!(c.rules.is_empty());
        assert_eq!(c.errors, vec![RuleError::LegacyBits("SrcBits")]);
    }

    #[test]
    fn default_protocols_and_explicit_ones() {
        let r = Rules::compile(&[rule(&["*"], "*", (0, 65535), &[])]).rules;
        for p in [TCP, UDP, ICMPV4, ICMPV6] {
            assert!(r.full(p, ip("1.1.1.1"), ip("2.2.2.2"), 5));
        }
        assert!(!r.full(132, ip("1.1.1.1"), ip("2.2.2.2"), 5));
        let r = Rules::compile(&[rule(&["*"], "*", (0, 65535), &[132, 300, -1])]).rules;
        assert!(r.full(132, ip("1.1.1.1"), ip("2.2.2.2"), 5));
        assert!(!r.full(TCP, ip("1.1.1.1"), ip("2.2.2.2"), 5));
    }

    #[test]
    fn local_nets() {
        let l = LocalNets::new([
            (ip("100.64.0.1"), 32),
            (ip("10.1.0.0"), 16),
            (ip("fd7a::1"), 128),
        ]);
        assert!(l.contains(ip("100.64.0.1")));
        assert!(!l.contains(ip("100.64.0.2")));
        assert!(l.contains(ip("10.1.200.3")));
        assert!(l.contains(ip("fd7a::1")));
        assert!(!l.contains(ip("fd7a::2")));
    }
}

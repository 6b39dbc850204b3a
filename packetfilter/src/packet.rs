//! Just enough IPv4/IPv6 parsing for a filter decision, with the official
//! client's rules for what cannot be judged (`net/packet` in
//! tailscale/tailscale): a transport header that does not fit in the first
//! fragment, a later fragment starting inside where a header could be, a
//! length field longer than the packet, and every IPv6 extension header
//! other than one leading Fragment header make the protocol `Unknown`
//! (dropped). Later fragments at a safe offset are `Fragment` (passed: the
//! first fragment carried the decision). Borrowing only; never allocates.

use std::net::IpAddr;

pub const ICMPV4: u8 = 1;
pub const IGMP: u8 = 2;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// IPv6 Fragment extension header.
pub const IPV6_FRAGMENT: u8 = 44;
pub const ICMPV6: u8 = 58;
/// Tailscale's own inter-node messages (`TSMP`, experimental protocol 99).
pub const TSMP: u8 = 99;
pub const SCTP: u8 = 132;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Fragments starting before this many 8-byte blocks could overlap a
/// maximal IPv4 header plus a TCP header: they could rewrite the ports the
/// first fragment was judged by, so they are not let through.
const MIN_FRAG_BLOCKS: u16 = (60 + 20) / 8;

/// The transport protocol as far as the filter can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Unparseable, truncated, or protocol number 0 (IPv6 hop-by-hop).
    Unknown,
    /// A non-first fragment at a safe offset.
    Fragment,
    Number(u8),
}

/// What the filter reads from one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// 4, 6, or 0 when not IP.
    pub version: u8,
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// ICMP type and code, when the ICMP header has its 8 bytes.
    pub icmp: Option<(u8, u8)>,
}

impl Parsed {
    fn unknown() -> Self {
        Parsed {
            version: 0,
            proto: Proto::Unknown,
            src: IpAddr::from([0u8; 4]),
            dst: IpAddr::from([0u8; 4]),
            src_port: 0,
            dst_port: 0,
            tcp_flags: 0,
            icmp: None,
        }
    }

    /// A connection-opening TCP segment: SYN without ACK. SYN+ACK is an
    /// answer and passes like any other segment of a flow.
    pub fn is_tcp_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    fn icmp_is(&self, v4: &[u8], v6: &[u8]) -> Option<(u8, u8)> {
        let (ty, code) = self.icmp?;
        let types = match self.proto {
            Proto::Number(ICMPV4) => v4,
            Proto::Number(ICMPV6) => v6,
            _ => return None,
        };
        types.contains(&ty).then_some((ty, code))
    }

    /// An echo reply (code 0): the answer to a ping we sent.
    pub fn is_echo_reply(&self) -> bool {
        self.icmp_is(&[0], &[129])
            .is_some_and(|(_, code)| code == 0)
    }

    /// An ICMP error (unreachable, too big, time exceeded, parameter
    /// problem): it reports on a packet we sent.
    pub fn is_icmp_error(&self) -> bool {
        self.icmp_is(&[3, 11, 12], &[1, 2, 3, 4]).is_some()
    }
}

/// Parses `b` as an IP packet. Never fails: what cannot be read is
/// `Proto::Unknown` (and `version` 0 when not IP at all).
pub fn parse(b: &[u8]) -> Parsed {
    match b.first().map(|v| v >> 4) {
        Some(4) => parse4(b),
        Some(6) => parse6(b),
        _ => Parsed::unknown(),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn parse4(b: &[u8]) -> Parsed {
    let mut q = Parsed::unknown();
    if b.len() < 20 {
        return q;
    }
    q.version = 4;
    q.src = IpAddr::from([b[12], b[13], b[14], b[15]]);
    q.dst = IpAddr::from([b[16], b[17], b[18], b[19]]);
    let total = usize::from(be16(b, 2));
    let header = usize::from(b[0] & 0x0f) * 4;
    if b.len() < total || header < 20 || header > total {
        return q;
    }
    // Bytes past the declared length are link padding, not payload.
    let sub = &b[header..total];
    let frag = be16(b, 6);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    if offset != 0 {
        if offset >= MIN_FRAG_BLOCKS {
            q.proto = Proto::Fragment;
        }
        return q;
    }
    let proto = b[9];
    if proto == ICMPV4 || proto == IGMP {
        // IGMP keeps its number without ports; ICMP has type/code.
        let need = if proto == ICMPV4 { 4 } else { 8 };
        if sub.len() < need {
            return q;
        }
    } else if proto == TSMP && more_fragments {
        return q;
    }
    transport(&mut q, proto, sub);
    q
}

fn parse6(b: &[u8]) -> Parsed {
    let mut q = Parsed::unknown();
    if b.len() < 40 {
        return q;
    }
    q.version = 6;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&b[8..24]);
    dst.copy_from_slice(&b[24..40]);
    q.src = IpAddr::from(src);
    q.dst = IpAddr::from(dst);
    let total = usize::from(be16(b, 4)) + 40;
    if b.len() < total {
        return q;
    }
    let mut proto = b[6];
    let mut sub = &b[40..total];
    // Hosts fragment datagrams larger than the path MTU at the source and
    // the receiver must reassemble them (RFC 8200 4.5), so one Fragment
    // header directly after the base header is understood; any other
    // extension header is not parsed and the packet is Unknown, unless a
    // rule names that header's protocol number with all ports.
    if proto == IPV6_FRAGMENT {
        if sub.len() < 8 {
            return q;
        }
        let offset = be16(sub, 2) >> 3;
        if offset != 0 {
            if offset >= MIN_FRAG_BLOCKS {
                q.proto = Proto::Fragment;
            }
            return q;
        }
        proto = sub[0];
        sub = &sub[8..];
    }
    if proto == ICMPV6 && sub.len() < 4 {
        return q;
    }
    transport(&mut q, proto, sub);
    q
}

/// Reads ports/flags of the protocols that have them; a header that does
/// not fit leaves the protocol Unknown so a short first fragment cannot
/// hide its ports.
fn transport(q: &mut Parsed, proto: u8, sub: &[u8]) {
    let ports = |q: &mut Parsed| {
        q.src_port = be16(sub, 0);
        q.dst_port = be16(sub, 2);
    };
    match proto {
        // 0 is IPv6 hop-by-hop (and reserved in IPv4); 255 is reserved.
        0 | 255 => return,
        TCP => {
            if sub.len() < 20 {
                return;
            }
            ports(q);
            q.tcp_flags = sub[13];
        }
        UDP => {
            if sub.len() < 8 {
                return;
            }
            ports(q);
        }
        SCTP => {
            if sub.len() < 12 {
                return;
            }
            ports(q);
        }
        TSMP if sub.len() < 7 => return,
        ICMPV4 | ICMPV6 if sub.len() >= 8 => q.icmp = Some((sub[0], sub[1])),
        _ => {}
    }
    q.proto = Proto::Number(proto);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn v4(proto: u8, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut b = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        b.extend_from_slice(&[100, 64, 0, 2, 100, 64, 0, 1]);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn tcp_ports_and_flags() {
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[13] = TCP_SYN;
        let q = parse(&v4(TCP, &tcp));
        assert_eq!(q.proto, Proto::Number(TCP));
        assert_eq!((q.src_port, q.dst_port), (1234, 80));
        assert!(q.is_tcp_syn());
        tcp[13] = TCP_SYN | TCP_ACK;
        assert!(!parse(&v4(TCP, &tcp)).is_tcp_syn());
    }

    #[test]
    fn short_transport_header_is_unknown() {
        assert_eq!(parse(&v4(TCP, &[0; 19])).proto, Proto::Unknown);
        assert_eq!(parse(&v4(UDP, &[0; 7])).proto, Proto::Unknown);
        assert_eq!(parse(&v4(ICMPV4, &[0; 3])).proto, Proto::Unknown);
    }

    #[test]
    fn fragments() {
        let mut b = v4(UDP, &[0; 8]);
        // A later fragment inside the first 80 bytes: could rewrite ports.
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(parse(&b).proto, Proto::Unknown);
        b[6..8].copy_from_slice(&MIN_FRAG_BLOCKS.to_be_bytes());
        assert_eq!(parse(&b).proto, Proto::Fragment);
        // A first fragment (more fragments set, offset 0) is judged normally.
        b[6..8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(parse(&b).proto, Proto::Number(UDP));
    }

    #[test]
    fn length_longer_than_packet_is_unknown() {
        let mut b = v4(UDP, &[0; 8]);
        b[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(parse(&b).proto, Proto::Unknown);
    }

    #[test]
    fn ipv6_extension_headers() {
        let mut b = vec![0x60, 0, 0, 0, 0, 16, IPV6_FRAGMENT, 64];
        b.extend_from_slice(&[0xfd; 32]);
        // Fragment header → UDP, offset 0.
        b.extend_from_slice(&[UDP, 0, 0, 0, 0, 0, 0, 1]);
        b.extend_from_slice(&[0, 53, 0, 80, 0, 8, 0, 0]);
        let q = parse(&b);
        assert_eq!((q.proto, q.dst_port), (Proto::Number(UDP), 80));
        // Hop-by-hop (0) is never parsed.
        b[6] = 0;
        assert_eq!(parse(&b).proto, Proto::Unknown);
        // Routing (43) keeps its number: only an all-ports rule for 43 passes it.
        b[6] = 43;
        assert_eq!(parse(&b).proto, Proto::Number(43));
    }
}

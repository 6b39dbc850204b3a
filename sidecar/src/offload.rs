//! TCP segmentation offload on the TUN side, as tailscaled and
//! wireguard-go do it: with `IFF_VNET_HDR` and `TUNSETOFFLOAD` the kernel
//! hands us TCP "super-packets" of up to 64 KiB plus a `virtio_net_hdr`
//! saying how to cut them, and leaves checksums for us to finish. One read
//! then carries what would have been ~50 packets, which is where most of a
//! userspace tunnel's per-packet cost goes. This module parses that header
//! and cuts a super-packet into MTU-sized IP packets with correct headers and
//! checksums. Pure functions on byte slices; no I/O.

/// Size of `struct virtio_net_hdr` (without the `num_buffers` field), the
/// default the TUN driver uses.
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffloadError {
    #[error("packet shorter than its virtio-net header")]
    NoHeader,
    #[error("checksum offsets outside the packet")]
    BadChecksumOffsets,
    #[error("unsupported GSO type {0:#x}")]
    UnsupportedGso(u8),
    #[error("malformed TCP super-packet")]
    BadSuperPacket,
    #[error("segment does not fit the output buffer")]
    TooLarge,
}

impl VnetHdr {
    /// The header at the start of `buf` (the TUN driver writes it in host
    /// byte order).
    pub fn parse(buf: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b = buf.get(..VNET_HDR_LEN).ok_or(OffloadError::NoHeader)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// The Internet checksum's one's-complement sum of `data`, added to `acc`
/// (not folded). Sums 32-bit words: RFC 1071 allows any word size that is
/// folded at the end.
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

/// Folds a sum to 16 bits and complements it: the checksum field's value.
pub fn finish(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// Hands every IP packet in `pkt` (one read from the TUN, starting with
/// its virtio-net header) to `emit`: the packet itself with its checksum
/// finished, or the segments of a TCP super-packet, each built in
/// `scratch`. Returns how many packets were emitted.
pub fn split(
    pkt: &mut [u8],
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let hdr = VnetHdr::parse(pkt)?;
    let ip = &mut pkt[VNET_HDR_LEN..];
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                finish_partial(ip, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            emit(ip);
            Ok(1)
        }
        GSO_TCPV4 | GSO_TCPV6 => segment_tcp(ip, usize::from(hdr.gso_size), scratch, emit),
        other => Err(OffloadError::UnsupportedGso(other)),
    }
}

/// Completes a checksum the kernel left partial: the field holds the
/// pseudo-header sum; the rest is summed from `start` to the end.
fn finish_partial(ip: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let at = start
        .checked_add(offset)
        .filter(|&at| at + 2 <= ip.len() && start < ip.len())
        .ok_or(OffloadError::BadChecksumOffsets)?;
    let c = finish(sum(&ip[start..], 0));
    ip[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Where the headers of a TCP packet end: (IP header length, IP+TCP
/// header length, is IPv6).
fn tcp_headers(ip: &[u8]) -> Result<(usize, usize, bool), OffloadError> {
    let first = *ip.first().ok_or(OffloadError::BadSuperPacket)?;
    let (ihl, v6) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || ip.len() < ihl || ip[9] != PROTO_TCP {
                return Err(OffloadError::BadSuperPacket);
            }
            (ihl, false)
        }
        // Extension headers are never used by the kernel's TSO for TCP
        // from a local socket; anything but TCP right away is refused.
        6 if ip.len() >= 40 && ip[6] == PROTO_TCP => (40, true),
        _ => return Err(OffloadError::BadSuperPacket),
    };
    let doff = ip.get(ihl + 12).ok_or(OffloadError::BadSuperPacket)? >> 4;
    let hlen = ihl + usize::from(doff) * 4;
    if doff < 5 || ip.len() < hlen {
        return Err(OffloadError::BadSuperPacket);
    }
    Ok((ihl, hlen, v6))
}

fn segment_tcp(
    ip: &[u8],
    mss: usize,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let (ihl, hlen, v6) = tcp_headers(ip)?;
    if mss == 0 {
        return Err(OffloadError::BadSuperPacket);
    }
    if hlen + mss > scratch.len() {
        return Err(OffloadError::TooLarge);
    }
    let payload = &ip[hlen..];
    let seq0 = u32::from_be_bytes([ip[ihl + 4], ip[ihl + 5], ip[ihl + 6], ip[ihl + 7]]);
    let id0 = u16::from_be_bytes([ip[4], ip[5]]);
    let flags0 = ip[ihl + 13];
    // The pseudo-header's addresses and protocol are the same for every
    // segment; only the length differs.
    let addr_sum = if v6 {
        sum(&ip[8..40], u64::from(PROTO_TCP))
    } else {
        sum(&ip[12..20], u64::from(PROTO_TCP))
    };
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let start = (i * mss).min(payload.len());
        let chunk = &payload[start..(start + mss).min(payload.len())];
        let len = hlen + chunk.len();
        let seg = &mut scratch[..len];
        seg[..hlen].copy_from_slice(&ip[..hlen]);
        seg[hlen..].copy_from_slice(chunk);
        if v6 {
            let plen = (len - 40) as u16;
            seg[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = finish(sum(&seg[..ihl], 0));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[ihl + 4..ihl + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[ihl + 13] = flags;
        seg[ihl + 16..ihl + 18].copy_from_slice(&[0, 0]);
        let tcp_len = (len - ihl) as u64;
        let c = finish(sum(&seg[ihl..], addr_sum + tcp_len));
        seg[ihl + 16..ihl + 18].copy_from_slice(&c.to_be_bytes());
        emit(seg);
    }
    Ok(count)
}

/// Receive-side offload (GRO): consecutive TCP segments of one flow,
/// decrypted from one batch of datagrams, are merged into one
/// super-packet and written to the TUN with one header, so the kernel's
/// TCP stack sees ~50 times fewer packets. Anything that cannot be merged
/// is written as it is, in order.
pub struct Coalescer {
    /// Header, then the super-packet being built.
    buf: Box<[u8]>,
    /// Bytes of IP packet after the header; 0: nothing pending.
    len: usize,
    segs: usize,
    ihl: usize,
    hlen: usize,
    v6: bool,
    /// Payload size of the first segment: the GSO size.
    mss: usize,
    next_seq: u32,
    /// A short or PSH segment ends a super-packet.
    closed: bool,
}

const MAX_SUPER: usize = 65_535;
const TCP_ACK: u8 = 0x10;
/// Flags that make a segment one to deliver alone.
const TCP_SPECIAL: u8 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40 | TCP_CWR;

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + MAX_SUPER].into_boxed_slice(),
            len: 0,
            segs: 0,
            ihl: 0,
            hlen: 0,
            v6: false,
            mss: 0,
            next_seq: 0,
            closed: false,
        }
    }

    /// Takes one packet, `framed` = a zeroed virtio-net header followed by
    /// the IP packet; `write` gets whatever must go to the TUN now.
    pub fn add(&mut self, framed: &[u8], mut write: impl FnMut(&[u8])) {
        let Some(pkt) = framed.get(VNET_HDR_LEN..) else {
            return;
        };
        if self.len > 0 && self.try_append(pkt) {
            return;
        }
        self.flush(&mut write);
        if !self.start(pkt) {
            write(framed);
        }
    }

    /// Writes the pending super-packet, if any.
    pub fn flush(&mut self, mut write: impl FnMut(&[u8])) {
        if self.len == 0 {
            return;
        }
        let (ihl, hlen, len) = (self.ihl, self.hlen, self.len);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: hlen as u16,
            gso_size: self.mss as u16,
            csum_start: ihl as u16,
            csum_offset: 16,
        };
        let ip = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        if self.segs > 1 {
            let pseudo = if self.v6 {
                ip[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
                sum(&ip[8..40], u64::from(PROTO_TCP) + (len - ihl) as u64)
            } else {
                ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                ip[10..12].copy_from_slice(&[0, 0]);
                let c = finish(sum(&ip[..ihl], 0));
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                sum(&ip[12..20], u64::from(PROTO_TCP) + (len - ihl) as u64)
            };
            // CHECKSUM_PARTIAL: the field holds the folded pseudo-header
            // sum; the kernel adds the rest.
            ip[ihl + 16..ihl + 18].copy_from_slice(&(!finish(pseudo)).to_be_bytes());
            write_hdr(&mut self.buf[..VNET_HDR_LEN], &hdr);
        } else {
            // One segment: as it came, checksums intact.
            self.buf[..VNET_HDR_LEN].fill(0);
        }
        write(&self.buf[..VNET_HDR_LEN + len]);
        self.len = 0;
        self.segs = 0;
    }

    /// Begins a super-packet with `pkt` if it is a plain TCP data segment.
    fn start(&mut self, pkt: &[u8]) -> bool {
        let Some((ihl, hlen, v6)) = mergeable(pkt) else {
            return false;
        };
        let mss = pkt.len() - hlen;
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.segs = 1;
        (self.ihl, self.hlen, self.v6, self.mss) = (ihl, hlen, v6, mss);
        self.next_seq = seq(pkt, ihl).wrapping_add(mss as u32);
        self.closed = pkt[ihl + 13] & TCP_PSH != 0;
        true
    }

    fn try_append(&mut self, pkt: &[u8]) -> bool {
        if self.closed || pkt.len() <= self.hlen || pkt.len() - self.hlen > self.mss {
            return false;
        }
        let Some((ihl, hlen, v6)) = mergeable(pkt) else {
            return false;
        };
        let payload = pkt.len() - hlen;
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.hlen];
        let same_flow = (ihl, hlen, v6) == (self.ihl, self.hlen, self.v6)
            && self.len + payload <= MAX_SUPER
            && seq(pkt, ihl) == self.next_seq
            // IP: version, traffic class/TOS, addresses, TTL, protocol.
            && if v6 {
                head[..4] == pkt[..4] && head[6..40] == pkt[6..40]
            } else {
                head[..2] == pkt[..2] && head[6..10] == pkt[6..10] && head[12..ihl] == pkt[12..ihl]
            }
            // TCP: ports, ack, header length, flags, window, options.
            && head[ihl..ihl + 4] == pkt[ihl..ihl + 4]
            && head[ihl + 8..ihl + 13] == pkt[ihl + 8..ihl + 13]
            && head[ihl + 13] | TCP_PSH == pkt[ihl + 13] | TCP_PSH
            && head[ihl + 14..ihl + 16] == pkt[ihl + 14..ihl + 16]
            && head[ihl + 20..hlen] == pkt[ihl + 20..hlen];
        if !same_flow {
            return false;
        }
        let psh = pkt[ihl + 13] & TCP_PSH;
        // The merged segment carries PSH if its last part did; nothing
        // may follow a PSH.
        self.buf[VNET_HDR_LEN + ihl + 13] |= psh;
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&pkt[hlen..]);
        self.len += payload;
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.closed = payload < self.mss || psh != 0;
        true
    }
}

fn seq(pkt: &[u8], ihl: usize) -> u32 {
    u32::from_be_bytes([pkt[ihl + 4], pkt[ihl + 5], pkt[ihl + 6], pkt[ihl + 7]])
}

fn write_hdr(out: &mut [u8], h: &VnetHdr) {
    out[0] = h.flags;
    out[1] = h.gso_type;
    for (i, v) in [h.hdr_len, h.gso_size, h.csum_start, h.csum_offset]
        .into_iter()
        .enumerate()
    {
        out[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_ne_bytes());
    }
}

/// (IP header length, IP+TCP header length, IPv6) of a TCP segment that
/// may be merged: ACK without SYN/FIN/RST/URG/ECE/CWR, data, not a
/// fragment, and for IPv4 with DF (so IP IDs need not line up).
fn mergeable(pkt: &[u8]) -> Option<(usize, usize, bool)> {
    let (ihl, hlen, v6) = tcp_headers(pkt).ok()?;
    if !v6 {
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        // DF set, MF clear, offset 0; the length field must match.
        if frag != 0x4000 || total != pkt.len() {
            return None;
        }
    } else if usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40 != pkt.len() {
        return None;
    }
    let flags = pkt[ihl + 13];
    (flags & TCP_SPECIAL == 0 && flags & TCP_ACK != 0 && pkt.len() > hlen)
        .then_some((ihl, hlen, v6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A straightforward 16-bit checksum to check the 32-bit one against.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for w in data.chunks(2) {
            let hi = u32::from(w[0]) << 8;
            let lo = w.get(1).map_or(0, |b| u32::from(*b));
            acc += hi | lo;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    fn tcp_checksum_ok(ip: &[u8]) -> bool {
        let (ihl, _, v6) = tcp_headers(ip).unwrap();
        let mut pseudo = Vec::new();
        if v6 {
            pseudo.extend_from_slice(&ip[8..40]);
            pseudo.extend_from_slice(&((ip.len() - ihl) as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, PROTO_TCP]);
        } else {
            pseudo.extend_from_slice(&ip[12..20]);
            pseudo.extend_from_slice(&[0, PROTO_TCP]);
            pseudo.extend_from_slice(&((ip.len() - ihl) as u16).to_be_bytes());
        }
        pseudo.extend_from_slice(&ip[ihl..]);
        reference(&pseudo) == 0
    }

    /// A TCP super-packet as the kernel hands it over: headers of the
    /// first segment, all the payload, total length of the whole.
    fn super_packet(v6: bool, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut ip = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            h[6] = PROTO_TCP;
            h[7] = 64;
            h[8..24].copy_from_slice(&[
                0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
            ]);
            h[24..40].copy_from_slice(&[
                0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
            ]);
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((40 + payload.len()).min(65535) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
            h[8] = 64;
            h[9] = PROTO_TCP;
            h[12..16].copy_from_slice(&[100, 64, 0, 1]);
            h[16..20].copy_from_slice(&[100, 64, 0, 2]);
            h
        };
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        ip.extend_from_slice(&tcp);
        ip.extend_from_slice(payload);
        ip
    }

    fn with_hdr(h: VnetHdr, ip: &[u8]) -> Vec<u8> {
        let mut b = vec![h.flags, h.gso_type];
        for v in [h.hdr_len, h.gso_size, h.csum_start, h.csum_offset] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(ip);
        b
    }

    proptest! {
        #[test]
        fn checksum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(finish(sum(&data, 0)), reference(&data));
        }

        /// Segments carry the payload in order, contiguous sequence
        /// numbers, valid checksums, and FIN/PSH only on the last.
        #[test]
        fn segments_reassemble_to_the_super_packet(
            v6 in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 1..20_000),
            mss in 500usize..1400,
        ) {
            let flags = 0x18 | TCP_FIN | TCP_CWR; // ACK|PSH|FIN|CWR
            let ip = super_packet(v6, &payload, flags);
            let h = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: if v6 { 60 } else { 40 },
                gso_size: mss as u16,
                csum_start: if v6 { 40 } else { 20 },
                csum_offset: 16,
            };
            let mut buf = with_hdr(h, &ip);
            let mut scratch = vec![0u8; 2048];
            let mut segs: Vec<Vec<u8>> = Vec::new();
            let n = split(&mut buf, &mut scratch, |s| segs.push(s.to_vec())).unwrap();
            prop_assert_eq!(n, payload.len().div_ceil(mss));
            let ihl = if v6 { 40 } else { 20 };
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                prop_assert!(s.len() <= ihl + 20 + mss);
                prop_assert!(tcp_checksum_ok(s));
                if v6 {
                    prop_assert_eq!(usize::from(u16::from_be_bytes([s[4], s[5]])), s.len() - 40);
                } else {
                    prop_assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                    prop_assert_eq!(reference(&s[..20]), 0);
                    prop_assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0xfffeu16.wrapping_add(i as u16));
                }
                let seq = u32::from_be_bytes([s[ihl + 4], s[ihl + 5], s[ihl + 6], s[ihl + 7]]);
                prop_assert_eq!(seq, 0xffff_ff00u32.wrapping_add((i * mss) as u32));
                let f = s[ihl + 13];
                prop_assert_eq!(f & (TCP_FIN | TCP_PSH) != 0, last);
                prop_assert_eq!(f & TCP_CWR != 0, i == 0);
                joined.extend_from_slice(&s[ihl + 20..]);
            }
            prop_assert_eq!(joined, payload);
        }
    }

    #[test]
    fn partial_checksum_is_finished() {
        let payload = b"hello, world".to_vec();
        let ip = super_packet(false, &payload, 0x18);
        // What the kernel leaves: the pseudo-header sum in the field.
        let mut partial = ip.clone();
        let pseudo = sum(&partial[12..20], u64::from(PROTO_TCP) + 32);
        let folded = !finish(pseudo);
        partial[36..38].copy_from_slice(&folded.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let mut buf = with_hdr(h, &partial);
        let mut out = Vec::new();
        assert_eq!(
            split(&mut buf, &mut [0u8; 64], |s| out.push(s.to_vec())),
            Ok(1)
        );
        assert!(tcp_checksum_ok(&out[0]));
    }

    #[test]
    fn hostile_headers_are_refused_not_panicked_on() {
        let mut scratch = [0u8; 2048];
        let mut none = |_: &[u8]| panic!("nothing may be emitted");
        assert_eq!(
            split(&mut [0u8; 4], &mut scratch, &mut none),
            Err(OffloadError::NoHeader)
        );
        let bad_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 60_000,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(
            split(
                &mut with_hdr(bad_csum, &[0x45; 40]),
                &mut scratch,
                &mut none
            ),
            Err(OffloadError::BadChecksumOffsets)
        );
        let udp_gso = VnetHdr {
            gso_type: 5,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        assert_eq!(
            split(&mut with_hdr(udp_gso, &[0x45; 40]), &mut scratch, &mut none),
            Err(OffloadError::UnsupportedGso(5))
        );
        let tso = VnetHdr {
            gso_type: GSO_TCPV4,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        // Too short for its own headers; zero MSS; MSS beyond the scratch.
        assert_eq!(
            split(
                &mut with_hdr(tso, &[0x45, 0, 0, 0]),
                &mut scratch,
                &mut none
            ),
            Err(OffloadError::BadSuperPacket)
        );
        let ip = super_packet(false, &[1; 3000], 0x10);
        let zero = VnetHdr { gso_size: 0, ..tso };
        assert_eq!(
            split(&mut with_hdr(zero, &ip), &mut scratch, &mut none),
            Err(OffloadError::BadSuperPacket)
        );
        let huge = VnetHdr {
            gso_size: 4000,
            ..tso
        };
        assert_eq!(
            split(&mut with_hdr(huge, &ip), &mut scratch, &mut none),
            Err(OffloadError::TooLarge)
        );
    }

    fn segments_of(v6: bool, payload: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let ip = super_packet(v6, payload, TCP_ACK | TCP_PSH);
        let h = VnetHdr {
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: mss as u16,
            ..VnetHdr::default()
        };
        let mut ip = ip;
        if !v6 {
            ip[6] = 0x40; // DF, as TCP sends
        }
        let mut segs = Vec::new();
        split(&mut with_hdr(h, &ip), &mut [0u8; 2048], |s| {
            segs.push(s.to_vec())
        })
        .unwrap();
        segs
    }

    fn framed(p: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(p);
        f
    }

    proptest! {
        /// Coalescing then splitting again gives back the very segments.
        #[test]
        fn coalesce_then_split_round_trips(
            v6 in any::<bool>(),
            payload in proptest::collection::vec(any::<u8>(), 1..60_000),
            mss in 500usize..1400,
        ) {
            let segs = segments_of(v6, &payload, mss);
            let mut c = Coalescer::new();
            let mut out: Vec<Vec<u8>> = Vec::new();
            for s in &segs {
                c.add(&framed(s), |b| out.push(b.to_vec()));
            }
            c.flush(|b| out.push(b.to_vec()));
            let mut again = Vec::new();
            for mut o in out.clone() {
                split(&mut o, &mut [0u8; 2048], |s| again.push(s.to_vec())).unwrap();
            }
            prop_assert_eq!(&again, &segs);
            // All but a final segment fit in one write per 64 KiB.
            prop_assert!(out.len() <= payload.len().div_ceil(MAX_SUPER - 60) + 1, "{} writes", out.len());
        }
    }

    /// Other traffic passes through in order and breaks a run; a second
    /// flow is not merged into the first.
    #[test]
    fn unrelated_packets_pass_in_order() {
        let a = segments_of(false, &[1u8; 4000], 1000);
        let mut b = segments_of(false, &[2u8; 2000], 1000);
        for s in &mut b {
            s[20..22].copy_from_slice(&40001u16.to_be_bytes()); // another source port
        }
        let udp = {
            let mut u = vec![0x45u8, 0, 0, 28, 0, 0, 0x40, 0, 64, 17];
            u.resize(28, 0);
            u
        };
        let mut c = Coalescer::new();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for p in [&a[0], &a[1], &b[0], &udp, &a[2], &a[3]] {
            c.add(&framed(p), |w| out.push(w.to_vec()));
        }
        c.flush(|w| out.push(w.to_vec()));
        let gso = |w: &Vec<u8>| VnetHdr::parse(w).unwrap().gso_type;
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(
            (gso(&out[0]), out[0].len()),
            (GSO_TCPV4, VNET_HDR_LEN + 40 + 2000)
        );
        assert_eq!(&out[1][VNET_HDR_LEN..], &b[0][..]);
        assert_eq!(&out[2][VNET_HDR_LEN..], &udp[..]);
        assert_eq!(
            (gso(&out[3]), out[3].len()),
            (GSO_TCPV4, VNET_HDR_LEN + 40 + 2000)
        );
    }
}

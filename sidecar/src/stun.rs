//! STUN client side (Tailscale `net/stun`): the binding request the DERP
//! map's STUN servers accept (SOFTWARE `tailnode` + FINGERPRINT, which our
//! server requires) and the response parser. Requests leave from the data
//! plane's shared UDP socket, so the reflexive address learned is the one
//! peers can reach WireGuard and disco at. Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const HEADER_LEN: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const SOFTWARE: &[u8] = b"tailnode";
const FINGERPRINT_XOR: u32 = 0x5354_554e;

pub type TxId = [u8; 12];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN packet")]
    NotStun,
    #[error("STUN packet is not a binding success response")]
    NotSuccess,
    #[error("STUN attributes are malformed")]
    Malformed,
    #[error("STUN response carries no mapped address")]
    NoAddress,
}

/// Header shape (top two bits of byte 0 zero) and magic cookie: how STUN
/// is told apart from WireGuard (type 1–4 then zeros) and disco (`TS💬`).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0b1100_0000 == 0 && b[4..8] == MAGIC_COOKIE
}

/// A binding request byte for byte as Tailscale's `stun.Request`.
pub fn request(tx: TxId) -> Vec<u8> {
    let attrs_len = 4 + SOFTWARE.len() + 8;
    let mut b = Vec::with_capacity(HEADER_LEN + attrs_len);
    b.extend_from_slice(&BINDING_REQUEST);
    b.extend_from_slice(&(attrs_len as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx);
    b.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b.extend_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    b.extend_from_slice(SOFTWARE);
    let fp = crc32fast::hash(&b) ^ FINGERPRINT_XOR;
    b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes());
    b.extend_from_slice(&fp.to_be_bytes());
    b
}

/// The transaction id and the reflexive address of a binding success.
/// XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS, as in Tailscale.
pub fn parse_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    if b[..2] != BINDING_SUCCESS {
        return Err(StunError::NotSuccess);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..HEADER_LEN]);
    let attrs_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let mut attrs = b[HEADER_LEN..]
        .get(..attrs_len)
        .ok_or(StunError::Malformed)?;
    let (mut xor, mut plain) = (None, None);
    while !attrs.is_empty() {
        if attrs.len() < 4 {
            return Err(StunError::Malformed);
        }
        let t = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let padded = len.div_ceil(4) * 4;
        let value = attrs.get(4..4 + len).ok_or(StunError::Malformed)?;
        match t {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                let (ip, port) = address(value)?;
                xor = Some(SocketAddr::new(unxor(ip, &tx), port ^ 0x2112));
            }
            ATTR_MAPPED_ADDRESS => {
                let (ip, port) = address(value)?;
                plain = Some(SocketAddr::new(ip, port));
            }
            _ => {}
        }
        attrs = attrs.get(4 + padded..).unwrap_or(&[]);
    }
    let addr = xor.or(plain).ok_or(StunError::NoAddress)?;
    Ok((tx, SocketAddr::new(addr.ip().to_canonical(), addr.port())))
}

fn address(v: &[u8]) -> Result<(IpAddr, u16), StunError> {
    if v.len() < 4 {
        return Err(StunError::Malformed);
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip = match (v[1], &v[4..]) {
        (1, a) if a.len() >= 4 => IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        (2, a) if a.len() >= 16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(StunError::Malformed),
    };
    Ok((ip, port))
}

/// RFC 5389 §15.2: IPv4 is XORed with the cookie, IPv6 with cookie || txid.
fn unxor(ip: IpAddr, tx: &TxId) -> IpAddr {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE);
    mask[4..].copy_from_slice(tx);
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::V4(Ipv4Addr::new(
                o[0] ^ mask[0],
                o[1] ^ mask[1],
                o[2] ^ mask[2],
                o[3] ^ mask[3],
            ))
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            for (b, m) in o.iter_mut().zip(mask) {
                *b ^= m;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A success response as our server builds it (XOR-MAPPED-ADDRESS).
    fn response(tx: TxId, addr: SocketAddr) -> Vec<u8> {
        let mut v = vec![0, 0];
        let mask: Vec<u8> = MAGIC_COOKIE.iter().chain(tx.iter()).copied().collect();
        v.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
        match addr.ip() {
            IpAddr::V4(a) => {
                v[1] = 1;
                v.extend(a.octets().iter().zip(&mask).map(|(b, m)| b ^ m));
            }
            IpAddr::V6(a) => {
                v[1] = 2;
                v.extend(a.octets().iter().zip(&mask).map(|(b, m)| b ^ m));
            }
        }
        let mut b = BINDING_SUCCESS.to_vec();
        b.extend_from_slice(&((4 + v.len()) as u16).to_be_bytes());
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&tx);
        b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
        b.extend_from_slice(&(v.len() as u16).to_be_bytes());
        b.extend_from_slice(&v);
        b
    }

    #[test]
    fn request_is_stun_and_not_disco_or_wireguard() {
        let r = request([7; 12]);
        assert_eq!(r.len(), 40);
        assert!(is_stun(&r));
        assert!(!crate::disco::looks_like_disco(&r));
        // WireGuard message types 1..=4 followed by three zero bytes.
        assert!(!is_stun(&[1, 0, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]));
    }

    #[test]
    fn round_trip_v4_and_v6() {
        for a in ["203.0.113.9:41641", "[2001:db8::7]:1234"] {
            let addr: SocketAddr = a.parse().unwrap();
            let (tx, got) = parse_response(&response([3; 12], addr)).unwrap();
            assert_eq!(tx, [3; 12]);
            assert_eq!(got, addr);
        }
    }

    #[test]
    fn hostile_responses_are_errors() {
        let good = response([1; 12], "198.51.100.1:9".parse().unwrap());
        for cut in 0..good.len() {
            assert!(parse_response(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_family = good.clone();
        bad_family[HEADER_LEN + 5] = 9;
        assert_eq!(parse_response(&bad_family), Err(StunError::Malformed));
        assert_eq!(
            parse_response(&request([0; 12])),
            Err(StunError::NotSuccess)
        );
    }
}

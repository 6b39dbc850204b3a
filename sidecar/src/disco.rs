//! Disco messages (Tailscale `disco/disco.go`): the NAT-traversal protocol
//! carried on the WireGuard UDP socket and over DERP. Pure codec, no I/O.
//!
//! ```text
//! packet    = magic "TS💬"(6) || sender disco pub(32) || nonce(24) || box
//! plaintext = type(1) || version(1)=0 || payload
//! Ping      = TxID(12) [|| sender node key(32)] [|| zero padding]
//! Pong      = TxID(12) || src IP(16, v4-mapped) || src port(2, BE)
//! CallMeMaybe = N × (IP(16) || port(2))
//! ```
//! Receivers ignore trailing bytes and message types they do not know.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use meshscale_wire::NodePublic;

use crate::nacl::{self, BoxError};

/// `"TS💬"` in UTF-8.
pub const MAGIC: &[u8; 6] = b"TS\xf0\x9f\x92\xac";
pub const KEY_LEN: usize = 32;
pub const TXID_LEN: usize = 12;
/// Smallest datagram that can be a disco packet: magic, key, nonce, tag.
pub const MIN_PACKET: usize = MAGIC.len() + KEY_LEN + nacl::NONCE_LEN + nacl::OVERHEAD;
const EP_LEN: usize = 18;
/// Go caps what it parses; a CallMeMaybe with more endpoints is cut here.
pub const MAX_CALL_ME_MAYBE: usize = 64;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
const VERSION: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    #[error("not a disco packet")]
    NotDisco,
    #[error("disco packet too short")]
    Short,
    #[error("disco box: {0}")]
    Box(#[from] BoxError),
    #[error("unknown disco message type {0:#04x}")]
    UnknownType(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub txid: [u8; TXID_LEN],
    /// The sender's node key; zero when an old client left it out.
    pub node_key: NodePublic,
    pub padding: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub txid: [u8; TXID_LEN],
    /// Where the ping came from, as the ponger saw it.
    pub src: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ping(Ping),
    Pong(Pong),
    CallMeMaybe(Vec<SocketAddr>),
}

/// Whether a datagram (UDP or DERP payload) is disco rather than WireGuard
/// (`magicsock.packetLooksLike`): WireGuard's byte 1..4 are zero, disco's
/// magic is not.
pub fn looks_like_disco(b: &[u8]) -> bool {
    b.len() >= MAGIC.len() + KEY_LEN && b.starts_with(MAGIC)
}

fn put_ep(out: &mut Vec<u8>, ep: &SocketAddr) {
    let ip6 = match ep.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip6.octets());
    out.extend_from_slice(&ep.port().to_be_bytes());
}

fn get_ep(b: &[u8]) -> Option<SocketAddr> {
    let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(b.get(16..18)?.try_into().ok()?);
    let ip6 = Ipv6Addr::from(ip);
    let ip = match ip6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip6),
    };
    Some(SocketAddr::new(ip, port))
}

impl Message {
    /// The plaintext (`type || version || payload`).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Ping(p) => {
                let mut out = Vec::with_capacity(2 + TXID_LEN + KEY_LEN + p.padding);
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(&p.txid);
                out.extend_from_slice(p.node_key.as_bytes());
                out.resize(out.len() + p.padding, 0);
                out
            }
            Message::Pong(p) => {
                let mut out = Vec::with_capacity(2 + TXID_LEN + EP_LEN);
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(&p.txid);
                put_ep(&mut out, &p.src);
                out
            }
            Message::CallMeMaybe(eps) => {
                let mut out = Vec::with_capacity(2 + EP_LEN * eps.len());
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for ep in eps {
                    put_ep(&mut out, ep);
                }
                out
            }
        }
    }

    /// Parses a plaintext.
    pub fn decode(b: &[u8]) -> Result<Message, DiscoError> {
        let (&t, rest) = b.split_first().ok_or(DiscoError::Short)?;
        // The version byte is ignored, as Go does.
        let p = rest.get(1..).ok_or(DiscoError::Short)?;
        match t {
            TYPE_PING => {
                let txid: [u8; TXID_LEN] = p
                    .get(..TXID_LEN)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(DiscoError::Short)?;
                let (node_key, padding) = match p.get(TXID_LEN..TXID_LEN + KEY_LEN) {
                    Some(k) => {
                        let mut raw = [0u8; KEY_LEN];
                        raw.copy_from_slice(k);
                        (NodePublic::from_bytes(raw), p.len() - TXID_LEN - KEY_LEN)
                    }
                    None => (NodePublic::zero(), 0),
                };
                Ok(Message::Ping(Ping {
                    txid,
                    node_key,
                    padding,
                }))
            }
            TYPE_PONG => {
                let txid: [u8; TXID_LEN] = p
                    .get(..TXID_LEN)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(DiscoError::Short)?;
                let src = get_ep(&p[TXID_LEN..]).ok_or(DiscoError::Short)?;
                Ok(Message::Pong(Pong { txid, src }))
            }
            TYPE_CALL_ME_MAYBE => {
                if p.len() % EP_LEN != 0 {
                    return Err(DiscoError::Short);
                }
                Ok(Message::CallMeMaybe(
                    p.chunks_exact(EP_LEN)
                        .take(MAX_CALL_ME_MAYBE)
                        .filter_map(get_ep)
                        .collect(),
                ))
            }
            other => Err(DiscoError::UnknownType(other)),
        }
    }
}

/// Seals `msg` from our disco key to the peer's into a full packet.
pub fn seal(
    our_private: &[u8; 32],
    our_public: &[u8; 32],
    peer_public: &[u8; 32],
    msg: &Message,
) -> Result<Vec<u8>, DiscoError> {
    let boxed = nacl::seal(our_private, peer_public, &msg.encode())?;
    let mut out = Vec::with_capacity(MAGIC.len() + KEY_LEN + boxed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(our_public);
    out.extend_from_slice(&boxed);
    Ok(out)
}

/// The sender's disco key of a packet, before opening it (to find the key
/// to open it with).
pub fn sender(packet: &[u8]) -> Result<[u8; 32], DiscoError> {
    if !packet.starts_with(MAGIC) {
        return Err(DiscoError::NotDisco);
    }
    packet
        .get(MAGIC.len()..MAGIC.len() + KEY_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(DiscoError::Short)
}

/// Opens a packet addressed to us: returns the sender's disco key and the
/// message.
pub fn open(our_private: &[u8; 32], packet: &[u8]) -> Result<([u8; 32], Message), DiscoError> {
    let from = sender(packet)?;
    if packet.len() < MIN_PACKET {
        return Err(DiscoError::Short);
    }
    let plain = nacl::open(our_private, &from, &packet[MAGIC.len() + KEY_LEN..])?;
    Ok((from, Message::decode(&plain)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    const TX: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn magic_bytes() {
        assert_eq!(&MAGIC[..], "TS💬".as_bytes());
    }

    // Vectors from tailscale disco/disco_test.go (TestMarshalAndParse).
    #[test]
    fn go_vectors() {
        let mut key = [0u8; 32];
        key[1] = 1;
        key[2] = 2;
        key[30] = 30;
        key[31] = 31;
        let cases = [
            (
                Message::Ping(Ping {
                    txid: TX,
                    node_key: NodePublic::from_bytes(key),
                    padding: 3,
                }),
                "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 01 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 1e 1f 00 00 00",
            ),
            (
                Message::Pong(Pong {
                    txid: TX,
                    src: "2.3.4.5:1234".parse().unwrap(),
                }),
                "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00 00 00 00 00 00 00 00 ff ff 02 03 04 05 04 d2",
            ),
            (
                Message::Pong(Pong {
                    txid: TX,
                    src: "[fed0::12]:6666".parse().unwrap(),
                }),
                "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c fe d0 00 00 00 00 00 00 00 00 00 00 00 00 00 12 1a 0a",
            ),
            (Message::CallMeMaybe(vec![]), "03 00"),
            (
                Message::CallMeMaybe(vec![
                    "1.2.3.4:567".parse().unwrap(),
                    "[2001::3456]:789".parse().unwrap(),
                ]),
                "03 00 00 00 00 00 00 00 00 00 00 00 ff ff 01 02 03 04 02 37 20 01 00 00 00 00 00 00 00 00 00 00 00 00 34 56 03 15",
            ),
        ];
        for (msg, want) in cases {
            let want = unhex(want);
            assert_eq!(msg.encode(), want, "{msg:?}");
            assert_eq!(Message::decode(&want).unwrap(), msg);
        }
        // An old client's ping without node key.
        let old = unhex("01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c");
        assert_eq!(
            Message::decode(&old).unwrap(),
            Message::Ping(Ping {
                txid: TX,
                node_key: NodePublic::zero(),
                padding: 0
            })
        );
    }

    #[test]
    fn sealed_round_trip_and_bad_input() {
        let a: [u8; 32] = rand::random();
        let b: [u8; 32] = rand::random();
        let (pa, pb) = (nacl::public_of(&a), nacl::public_of(&b));
        let msg = Message::Pong(Pong {
            txid: TX,
            src: "10.0.0.5:41641".parse().unwrap(),
        });
        let pkt = seal(&a, &pa, &pb, &msg).unwrap();
        assert!(looks_like_disco(&pkt));
        assert_eq!(open(&b, &pkt).unwrap(), (pa, msg));
        // A WireGuard handshake initiation is not disco.
        let mut wg = vec![1u8, 0, 0, 0];
        wg.resize(148, 7);
        assert!(!looks_like_disco(&wg));
        // Truncations and garbage never panic.
        for n in 0..pkt.len() {
            let _ = open(&b, &pkt[..n]);
        }
        assert!(matches!(
            Message::decode(&[0x7f, 0]),
            Err(DiscoError::UnknownType(0x7f))
        ));
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(&[2, 0, 1]).is_err());
        assert!(Message::decode(&[3, 0, 1]).is_err());
    }
}

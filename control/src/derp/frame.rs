//! DERP v2 framing (`derp/derp.go`): a 1-byte type, a 4-byte big-endian
//! payload length (not counting the 5-byte header), then the payload.
//!
//! Pure: no I/O. [`FrameDecoder`] consumes bytes as they arrive; the
//! `*_frame` builders append complete frames to a buffer. Typed views of
//! the frames each side sends are [`ClientMessage`] and [`ServerMessage`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Sent in the ServerKey frame: `DERP🔑`.
pub const MAGIC: [u8; 8] = *b"DERP\xf0\x9f\x94\x91";
/// Version 2: RecvPacket frames start with the sender's key.
pub const PROTOCOL_VERSION: u32 = 2;
pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const HEADER_LEN: usize = 5;
/// Largest packet (WireGuard or disco datagram) relayed, excluding framing.
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest ServerInfo/ClientInfo JSON Tailscale will handle.
pub const MAX_INFO_LEN: usize = 1 << 20;
/// Tailscale's client refuses any frame longer than this, so it is the
/// ceiling for every frame either side may send.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Tailscale's server limit on the ClientInfo frame: it is read before the
/// client is authenticated, so it is kept small.
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// Ping payloads: 8 bytes, Tailscale tolerates up to this many for
/// future extensions and closes the connection beyond.
pub const MAX_PING_LEN: usize = 1000;

pub type NodeKey = [u8; KEY_LEN];

/// The one-byte frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameType(pub u8);

impl FrameType {
    pub const SERVER_KEY: Self = Self(0x01);
    pub const CLIENT_INFO: Self = Self(0x02);
    pub const SERVER_INFO: Self = Self(0x03);
    pub const SEND_PACKET: Self = Self(0x04);
    pub const RECV_PACKET: Self = Self(0x05);
    pub const KEEP_ALIVE: Self = Self(0x06);
    pub const NOTE_PREFERRED: Self = Self(0x07);
    pub const PEER_GONE: Self = Self(0x08);
    pub const PEER_PRESENT: Self = Self(0x09);
    pub const FORWARD_PACKET: Self = Self(0x0a);
    pub const WATCH_CONNS: Self = Self(0x10);
    pub const CLOSE_PEER: Self = Self(0x11);
    pub const PING: Self = Self(0x12);
    pub const PONG: Self = Self(0x13);
    pub const HEALTH: Self = Self(0x14);
    pub const RESTARTING: Self = Self(0x15);
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:02x}", self.0)
    }
}

/// Why a peer is reported gone (the byte after the key in PeerGone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerGoneReason {
    /// The peer was connected here and has left.
    Disconnected,
    /// A packet was addressed to a key this server does not have.
    NotHere,
    Other(u8),
}

impl PeerGoneReason {
    pub fn to_byte(self) -> u8 {
        match self {
            PeerGoneReason::Disconnected => 0x00,
            PeerGoneReason::NotHere => 0x01,
            PeerGoneReason::Other(b) => b,
        }
    }

    pub fn from_byte(b: u8) -> Self {
        match b {
            0x00 => PeerGoneReason::Disconnected,
            0x01 => PeerGoneReason::NotHere,
            b => PeerGoneReason::Other(b),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame type {frame_type} declares {len} bytes, over the limit of {max}")]
    TooLarge {
        frame_type: FrameType,
        len: usize,
        max: usize,
    },
    #[error("frame type {frame_type} has {len} bytes, needs at least {min}")]
    TooShort {
        frame_type: FrameType,
        len: usize,
        min: usize,
    },
    #[error("frame type {frame_type} has {len} bytes, needs exactly {want}")]
    WrongLength {
        frame_type: FrameType,
        len: usize,
        want: usize,
    },
    #[error("expected frame type {want}, got {got}")]
    UnexpectedType { want: FrameType, got: FrameType },
    #[error("ServerKey frame does not start with the DERP magic")]
    BadMagic,
    #[error("connection ended in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// One complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: FrameType,
    pub payload: Bytes,
}

/// Splits a byte stream into frames. The length limit is checked as soon
/// as the header is in, so an oversized frame is refused before its
/// payload is buffered.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            max_len: MAX_FRAME_LEN,
        }
    }
}

impl FrameDecoder {
    pub fn new(max_len: usize) -> Self {
        FrameDecoder { max_len }
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Takes one frame off the front of `buf`, or returns `Ok(None)` if
    /// more bytes are needed. After an error the stream is unusable.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let frame_type = FrameType(header[0]);
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLarge {
                frame_type,
                len,
                max: self.max_len,
            });
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        Ok(Some(Frame {
            frame_type,
            payload: buf.split_to(len).freeze(),
        }))
    }

    /// How many more bytes the frame at the front of `buf` needs, if its
    /// header is complete; lets readers reserve once for large frames.
    pub fn bytes_wanted(&self, buf: &[u8]) -> usize {
        match buf.get(..HEADER_LEN) {
            None => HEADER_LEN - buf.len(),
            Some(h) => {
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                (HEADER_LEN + len.min(self.max_len)).saturating_sub(buf.len())
            }
        }
    }
}

/// Appends a frame whose payload is the concatenation of `parts`.
pub fn encode_frame(
    dst: &mut BytesMut,
    frame_type: FrameType,
    parts: &[&[u8]],
) -> Result<(), FrameError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            frame_type,
            len,
            max: MAX_FRAME_LEN,
        });
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(frame_type.0);
    dst.put_u32(len as u32);
    for p in parts {
        dst.put_slice(p);
    }
    Ok(())
}

/// Frames whose payload size is fixed by construction cannot exceed the
/// limit; these helpers skip the `Result`.
fn put_small(dst: &mut BytesMut, frame_type: FrameType, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(len <= MAX_FRAME_LEN);
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(frame_type.0);
    dst.put_u32(len as u32);
    for p in parts {
        dst.put_slice(p);
    }
}

pub fn server_key_frame(dst: &mut BytesMut, server_public: &NodeKey) {
    put_small(dst, FrameType::SERVER_KEY, &[&MAGIC, server_public]);
}

/// `sealed` is nonce || NaCl box, as produced by `crypto::seal`.
pub fn client_info_frame(
    dst: &mut BytesMut,
    client_public: &NodeKey,
    sealed: &[u8],
) -> Result<(), FrameError> {
    encode_frame(dst, FrameType::CLIENT_INFO, &[client_public, sealed])
}

pub fn server_info_frame(dst: &mut BytesMut, sealed: &[u8]) -> Result<(), FrameError> {
    encode_frame(dst, FrameType::SERVER_INFO, &[sealed])
}

pub fn send_packet_frame(
    dst: &mut BytesMut,
    to: &NodeKey,
    packet: &[u8],
) -> Result<(), FrameError> {
    check_packet(FrameType::SEND_PACKET, packet)?;
    encode_frame(dst, FrameType::SEND_PACKET, &[to, packet])
}

pub fn recv_packet_frame(
    dst: &mut BytesMut,
    from: &NodeKey,
    packet: &[u8],
) -> Result<(), FrameError> {
    check_packet(FrameType::RECV_PACKET, packet)?;
    encode_frame(dst, FrameType::RECV_PACKET, &[from, packet])
}

fn check_packet(frame_type: FrameType, packet: &[u8]) -> Result<(), FrameError> {
    if packet.len() > MAX_PACKET_SIZE {
        return Err(FrameError::TooLarge {
            frame_type,
            len: packet.len(),
            max: MAX_PACKET_SIZE,
        });
    }
    Ok(())
}

pub fn keep_alive_frame(dst: &mut BytesMut) {
    put_small(dst, FrameType::KEEP_ALIVE, &[]);
}

pub fn note_preferred_frame(dst: &mut BytesMut, preferred: bool) {
    put_small(dst, FrameType::NOTE_PREFERRED, &[&[u8::from(preferred)]]);
}

pub fn peer_gone_frame(dst: &mut BytesMut, peer: &NodeKey, reason: PeerGoneReason) {
    put_small(dst, FrameType::PEER_GONE, &[peer, &[reason.to_byte()]]);
}

pub fn ping_frame(dst: &mut BytesMut, data: &[u8; 8]) {
    put_small(dst, FrameType::PING, &[data]);
}

pub fn pong_frame(dst: &mut BytesMut, data: &[u8; 8]) {
    put_small(dst, FrameType::PONG, &[data]);
}

fn key_at(payload: &[u8]) -> Option<NodeKey> {
    payload.get(..KEY_LEN).and_then(|k| k.try_into().ok())
}

fn eight_at(payload: &[u8]) -> Option<[u8; 8]> {
    payload.get(..8).and_then(|k| k.try_into().ok())
}

fn too_short(frame: &Frame, min: usize) -> FrameError {
    FrameError::TooShort {
        frame_type: frame.frame_type,
        len: frame.payload.len(),
        min,
    }
}

/// A frame a client sends after the handshake, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    SendPacket {
        to: NodeKey,
        packet: Bytes,
    },
    NotePreferred(bool),
    Ping([u8; 8]),
    Pong([u8; 8]),
    /// Mesh-only frames (ForwardPacket, WatchConns, ClosePeer). Tailscale's
    /// server drops a non-mesh client that sends one.
    MeshOnly(FrameType),
    /// Anything else: skipped, for forward compatibility.
    Unknown(FrameType),
}

impl ClientMessage {
    /// Validates the payload against the frame type, with Tailscale's size
    /// rules (`derpserver.go`): a malformed known frame is an error, which
    /// the server answers by closing the connection.
    pub fn parse(frame: &Frame) -> Result<Self, FrameError> {
        let p = &frame.payload;
        match frame.frame_type {
            FrameType::SEND_PACKET => {
                let to = key_at(p).ok_or_else(|| too_short(frame, KEY_LEN))?;
                let packet = p.slice(KEY_LEN..);
                check_packet(frame.frame_type, &packet)?;
                Ok(ClientMessage::SendPacket { to, packet })
            }
            FrameType::NOTE_PREFERRED => match p.as_ref() {
                [b] => Ok(ClientMessage::NotePreferred(*b != 0)),
                _ => Err(FrameError::WrongLength {
                    frame_type: frame.frame_type,
                    len: p.len(),
                    want: 1,
                }),
            },
            FrameType::PING => {
                if p.len() > MAX_PING_LEN {
                    return Err(FrameError::TooLarge {
                        frame_type: frame.frame_type,
                        len: p.len(),
                        max: MAX_PING_LEN,
                    });
                }
                eight_at(p)
                    .map(ClientMessage::Ping)
                    .ok_or_else(|| too_short(frame, 8))
            }
            // Tailscale's server ignores pongs; we hand them up so the
            // connection can count them as proof of life.
            FrameType::PONG => eight_at(p)
                .map(ClientMessage::Pong)
                .ok_or_else(|| too_short(frame, 8)),
            t @ (FrameType::FORWARD_PACKET | FrameType::WATCH_CONNS | FrameType::CLOSE_PEER) => {
                Ok(ClientMessage::MeshOnly(t))
            }
            t => Ok(ClientMessage::Unknown(t)),
        }
    }
}

/// A frame the server sends, as a client sees it. Mirrors the tolerance of
/// Tailscale's `Client.recvTimeout`: short frames of known types are
/// reported as [`ServerMessage::Malformed`] rather than killing the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    ServerKey(NodeKey),
    /// nonce || box of the ServerInfo JSON.
    ServerInfo(Bytes),
    RecvPacket {
        from: NodeKey,
        packet: Bytes,
    },
    KeepAlive,
    PeerGone {
        peer: NodeKey,
        reason: PeerGoneReason,
    },
    PeerPresent(NodeKey),
    Ping([u8; 8]),
    Pong([u8; 8]),
    Health(String),
    Restarting {
        reconnect_in_ms: u32,
        try_for_ms: u32,
    },
    Malformed(FrameType),
    Unknown(FrameType),
}

impl ServerMessage {
    pub fn parse(frame: &Frame) -> Self {
        let p = &frame.payload;
        let t = frame.frame_type;
        let or_malformed = |m: Option<ServerMessage>| m.unwrap_or(ServerMessage::Malformed(t));
        match t {
            FrameType::SERVER_KEY => or_malformed(
                p.get(..MAGIC.len())
                    .filter(|m| *m == MAGIC)
                    .and_then(|_| key_at(&p[MAGIC.len()..]))
                    .map(ServerMessage::ServerKey),
            ),
            FrameType::SERVER_INFO => ServerMessage::ServerInfo(p.clone()),
            FrameType::RECV_PACKET => {
                or_malformed(key_at(p).map(|from| ServerMessage::RecvPacket {
                    from,
                    packet: p.slice(KEY_LEN..),
                }))
            }
            FrameType::KEEP_ALIVE => ServerMessage::KeepAlive,
            FrameType::PEER_GONE => or_malformed(key_at(p).map(|peer| {
                // Old servers sent no reason byte: that meant "disconnected".
                let reason = p.get(KEY_LEN).map_or(PeerGoneReason::Disconnected, |b| {
                    PeerGoneReason::from_byte(*b)
                });
                ServerMessage::PeerGone { peer, reason }
            })),
            FrameType::PEER_PRESENT => or_malformed(key_at(p).map(ServerMessage::PeerPresent)),
            FrameType::PING => or_malformed(eight_at(p).map(ServerMessage::Ping)),
            FrameType::PONG => or_malformed(eight_at(p).map(ServerMessage::Pong)),
            FrameType::HEALTH => ServerMessage::Health(String::from_utf8_lossy(p).into_owned()),
            FrameType::RESTARTING => or_malformed(eight_at(p).map(|b| ServerMessage::Restarting {
                reconnect_in_ms: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                try_for_ms: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            })),
            t => ServerMessage::Unknown(t),
        }
    }
}

/// Checks a ServerKey frame and returns the server's public key. Extra
/// trailing bytes are allowed, as Tailscale's client allows them.
pub fn parse_server_key(frame: &Frame) -> Result<NodeKey, FrameError> {
    if frame.frame_type != FrameType::SERVER_KEY {
        return Err(FrameError::UnexpectedType {
            want: FrameType::SERVER_KEY,
            got: frame.frame_type,
        });
    }
    let p = &frame.payload;
    if p.len() < MAGIC.len() + KEY_LEN {
        return Err(too_short(frame, MAGIC.len() + KEY_LEN));
    }
    if p[..MAGIC.len()] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    key_at(&p[MAGIC.len()..]).ok_or_else(|| too_short(frame, MAGIC.len() + KEY_LEN))
}

/// Splits a ClientInfo frame into the client's public key and the sealed
/// JSON (nonce || box), with Tailscale's size bounds.
pub fn parse_client_info(frame: &Frame) -> Result<(NodeKey, Bytes), FrameError> {
    if frame.frame_type != FrameType::CLIENT_INFO {
        return Err(FrameError::UnexpectedType {
            want: FrameType::CLIENT_INFO,
            got: frame.frame_type,
        });
    }
    let p = &frame.payload;
    let min = KEY_LEN + NONCE_LEN;
    if p.len() < min {
        return Err(too_short(frame, min));
    }
    if p.len() > MAX_CLIENT_INFO_LEN {
        return Err(FrameError::TooLarge {
            frame_type: frame.frame_type,
            len: p.len(),
            max: MAX_CLIENT_INFO_LEN,
        });
    }
    let key = key_at(p).ok_or_else(|| too_short(frame, min))?;
    Ok((key, p.slice(KEY_LEN..)))
}

/// True for disco messages (`disco.LooksLikeDiscoWrapper`): magic `TS💬`
/// followed by at least a 32-byte key and a 24-byte nonce. The relay gives
/// them their own queue so bulk WireGuard traffic cannot starve path
/// discovery.
pub fn looks_like_disco(packet: &[u8]) -> bool {
    const DISCO_MAGIC: &[u8] = b"TS\xf0\x9f\x92\xac";
    packet.len() >= DISCO_MAGIC.len() + KEY_LEN + NONCE_LEN && packet.starts_with(DISCO_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf)? {
            out.push(f);
        }
        if !buf.is_empty() {
            return Err(FrameError::Truncated {
                buffered: buf.len(),
            });
        }
        Ok(out)
    }

    #[test]
    fn magic_is_derp_key_emoji() {
        assert_eq!(&MAGIC, "DERP🔑".as_bytes());
        assert_eq!(MAGIC, [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91]);
    }

    #[test]
    fn header_layout() {
        let mut b = BytesMut::new();
        recv_packet_frame(&mut b, &[7; 32], b"hi").unwrap();
        assert_eq!(&b[..5], &[0x05, 0, 0, 0, 34]);
        assert_eq!(&b[5..37], &[7; 32]);
        assert_eq!(&b[37..], b"hi");
    }

    #[test]
    fn round_trip_every_builder() {
        let k = [9u8; 32];
        let mut b = BytesMut::new();
        server_key_frame(&mut b, &k);
        client_info_frame(&mut b, &k, &[1; 40]).unwrap();
        server_info_frame(&mut b, &[2; 40]).unwrap();
        send_packet_frame(&mut b, &k, b"payload").unwrap();
        recv_packet_frame(&mut b, &k, b"payload").unwrap();
        keep_alive_frame(&mut b);
        note_preferred_frame(&mut b, true);
        peer_gone_frame(&mut b, &k, PeerGoneReason::NotHere);
        ping_frame(&mut b, b"12345678");
        pong_frame(&mut b, b"87654321");

        let frames = decode_all(&b).unwrap();
        assert_eq!(frames.len(), 10);
        assert_eq!(parse_server_key(&frames[0]), Ok(k));
        let (ck, sealed) = parse_client_info(&frames[1]).unwrap();
        assert_eq!((ck, sealed.len()), (k, 40));
        assert_eq!(
            ServerMessage::parse(&frames[2]),
            ServerMessage::ServerInfo(Bytes::from(vec![2; 40]))
        );
        assert_eq!(
            ClientMessage::parse(&frames[3]),
            Ok(ClientMessage::SendPacket {
                to: k,
                packet: Bytes::from_static(b"payload")
            })
        );
        assert_eq!(
            ServerMessage::parse(&frames[4]),
            ServerMessage::RecvPacket {
                from: k,
                packet: Bytes::from_static(b"payload")
            }
        );
        assert_eq!(ServerMessage::parse(&frames[5]), ServerMessage::KeepAlive);
        assert_eq!(
            ClientMessage::parse(&frames[6]),
            Ok(ClientMessage::NotePreferred(true))
        );
        assert_eq!(
            ServerMessage::parse(&frames[7]),
            ServerMessage::PeerGone {
                peer: k,
                reason: PeerGoneReason::NotHere
            }
        );
        assert_eq!(
            ClientMessage::parse(&frames[8]),
            Ok(ClientMessage::Ping(*b"12345678"))
        );
        assert_eq!(
            ServerMessage::parse(&frames[9]),
            ServerMessage::Pong(*b"87654321")
        );
    }

    #[test]
    fn decodes_byte_by_byte() {
        let mut wire = BytesMut::new();
        send_packet_frame(&mut wire, &[1; 32], &[0xaa; 300]).unwrap();
        keep_alive_frame(&mut wire);
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            assert!(dec.bytes_wanted(&buf) > 0 || buf.len() >= HEADER_LEN);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload.len(), 332);
        assert_eq!(frames[1].frame_type, FrameType::KEEP_ALIVE);
    }

    #[test]
    fn oversized_frame_is_refused_at_the_header() {
        let dec = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&[0x04, 0, 0, 0, 101][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                frame_type: FrameType::SEND_PACKET,
                len: 101,
                max: 100
            })
        );
        let mut huge = BytesMut::from(&[0x04, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
        let mut out = BytesMut::new();
        assert!(matches!(
            send_packet_frame(&mut out, &[0; 32], &vec![0; MAX_PACKET_SIZE + 1]),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(out.is_empty(), "nothing written for a refused frame");
    }

    #[test]
    fn short_and_malformed_frames() {
        let frame = |t: FrameType, p: &[u8]| Frame {
            frame_type: t,
            payload: Bytes::copy_from_slice(p),
        };
        assert!(matches!(
            ClientMessage::parse(&frame(FrameType::SEND_PACKET, &[0; 31])),
            Err(FrameError::TooShort { min: 32, .. })
        ));
        assert!(matches!(
            ClientMessage::parse(&frame(
                FrameType::SEND_PACKET,
                &vec![0; 32 + MAX_PACKET_SIZE + 1]
            )),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(&frame(FrameType::NOTE_PREFERRED, &[])),
            Err(FrameError::WrongLength { want: 1, .. })
        ));
        assert!(matches!(
            ClientMessage::parse(&frame(FrameType::PING, &[0; 7])),
            Err(FrameError::TooShort { .. })
        ));
        assert!(matches!(
            ClientMessage::parse(&frame(FrameType::PING, &[0; 1001])),
            Err(FrameError::TooLarge { .. })
        ));
        // Extra ping bytes within the limit are tolerated.
        assert_eq!(
            ClientMessage::parse(&frame(FrameType::PING, &[3; 20])),
            Ok(ClientMessage::Ping([3; 8]))
        );
        assert_eq!(
            ClientMessage::parse(&frame(FrameType::WATCH_CONNS, &[])),
            Ok(ClientMessage::MeshOnly(FrameType::WATCH_CONNS))
        );
        assert_eq!(
            ClientMessage::parse(&frame(FrameType(0x7f), &[1, 2])),
            Ok(ClientMessage::Unknown(FrameType(0x7f)))
        );

        assert_eq!(
            parse_server_key(&frame(FrameType::SERVER_KEY, &MAGIC)),
            Err(FrameError::TooShort {
                frame_type: FrameType::SERVER_KEY,
                len: 8,
                min: 40
            })
        );
        let mut bad_magic = vec![0u8; 40];
        bad_magic[..8].copy_from_slice(b"DERPDERP");
        assert_eq!(
            parse_server_key(&frame(FrameType::SERVER_KEY, &bad_magic)),
            Err(FrameError::BadMagic)
        );
        let mut extra = MAGIC.to_vec();
        extra.extend_from_slice(&[5; 40]);
        assert_eq!(
            parse_server_key(&frame(FrameType::SERVER_KEY, &extra)),
            Ok([5; 32])
        );

        assert!(matches!(
            parse_client_info(&frame(FrameType::CLIENT_INFO, &[0; 55])),
            Err(FrameError::TooShort { min: 56, .. })
        ));
        assert!(matches!(
            parse_client_info(&frame(
                FrameType::CLIENT_INFO,
                &vec![0; MAX_CLIENT_INFO_LEN + 1]
            )),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            parse_client_info(&frame(FrameType::SEND_PACKET, &[0; 60])),
            Err(FrameError::UnexpectedType { .. })
        ));

        assert_eq!(
            ServerMessage::parse(&frame(FrameType::RECV_PACKET, &[0; 3])),
            ServerMessage::Malformed(FrameType::RECV_PACKET)
        );
        // A reason-less PeerGone (old servers) means "disconnected".
        assert_eq!(
            ServerMessage::parse(&frame(FrameType::PEER_GONE, &[4; 32])),
            ServerMessage::PeerGone {
                peer: [4; 32],
                reason: PeerGoneReason::Disconnected
            }
        );
    }

    #[test]
    fn disco_detection() {
        let mut p = b"TS\xf0\x9f\x92\xac".to_vec();
        p.extend_from_slice(&[0; 56]);
        assert!(looks_like_disco(&p));
        assert!(!looks_like_disco(&p[..61]));
        p[0] = b'X';
        assert!(!looks_like_disco(&p));
    }
}

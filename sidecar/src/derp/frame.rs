//! DERP framing (`derp/derp.go`): `type(1) || len(4, BE) || payload`.

use meshscale_wire::NodePublic;

pub const MAGIC: &[u8; 8] = b"DERP\xf0\x9f\x94\x91";
pub const PROTOCOL_VERSION: u32 = 2;
pub const HEADER_LEN: usize = 5;
pub const KEY_LEN: usize = 32;
/// `MaxPacketSize`: the biggest packet a peer may relay.
pub const MAX_PACKET: usize = 64 << 10;
/// Biggest frame we accept: a packet plus its key, or ServerInfo (1 MiB in
/// Go, but ours is tiny; bound what a hostile server can make us buffer).
pub const MAX_FRAME: usize = MAX_PACKET + KEY_LEN + 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    ServerKey = 0x01,
    ClientInfo = 0x02,
    ServerInfo = 0x03,
    SendPacket = 0x04,
    RecvPacket = 0x05,
    KeepAlive = 0x06,
    NotePreferred = 0x07,
    PeerGone = 0x08,
    Ping = 0x12,
    Pong = 0x13,
    Health = 0x14,
    Restarting = 0x15,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("DERP frame of {len} bytes is larger than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("DERP {what} frame is malformed")]
    Malformed { what: &'static str },
}

/// A frame header followed by `payload`.
pub fn encode(t: FrameType, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        max: MAX_FRAME,
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(t as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Parses a header: the type byte and the payload length, bounded.
pub fn parse_header(h: &[u8; HEADER_LEN], max: usize) -> Result<(u8, usize), FrameError> {
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok((h[0], len))
}

/// `SendPacket`: destination key then the packet.
pub fn send_packet(dst: &NodePublic, packet: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(HEADER_LEN + KEY_LEN + packet.len());
    write_send_packet(&mut out, dst, packet)?;
    Ok(out)
}

/// [`send_packet`] into `out` (cleared first), so that a buffer can be
/// reused from one packet to the next.
pub fn write_send_packet(
    out: &mut Vec<u8>,
    dst: &NodePublic,
    packet: &[u8],
) -> Result<(), FrameError> {
    if packet.len() > MAX_PACKET {
        return Err(FrameError::TooLarge {
            len: packet.len(),
            max: MAX_PACKET,
        });
    }
    // At most MAX_PACKET + KEY_LEN: fits the u32 length.
    let len = (KEY_LEN + packet.len()) as u32;
    out.clear();
    out.push(FrameType::SendPacket as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(dst.as_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// `RecvPacket` (v2): source key then the packet.
pub fn parse_recv_packet(payload: &[u8]) -> Result<(NodePublic, &[u8]), FrameError> {
    let key = key_at(payload, "RecvPacket")?;
    Ok((key, &payload[KEY_LEN..]))
}

/// `ServerKey`: magic then the server's key; trailing bytes are allowed.
pub fn parse_server_key(payload: &[u8]) -> Result<NodePublic, FrameError> {
    let rest = payload
        .strip_prefix(MAGIC)
        .ok_or(FrameError::Malformed { what: "ServerKey" })?;
    key_at(rest, "ServerKey")
}

/// `PeerGone`: the key (and a reason byte we do not need).
pub fn parse_peer_gone(payload: &[u8]) -> Result<NodePublic, FrameError> {
    key_at(payload, "PeerGone")
}

/// `Ping`/`Pong`: 8 opaque bytes.
pub fn parse_ping(payload: &[u8]) -> Result<[u8; 8], FrameError> {
    payload
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Malformed { what: "Ping" })
}

fn key_at(b: &[u8], what: &'static str) -> Result<NodePublic, FrameError> {
    let raw: [u8; KEY_LEN] = b
        .get(..KEY_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Malformed { what })?;
    Ok(NodePublic::from_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_parse() {
        let key = NodePublic::from_bytes([7; 32]);
        let f = send_packet(&key, b"wg").unwrap();
        assert_eq!(f[0], 0x04);
        assert_eq!(&f[1..5], &[0, 0, 0, 34]);
        let h: [u8; 5] = f[..5].try_into().unwrap();
        assert_eq!(parse_header(&h, MAX_FRAME).unwrap(), (4, 34));
        // The same payload read back as a RecvPacket.
        let (src, pkt) = parse_recv_packet(&f[5..]).unwrap();
        assert_eq!((src, pkt), (key, &b"wg"[..]));
    }

    #[test]
    fn bounds_and_malformed() {
        assert!(matches!(
            parse_header(&[4, 0xff, 0xff, 0xff, 0xff], MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(send_packet(&NodePublic::zero(), &vec![0; MAX_PACKET + 1]).is_err());
        // Into a used buffer: the same bytes, nothing of the old content.
        let key = NodePublic::from_bytes([7; 32]);
        let mut reused = vec![7u8; 100];
        write_send_packet(&mut reused, &key, b"wg").unwrap();
        assert_eq!(reused, send_packet(&key, b"wg").unwrap());
        let mut refused = b"old".to_vec();
        assert!(write_send_packet(&mut refused, &key, &vec![0; MAX_PACKET + 1]).is_err());
        assert!(parse_recv_packet(&[1; 31]).is_err());
        assert!(parse_ping(&[1; 7]).is_err());
        let mut sk = MAGIC.to_vec();
        sk.extend_from_slice(&[3; 32]);
        sk.push(0xaa); // trailing bytes are fine
        assert_eq!(
            parse_server_key(&sk).unwrap(),
            NodePublic::from_bytes([3; 32])
        );
        assert!(parse_server_key(&sk[1..]).is_err());
        assert!(parse_server_key(&sk[..39]).is_err());
    }

    #[test]
    fn magic_is_derp_key_emoji() {
        assert_eq!(&MAGIC[..], "DERP🔑".as_bytes());
    }
}

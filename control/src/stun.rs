//! STUN binding server, as Tailscale clients use it (`net/stun/stun.go`).
//!
//! Clients send a 20-byte RFC 5389 header, a SOFTWARE attribute `tailnode`
//! and a FINGERPRINT. We answer with a single XOR-MAPPED-ADDRESS attribute,
//! which is all netcheck reads. Like Tailscale's `ParseBindingRequest`, the
//! parser refuses anything that is not a Tailscale request, so this port
//! cannot be used as a generic reflector by other software.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

const HEADER_LEN: usize = 20;
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Some servers put XOR-MAPPED-ADDRESS in the comprehension-optional range;
/// Tailscale's client accepts it, so our response parser does too.
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const SOFTWARE: &[u8] = b"tailnode";
/// Type (2) + length (2) + CRC-32 (4).
const FINGERPRINT_ATTR_LEN: usize = 8;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// Datagrams are read into a buffer of this size. A Tailscale binding
/// request is 40 bytes; anything longer than the buffer is truncated by the
/// kernel, fails the fingerprint check and is dropped.
const RECV_BUFFER: usize = 2048;
/// After a socket error, wait this long so a persistent error cannot spin.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// A STUN transaction ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxId(pub [u8; 12]);

impl TxId {
    pub fn random() -> Self {
        TxId(rand::random())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    #[error("not a STUN packet")]
    NotStun,
    #[error("STUN packet is not a binding request")]
    NotBindingRequest,
    #[error("STUN packet is not a binding success response")]
    NotSuccessResponse,
    #[error("STUN attributes are malformed")]
    MalformedAttrs,
    #[error("STUN request did not come from Tailscale software")]
    WrongSoftware,
    #[error("STUN request does not end in a FINGERPRINT")]
    NoFingerprint,
    #[error("STUN request has a wrong FINGERPRINT")]
    WrongFingerprint,
    #[error("STUN response carries no usable mapped address")]
    NoAddress,
}

/// Reports whether `b` looks like a STUN message at all (header shape and
/// magic cookie), before any attribute is looked at.
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0b1100_0000 == 0 && b[4..8] == MAGIC_COOKIE
}

fn fingerprint(b: &[u8]) -> u32 {
    crc32fast::hash(b) ^ FINGERPRINT_XOR
}

/// Builds a binding request byte-for-byte as Tailscale's `stun.Request`
/// does. The node agent sends this; tests use it as the reference request.
pub fn binding_request(tx: TxId) -> Vec<u8> {
    let software_attr_len = 4 + SOFTWARE.len();
    let mut b = Vec::with_capacity(HEADER_LEN + software_attr_len + FINGERPRINT_ATTR_LEN);
    b.extend_from_slice(&BINDING_REQUEST);
    b.extend_from_slice(&((software_attr_len + FINGERPRINT_ATTR_LEN) as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx.0);
    b.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b.extend_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    // "tailnode" is 8 bytes, a multiple of 4: no padding.
    b.extend_from_slice(SOFTWARE);
    let fp = fingerprint(&b);
    b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes());
    b.extend_from_slice(&fp.to_be_bytes());
    b
}

/// Calls `f` with each attribute's type and value (padding excluded).
/// Mirrors Tailscale's `foreachAttr`: values are padded to 4 bytes, and a
/// value running past the end of the packet is malformed.
fn for_each_attr(
    mut b: &[u8],
    mut f: impl FnMut(u16, &[u8]) -> Result<(), StunError>,
) -> Result<(), StunError> {
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(StunError::MalformedAttrs);
        }
        let attr_type = u16::from_be_bytes([b[0], b[1]]);
        let attr_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let padded = (attr_len + 3) & !3;
        b = &b[4..];
        if padded > b.len() {
            return Err(StunError::MalformedAttrs);
        }
        f(attr_type, &b[..attr_len])?;
        b = &b[padded..];
    }
    Ok(())
}

/// Parses a binding request from a Tailscale client and returns its
/// transaction ID. Same acceptance rules as Tailscale's
/// `ParseBindingRequest`: SOFTWARE must be `tailnode`, and the last
/// attribute must be a FINGERPRINT matching the bytes before it.
pub fn parse_binding_request(b: &[u8]) -> Result<TxId, StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    if b[..2] != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..HEADER_LEN]);

    let mut software_ok = false;
    let mut last_attr = None;
    let mut got_fp = None;
    for_each_attr(&b[HEADER_LEN..], |attr_type, value| {
        last_attr = Some(attr_type);
        if attr_type == ATTR_SOFTWARE && value == SOFTWARE {
            software_ok = true;
        }
        if attr_type == ATTR_FINGERPRINT {
            got_fp = <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes);
        }
        Ok(())
    })?;
    if !software_ok {
        return Err(StunError::WrongSoftware);
    }
    if last_attr != Some(ATTR_FINGERPRINT) {
        return Err(StunError::NoFingerprint);
    }
    // The fingerprint covers everything before its own 8-byte attribute.
    // The attribute walk above guarantees the packet is at least that long.
    let covered = b
        .len()
        .checked_sub(FINGERPRINT_ATTR_LEN)
        .ok_or(StunError::MalformedAttrs)?;
    if got_fp != Some(fingerprint(&b[..covered])) {
        return Err(StunError::WrongFingerprint);
    }
    Ok(TxId(tx))
}

/// Builds the binding success response for `tx`, reporting `addr` in an
/// XOR-MAPPED-ADDRESS. IPv4-mapped IPv6 sources (a dual-stack socket
/// receiving IPv4) are reported as plain IPv4, which is what the client
/// compares against its own view of the address.
pub fn binding_response(tx: TxId, addr: SocketAddr) -> Vec<u8> {
    let ip = xor_ip(addr.ip().to_canonical(), &tx);
    let (family, ip_bytes) = match ip {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let attr_value_len = 4 + ip_bytes.len();
    let attrs_len = 4 + attr_value_len;
    let mut b = Vec::with_capacity(HEADER_LEN + attrs_len);
    b.extend_from_slice(&BINDING_SUCCESS);
    b.extend_from_slice(&(attrs_len as u16).to_be_bytes());
    b.extend_from_slice(&MAGIC_COOKIE);
    b.extend_from_slice(&tx.0);
    b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    b.extend_from_slice(&(attr_value_len as u16).to_be_bytes());
    b.push(0);
    b.push(family);
    // The port is XORed with the cookie's first half.
    b.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    b.extend_from_slice(&ip_bytes);
    b
}

/// Parses a binding success response, as Tailscale's `stun.ParseResponse`
/// does: XOR-MAPPED-ADDRESS (or its 0x8020 variant) wins, MAPPED-ADDRESS is
/// the fallback. For the node agent's netcheck and for tests.
pub fn parse_binding_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..HEADER_LEN]);
    if b[..2] != BINDING_SUCCESS {
        return Err(StunError::NotSuccessResponse);
    }
    let attrs_len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let attrs = b[HEADER_LEN..]
        .get(..attrs_len)
        .ok_or(StunError::MalformedAttrs)?;

    let mut xor_addr = None;
    let mut plain_addr = None;
    for_each_attr(attrs, |attr_type, value| {
        match attr_type {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT => {
                let (ip, port) = address_attr(value)?;
                let ip = xor_ip(ip, &TxId(tx));
                xor_addr = Some(SocketAddr::new(ip.to_canonical(), port ^ 0x2112));
            }
            ATTR_MAPPED_ADDRESS => {
                let (ip, port) = address_attr(value)?;
                plain_addr = Some(SocketAddr::new(ip.to_canonical(), port));
            }
            _ => {}
        }
        Ok(())
    })?;
    xor_addr
        .or(plain_addr)
        .map(|a| (TxId(tx), a))
        .ok_or(StunError::NoAddress)
}

/// Decodes the shared layout of (XOR-)MAPPED-ADDRESS: reserved byte,
/// family, port, address. XORing, if any, is the caller's job.
fn address_attr(value: &[u8]) -> Result<(IpAddr, u16), StunError> {
    if value.len() < 4 {
        return Err(StunError::MalformedAttrs);
    }
    let port = u16::from_be_bytes([value[2], value[3]]);
    let addr = &value[4..];
    let ip = match value[1] {
        1 => IpAddr::from(fixed::<4>(addr)?),
        2 => IpAddr::from(fixed::<16>(addr)?),
        _ => return Err(StunError::MalformedAttrs),
    };
    Ok((ip, port))
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], StunError> {
    b.get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or(StunError::MalformedAttrs)
}

/// XOR-MAPPED-ADDRESS hides the address under cookie || transaction ID
/// (RFC 5389 §15.2); IPv4 uses only the cookie part.
fn xor_ip(ip: IpAddr, tx: &TxId) -> IpAddr {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE);
    mask[4..].copy_from_slice(&tx.0);
    match ip {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            o.iter_mut().zip(mask).for_each(|(a, m)| *a ^= m);
            IpAddr::from(o)
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o.iter_mut().zip(mask).for_each(|(a, m)| *a ^= m);
            IpAddr::from(o)
        }
    }
}

/// Answers Tailscale STUN binding requests on `socket` until `shutdown`
/// completes. Anything that is not a valid request is dropped without a
/// reply (answering garbage would make us an amplifier).
pub async fn serve(socket: UdpSocket, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, "STUN server listening");
    }
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, src) = tokio::select! {
            _ = &mut shutdown => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "STUN: receive failed");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        crate::capture::record("stun_binding", &buf[..n]);
        let tx = match parse_binding_request(&buf[..n]) {
            Ok(tx) => tx,
            Err(e) => {
                tracing::trace!(%src, error = %e, "STUN: dropping packet");
                continue;
            }
        };
        let response = binding_response(tx, src);
        if let Err(e) = socket.send_to(&response, src).await {
            tracing::debug!(%src, error = %e, "STUN: cannot send response");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const TX: TxId = TxId([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);

    /// Tailscale's `stun.Request` for TX, written out by hand from stun.go
    /// so that a bug in `binding_request` cannot hide a bug in the parser.
    fn tailscale_request() -> Vec<u8> {
        let mut b = vec![0x00, 0x01, 0x00, 0x14, 0x21, 0x12, 0xa4, 0x42];
        b.extend_from_slice(&TX.0);
        b.extend_from_slice(&[0x80, 0x22, 0x00, 0x08]);
        b.extend_from_slice(b"tailnode");
        let fp = crc32fast::hash(&b) ^ 0x5354_554e;
        b.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
        b.extend_from_slice(&fp.to_be_bytes());
        b
    }

    #[test]
    fn builds_requests_like_tailscale() {
        let req = binding_request(TX);
        assert_eq!(req, tailscale_request());
        assert_eq!(req.len(), 40);
    }

    #[test]
    fn parses_tailscale_request() {
        assert_eq!(parse_binding_request(&tailscale_request()), Ok(TX));
        let tx = TxId::random();
        assert_eq!(parse_binding_request(&binding_request(tx)), Ok(tx));
    }

    #[test]
    fn rejects_truncated_and_garbage() {
        let req = tailscale_request();
        for n in 0..req.len() {
            assert!(
                parse_binding_request(&req[..n]).is_err(),
                "accepted a {n}-byte prefix"
            );
        }
        assert_eq!(
            parse_binding_request(b"hello world, this is not stun"),
            Err(StunError::NotStun)
        );
        assert_eq!(parse_binding_request(&[0xff; 64]), Err(StunError::NotStun));
        let mut trailing = req.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            parse_binding_request(&trailing),
            Err(StunError::MalformedAttrs)
        );
    }

    #[test]
    fn rejects_wrong_software_fingerprint_and_type() {
        let mut other_software = tailscale_request();
        other_software[24..32].copy_from_slice(b"othernod");
        assert_eq!(
            parse_binding_request(&other_software),
            Err(StunError::WrongSoftware)
        );

        let mut bad_fp = tailscale_request();
        let last = bad_fp.len() - 1;
        bad_fp[last] ^= 1;
        assert_eq!(
            parse_binding_request(&bad_fp),
            Err(StunError::WrongFingerprint)
        );

        // Valid software but no fingerprint at all.
        let mut no_fp = tailscale_request();
        no_fp.truncate(32);
        no_fp[3] = 12;
        assert_eq!(parse_binding_request(&no_fp), Err(StunError::NoFingerprint));

        let mut response_type = tailscale_request();
        response_type[0] = 0x01;
        response_type[1] = 0x01;
        assert_eq!(
            parse_binding_request(&response_type),
            Err(StunError::NotBindingRequest)
        );
    }

    /// Responses captured from real STUN servers, as listed in Tailscale's
    /// `net/stun/stun_test.go`.
    #[test]
    fn matches_real_server_responses() {
        let google = [
            0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42, 0x23, 0x60, 0xb1, 0x1e, 0x3e, 0xc6,
            0x8f, 0xfa, 0x93, 0xe0, 0x80, 0x07, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xc7, 0x86,
            0x69, 0x57, 0x85, 0x6f,
        ];
        let tx = TxId([
            0x23, 0x60, 0xb1, 0x1e, 0x3e, 0xc6, 0x8f, 0xfa, 0x93, 0xe0, 0x80, 0x07,
        ]);
        let addr = SocketAddr::from(([72, 69, 33, 45], 59028));
        assert_eq!(binding_response(tx, addr), google);
        assert_eq!(parse_binding_response(&google), Ok((tx, addr)));

        // SOFTWARE with padding, then XOR-MAPPED-ADDRESS, FINGERPRINT, and
        // trailing bytes past the declared length.
        let pion = [
            0x01, 0x01, 0x00, 0x24, 0x21, 0x12, 0xa4, 0x42, 0xeb, 0xc2, 0xd3, 0x6e, 0xf4, 0x71,
            0x21, 0x7c, 0x4f, 0x3e, 0x30, 0x8e, 0x80, 0x22, 0x00, 0x0a, 0x65, 0x6e, 0x64, 0x70,
            0x6f, 0x69, 0x6e, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01,
            0xce, 0x66, 0x5e, 0x12, 0xa4, 0x43, 0x80, 0x28, 0x00, 0x04, 0xb6, 0x99, 0xbb, 0x02,
            0x01, 0x01, 0x00, 0x24, 0x21, 0x12, 0xa4, 0x42,
        ];
        let (_, addr) = parse_binding_response(&pion).unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 61300)));

        // An IPv4 address sent as IPv4-mapped IPv6 comes out as IPv4.
        let no_4in6 =
            hex::decode("010100182112a4424fd5d202dcb37d31fc773306002000140002cd3d2112a4424fd5d202dcb382ce2dc3fcc7")
                .unwrap();
        let (_, addr) = parse_binding_response(&no_4in6).unwrap();
        assert_eq!(addr, SocketAddr::from(([209, 180, 207, 193], 60463)));
    }

    #[test]
    fn fingerprint_is_crc32_ieee() {
        // The standard CRC-32/ISO-HDLC check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn response_v4() {
        let addr = SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 41641));
        let resp = binding_response(TX, addr);
        assert_eq!(resp.len(), 32);
        assert_eq!(&resp[..4], &[0x01, 0x01, 0x00, 0x0c]);
        assert_eq!(&resp[20..24], &[0x00, 0x20, 0x00, 0x08]);
        assert_eq!(resp[25], 1, "family IPv4");
        assert_eq!(u16::from_be_bytes([resp[26], resp[27]]), 41641 ^ 0x2112);
        assert_eq!(resp[28], 198 ^ 0x21);
        assert_eq!(parse_binding_response(&resp), Ok((TX, addr)));
    }

    #[test]
    fn response_v6() {
        let ip: Ipv6Addr = "2001:db8::1234".parse().unwrap();
        let addr = SocketAddr::from((ip, 3478));
        let resp = binding_response(TX, addr);
        assert_eq!(resp.len(), 44);
        assert_eq!(resp[25], 2, "family IPv6");
        // The last address bytes are XORed with the transaction ID.
        assert_eq!(resp[43], 0x34 ^ TX.0[11]);
        assert_eq!(parse_binding_response(&resp), Ok((TX, addr)));
    }

    #[test]
    fn response_unmaps_v4_mapped_v6() {
        let mapped = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 9).to_ipv6_mapped(), 5000));
        let resp = binding_response(TX, mapped);
        assert_eq!(resp[25], 1, "family must be IPv4 for a mapped source");
        assert_eq!(
            parse_binding_response(&resp),
            Ok((TX, SocketAddr::from(([203, 0, 113, 9], 5000))))
        );
    }

    #[tokio::test]
    async fn serves_requests_and_ignores_garbage() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(server, async {
            let _ = stop_rx.await;
        }));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client_addr = client.local_addr().unwrap();
        // Garbage first: it must not produce a reply nor stop the server.
        client.send_to(b"garbage", server_addr).await.unwrap();
        client.send_to(&vec![0u8; 4000], server_addr).await.unwrap();
        let mut truncated = tailscale_request();
        truncated.pop();
        client.send_to(&truncated, server_addr).await.unwrap();
        client
            .send_to(&tailscale_request(), server_addr)
            .await
            .unwrap();

        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, server_addr);
        assert_eq!(parse_binding_response(&buf[..n]), Ok((TX, client_addr)));
        // Exactly one reply: the garbage got none.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
                .await
                .is_err()
        );

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn serves_ipv6_when_available() {
        let Ok(server) = UdpSocket::bind("[::1]:0").await else {
            return; // no IPv6 loopback in this environment
        };
        let server_addr = server.local_addr().unwrap();
        let task = tokio::spawn(serve(server, std::future::pending()));
        let client = UdpSocket::bind("[::1]:0").await.unwrap();
        let tx = TxId::random();
        client
            .send_to(&binding_request(tx), server_addr)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            parse_binding_response(&buf[..n]),
            Ok((tx, client.local_addr().unwrap()))
        );
        task.abort();
    }
}

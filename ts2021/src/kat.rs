//! Known-answer vectors from `control/src/noise/testdata/gen_kat.py`, an implementation of
//! controlbase's client and server written from the Go source without snow.
//! Keys are fixed test values, not secrets.

pub const SERVER_PRIV: [u8; 32] =
    hex32("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20");
pub const CLIENT_PRIV: [u8; 32] =
    hex32("65666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f8081828384");
pub const CLIENT_EPHEMERAL: [u8; 32] =
    hex32("c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8");
pub const CLIENT_PUB: [u8; 32] =
    hex32("5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36");
pub const SERVER_EPHEMERAL: [u8; 32] =
    hex32("030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dc");
pub const VERSION: u16 = 130;

pub const INITIATION: &str = "00820100604c29f4996985e80d247e80b70303824592ff9fbad74904ea7c3d2bda24e51c121394b94c7bf3032b1ee20037160d8bec09433c19d32d4764bb6923dbd8d2a6dcb3098065333f4ba5d4f135ef81a00d25fc67fafff20351b3e478b6c5932963bd";
pub const RESPONSE: &str = "020030bb50ff9e82a574cfbf820e97f60fb9c143ec7415cf514f8cfd98eff59e0596141be2bd81e7f5976ceac0d811088e7bcc";
/// Records the server sends first, in order: (plaintext, wire bytes as hex).
pub const SERVER_RECORDS: [(&[u8], &str); 3] = [
    (b"hello", "040015951bc4f8d6b7a7e2cb544e814c8b2f51ce6b3c7d89"),
    (b"", "04001025d9da2b9887a3b2c7d124d60bc95d8a"),
    (b"world", "040015bb62edb79a10eb43bf8f2beebb657eaba3bd0f54ee"),
];
/// Records the client sends first, in order.
pub const CLIENT_RECORDS: [(&[u8], &str); 2] = [
    (
        b"PRI * HTTP/2.0",
        "04001e0961df075eac1e902339542220bdbd6ab4dc919053979f0876d750c3c08a",
    ),
    (
        b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "040038ae00563a07ae66609b9d00ce6cc74a34d949899185ccef24338765282e342fa44e9c0c163d7e361fa5bdad4bd347c4e40361cc456962d2aa",
    ),
];

pub fn initiation() -> Vec<u8> {
    bytes(INITIATION)
}

pub fn response() -> Vec<u8> {
    bytes(RESPONSE)
}

/// (plaintext, record) pairs the server sends first, in order.
pub fn server_records() -> Vec<(&'static [u8], Vec<u8>)> {
    SERVER_RECORDS.iter().map(|(p, r)| (*p, bytes(r))).collect()
}

/// (plaintext, record) pairs the client sends first, in order.
pub fn client_records() -> Vec<(&'static [u8], Vec<u8>)> {
    CLIENT_RECORDS.iter().map(|(p, r)| (*p, bytes(r))).collect()
}

/// Decodes a lowercase hex test vector.
pub fn bytes(s: &str) -> Vec<u8> {
    let pairs = s.as_bytes().chunks_exact(2);
    assert!(pairs.remainder().is_empty(), "test vector is hex");
    pairs.map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect()
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not lowercase hex"),
    }
}

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    assert!(b.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Checks a finished handshake's transport byte for byte against the
/// vectors: `sends` must seal to exactly their records, `receives` must open
/// to their plaintexts, in order. `role` names the side in failures. For
/// both roles' handshake tests.
pub fn check_transport(
    cipher: &mut crate::TransportCipher,
    sends: &[(&[u8], &str)],
    receives: &[(&[u8], &str)],
    role: &str,
) {
    use crate::wire::{MAX_MESSAGE_SIZE, MSG_RECORD, header};
    let mut buf = [0u8; MAX_MESSAGE_SIZE];
    for (plain, want) in sends {
        let n = cipher.seal(plain, &mut buf).unwrap();
        let mut record = header(MSG_RECORD, n as u16).to_vec();
        record.extend_from_slice(&buf[..n]);
        assert_eq!(record, bytes(want), "{role} record for {plain:?}");
    }
    for (plain, record) in receives {
        let record = bytes(record);
        let n = cipher.open(&record[3..], &mut buf).unwrap();
        assert_eq!(&buf[..n], *plain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_decode() {
        assert_eq!(initiation().len(), crate::wire::INITIATION_LEN);
        assert_eq!(response().len(), crate::wire::RESPONSE_LEN);
        assert_eq!(bytes("00ff10"), [0x00, 0xff, 0x10]);
    }
}

//! Known-answer vectors computed by an implementation of controlbase written
//! from the Go source without snow (the server crate's
//! `control/src/noise/testdata/gen_kat.py`). Fixed test keys, not secrets.

pub const SERVER_PRIV: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
pub const CLIENT_PRIV: &str = "65666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f8081828384";
pub const CLIENT_EPHEMERAL: &str =
    "c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8";
pub const CLIENT_PUB: &str = "5714769d116bf76436ae74bc793d2c30ad1903c59ac5273805c7e2698b410c36";
pub const VERSION: u16 = 130;

pub const INITIATION: &str = "00820100604c29f4996985e80d247e80b70303824592ff9fbad74904ea7c3d2bda24e51c121394b94c7bf3032b1ee20037160d8bec09433c19d32d4764bb6923dbd8d2a6dcb3098065333f4ba5d4f135ef81a00d25fc67fafff20351b3e478b6c5932963bd";
pub const RESPONSE: &str = "020030bb50ff9e82a574cfbf820e97f60fb9c143ec7415cf514f8cfd98eff59e0596141be2bd81e7f5976ceac0d811088e7bcc";
/// Records the server sends first, in order: (plaintext, wire bytes).
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

pub fn bytes(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector is hex")
}

pub fn key(s: &str) -> [u8; 32] {
    bytes(s).try_into().expect("32-byte test key")
}

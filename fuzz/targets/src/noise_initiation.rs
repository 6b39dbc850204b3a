//! TS2021 Noise IK: the client's initiation as the server's responder
//! sees it (`Initiation::parse`, then the full `respond` with a fixed key).
use meshscale_control::noise::ServerKey;
use meshscale_control::noise::handshake::{Initiation, respond};
use std::sync::LazyLock;

// The KAT server key (control/src/noise/kat.rs): the seed initiation
// then completes the handshake, so mutations explore the crypto path too.
static KEY: LazyLock<ServerKey> = LazyLock::new(|| {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8 + 1;
    }
    ServerKey::from_private(k)
});

pub fn run(data: &[u8]) {
    if let Ok(init) = Initiation::parse(data) {
        assert_eq!(init.noise_message.len(), 96);
    }
    let _ = respond(&KEY, data, 0);
}

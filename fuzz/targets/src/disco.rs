//! Disco messages (the sidecar's `disco` module), as they arrive over UDP
//! or inside DERP packets: the magic/key envelope (`looks_like_disco`,
//! `sender`), the NaCl box (`open` with a fixed key) and the plaintext
//! parser (`Message::decode`). A parsed message must survive encode →
//! decode and seal → open unchanged.
use meshscale_sidecar::disco::{self, Message};
use std::sync::LazyLock;

// Fixed test keys, not secrets.
const OURS: [u8; 32] = [0x11; 32];
const PEER: [u8; 32] = [0x22; 32];
static KEYS: LazyLock<([u8; 32], [u8; 32])> = LazyLock::new(|| (public_of(OURS), public_of(PEER)));

fn public_of(private: [u8; 32]) -> [u8; 32] {
    *crypto_box::SecretKey::from(private).public_key().as_bytes()
}

pub fn run(data: &[u8]) {
    // A whole packet: envelope and box.
    let is_disco = disco::looks_like_disco(data);
    if let Ok(from) = disco::sender(data) {
        assert!(data.starts_with(disco::MAGIC));
        assert_eq!(&data[disco::MAGIC.len()..disco::MAGIC.len() + 32], &from);
    }
    if let Ok((_, msg)) = disco::open(&OURS, data) {
        assert!(is_disco);
        round_trip(&msg);
    }
    // The same bytes as a plaintext (what a box opens to).
    if let Ok(msg) = Message::decode(data) {
        round_trip(&msg);
    }
}

fn round_trip(msg: &Message) {
    let plain = msg.encode();
    assert_eq!(Message::decode(&plain).as_ref().ok(), Some(msg));
    let (ours_pub, peer_pub) = &*KEYS;
    let Ok(packet) = disco::seal(&OURS, ours_pub, peer_pub, msg) else {
        panic!("sealing a decoded message failed");
    };
    assert!(disco::looks_like_disco(&packet));
    match disco::open(&PEER, &packet) {
        Ok((from, back)) => {
            assert_eq!(&from, ours_pub);
            assert_eq!(&back, msg);
        }
        Err(e) => panic!("a sealed packet did not open: {e}"),
    }
}

//! The client side of `/machine/map`: controlclient's MapDecoder (framing,
//! optional zstd with a decompressed-size bound, MapResponse JSON).
//! The first input byte picks zstd (bit 0).
use meshscale_controlclient::map::MapDecoder;

pub fn run(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut dec = MapDecoder::new(mode & 1 == 1, 1 << 20, 1 << 20);
    dec.push(data);
    for _ in 0..256 {
        match dec.next_message() {
            Ok(Some(m)) => assert!(m.json.len() <= 1 << 20),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = dec.finish();
}

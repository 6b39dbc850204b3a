//! One encoded map message, shared by every session it goes to: the JSON is
//! made once per change, and the zstd form once, on first demand, whatever
//! the number of receivers.

use std::sync::{Arc, LazyLock, OnceLock};

use bytes::Bytes;
use meshscale_wire::tailcfg::MapResponse;

/// zstd level 1: Headscale uses "fastest"; map deltas are small and latency matters more.
const ZSTD_LEVEL: i32 = 1;

pub struct Frame {
    json: Vec<u8>,
    plain: OnceLock<Bytes>,
    zstd: OnceLock<Bytes>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("json_len", &self.json.len())
            .finish()
    }
}

/// `{"KeepAlive":true}` exactly: clients cache its compressed bytes and skip decoding it.
pub static KEEP_ALIVE: LazyLock<Arc<Frame>> =
    LazyLock::new(|| Arc::new(Frame::from_json(br#"{"KeepAlive":true}"#.to_vec())));

fn length_prefixed(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

impl Frame {
    pub fn from_json(json: Vec<u8>) -> Frame {
        Frame {
            json,
            plain: OnceLock::new(),
            zstd: OnceLock::new(),
        }
    }

    pub fn encode(msg: &MapResponse) -> Arc<Frame> {
        // Serializing our own types cannot fail (no maps with non-string keys, no fallible Serialize impls).
        Arc::new(Frame::from_json(
            serde_json::to_vec(msg).unwrap_or_default(),
        ))
    }

    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The message as written on the stream: 4-byte little-endian length, then the body.
    pub fn wire(&self, compress: bool) -> Bytes {
        if compress {
            self.zstd
                .get_or_init(|| {
                    let body = zstd::bulk::compress(&self.json, ZSTD_LEVEL).unwrap_or_default();
                    length_prefixed(&body)
                })
                .clone()
        } else {
            self.plain
                .get_or_init(|| length_prefixed(&self.json))
                .clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_length_prefixed_little_endian_and_decompress() {
        let f = Frame::from_json(br#"{"KeepAlive":true}"#.to_vec());
        let plain = f.wire(false);
        assert_eq!(&plain[..4], &(18u32).to_le_bytes());
        assert_eq!(&plain[4..], br#"{"KeepAlive":true}"#);
        let z = f.wire(true);
        let len = u32::from_le_bytes([z[0], z[1], z[2], z[3]]) as usize;
        assert_eq!(len, z.len() - 4);
        assert_eq!(
            zstd::bulk::decompress(&z[4..], 1024).unwrap(),
            br#"{"KeepAlive":true}"#
        );
        assert!(Arc::ptr_eq(&KEEP_ALIVE, &KEEP_ALIVE));
    }
}

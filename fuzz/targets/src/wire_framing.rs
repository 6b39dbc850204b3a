//! Map-stream framing (4-byte little-endian length + body): the
//! incremental decoder fed in chunks must agree with the one-shot decoder.
use meshscale_wire::framing::{FrameDecoder, decode_frame};

const MAX: usize = 1 << 16;

pub fn run(data: &[u8]) {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    // One-shot.
    let mut oneshot = Vec::new();
    let mut rest = data;
    while let Ok(Some((body, used))) = decode_frame(rest, MAX) {
        assert!(used <= rest.len() && used >= body.len());
        oneshot.push(body.to_vec());
        rest = &rest[used..];
    }
    // Incremental, `chunk` bytes at a time.
    let mut dec = FrameDecoder::new(MAX);
    let mut incr = Vec::new();
    'outer: for piece in data.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => incr.push(f),
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    let _ = dec.finish();
    assert_eq!(oneshot, incr, "incremental and one-shot decoders disagree");
}

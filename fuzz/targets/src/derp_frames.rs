//! DERP v2 frames from a client stream: the frame decoder (length limit
//! before buffering), then every per-type parser the server and client use.
use bytes::BytesMut;
use meshscale_control::derp::frame::{
    ClientMessage, FrameDecoder, ServerMessage, parse_client_info, parse_server_key,
};

pub fn run(data: &[u8]) {
    // A small limit so oversized-frame refusal is reached too.
    let dec = FrameDecoder::new(64 * 1024);
    let mut buf = BytesMut::from(data);
    for _ in 0..1024 {
        let _ = dec.bytes_wanted(&buf);
        match dec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let _ = ClientMessage::parse(&frame);
                let _ = ServerMessage::parse(&frame);
                let _ = parse_server_key(&frame);
                let _ = parse_client_info(&frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

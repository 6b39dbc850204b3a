//! The sidecar's local API (newline-delimited JSON over its unix socket):
//! the request line as `localapi::handle` reads it (first line of at most
//! 4,096 bytes, UTF-8), and the response line as the CLI commands read it.
//! A parsed request must re-serialize and parse to the same request.
use meshscale_sidecar::localapi::{Request, Response};

/// `localapi::MAX_REQUEST`: the server reads through `take(4096)`.
const MAX_REQUEST: usize = 4096;

pub fn run(data: &[u8]) {
    let head = &data[..data.len().min(MAX_REQUEST)];
    let line = match head.iter().position(|&b| b == b'\n') {
        Some(i) => &head[..=i],
        None => head,
    };
    if let Ok(text) = std::str::from_utf8(line)
        && let Ok(req) = serde_json::from_str::<Request>(text)
    {
        let Ok(again) = serde_json::to_string(&req) else {
            panic!("a parsed request did not serialize");
        };
        match serde_json::from_str::<Request>(&again) {
            Ok(back) => assert_eq!(format!("{back:?}"), format!("{req:?}")),
            Err(e) => panic!("a re-serialized request did not parse: {e}"),
        }
    }
    let _ = serde_json::from_slice::<Response>(data);
}

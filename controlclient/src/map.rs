//! Reading a `/machine/map` response: 4-byte little-endian length frames
//! (`meshscale_wire::framing`), each a zstd frame of JSON when the request
//! said `Compress: "zstd"` (Tailscale `direct.go: sendMapRequest`,
//! `mapSession.decodeMsg`).
//!
//! [`MapDecoder`] is the pure part (bytes in, messages out);
//! [`MapStream`] feeds it from the HTTP/2 body and adds Go's watchdog: a
//! stream with no message for two minutes is dead.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Incoming};
use meshscale_wire::framing::{FrameDecoder, FrameError};
use meshscale_wire::tailcfg::MapResponse;
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;

use crate::http2::ConnKeepAlive;

/// The exact keep-alive message; Go clients cache its compressed bytes.
pub const KEEP_ALIVE_JSON: &[u8] = br#"{"KeepAlive":true}"#;

/// Why a map stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("map stream framing: {0}")]
    Frame(#[from] FrameError),
    #[error("map message is not valid zstd: {0}")]
    Zstd(String),
    #[error("map message decompresses to more than {max} bytes")]
    TooLarge { max: usize },
    #[error("map message is not a valid MapResponse: {0}")]
    Json(String),
    #[error("map stream: {0}")]
    Http(#[source] hyper::Error),
    #[error("no map message for {0:?}; the stream is considered dead")]
    Watchdog(Duration),
}

/// One map message.
#[derive(Debug, Clone)]
pub struct MapMessage {
    pub response: MapResponse,
    /// The JSON as the server wrote it (after decompression).
    pub json: Bytes,
    /// Length of the frame body on the wire (compressed size).
    pub wire_len: usize,
}

impl MapMessage {
    /// Whether this is a keep-alive in exactly the form clients cache.
    pub fn is_exact_keep_alive(&self) -> bool {
        self.json.as_ref() == KEEP_ALIVE_JSON
    }
}

/// Decodes one frame body: zstd (if `zstd`), bounded to `max_json` bytes,
/// then JSON.
pub fn decode_message(payload: &[u8], zstd: bool, max_json: usize) -> Result<MapMessage, MapError> {
    let json = if zstd {
        let decoder = zstd::stream::read::Decoder::with_buffer(payload)
            .map_err(|e| MapError::Zstd(e.to_string()))?;
        let mut out = Vec::new();
        // One byte past the limit tells "exactly max" from "more".
        decoder
            .take(max_json as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| MapError::Zstd(e.to_string()))?;
        if out.len() > max_json {
            return Err(MapError::TooLarge { max: max_json });
        }
        out
    } else {
        if payload.len() > max_json {
            return Err(MapError::TooLarge { max: max_json });
        }
        payload.to_vec()
    };
    let response = serde_json::from_slice(&json).map_err(|e| MapError::Json(e.to_string()))?;
    Ok(MapMessage {
        response,
        json: Bytes::from(json),
        wire_len: payload.len(),
    })
}

/// Incremental decoder of a map response body.
#[derive(Debug)]
pub struct MapDecoder {
    frames: FrameDecoder,
    zstd: bool,
    max_json: usize,
}

impl MapDecoder {
    /// `max_frame` bounds a frame on the wire, `max_json` its decoded JSON.
    pub fn new(zstd: bool, max_frame: usize, max_json: usize) -> Self {
        Self {
            frames: FrameDecoder::new(max_frame),
            zstd,
            max_json,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.frames.push(data);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<MapMessage>, MapError> {
        match self.frames.next_frame()? {
            None => Ok(None),
            Some(payload) => decode_message(&payload, self.zstd, self.max_json).map(Some),
        }
    }

    /// At end of body: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), MapError> {
        Ok(self.frames.finish()?)
    }
}

/// A `/machine/map` stream: yields messages until the server ends the body
/// or something fails; after an error it ends. Dropping it cancels the
/// request (the server sees the stream reset and ends the session).
pub struct MapStream {
    body: Incoming,
    decoder: MapDecoder,
    watchdog: Option<(Duration, Pin<Box<Sleep>>)>,
    done: bool,
    _conn: ConnKeepAlive,
}

impl std::fmt::Debug for MapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapStream")
            .field("decoder", &self.decoder)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl MapStream {
    pub(crate) fn new(
        body: Incoming,
        decoder: MapDecoder,
        watchdog: Option<Duration>,
        conn: ConnKeepAlive,
    ) -> Self {
        Self {
            body,
            decoder,
            watchdog: watchdog.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            done: false,
            _conn: conn,
        }
    }

    /// The next message; `None` once the stream has ended.
    pub async fn next_message(&mut self) -> Option<Result<MapMessage, MapError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    fn end(&mut self, e: MapError) -> Poll<Option<Result<MapMessage, MapError>>> {
        self.done = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl Stream for MapStream {
    type Item = Result<MapMessage, MapError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.decoder.next_message() {
                Ok(Some(msg)) => {
                    if let Some((d, sleep)) = &mut this.watchdog {
                        sleep.as_mut().reset(Instant::now() + *d);
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(e) => return this.end(e),
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry nothing for us.
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.end(MapError::Http(e)),
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.decoder.finish() {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
                Poll::Pending => {
                    if let Some((d, sleep)) = &mut this.watchdog
                        && sleep.as_mut().poll(cx).is_ready()
                    {
                        let d = *d;
                        return this.end(MapError::Watchdog(d));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscale_wire::framing::encode_frame_into;

    fn zstd_frame(json: &[u8]) -> Vec<u8> {
        let body = zstd::bulk::compress(json, 1).unwrap();
        let mut out = Vec::new();
        encode_frame_into(&mut out, &body, 1 << 20).unwrap();
        out
    }

    #[test]
    fn keep_alive_and_full_map_split_anywhere() {
        let full = br#"{"Node":{"ID":1,"StableID":"1","Name":"a.mesh.","User":1,"Key":"nodekey:0000000000000000000000000000000000000000000000000000000000000000","Addresses":["100.64.0.1/32"]},"Domain":"mesh"}"#;
        let mut wire = zstd_frame(KEEP_ALIVE_JSON);
        wire.extend(zstd_frame(full));
        for chunk in [1, 2, 5, 13, wire.len()] {
            let mut d = MapDecoder::new(true, 1 << 20, 1 << 20);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            d.finish().unwrap();
            assert_eq!(got.len(), 2);
            assert!(got[0].is_exact_keep_alive() && got[0].response.keep_alive);
            assert!(!got[1].is_exact_keep_alive());
            assert_eq!(got[1].response.node.as_ref().unwrap().id, 1);
            assert_eq!(got[1].response.domain, "mesh");
        }
    }

    #[test]
    fn uncompressed_when_not_asked() {
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, KEEP_ALIVE_JSON, 100).unwrap();
        let mut d = MapDecoder::new(false, 100, 100);
        d.push(&wire);
        assert!(d.next_message().unwrap().unwrap().is_exact_keep_alive());
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        // A length prefix beyond the frame limit: refused before any body.
        let mut d = MapDecoder::new(true, 1024, 1 << 20);
        d.push(&u32::MAX.to_le_bytes());
        assert!(matches!(d.next_message(), Err(MapError::Frame(_))));

        // Not zstd.
        let mut wire = Vec::new();
        encode_frame_into(&mut wire, b"{\"KeepAlive\":true}", 100).unwrap();
        let mut d = MapDecoder::new(true, 100, 100);
        d.push(&wire);
        assert!(matches!(d.next_message(), Err(MapError::Zstd(_))));

        // A zstd bomb: small on the wire, large decoded.
        let big = vec![b' '; 1 << 20];
        let mut d = MapDecoder::new(true, 1 << 20, 4096);
        d.push(&zstd_frame(&big));
        assert!(matches!(
            d.next_message(),
            Err(MapError::TooLarge { max: 4096 })
        ));

        // Valid zstd, invalid JSON.
        let mut d = MapDecoder::new(true, 1 << 20, 1 << 20);
        d.push(&zstd_frame(b"[1,2"));
        assert!(matches!(d.next_message(), Err(MapError::Json(_))));

        // Cut inside a frame.
        let mut d = MapDecoder::new(true, 1 << 20, 1 << 20);
        let wire = zstd_frame(KEEP_ALIVE_JSON);
        d.push(&wire[..wire.len() - 1]);
        assert!(d.next_message().unwrap().is_none());
        assert!(matches!(
            d.finish(),
            Err(MapError::Frame(FrameError::Truncated { .. }))
        ));

        // Garbage of every small size never panics.
        for len in 0..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut d = MapDecoder::new(true, 1 << 16, 1 << 16);
            d.push(&junk);
            let _ = d.next_message();
            let _ = d.finish();
        }
    }
}

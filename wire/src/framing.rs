//! Framing of the `/machine/map` response stream.
//!
//! Each message is a 4-byte little-endian length followed by that many bytes
//! (`control/controlclient/direct.go` reads `binary.LittleEndian.Uint32`).
//! The bytes are the JSON `MapResponse`, zstd-compressed when the request
//! said `Compress: "zstd"` — which official clients always do. Compression is
//! the caller's job; this module only adds and strips the length prefix.
//!
//! The Go client enforces no size limit, but a reader must: the length comes
//! from the peer and would otherwise size an allocation.

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A default bound for one message. Large tailnets produce netmaps of a few
/// MiB even compressed; 64 MiB leaves head-room while still stopping a
/// corrupt or hostile length before it becomes an allocation.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 << 20;

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Appends one frame (length prefix + `payload`) to `out`.
pub fn encode_frame_into(out: &mut Vec<u8>, payload: &[u8], max: usize) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= max)
        .ok_or(FrameError::TooLarge {
            len: payload.len() as u64,
            max,
        })?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Returns one frame (length prefix + `payload`).
pub fn encode_frame(payload: &[u8], max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(&mut out, payload, max)?;
    Ok(out)
}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(Some((payload, consumed)))` when a whole frame is present,
/// `Ok(None)` when more bytes are needed, and an error as soon as the length
/// prefix announces more than `max` bytes — before any payload arrives.
pub fn decode_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*header);
    let too_large = FrameError::TooLarge {
        len: u64::from(len),
        max,
    };
    let end = usize::try_from(len)
        .ok()
        .filter(|l| *l <= max)
        .and_then(|l| l.checked_add(HEADER_LEN))
        .ok_or(too_large)?;
    Ok(buf.get(HEADER_LEN..end).map(|payload| (payload, end)))
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// After an error the stream is out of sync and must be abandoned; the
/// decoder keeps returning the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`; consumed bytes are dropped lazily
    /// so that taking many small frames does not shift the buffer each time.
    start: usize,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max: max_frame_len,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes the next complete frame's payload, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match decode_frame(&self.buf[self.start..], self.max)? {
            None => Ok(None),
            Some((payload, consumed)) => {
                let payload = payload.to_vec();
                self.start += consumed;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(payload))
            }
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered_len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_little_endian() {
        let f = encode_frame(b"abc", DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(f, [3, 0, 0, 0, b'a', b'b', b'c']);
        let big = vec![7u8; 0x0102];
        let f = encode_frame(&big, DEFAULT_MAX_FRAME_LEN).unwrap();
        assert_eq!(&f[..4], &[0x02, 0x01, 0, 0]);
    }

    #[test]
    fn decode_single_and_partial() {
        let f = encode_frame(b"hello", 100).unwrap();
        assert_eq!(decode_frame(&f, 100).unwrap(), Some((&b"hello"[..], 9)));
        for cut in 0..f.len() {
            assert_eq!(decode_frame(&f[..cut], 100).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn empty_frame_is_allowed() {
        let f = encode_frame(b"", 100).unwrap();
        assert_eq!(f, [0, 0, 0, 0]);
        assert_eq!(decode_frame(&f, 100).unwrap(), Some((&b""[..], 4)));
    }

    #[test]
    fn decoder_handles_input_split_anywhere() {
        let msgs: Vec<Vec<u8>> = vec![
            b"{\"KeepAlive\":true}".to_vec(),
            Vec::new(),
            vec![0xff; 1000],
            b"x".to_vec(),
        ];
        let mut stream = Vec::new();
        for m in &msgs {
            encode_frame_into(&mut stream, m, 4096).unwrap();
        }
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut dec = FrameDecoder::new(4096);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                dec.push(piece);
                while let Some(frame) = dec.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, msgs, "chunk size {chunk}");
            assert_eq!(dec.buffered_len(), 0);
            dec.finish().unwrap();
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_the_payload_arrives() {
        let max = 16;
        assert_eq!(
            encode_frame(&[0; 17], max),
            Err(FrameError::TooLarge { len: 17, max })
        );
        let mut dec = FrameDecoder::new(max);
        dec.push(&u32::MAX.to_le_bytes());
        let err = dec.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max
            }
        );
        // Sticky: the stream cannot be resynchronised.
        assert!(dec.next_frame().is_err());
        // A frame of exactly `max` is fine.
        let mut dec = FrameDecoder::new(max);
        dec.push(&encode_frame(&[1; 16], max).unwrap());
        assert_eq!(dec.next_frame().unwrap(), Some(vec![1; 16]));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&[5, 0, 0, 0, b'a']);
        assert_eq!(dec.next_frame().unwrap(), None);
        assert_eq!(dec.finish(), Err(FrameError::Truncated { buffered: 5 }));
    }
}

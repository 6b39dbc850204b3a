//! Splitting a map stream body into its 4-byte little-endian length frames
//! without copying what the generator does not look at.
//!
//! A full map at 10,000 nodes is megabytes, and every simulated node gets
//! one: buffering and decompressing them all would make the generator, not
//! the server, the bottleneck. So a frame's body is kept only when the
//! caller asks for it at the frame's start; otherwise its bytes are counted
//! and dropped as they arrive.

/// Largest frame accepted; a full map for 10,000 peers is a few MiB.
pub const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("map frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
}

/// One complete frame.
pub struct Frame {
    /// 0 for the session's first message (the full map).
    pub index: u64,
    /// Body length on the wire (compressed), without the length prefix.
    pub len: usize,
    /// The body, when it was asked for.
    pub body: Option<Vec<u8>>,
}

enum State {
    Header {
        buf: [u8; 4],
        filled: usize,
    },
    Body {
        len: usize,
        got: usize,
        keep: Option<Vec<u8>>,
    },
}

pub struct FrameReader {
    state: State,
    next_index: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            state: State::Header {
                buf: [0; 4],
                filled: 0,
            },
            next_index: 0,
        }
    }
}

impl FrameReader {
    /// Feeds received bytes; `want(index, len)` decides at each frame's
    /// start whether its body is kept. Complete frames go to `done`.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        want: &mut dyn FnMut(u64, usize) -> bool,
        done: &mut Vec<Frame>,
    ) -> Result<(), FrameError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header { buf, filled } => {
                    let take = (4 - *filled).min(data.len());
                    buf[*filled..*filled + take].copy_from_slice(&data[..take]);
                    *filled += take;
                    data = &data[take..];
                    if *filled == 4 {
                        let len = u32::from_le_bytes(*buf) as usize;
                        if len > MAX_FRAME {
                            return Err(FrameError::TooLarge(len));
                        }
                        let keep = want(self.next_index, len).then(|| Vec::with_capacity(len));
                        self.state = State::Body { len, got: 0, keep };
                    }
                }
                State::Body { len, got, keep } => {
                    let take = (*len - *got).min(data.len());
                    if let Some(k) = keep {
                        k.extend_from_slice(&data[..take]);
                    }
                    *got += take;
                    data = &data[take..];
                }
            }
            if let State::Body { len, got, keep } = &mut self.state
                && *got == *len
            {
                done.push(Frame {
                    index: self.next_index,
                    len: *len,
                    body: keep.take(),
                });
                self.next_index += 1;
                self.state = State::Header {
                    buf: [0; 4],
                    filled: 0,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn split_anywhere_keeps_only_what_is_asked() {
        let mut wire = frame(b"full-map");
        wire.extend(frame(b""));
        wire.extend(frame(b"delta"));
        for chunk in 1..=wire.len() {
            let mut r = FrameReader::default();
            let mut done = Vec::new();
            for piece in wire.chunks(chunk) {
                r.feed(piece, &mut |i, _| i == 2, &mut done).unwrap();
            }
            assert_eq!(done.len(), 3, "chunk {chunk}");
            assert_eq!(done[0].len, 8);
            assert!(done[0].body.is_none() && done[1].body.is_none());
            assert_eq!(done[2].body.as_deref(), Some(&b"delta"[..]));
        }
    }

    #[test]
    fn oversized_length_is_an_error() {
        let mut r = FrameReader::default();
        let mut done = Vec::new();
        let err = r.feed(&u32::MAX.to_le_bytes(), &mut |_, _| true, &mut done);
        assert!(matches!(err, Err(FrameError::TooLarge(_))));
    }
}

//! The optional "early payload" the server writes through the Noise stream
//! before HTTP/2 (Tailscale `control/ts2021/conn.go: readHeader`).
//!
//! The client reads 9 plaintext bytes. If they start with the magic
//! `ff ff ff 'T' 'S'`, the next 4 are a BE u32 length of a JSON
//! `tailcfg.EarlyNoise`; otherwise the 9 bytes are the header of the server's
//! first HTTP/2 frame and are handed to HTTP/2 unchanged.
//!
//! As in Go, the header is read lazily, by the first read of the HTTP/2
//! connection, never before the client has written its preface: a server
//! that waits for the preface before writing anything would otherwise
//! deadlock us. The outcome is published on a `watch` channel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use meshscale_wire::tailcfg::EarlyNoise;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::error::EarlyPayloadError;

pub use meshscale_ts2021::early::{
    EARLY_HEADER_LEN, EARLY_PAYLOAD_MAGIC, EarlyHeader, MAX_EARLY_PAYLOAD, parse_early_header,
};

/// Decodes the early payload's JSON.
pub fn parse_early_payload(json: &[u8]) -> Result<EarlyNoise, EarlyPayloadError> {
    serde_json::from_slice(json).map_err(|e| EarlyPayloadError::Json(e.to_string()))
}

/// What is known about the early payload so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlyPayload {
    /// The first 9 bytes have not arrived yet.
    Pending,
    /// The server went straight to HTTP/2.
    Absent,
    Received(EarlyNoise),
    Failed(EarlyPayloadError),
}

enum State {
    Header {
        buf: [u8; EARLY_HEADER_LEN],
        filled: usize,
    },
    Payload {
        len: usize,
        buf: Vec<u8>,
    },
    /// No early payload: give back the 9 bytes already taken.
    Replay {
        hdr: [u8; EARLY_HEADER_LEN],
        pos: usize,
    },
    Passthrough,
    Failed(EarlyPayloadError),
}

/// Wraps the Noise stream for HTTP/2: strips the early payload off the
/// front of the read side; writes pass straight through.
pub struct EarlyPayloadReader<S> {
    inner: S,
    state: State,
    max: usize,
    tx: watch::Sender<EarlyPayload>,
}

impl<S> EarlyPayloadReader<S> {
    /// `max` bounds the payload length (at most [`MAX_EARLY_PAYLOAD`] is
    /// sensible). The receiver reports the outcome.
    pub fn new(inner: S, max: usize) -> (Self, watch::Receiver<EarlyPayload>) {
        let (tx, rx) = watch::channel(EarlyPayload::Pending);
        let reader = Self {
            inner,
            state: State::Header {
                buf: [0; EARLY_HEADER_LEN],
                filled: 0,
            },
            max,
            tx,
        };
        (reader, rx)
    }

    fn publish(&self, outcome: EarlyPayload) {
        // Nobody listening is fine: the payload is optional.
        let _ = self.tx.send(outcome);
    }

    fn fail(&mut self, e: EarlyPayloadError) -> io::Error {
        self.publish(EarlyPayload::Failed(e.clone()));
        self.state = State::Failed(e.clone());
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EarlyPayloadReader<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Passthrough => return Pin::new(&mut this.inner).poll_read(cx, out),
                State::Failed(e) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
                }
                State::Replay { hdr, pos } => {
                    let n = out.remaining().min(EARLY_HEADER_LEN - *pos);
                    out.put_slice(&hdr[*pos..*pos + n]);
                    *pos += n;
                    if *pos == EARLY_HEADER_LEN {
                        this.state = State::Passthrough;
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Header { buf, filled } => {
                    let mut rb = ReadBuf::new(&mut buf[*filled..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        if *filled == 0 {
                            // EOF before anything: no payload, and no HTTP/2.
                            this.publish(EarlyPayload::Absent);
                            this.state = State::Passthrough;
                            return Poll::Ready(Ok(()));
                        }
                        return Poll::Ready(Err(this.fail(EarlyPayloadError::Truncated)));
                    }
                    *filled += n;
                    if *filled < EARLY_HEADER_LEN {
                        continue;
                    }
                    let hdr = *buf;
                    match parse_early_header(&hdr, this.max) {
                        Ok(EarlyHeader::Absent) => {
                            this.publish(EarlyPayload::Absent);
                            this.state = State::Replay { hdr, pos: 0 };
                        }
                        Ok(EarlyHeader::Payload { len }) => {
                            // Grown as bytes arrive, not allocated from the
                            // announced length.
                            this.state = State::Payload {
                                len,
                                buf: Vec::new(),
                            };
                        }
                        Err(e) => return Poll::Ready(Err(this.fail(e))),
                    }
                }
                State::Payload { len, buf } => {
                    if buf.len() < *len {
                        let mut chunk = [0u8; 1024];
                        let want = (*len - buf.len()).min(chunk.len());
                        let mut rb = ReadBuf::new(&mut chunk[..want]);
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                        if rb.filled().is_empty() {
                            return Poll::Ready(Err(this.fail(EarlyPayloadError::Truncated)));
                        }
                        buf.extend_from_slice(rb.filled());
                        continue;
                    }
                    match parse_early_payload(buf) {
                        Ok(early) => {
                            this.publish(EarlyPayload::Received(early));
                            this.state = State::Passthrough;
                        }
                        Err(e) => return Poll::Ready(Err(this.fail(e))),
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EarlyPayloadReader<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn early_bytes(json: &str) -> Vec<u8> {
        let mut v = EARLY_PAYLOAD_MAGIC.to_vec();
        v.extend_from_slice(&(json.len() as u32).to_be_bytes());
        v.extend_from_slice(json.as_bytes());
        v
    }

    const CHALLENGE: &str = r#"{"nodeKeyChallenge":"chalpub:0101010101010101010101010101010101010101010101010101010101010101"}"#;

    #[test]
    fn headers() {
        let settings = [0, 0, 0x12, 0x04, 0, 0, 0, 0, 0]; // an HTTP/2 SETTINGS header
        assert_eq!(
            parse_early_header(&settings, 100).unwrap(),
            EarlyHeader::Absent
        );
        let hdr: [u8; 9] = early_bytes("{}")[..9].try_into().unwrap();
        assert_eq!(
            parse_early_header(&hdr, 100).unwrap(),
            EarlyHeader::Payload { len: 2 }
        );
        let mut huge = hdr;
        huge[5..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_early_header(&huge, MAX_EARLY_PAYLOAD),
            Err(EarlyPayloadError::TooLarge { .. })
        ));
        assert!(parse_early_payload(b"not json").is_err());
        let parsed = parse_early_payload(CHALLENGE.as_bytes()).unwrap();
        assert!(!parsed.node_key_challenge.is_zero());
    }

    #[tokio::test]
    async fn payload_is_stripped_byte_by_byte() {
        let mut wire = early_bytes(CHALLENGE);
        wire.extend_from_slice(b"HTTP/2 bytes");
        let (a, mut b) = duplex(1);
        let (mut reader, rx) = EarlyPayloadReader::new(a, MAX_EARLY_PAYLOAD);
        let writer = tokio::spawn(async move {
            b.write_all(&wire).await.unwrap();
        });
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        writer.await.unwrap();
        assert_eq!(rest, b"HTTP/2 bytes");
        assert!(matches!(*rx.borrow(), EarlyPayload::Received(_)));
    }

    #[tokio::test]
    async fn absent_payload_replays_the_header() {
        let wire: Vec<u8> = (0u8..40).collect();
        let (a, mut b) = duplex(64);
        let (mut reader, rx) = EarlyPayloadReader::new(a, MAX_EARLY_PAYLOAD);
        b.write_all(&wire).await.unwrap();
        drop(b);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, wire);
        assert_eq!(*rx.borrow(), EarlyPayload::Absent);
    }

    #[tokio::test]
    async fn bad_payloads_fail_reads() {
        for (wire, want_truncated) in [
            (early_bytes("{not json"), false),
            (early_bytes(CHALLENGE)[..20].to_vec(), true),
            (EARLY_PAYLOAD_MAGIC[..3].to_vec(), true),
        ] {
            let (a, mut b) = duplex(1 << 16);
            let (mut reader, rx) = EarlyPayloadReader::new(a, MAX_EARLY_PAYLOAD);
            b.write_all(&wire).await.unwrap();
            drop(b);
            assert!(reader.read(&mut [0u8; 16]).await.is_err());
            assert!(reader.read(&mut [0u8; 16]).await.is_err(), "sticky");
            let outcome = rx.borrow().clone();
            match outcome {
                EarlyPayload::Failed(EarlyPayloadError::Truncated) => assert!(want_truncated),
                EarlyPayload::Failed(EarlyPayloadError::Json(_)) => assert!(!want_truncated),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn limit_is_enforced_before_reading_the_body() {
        let (a, mut b) = duplex(1 << 16);
        let (mut reader, rx) = EarlyPayloadReader::new(a, 8);
        b.write_all(&early_bytes(CHALLENGE)).await.unwrap();
        assert!(reader.read(&mut [0u8; 16]).await.is_err());
        assert!(matches!(
            *rx.borrow(),
            EarlyPayload::Failed(EarlyPayloadError::TooLarge { max: 8, .. })
        ));
    }
}

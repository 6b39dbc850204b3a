//! [`NoiseStream`]: the byte stream inside the Noise transport (Tailscale
//! `control/controlbase/conn.go`).
//!
//! Each record on the wire is type 0x04, a BE u16 length, then ciphertext of
//! at most 4093 bytes (4077 plaintext + 16 tag), so that a whole frame is at
//! most 4096 bytes. Reads reassemble records however the bytes arrive;
//! writes are cut into records. Memory is bounded: one frame of ciphertext
//! and one of plaintext for reading, a few frames for writing.
//!
//! A record that is malformed, too large or fails to decrypt is an error, and
//! the stream is dead afterwards in both directions: the peers no longer
//! agree on the nonces, and a tampered connection should be dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::cipher::TransportCipher;
use super::error::RecordError;
use super::wire::{
    HEADER_LEN, MAX_CIPHERTEXT_SIZE, MAX_MESSAGE_SIZE, MAX_PLAINTEXT_SIZE, MSG_RECORD, TAG_LEN,
    header, parse_header,
};

/// How many bytes of sealed records may wait for the underlying stream.
/// Several frames, so that a burst of HTTP/2 frames goes out in few writes.
const TX_BUFFER: usize = 4 * MAX_MESSAGE_SIZE + RAW_PREFIX_ROOM;
/// Room for cleartext bytes queued before the first record (the handshake
/// response).
const RAW_PREFIX_ROOM: usize = 64;

/// An encrypted, framed byte stream over `S` (in production the upgraded
/// HTTP connection).
pub struct NoiseStream<S> {
    io: S,
    cipher: TransportCipher,
    /// Ciphertext frames read from `io` and not yet decrypted.
    rx: Box<[u8]>,
    rx_len: usize,
    /// Decrypted bytes not yet handed to the reader: `plain[plain_pos..plain_len]`.
    plain: Box<[u8]>,
    plain_pos: usize,
    plain_len: usize,
    rx_eof: bool,
    /// Sealed frames not yet written to `io`: `tx[tx_pos..]`.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Set on any record or I/O error: the stream is unusable after that.
    failed: Option<RecordError>,
}

impl<S> std::fmt::Debug for NoiseStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseStream")
            .field("cipher", &self.cipher)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<S> NoiseStream<S> {
    pub fn new(io: S, cipher: TransportCipher) -> Self {
        Self {
            io,
            cipher,
            rx: vec![0; MAX_MESSAGE_SIZE].into_boxed_slice(),
            rx_len: 0,
            plain: vec![0; MAX_PLAINTEXT_SIZE].into_boxed_slice(),
            plain_pos: 0,
            plain_len: 0,
            rx_eof: false,
            tx: Vec::with_capacity(TX_BUFFER),
            tx_pos: 0,
            failed: None,
        }
    }

    /// Queues cleartext bytes to go out before any record: the server writes
    /// its handshake response this way so that the response, the early
    /// payload and nothing else leave in one write (controlbase "corks" them
    /// the same way).
    pub(crate) fn queue_cleartext(&mut self, bytes: &[u8]) {
        self.tx.extend_from_slice(bytes);
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Seals one chunk of at most [`MAX_PLAINTEXT_SIZE`] bytes onto `tx`.
    fn seal_record(&mut self, chunk: &[u8]) -> Result<(), RecordError> {
        let start = self.tx.len();
        let sealed_len = chunk.len() + TAG_LEN;
        // sealed_len <= MAX_CIPHERTEXT_SIZE < u16::MAX.
        self.tx
            .extend_from_slice(&header(MSG_RECORD, sealed_len as u16));
        self.tx.resize(start + HEADER_LEN + sealed_len, 0);
        match self.cipher.seal(chunk, &mut self.tx[start + HEADER_LEN..]) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.tx.truncate(start);
                Err(e)
            }
        }
    }

    /// Decrypts the first frame of `rx` if it is complete; `Ok(false)` if
    /// more bytes are needed.
    fn decrypt_buffered(&mut self) -> Result<bool, RecordError> {
        if self.rx_len < HEADER_LEN {
            return Ok(false);
        }
        let (msg_type, len) = parse_header([self.rx[0], self.rx[1], self.rx[2]]);
        // Checked before waiting for the body, so a bad peer is cut off at
        // once rather than after it sent up to 64 KiB.
        if msg_type != MSG_RECORD {
            return Err(RecordError::UnexpectedType(msg_type));
        }
        if len > MAX_CIPHERTEXT_SIZE {
            return Err(RecordError::TooLarge(HEADER_LEN + len));
        }
        let frame_len = HEADER_LEN + len;
        if self.rx_len < frame_len {
            return Ok(false);
        }
        let n = self
            .cipher
            .open(&self.rx[HEADER_LEN..frame_len], &mut self.plain)?;
        self.plain_pos = 0;
        self.plain_len = n;
        self.rx.copy_within(frame_len..self.rx_len, 0);
        self.rx_len -= frame_len;
        Ok(true)
    }

    fn fail(&mut self, e: RecordError) -> io::Error {
        self.failed = Some(e.clone());
        self.plain_len = 0;
        self.plain_pos = 0;
        e.into()
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(_) => Err(RecordError::Closed.into()),
            None => Ok(()),
        }
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes queued frames until none is left or `io` would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_pos..])) {
                Ok(0) => {
                    self.failed = Some(RecordError::Closed);
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.tx_pos += n,
                Err(e) => {
                    // A partial frame went out: the peer can't resync.
                    self.failed = Some(RecordError::Closed);
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_failed()?;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.plain_pos < this.plain_len {
                let n = buf.remaining().min(this.plain_len - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            // Zero-length records are legal, hence a loop rather than one
            // decryption per read.
            match this.decrypt_buffered() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(this.fail(e))),
            }
            if this.rx_eof {
                if this.rx_len == 0 {
                    return Poll::Ready(Ok(())); // clean EOF between records
                }
                return Poll::Ready(Err(this.fail(RecordError::Truncated)));
            }
            if this.rx_len == this.rx.len() {
                // Unreachable: a full buffer always holds a whole (<= 4096
                // byte) frame, decrypted above. Refuse rather than spin.
                return Poll::Ready(Err(this.fail(RecordError::TooLarge(this.rx_len))));
            }
            let mut read_buf = ReadBuf::new(&mut this.rx[this.rx_len..]);
            match ready!(Pin::new(&mut this.io).poll_read(cx, &mut read_buf)) {
                Ok(()) => {
                    let n = read_buf.filled().len();
                    if n == 0 {
                        this.rx_eof = true;
                    }
                    this.rx_len += n;
                }
                Err(e) => {
                    this.failed = Some(RecordError::Closed);
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_failed()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Make room for at least one full frame; nothing is consumed until
        // there is, so returning Pending here is correct.
        if this.tx.len() + MAX_MESSAGE_SIZE > TX_BUFFER {
            ready!(this.poll_drain(cx))?;
        }
        let mut consumed = 0;
        while consumed < buf.len() && this.tx.len() + MAX_MESSAGE_SIZE <= TX_BUFFER {
            let end = buf.len().min(consumed + MAX_PLAINTEXT_SIZE);
            if let Err(e) = this.seal_record(&buf[consumed..end]) {
                return Poll::Ready(Err(this.fail(e)));
            }
            consumed = end;
        }
        // The bytes are sealed and ours now: push what the socket takes, and
        // leave the rest for the next write or flush (the waker is set).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_none() {
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::handshake::tests::kat_accept;
    use super::super::kat;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// A pair of connected streams: server side (KAT keys) and client side.
    pub(crate) fn pair(
        buffer: usize,
    ) -> (
        NoiseStream<tokio::io::DuplexStream>,
        NoiseStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = duplex(buffer);
        let acc = kat_accept();
        let client = super::super::tests::client_for_kat(&acc.response);
        (
            NoiseStream::new(a, acc.transport),
            NoiseStream::new(b, client),
        )
    }

    #[tokio::test]
    async fn writes_match_controlbase_records() {
        // Counter progression is covered by the handshake KAT; this checks
        // the framing around it.
        let (a, mut b) = duplex(1 << 16);
        let mut server = NoiseStream::new(a, kat_accept().transport);
        let (plain, record) = &kat::server_records()[0];
        server.write_all(plain).await.unwrap();
        server.write_all(&[]).await.unwrap(); // sends nothing, as in controlbase
        server.flush().await.unwrap();
        drop(server);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got, record);
    }

    #[tokio::test]
    async fn reads_controlbase_records_split_anywhere() {
        let mut wire = Vec::new();
        for (_, record) in kat::client_records() {
            wire.extend_from_slice(&record);
        }
        for split in 1..wire.len() {
            let (a, mut b) = duplex(1 << 16);
            let mut server = NoiseStream::new(a, kat_accept().transport);
            let w = wire.clone();
            let writer = tokio::spawn(async move {
                b.write_all(&w[..split]).await.unwrap();
                b.flush().await.unwrap();
                tokio::task::yield_now().await;
                b.write_all(&w[split..]).await.unwrap();
                b
            });
            let mut got = vec![0u8; 14 + 40];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[..14], b"PRI * HTTP/2.0");
            assert_eq!(&got[14..], [b'x'; 40]);
            drop(writer.await.unwrap());
            assert_eq!(server.read(&mut [0u8; 8]).await.unwrap(), 0, "clean EOF");
        }
    }

    #[tokio::test]
    async fn large_transfer_both_ways() {
        let (mut server, mut client) = pair(3000);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let d = data.clone();
        let sender = tokio::spawn(async move {
            client.write_all(&d).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; d.len()];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, d);
        });
        let mut got = vec![0u8; data.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        server.write_all(&got).await.unwrap();
        server.flush().await.unwrap();
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn frames_never_exceed_4096_bytes() {
        let (a, mut b) = duplex(1 << 20);
        let mut server = NoiseStream::new(a, kat_accept().transport);
        server.write_all(&vec![1u8; 10_000]).await.unwrap();
        server.flush().await.unwrap();
        drop(server);
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        let mut sizes = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let (ty, len) = parse_header([rest[0], rest[1], rest[2]]);
            assert_eq!(ty, MSG_RECORD);
            sizes.push(HEADER_LEN + len);
            rest = &rest[HEADER_LEN + len..];
        }
        assert_eq!(sizes, [4096, 4096, 10_000 - 2 * 4077 + 19]);
    }

    async fn read_after_raw(raw: &[u8]) -> (io::Error, NoiseStream<tokio::io::DuplexStream>) {
        let (a, mut b) = duplex(1 << 16);
        let mut server = NoiseStream::new(a, kat_accept().transport);
        b.write_all(raw).await.unwrap();
        drop(b);
        let err = server.read(&mut [0u8; 64]).await.unwrap_err();
        (err, server)
    }

    fn inner(e: &io::Error) -> Option<RecordError> {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<RecordError>())
            .cloned()
    }

    #[tokio::test]
    async fn tampered_record_kills_the_stream() {
        let mut record = kat::client_records()[0].1.clone();
        let last = record.len() - 1;
        record[last] ^= 1;
        let (err, mut server) = read_after_raw(&record).await;
        assert_eq!(inner(&err), Some(RecordError::Decrypt));
        let again = server.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(inner(&again), Some(RecordError::Closed));
        assert!(server.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn bad_type_too_large_short_and_truncated() {
        let mut record = kat::client_records()[0].1.clone();
        record[0] = 0x02;
        assert_eq!(
            inner(&read_after_raw(&record).await.0),
            Some(RecordError::UnexpectedType(2))
        );

        let big = [MSG_RECORD, 0x0f, 0xfe]; // 4094 > 4093
        assert_eq!(
            inner(&read_after_raw(&big).await.0),
            Some(RecordError::TooLarge(4097))
        );

        // Shorter than a tag: can't even hold one.
        let short = [MSG_RECORD, 0, 3, 1, 2, 3];
        assert_eq!(
            inner(&read_after_raw(&short).await.0),
            Some(RecordError::Decrypt)
        );

        let record = kat::client_records()[0].1.clone();
        let (err, _) = read_after_raw(&record[..record.len() - 1]).await;
        assert_eq!(inner(&err), Some(RecordError::Truncated));
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let (err, _) = read_after_raw(&record[..2]).await;
        assert_eq!(inner(&err), Some(RecordError::Truncated));
    }

    #[tokio::test]
    async fn zero_length_records_are_skipped() {
        let (mut server, mut client) = pair(1 << 16);
        // An empty record, as a Go peer may send, then data.
        let mut empty = [0u8; HEADER_LEN + TAG_LEN];
        empty[..3].copy_from_slice(&header(MSG_RECORD, TAG_LEN as u16));
        client.cipher.seal(&[], &mut empty[HEADER_LEN..]).unwrap();
        client.io.write_all(&empty).await.unwrap();
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after");
    }

    #[tokio::test]
    async fn cleartext_prefix_goes_first() {
        let (a, mut b) = duplex(1 << 16);
        let mut server = NoiseStream::new(a, kat_accept().transport);
        server.queue_cleartext(b"RESP");
        server.write_all(b"hello").await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0u8; 4 + kat::server_records()[0].1.len()];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"RESP");
        assert_eq!(&got[4..], kat::server_records()[0].1.as_slice());
    }
}

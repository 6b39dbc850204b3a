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

use crate::cipher::TransportCipher;
use crate::error::RecordError;
use crate::wire::{
    HEADER_LEN, MAX_CIPHERTEXT_SIZE, MAX_MESSAGE_SIZE, MAX_PLAINTEXT_SIZE, MSG_RECORD, TAG_LEN,
    header, parse_header,
};

/// How many bytes of sealed records may wait for the underlying stream.
/// Several frames, so that a burst of HTTP/2 frames goes out in few writes.
const TX_BUFFER: usize = 4 * MAX_MESSAGE_SIZE + RAW_PREFIX_ROOM;
/// Room for cleartext bytes queued before the first record (the handshake
/// response).
const RAW_PREFIX_ROOM: usize = 64;

/// Checks a record header and returns the whole frame's length. Checked
/// before the body arrives, so a hostile peer is cut off at once rather than
/// after it sent up to 64 KiB.
pub fn record_frame_len(hdr: [u8; HEADER_LEN]) -> Result<usize, RecordError> {
    let (msg_type, len) = parse_header(hdr);
    if msg_type != MSG_RECORD {
        return Err(RecordError::UnexpectedType(msg_type));
    }
    if len > MAX_CIPHERTEXT_SIZE {
        return Err(RecordError::TooLarge(HEADER_LEN + len));
    }
    Ok(HEADER_LEN + len)
}

/// Seals `plaintext` (at most [`MAX_PLAINTEXT_SIZE`] bytes) as one record
/// appended to `out`.
pub fn seal_record(
    cipher: &mut TransportCipher,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    if plaintext.len() > MAX_PLAINTEXT_SIZE {
        return Err(RecordError::TooLarge(
            HEADER_LEN + plaintext.len() + TAG_LEN,
        ));
    }
    let start = out.len();
    let sealed_len = plaintext.len() + TAG_LEN;
    // sealed_len <= MAX_CIPHERTEXT_SIZE < u16::MAX.
    out.extend_from_slice(&header(MSG_RECORD, sealed_len as u16));
    out.resize(start + HEADER_LEN + sealed_len, 0);
    match cipher.seal(plaintext, &mut out[start + HEADER_LEN..]) {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// An encrypted, framed byte stream over `S` (in production the upgraded
/// HTTP connection), in either role.
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
    pub fn queue_cleartext(&mut self, bytes: &[u8]) {
        self.tx.extend_from_slice(bytes);
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Decrypts the first frame of `rx` if it is complete; `Ok(false)` if
    /// more bytes are needed.
    fn decrypt_buffered(&mut self) -> Result<bool, RecordError> {
        if self.rx_len < HEADER_LEN {
            return Ok(false);
        }
        let frame_len = record_frame_len([self.rx[0], self.rx[1], self.rx[2]])?;
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
            if let Err(e) = seal_record(&mut this.cipher, &buf[consumed..end], &mut this.tx) {
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

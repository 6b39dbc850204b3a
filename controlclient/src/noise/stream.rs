//! [`NoiseStream`]: the byte stream inside the Noise transport (Tailscale
//! `control/controlbase/conn.go`).
//!
//! Each record is type 0x04, a BE u16 length, then at most 4093 bytes of
//! ciphertext (4077 plaintext + 16 tag), so a whole frame is at most 4096
//! bytes. Reads reassemble records however the bytes arrive; writes are cut
//! into records. Memory is bounded: one frame of ciphertext and one of
//! plaintext for reading, a few frames for writing.
//!
//! A record that is malformed, too large or fails to decrypt is an error,
//! and the stream is dead afterwards: the peers no longer agree on nonces.

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

/// Sealed bytes that may wait for the socket: a few frames, so that a burst
/// of HTTP/2 frames goes out in few writes.
const TX_BUFFER: usize = 4 * MAX_MESSAGE_SIZE;

/// Checks a record header and returns the whole frame's length. Checked
/// before the body arrives, so a hostile peer is cut off at once.
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

/// An encrypted, framed byte stream over `S` (the upgraded HTTP connection).
pub struct NoiseStream<S> {
    io: S,
    cipher: TransportCipher,
    /// Ciphertext read from `io`, not yet decrypted: `rx[..rx_len]`.
    rx: Box<[u8]>,
    rx_len: usize,
    /// Decrypted bytes not yet handed out: `plain[plain_pos..plain_len]`.
    plain: Box<[u8]>,
    plain_pos: usize,
    plain_len: usize,
    rx_eof: bool,
    /// Sealed frames not yet written: `tx[tx_pos..]`.
    tx: Vec<u8>,
    tx_pos: usize,
    failed: bool,
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
            failed: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Decrypts the first buffered frame if it is complete; `Ok(false)` if
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
        self.failed = true;
        self.plain_pos = 0;
        self.plain_len = 0;
        e.into()
    }

    fn check_failed(&self) -> io::Result<()> {
        if self.failed {
            return Err(RecordError::Closed.into());
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes queued frames until none is left or `io` would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.tx[self.tx_pos..])) {
                Ok(0) => {
                    self.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.tx_pos += n,
                Err(e) => {
                    // Part of a frame may have gone out: no resync possible.
                    self.failed = true;
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
        loop {
            if this.plain_pos < this.plain_len {
                let n = buf.remaining().min(this.plain_len - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            // Zero-length records are legal; keep going until data or EOF.
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
                    this.failed = true;
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
        // Room for at least one whole frame first; nothing is consumed
        // until there is, so Pending here is honest.
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
        // The bytes are sealed and ours now: push what the socket takes and
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
        if !this.failed {
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::handshake::Initiator;
    use super::super::kat;
    use super::*;
    use crate::keys::{MachineKey, public_of};
    use meshscale_wire::{MachinePrivate, MachinePublic};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn kat_cipher() -> TransportCipher {
        let machine =
            MachineKey::from_private(MachinePrivate::from_bytes(kat::key(kat::CLIENT_PRIV)))
                .unwrap();
        let server = MachinePublic::from_bytes(public_of(&kat::key(kat::SERVER_PRIV)).unwrap());
        let init = Initiator::with_fixed_ephemeral(
            &machine,
            &server,
            kat::VERSION,
            &kat::key(kat::CLIENT_EPHEMERAL),
        )
        .unwrap();
        init.finish(&kat::bytes(kat::RESPONSE).try_into().unwrap())
            .unwrap()
    }

    fn inner(e: &io::Error) -> Option<RecordError> {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<RecordError>())
            .cloned()
    }

    #[tokio::test]
    async fn writes_match_controlbase_records() {
        let (a, mut b) = duplex(1 << 16);
        let mut client = NoiseStream::new(a, kat_cipher());
        for (plain, _) in kat::CLIENT_RECORDS {
            client.write_all(plain).await.unwrap();
            client.flush().await.unwrap();
        }
        drop(client);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let want: Vec<u8> = kat::CLIENT_RECORDS
            .iter()
            .flat_map(|(_, r)| kat::bytes(r))
            .collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn reads_server_records_split_anywhere_including_empty_records() {
        let wire: Vec<u8> = kat::SERVER_RECORDS
            .iter()
            .flat_map(|(_, r)| kat::bytes(r))
            .collect();
        for split in 1..wire.len() {
            let (a, mut b) = duplex(1 << 16);
            let mut client = NoiseStream::new(a, kat_cipher());
            let w = wire.clone();
            let writer = tokio::spawn(async move {
                b.write_all(&w[..split]).await.unwrap();
                tokio::task::yield_now().await;
                b.write_all(&w[split..]).await.unwrap();
            });
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"helloworld", "split at {split}");
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn frames_never_exceed_4096_bytes() {
        let (a, mut b) = duplex(1 << 20);
        let mut client = NoiseStream::new(a, kat_cipher());
        client.write_all(&vec![1u8; 10_000]).await.unwrap();
        client.flush().await.unwrap();
        drop(client);
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        let mut sizes = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let len = record_frame_len([rest[0], rest[1], rest[2]]).unwrap();
            sizes.push(len);
            rest = &rest[len..];
        }
        assert_eq!(sizes, [4096, 4096, 10_000 - 2 * 4077 + 19]);
    }

    async fn read_after_raw(raw: &[u8]) -> (io::Error, NoiseStream<tokio::io::DuplexStream>) {
        let (a, mut b) = duplex(1 << 16);
        let mut client = NoiseStream::new(a, kat_cipher());
        b.write_all(raw).await.unwrap();
        drop(b);
        let err = client.read(&mut [0u8; 64]).await.unwrap_err();
        (err, client)
    }

    #[tokio::test]
    async fn hostile_records_kill_the_stream() {
        let good = kat::bytes(kat::SERVER_RECORDS[0].1);

        let mut tampered = good.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let (err, mut client) = read_after_raw(&tampered).await;
        assert_eq!(inner(&err), Some(RecordError::Decrypt));
        let again = client.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(inner(&again), Some(RecordError::Closed));
        assert!(client.write_all(b"x").await.is_err());

        let mut wrong_type = good.clone();
        wrong_type[0] = 0x02;
        assert_eq!(
            inner(&read_after_raw(&wrong_type).await.0),
            Some(RecordError::UnexpectedType(2))
        );
        assert_eq!(
            inner(&read_after_raw(&[MSG_RECORD, 0xff, 0xff]).await.0),
            Some(RecordError::TooLarge(3 + 0xffff))
        );
        assert_eq!(
            inner(&read_after_raw(&[MSG_RECORD, 0, 3, 1, 2, 3]).await.0),
            Some(RecordError::Decrypt),
            "shorter than a tag"
        );
        let (err, _) = read_after_raw(&good[..good.len() - 1]).await;
        assert_eq!(inner(&err), Some(RecordError::Truncated));
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn seal_refuses_oversized_chunks() {
        let mut c = kat_cipher();
        let mut out = Vec::new();
        assert!(seal_record(&mut c, &[0; MAX_PLAINTEXT_SIZE + 1], &mut out).is_err());
        assert!(out.is_empty());
        seal_record(&mut c, &[0; MAX_PLAINTEXT_SIZE], &mut out).unwrap();
        assert_eq!(out.len(), MAX_MESSAGE_SIZE);
    }
}

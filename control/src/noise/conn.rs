//! [`NoiseStream`]: the byte stream inside the Noise transport (Tailscale
//! `control/controlbase/conn.go`). Shared with the client, see
//! [`meshscale_ts2021::stream`]; the tests here run it against the
//! responder's handshake and the known-answer vectors.

pub use meshscale_ts2021::stream::*;

#[cfg(test)]
pub(crate) mod tests {
    use super::super::handshake::tests::kat_accept;
    use super::super::kat;
    use super::*;
    use meshscale_ts2021::RecordError;
    use meshscale_ts2021::wire::{HEADER_LEN, MSG_RECORD, TAG_LEN, header, parse_header};
    use std::io;
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
        let (a, mut b) = duplex(1 << 16);
        let acc = kat_accept();
        let mut client = super::super::tests::client_for_kat(&acc.response);
        let mut server = NoiseStream::new(a, acc.transport);
        // An empty record, as a Go peer may send, then data.
        let mut wire = Vec::new();
        seal_record(&mut client, &[], &mut wire).unwrap();
        assert_eq!(wire[..3], header(MSG_RECORD, TAG_LEN as u16));
        seal_record(&mut client, b"after", &mut wire).unwrap();
        b.write_all(&wire).await.unwrap();
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

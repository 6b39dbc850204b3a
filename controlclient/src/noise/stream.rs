//! [`NoiseStream`]: the byte stream inside the Noise transport (Tailscale
//! `control/controlbase/conn.go`). Shared with the server, see
//! [`meshscale_ts2021::stream`]; the tests here run it against the
//! initiator's handshake and the known-answer vectors.

pub use meshscale_ts2021::stream::*;

#[cfg(test)]
mod tests {
    use super::super::handshake::Initiator;
    use super::super::kat;
    use super::*;
    use crate::keys::{MachineKey, public_of};
    use meshscale_ts2021::wire::*;
    use meshscale_ts2021::{RecordError, TransportCipher};
    use meshscale_wire::{MachinePrivate, MachinePublic};
    use std::io;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn kat_cipher() -> TransportCipher {
        let machine =
            MachineKey::from_private(MachinePrivate::from_bytes(kat::CLIENT_PRIV)).unwrap();
        let server = MachinePublic::from_bytes(public_of(&kat::SERVER_PRIV).unwrap());
        let init = Initiator::with_fixed_ephemeral(
            &machine,
            &server,
            kat::VERSION,
            &kat::CLIENT_EPHEMERAL,
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

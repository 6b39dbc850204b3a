//! TS2021 transport records: seal and open through the controlbase cipher
//! (ChaCha20-Poly1305 with big-endian nonces) after a real Noise IK handshake.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use meshscale_ts2021::TransportCipher;
use meshscale_ts2021::wire::{MAX_PLAINTEXT_SIZE, PROTOCOL_NAME, TAG_LEN, prologue};

/// Small (a keep-alive or a patch), typical HTTP/2 frame, and the largest record.
const SIZES: [usize; 3] = [64, 1024, MAX_PLAINTEXT_SIZE];

fn params() -> snow::params::NoiseParams {
    PROTOCOL_NAME.parse().expect("protocol name is valid")
}

fn cipher_pair() -> (TransportCipher, TransportCipher) {
    let server = snow::Builder::new(params())
        .generate_keypair()
        .expect("keypair");
    let client = snow::Builder::new(params())
        .generate_keypair()
        .expect("keypair");
    let prologue = prologue(1);
    let mut init = snow::Builder::new(params())
        .prologue(&prologue)
        .expect("prologue")
        .local_private_key(&client.private)
        .expect("key")
        .remote_public_key(&server.public)
        .expect("key")
        .build_initiator()
        .expect("initiator");
    let mut resp = snow::Builder::new(params())
        .prologue(&prologue)
        .expect("prologue")
        .local_private_key(&server.private)
        .expect("key")
        .build_responder()
        .expect("responder");
    let mut msg = [0u8; 256];
    let mut payload = [0u8; 256];
    let n = init.write_message(&[], &mut msg).expect("initiation");
    resp.read_message(&msg[..n], &mut payload)
        .expect("read initiation");
    let n = resp.write_message(&[], &mut msg).expect("response");
    init.read_message(&msg[..n], &mut payload)
        .expect("read response");
    (
        TransportCipher::from_handshake(init).expect("transport"),
        TransportCipher::from_handshake(resp).expect("transport"),
    )
}

fn bench_transport(c: &mut Criterion) {
    let mut g = c.benchmark_group("ts2021");
    for size in SIZES {
        let plaintext = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));

        let (mut tx, _) = cipher_pair();
        let mut sealed = vec![0u8; size + TAG_LEN];
        g.bench_function(format!("seal/{size}"), |b| {
            b.iter(|| {
                tx.seal(std::hint::black_box(&plaintext), &mut sealed)
                    .expect("seal")
            })
        });

        // Records must be opened in counter order, so each one is sealed in
        // the (untimed) setup right before it is opened.
        let (mut tx, mut rx) = cipher_pair();
        let mut opened = vec![0u8; size];
        g.bench_function(format!("open/{size}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut out = vec![0u8; size + TAG_LEN];
                    let n = tx.seal(&plaintext, &mut out).expect("seal");
                    out.truncate(n);
                    out
                },
                |record| rx.open(record, &mut opened).expect("open"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench_transport }
criterion_main!(benches);

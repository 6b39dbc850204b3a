//! DERP relay: frame encoding and parsing, and the relay path itself from
//! one client's SendPacket to another client's RecvPacket through the real
//! `Relay` (over in-memory pipes instead of sockets).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crypto_box::SecretKey;
use meshscale_control::derp::frame::{
    self, ClientMessage, FrameDecoder, FrameType, NodeKey, ServerMessage,
};
use meshscale_control::derp::{Relay, RelayConfig, crypto};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A disco ping, a small and a full-MTU WireGuard datagram.
const SIZES: [usize; 3] = [64, 512, 1452];
/// Packets per relay iteration: enough to keep the pipe busy, within the queue.
const BATCH: usize = 64;
const PIPE: usize = 1 << 20;

fn bench_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("derp_frame");
    let key: NodeKey = [7; 32];
    for size in SIZES {
        let packet = vec![0xabu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = BytesMut::with_capacity(size + 64);
        g.bench_function(format!("encode_send/{size}"), |b| {
            b.iter(|| {
                buf.clear();
                frame::send_packet_frame(&mut buf, &key, std::hint::black_box(&packet))
                    .expect("encode");
            })
        });
        let mut wire = BytesMut::new();
        frame::send_packet_frame(&mut wire, &key, &packet).expect("encode");
        let wire = wire.freeze();
        let decoder = FrameDecoder::default();
        g.bench_function(format!("parse_send/{size}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let f = decoder.decode(&mut buf).expect("frame").expect("whole");
                match ClientMessage::parse(&f).expect("valid") {
                    ClientMessage::SendPacket { packet, .. } => packet.len(),
                    other => panic!("unexpected {other:?}"),
                }
            })
        });
    }
    g.finish();
}

/// A DERP client on an in-memory pipe, past the handshake.
struct Client {
    io: DuplexStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    public: NodeKey,
}

impl Client {
    async fn connect(relay: &Arc<Relay>) -> Client {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        tokio::spawn(relay.clone().accept(theirs, "bench".into()));
        let private = crypto::generate_private_key();
        let secret = SecretKey::from_bytes(private);
        let mut c = Client {
            io: ours,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
            public: crypto::public_key(&private),
        };
        let server_key = match ServerMessage::parse(&c.frame().await) {
            ServerMessage::ServerKey(k) => k,
            other => panic!("expected ServerKey, got {other:?}"),
        };
        let sealed = crypto::seal(&secret, &server_key, br#"{"version":2}"#);
        let mut out = BytesMut::new();
        frame::client_info_frame(&mut out, &c.public, &sealed).expect("client info");
        c.io.write_all(&out).await.expect("write client info");
        let info = c.frame().await;
        assert_eq!(info.frame_type, FrameType::SERVER_INFO);
        c
    }

    async fn frame(&mut self) -> frame::Frame {
        loop {
            if let Some(f) = self.decoder.decode(&mut self.buf).expect("frame") {
                return f;
            }
            self.buf.reserve(64 << 10);
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read_buf(&mut self.buf))
                .await
                .expect("relay stalled")
                .expect("read");
            assert!(n > 0, "relay closed the connection");
        }
    }

    async fn recv_packets(&mut self, mut n: usize) {
        while n > 0 {
            if let ServerMessage::RecvPacket { .. } = ServerMessage::parse(&self.frame().await) {
                n -= 1;
            }
        }
    }
}

fn bench_relay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let relay = Relay::new(
        crypto::generate_private_key(),
        RelayConfig {
            send_queue_depth: 4 * BATCH,
            ..RelayConfig::default()
        },
    );
    let (mut a, mut b) = rt.block_on(async {
        let a = Client::connect(&relay).await;
        let b = Client::connect(&relay).await;
        (a, b)
    });
    let mut g = c.benchmark_group("derp_relay");
    for size in SIZES {
        let mut batch = BytesMut::new();
        for _ in 0..BATCH {
            frame::send_packet_frame(&mut batch, &b.public, &vec![0xcdu8; size]).expect("encode");
        }
        g.throughput(Throughput::Bytes((BATCH * size) as u64));
        g.bench_function(format!("send_to_recv/{size}x{BATCH}"), |bench| {
            bench.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (written, ()) =
                            tokio::join!(a.io.write_all(&batch), b.recv_packets(BATCH));
                        written.expect("write batch");
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
    relay.shutdown();
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench_frames, bench_relay }
criterion_main!(benches);

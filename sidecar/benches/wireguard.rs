//! WireGuard per-packet cost in boringtun, the data plane the sidecar runs:
//! encapsulate and decapsulate one IPv4 packet of each size, after a
//! completed handshake between two `Tunn`s (no sockets, no TUN).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// From a bare header to the sidecar's MTU (1,420 bytes of IP packet).
const SIZES: [usize; 5] = [64, 256, 512, 1024, 1420];
/// Ciphertext: the packet plus WireGuard's 32 bytes of header and tag.
const OVERHEAD: usize = 32;
const PEER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

fn secret(seed: u8) -> StaticSecret {
    StaticSecret::from([seed; 32])
}

/// Two tunnels with a finished handshake and a confirmed session both ways.
fn tunnel_pair() -> (Tunn, Tunn) {
    let (a_secret, b_secret) = (secret(7), secret(9));
    let (a_public, b_public) = (PublicKey::from(&a_secret), PublicKey::from(&b_secret));
    let mut a = Tunn::new(a_secret, b_public, None, None, 1, None);
    let mut b = Tunn::new(b_secret, a_public, None, None, 2, None);
    let mut buf_a = vec![0u8; 2048];
    let mut buf_b = vec![0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf_a, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let response = match b.decapsulate(Some(PEER_ADDR), &init, &mut buf_b) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no handshake response"),
    };
    // The initiator answers the response with a keepalive that confirms the
    // session to the responder.
    let keepalive = match a.decapsulate(Some(PEER_ADDR), &response, &mut buf_a) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no keepalive after handshake"),
    };
    match b.decapsulate(Some(PEER_ADDR), &keepalive, &mut buf_b) {
        TunnResult::Done => {}
        _ => panic!("keepalive not accepted"),
    }
    (a, b)
}

/// A UDP-in-IPv4 packet of `len` bytes with a consistent total length,
/// which boringtun checks after decrypting.
fn ipv4_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p
}

fn bench_wireguard(c: &mut Criterion) {
    let mut g = c.benchmark_group("wireguard");
    for size in SIZES {
        let packet = ipv4_packet(size);
        g.throughput(Throughput::Bytes(size as u64));

        let (mut a, _) = tunnel_pair();
        let mut out = vec![0u8; size + OVERHEAD];
        g.bench_function(format!("encapsulate/{size}"), |b| {
            b.iter(
                || match a.encapsulate(std::hint::black_box(&packet), &mut out) {
                    TunnResult::WriteToNetwork(p) => p.len(),
                    _ => panic!("encapsulate failed"),
                },
            )
        });

        // Counters must arrive in order (replay window), so each datagram is
        // made in the untimed setup right before it is opened.
        let (mut a, mut b_tun) = tunnel_pair();
        let mut sealed = vec![0u8; size + OVERHEAD];
        let mut plain = vec![0u8; size + OVERHEAD];
        g.bench_function(format!("decapsulate/{size}"), |b| {
            b.iter_batched_ref(
                || match a.encapsulate(&packet, &mut sealed) {
                    TunnResult::WriteToNetwork(p) => p.to_vec(),
                    _ => panic!("encapsulate failed"),
                },
                |datagram| match b_tun.decapsulate(Some(PEER_ADDR), datagram, &mut plain) {
                    TunnResult::WriteToTunnelV4(p, _) => p.len(),
                    _ => panic!("decapsulate failed"),
                },
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

criterion_group! { name = benches; config = config(); targets = bench_wireguard }
criterion_main!(benches);

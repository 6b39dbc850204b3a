//! Map response encoding at 10,000 peers: the full map a session gets first,
//! and the deltas one change produces (encoded once, shared by every
//! receiver). Nodes go through the server's own `node_view` so their JSON
//! has the shape and size clients really receive.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use meshscale_control::config::Config;
use meshscale_control::mapper::Frame;
use meshscale_control::mapper::view::{Live, Tailnet, allow_all_filter, dns_config, node_view};
use meshscale_control::store::{Node as Record, RegisterMethod, User};
use meshscale_wire::key::DiscoPublic;
use meshscale_wire::tailcfg::{
    Hostinfo, MapResponse, NetInfo, Node, PeerChange, Service, UserProfile,
};

const PEERS: usize = 10_000;
const USERS: i64 = 20;

/// Deterministic, well-spread key bytes: keys are random on real tailnets,
/// which matters for compression.
fn key_bytes(id: u64, salt: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    for chunk in out.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

fn hex_key(prefix: &str, id: u64, salt: u64) -> String {
    let mut s = String::from(prefix);
    for b in key_bytes(id, salt) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn epoch(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

fn user(id: i64) -> User {
    User {
        id,
        name: format!("user{id}"),
        display_name: format!("User {id}"),
        email: format!("user{id}@example.com"),
        profile_pic_url: String::new(),
        created_at: epoch(1_750_000_000),
    }
}

fn record(id: i64) -> Record {
    let n = id as u64;
    Record {
        id,
        machine_key: hex_key("mkey:", n, 1),
        node_key: hex_key("nodekey:", n, 2),
        disco_key: hex_key("discokey:", n, 3),
        hostname: format!("host-{id}"),
        given_name: format!("host-{id}"),
        user: user(1 + id % USERS),
        ipv4: Some(Ipv4Addr::from(0x6440_0000 + id as u32)),
        ipv6: Some(Ipv6Addr::from(
            0xfd7a_115c_a1e0_0000_0000_0000_0000_0000u128 + id as u128,
        )),
        tags: if id % 4 == 0 {
            vec!["tag:server".into()]
        } else {
            vec![]
        },
        ephemeral: false,
        auth_key_id: Some(1),
        register_method: RegisterMethod::AuthKey,
        expiry: Some(epoch(1_900_000_000)),
        last_seen: None,
        created_at: epoch(1_760_000_000 + id),
    }
}

fn live(id: i64, port: u16) -> Live {
    let mut derp_latency = BTreeMap::new();
    derp_latency.insert("999-v4".to_string(), 0.0123);
    derp_latency.insert("999-v6".to_string(), 0.0131);
    Live {
        disco_key: DiscoPublic::from_bytes(key_bytes(id as u64, 3)),
        endpoints: vec![
            format!("198.51.{}.{}:{port}", (id >> 8) & 0xff, id & 0xff),
            format!("10.{}.{}.7:{port}", (id >> 8) & 0xff, id & 0xff),
            format!("[2001:db8::{id:x}]:{port}"),
        ],
        hostinfo: Some(Hostinfo {
            ipn_version: "1.96.4-t0123456789-gabcdef0123".into(),
            os: "linux".into(),
            os_version: "6.12.48".into(),
            distro: "debian".into(),
            distro_version: "13".into(),
            distro_code_name: "trixie".into(),
            hostname: format!("host-{id}"),
            machine: "x86_64".into(),
            go_arch: "amd64".into(),
            go_version: "go1.25.3".into(),
            no_logs_no_support: true,
            services: vec![Service {
                proto: "peerapi4".into(),
                port: 45_000 + (id % 1000) as u16,
                description: "peerapi".into(),
            }],
            net_info: Some(NetInfo {
                mapping_varies_by_dest_ip: Some(false),
                working_ipv6: Some(true),
                os_has_ipv6: Some(true),
                working_udp: Some(true),
                working_icmpv4: Some(true),
                preferred_derp: 999,
                link_type: "wired".into(),
                derp_latency,
                ..NetInfo::default()
            }),
            ..Hostinfo::default()
        }),
        capver: 130,
        online: true,
        last_seen: Some(epoch(1_764_000_000)),
    }
}

fn tailnet() -> Tailnet {
    Tailnet {
        base_domain: Some("mesh.example.com".into()),
        domain: "mesh.example.com".into(),
        // The DERP map a default `meshscale serve` sends (embedded region).
        derp_map: meshscale_control::derpmap::build(&Config::default()).unwrap_or_default(),
        dns: dns_config(true, "mesh.example.com", &["1.1.1.1".to_string()]),
    }
}

struct Fixture {
    full: MapResponse,
    endpoint_patch: MapResponse,
    join: MapResponse,
    leave: MapResponse,
}

fn fixture() -> Fixture {
    let tailnet = tailnet();
    let now = epoch(1_764_000_000);
    let peers: Vec<Node> = (2..=PEERS as i64 + 1)
        .map(|id| node_view(&record(id), &live(id, 41641), &tailnet, now, false))
        .collect();
    let self_view = node_view(&record(1), &live(1, 41641), &tailnet, now, true);
    let profiles: Vec<UserProfile> = (1..=USERS)
        .map(|id| meshscale_control::mapper::view::user_profile(&user(id)))
        .collect();
    let mut filters = BTreeMap::new();
    filters.insert("base".to_string(), Some(allow_all_filter()));
    let full = MapResponse {
        node: Some(self_view),
        derp_map: Some(tailnet.derp_map.clone()),
        peers,
        dns_config: Some(tailnet.dns.clone()),
        domain: tailnet.domain.clone(),
        collect_services: Some(false),
        packet_filters: filters,
        user_profiles: profiles,
        control_time: Some(now),
        ..MapResponse::default()
    };
    let endpoint_patch = MapResponse {
        peers_changed_patch: vec![PeerChange {
            node_id: 42,
            endpoints: live(42, 41642).endpoints,
            ..PeerChange::default()
        }],
        control_time: Some(now),
        ..MapResponse::default()
    };
    let joiner = PEERS as i64 + 2;
    let join = MapResponse {
        peers_changed: vec![node_view(
            &record(joiner),
            &live(joiner, 41641),
            &tailnet,
            now,
            false,
        )],
        user_profiles: vec![meshscale_control::mapper::view::user_profile(&user(1))],
        control_time: Some(now),
        ..MapResponse::default()
    };
    let leave = MapResponse {
        peers_removed: vec![42],
        control_time: Some(now),
        ..MapResponse::default()
    };
    Fixture {
        full,
        endpoint_patch,
        join,
        leave,
    }
}

fn bench_full(c: &mut Criterion, fx: &Fixture) {
    let json = Frame::encode(&fx.full).json().to_vec();
    let zstd_len = Frame::from_json(json.clone()).wire(true).len();
    // Sizes are figures too: the report picks these lines up from the bench log.
    println!(
        "mapper-size full/{PEERS}: json {} bytes, zstd {} bytes",
        json.len(),
        zstd_len
    );
    let mut g = c.benchmark_group("mapper_full");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(PEERS as u64));
    g.bench_function(format!("encode_json/{PEERS}"), |b| {
        b.iter(|| Frame::encode(std::hint::black_box(&fx.full)))
    });
    g.bench_function(format!("zstd/{PEERS}"), |b| {
        b.iter_batched(
            || Frame::from_json(json.clone()),
            |frame| frame.wire(true),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn bench_deltas(c: &mut Criterion, fx: &Fixture) {
    let mut g = c.benchmark_group("mapper_delta");
    for (name, msg) in [
        ("endpoint", &fx.endpoint_patch),
        ("join", &fx.join),
        ("leave", &fx.leave),
    ] {
        let json = Frame::encode(msg).json().to_vec();
        println!(
            "mapper-size delta/{name}: json {} bytes, zstd {} bytes",
            json.len(),
            Frame::from_json(json.clone()).wire(true).len()
        );
        g.throughput(Throughput::Bytes(json.len() as u64));
        g.bench_function(format!("encode_json/{name}"), |b| {
            b.iter(|| Frame::encode(std::hint::black_box(msg)))
        });
        g.bench_function(format!("encode_zstd/{name}"), |b| {
            b.iter(|| Frame::encode(std::hint::black_box(msg)).wire(true))
        });
    }
    g.finish();

    // What one change costs beyond its single encoding: handing the shared
    // compressed bytes to every one of 10,000 sessions.
    let frame: Arc<Frame> = Frame::encode(&fx.endpoint_patch);
    let mut g = c.benchmark_group("mapper_fanout");
    g.throughput(Throughput::Elements(PEERS as u64));
    g.bench_function(format!("endpoint/{PEERS}"), |b| {
        b.iter(|| {
            let mut total = 0usize;
            for _ in 0..PEERS {
                total += std::hint::black_box(frame.wire(true)).len();
            }
            total
        })
    });
    g.finish();
}

fn bench_mapper(c: &mut Criterion) {
    let fx = fixture();
    bench_full(c, &fx);
    bench_deltas(c, &fx);
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench_mapper }
criterion_main!(benches);

//! The server's entry after a TS2021 handshake: Noise transport records
//! (`NoiseStream`: framing, decryption, the record-size limit) carrying
//! HTTP/2 (hyper's server) into the real `/machine/*` router with a
//! throwaway SQLite store, the whole path a connected client reaches.
//!
//! Each input runs one handshake with the KAT keys, then feeds the server
//! over an in-memory duplex. Input layout:
//!   byte 0   record size: plaintext is sealed in records of
//!            `1 + 16 * byte0` bytes (capped at the protocol's 4,077)
//!   byte 1   `n`: the last `n` bytes of the rest go onto the wire raw,
//!            after the records (broken framing/records mid-session)
//!   rest     the client's cleartext: HTTP/2 preface and frames
//! Seeds are recorded tailscaled sessions (fuzz/capture.sh).
use meshscale_control::config::Config;
use meshscale_control::mapper::Hub;
use meshscale_control::mapper::view::{Tailnet, dns_config};
use meshscale_control::metrics::Metrics;
use meshscale_control::noise::handshake::respond;
use meshscale_control::noise::{Http2Limits, NoisePeer, NoiseStream, ServerKey};
use meshscale_control::pending::PendingRegistrations;
use meshscale_control::state::{AppState, SharedState};
use meshscale_control::store::Store;
use meshscale_control::{derpmap, protocol};
use meshscale_controlclient::MachineKey;
use meshscale_controlclient::noise::handshake::Initiator;
use meshscale_ts2021::kat;
use meshscale_ts2021::stream::seal_record;
use meshscale_ts2021::wire::MAX_PLAINTEXT_SIZE;
use meshscale_wire::{MachinePrivate, MachinePublic};
use std::sync::{Arc, LazyLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("fuzz harness runtime")
});

static SERVER: LazyLock<ServerKey> = LazyLock::new(|| ServerKey::from_private(kat::SERVER_PRIV));
static CLIENT: LazyLock<MachineKey> = LazyLock::new(|| {
    MachineKey::from_private(MachinePrivate::from_bytes(kat::CLIENT_PRIV)).expect("KAT client key")
});

static STATE: LazyLock<SharedState> = LazyLock::new(|| RT.block_on(state()));

/// The server's shared state as `server::run` builds it, on a fresh SQLite
/// file under the temp dir (one per fuzzing process).
async fn state() -> SharedState {
    let dir = std::env::temp_dir().join(format!("meshscale-fuzz-noise-h2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let yaml = format!(
        "server_url: https://mesh.example.com\n\
         noise:\n  private_key_path: {dir}/noise.key\n\
         database:\n  type: sqlite\n  sqlite:\n    path: {dir}/db.sqlite\n",
        dir = dir.display()
    );
    let config = Config::from_sources(None, Some(&yaml), &[]).expect("fuzz config");
    let metrics = Metrics::new();
    let store = Store::open(
        &config.database_target().expect("fuzz database"),
        config.ip_prefixes().expect("fuzz prefixes"),
        metrics.clone(),
    )
    .await
    .expect("fuzz store");
    let (host, _, _) = derpmap::server_host_port(&config.server_url);
    let tailnet = Tailnet {
        domain: host,
        base_domain: Some(config.dns.base_domain.clone()),
        derp_map: derpmap::build(&config).expect("fuzz DERP map"),
        dns: dns_config(true, &config.dns.base_domain, &[]),
    };
    let hub = Arc::new(Hub::new(tailnet));
    let acl = meshscale_control::acl::Acl::load(
        config.policy_source().expect("fuzz policy source"),
        &store,
        &hub,
    )
    .await
    .expect("fuzz policy");
    Arc::new(AppState {
        config,
        store,
        hub,
        pending: PendingRegistrations::default(),
        metrics,
        acl,
    })
}

pub fn run(data: &[u8]) {
    let [size, raw_tail, rest @ ..] = data else {
        return;
    };
    let chunk = (1 + 16 * *size as usize).min(MAX_PLAINTEXT_SIZE);
    let split = rest.len().saturating_sub(*raw_tail as usize);
    let (cleartext, raw) = rest.split_at(split);

    let server_public = MachinePublic::from_bytes(*SERVER.public());
    let Ok(init) = Initiator::new(&CLIENT, &server_public, kat::VERSION) else {
        panic!("KAT initiation");
    };
    let Ok(accepted) = respond(&SERVER, init.initiation(), 0) else {
        panic!("the responder refused the KAT initiation");
    };
    let Ok(mut client) = init.finish(&accepted.response) else {
        panic!("the initiator refused the responder's answer");
    };
    let mut wire = Vec::with_capacity(cleartext.len() + raw.len() + 64);
    for piece in cleartext.chunks(chunk) {
        if seal_record(&mut client, piece, &mut wire).is_err() {
            panic!("sealing a record failed");
        }
    }
    wire.extend_from_slice(raw);

    let peer = NoisePeer {
        machine_key: accepted.machine_key,
        protocol_version: accepted.protocol_version,
    };
    let router = protocol::noise_router(STATE.clone());
    let transport = accepted.transport;
    RT.block_on(async move {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let limits = Http2Limits {
            keep_alive_interval: None,
            ..Http2Limits::default()
        };
        let server = tokio::spawn(async move {
            let _ = meshscale_control::noise::serve_http2_stream(
                NoiseStream::new(server_io, transport),
                peer,
                router,
                &limits,
            )
            .await;
        });
        let (mut rd, mut wr) = tokio::io::split(client_io);
        let drain = async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let send = async move {
            let _ = wr.write_all(&wire).await;
            let _ = wr.shutdown().await;
        };
        // A stuck session is a finding too: libFuzzer's -timeout reports it.
        let _ = tokio::join!(send, drain, server);
    });
}

//! Crash safety: `kill -9` of `meshscale serve` in the middle of a
//! registration storm and in the middle of a race for single-use pre-auth
//! keys, several times per database, at different points. After each
//! restart on the same database:
//! - every registration the server acknowledged (an authorized
//!   `RegisterResponse` reached the client) is stored, with its key;
//! - no IPv4 or IPv6 address (and no name) is held by two nodes;
//! - no single-use key admitted two machines, and its `used` mark agrees
//!   with the nodes registered with it;
//! - clients re-attach: their map stream ended with the crash, a new one
//!   gives a full map with the same node id and addresses.
//!
//! The database is read directly for the checks (what is on disk, not what
//! a server says), and through the restarted server for the re-attach.

#[allow(dead_code)]
#[path = "support/crash_support.rs"]
mod crash_support;
#[allow(dead_code)]
#[path = "support/mesh.rs"]
mod mesh;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use crash_support::{
    StoredNode, assert_single_use, assert_unique, key_prefix, kill9, open_db, stored_keys,
    stored_nodes,
};
use mesh::{
    DEADLINE, TestNode, authorized, next_message, preauth_key, server_pid, server_url, stream_ends,
};
use meshscale_controlclient::dial::Dialer;
use meshscale_controlclient::{
    ConnectOptions, ControlClient, DiscoKey, MachineKey, ServerUrl, requests,
};
use meshscale_wire::NodePublic;
use meshscale_wire::tailcfg::MapResponse;
use support::server::{Server, http_get, start};
use support::{Db, postgres_url};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Registrations in flight at once.
const IN_FLIGHT: usize = 48;
/// Registrations attempted per storm round.
const STORM_ROUND: usize = 240;
/// Acknowledgements after which each storm round's server is killed.
const STORM_KILL_POINTS: [usize; 3] = [3, 40, 150];
/// Single-use keys per race round, and machines racing for each.
const RACE_KEYS: usize = 24;
const RACERS: usize = 4;
/// Keys consumed (acknowledged) after which each race round's server is killed.
const RACE_KILL_POINTS: [usize; 3] = [1, 4, 10];
/// Storm nodes (besides the veterans) that re-attach after each restart.
const REATTACH_SAMPLE: usize = 6;

/// A registration the server acknowledged.
#[derive(Clone)]
struct Acked {
    machine: MachineKey,
    node: NodePublic,
    key: usize,
}

struct RoundOutcome {
    acked: Vec<Acked>,
    /// Attempts not finished when the kill was sent.
    pending_at_kill: usize,
    /// Clean refusals (an authorized=false answer) per key index.
    refused: usize,
    /// Attempts that ended in an error (the crash, mostly).
    failed: usize,
}

/// Runs `attempts` registrations (each with `keys[i]`), `IN_FLIGHT` at a
/// time, and kills the server once `kill_after` have been acknowledged.
async fn storm_and_kill(
    s: &Server,
    keys: &[String],
    attempts: &[usize],
    hostname: &'static str,
    kill_after: usize,
) -> RoundOutcome {
    let url: ServerUrl = server_url(s).parse().expect("url");
    let d = Dialer::new(url, None, DEADLINE).expect("dialer");
    let server_key = d.fetch_server_key(133).await.expect("/key");
    let opts = ConnectOptions {
        server_key: Some(server_key),
        timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };
    let pid = server_pid(s);
    let gate = std::sync::Arc::new(Semaphore::new(IN_FLIGHT));
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Acked>();
    let mut set = JoinSet::new();
    for &key in attempts {
        let (d, opts, gate, ack_tx) = (d.clone(), opts.clone(), gate.clone(), ack_tx.clone());
        let text = keys[key].clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let machine = MachineKey::generate().expect("machine key");
            // Only an identifier to the server; random bytes spare a scalar multiplication.
            let node = NodePublic::from_bytes(rand::random());
            let req = requests::register_with_auth_key(node, &text, requests::hostinfo(hostname));
            let attempt = async {
                let c = ControlClient::connect_with(&d, &machine, opts).await?;
                c.register(req).await
            };
            match tokio::time::timeout(Duration::from_secs(60), attempt).await {
                Ok(Ok(r)) if authorized(&r) => {
                    let _ = ack_tx.send(Acked { machine, node, key });
                    Some(true)
                }
                Ok(Ok(_)) => Some(false),
                Ok(Err(_)) => None,
                Err(_) => panic!("a registration got no answer within 60 s"),
            }
        });
    }
    drop(ack_tx);
    let mut acked = Vec::new();
    let mut pending_at_kill = None;
    let (mut refused, mut failed) = (0, 0);
    let total = attempts.len();
    let mut finished = 0;
    loop {
        tokio::select! {
            Some(a) = ack_rx.recv() => {
                acked.push(a);
                if acked.len() == kill_after && pending_at_kill.is_none() {
                    pending_at_kill = Some(total - finished);
                    kill9(pid).await;
                }
            }
            joined = set.join_next() => match joined {
                Some(r) => {
                    finished += 1;
                    match r.expect("registration task") {
                        Some(true) => {}
                        Some(false) => refused += 1,
                        None => failed += 1,
                    }
                }
                None => break,
            },
        }
    }
    while let Ok(a) = ack_rx.try_recv() {
        acked.push(a);
    }
    let pending_at_kill = pending_at_kill.unwrap_or_else(|| {
        panic!(
            "only {} of {total} registrations acknowledged; the kill point {kill_after} was never reached",
            acked.len()
        )
    });
    RoundOutcome {
        acked,
        pending_at_kill,
        refused,
        failed,
    }
}

async fn assert_healthy(s: &Server, ctx: &str) {
    let (status, body) = http_get(s.http, "/health").await.expect("/health answers");
    assert_eq!(
        (status, body.trim()),
        (200, r#"{"status":"pass"}"#),
        "{ctx}"
    );
}

/// Every acknowledged registration is stored, for the right machine, with
/// the key it used.
fn assert_acked_stored(acked: &[Acked], nodes: &[StoredNode], key_ids: &[i64], ctx: &str) {
    let by_machine: HashMap<&str, &StoredNode> =
        nodes.iter().map(|n| (n.machine_key.as_str(), n)).collect();
    for a in acked {
        let machine = a.machine.public().to_string();
        let n = by_machine
            .get(machine.as_str())
            .unwrap_or_else(|| panic!("{ctx}: acknowledged registration of {machine} lost"));
        assert_eq!(
            n.node_key,
            a.node.to_string(),
            "{ctx}: node key of {machine}"
        );
        assert_eq!(
            n.auth_key_id,
            Some(key_ids[a.key]),
            "{ctx}: key of {machine}"
        );
    }
}

/// The self node of a full map: id and addresses as text.
fn identity(r: &MapResponse, ctx: &str) -> (i64, Vec<String>) {
    assert!(
        r.derp_map.is_some(),
        "{ctx}: the first message must be a full map"
    );
    let me = r
        .node
        .as_ref()
        .unwrap_or_else(|| panic!("{ctx}: no self node"));
    let mut addrs: Vec<String> = me.addresses.iter().map(|p| p.addr().to_string()).collect();
    addrs.sort();
    (me.id, addrs)
}

fn stored_identity(n: &StoredNode) -> (i64, Vec<String>) {
    let mut addrs = vec![n.ipv4.clone().expect("ipv4"), n.ipv6.clone().expect("ipv6")];
    addrs.sort();
    (n.id, addrs)
}

/// A storm node re-attaches: a new connection with its machine key, a map
/// stream with its node key, and a full map showing the stored identity.
async fn reattach(s: &Server, a: &Acked, stored: &StoredNode, ctx: &str) {
    let c = ControlClient::connect(&server_url(s), &a.machine, ConnectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{ctx}: reconnect: {e}"));
    let disco = DiscoKey::generate().expect("disco key");
    let mut stream = c
        .map_stream(requests::map_stream(
            a.node,
            disco.public(),
            requests::hostinfo("storm"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{ctx}: map stream after restart: {e}"));
    let first = next_message(&mut stream, ctx).await.response;
    assert_eq!(identity(&first, ctx), stored_identity(stored), "{ctx}");
}

/// Nodes with live map streams across the crashes.
struct Veteran {
    node: TestNode,
    stream: meshscale_controlclient::MapStream,
    identity: (i64, Vec<String>),
}

async fn veterans(s: &Server, key: &str) -> Vec<Veteran> {
    let mut out = Vec::new();
    for i in 0..3 {
        let node = TestNode::join(s, &format!("veteran{i}"), key).await;
        let (stream, first) = node.stream().await;
        let identity = identity(&first, "veteran's first map");
        out.push(Veteran {
            node,
            stream,
            identity,
        });
    }
    out
}

/// After a crash the veterans' streams end; after the restart they connect
/// again, get a full map with the same identity, and see each other.
async fn veterans_reattach(s: &Server, vs: &mut [Veteran], ctx: &str) {
    let keys: Vec<NodePublic> = vs.iter().map(|v| v.node.node.public()).collect();
    for v in vs.iter_mut() {
        v.node.client = ControlClient::connect(&server_url(s), &v.node.machine, Default::default())
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {} reconnect: {e}", v.node.hostname));
        let (stream, first) = v.node.stream().await;
        assert_eq!(
            identity(&first, ctx),
            v.identity,
            "{ctx}: {} came back as someone else",
            v.node.hostname
        );
        for k in keys.iter().filter(|k| **k != v.node.node.public()) {
            assert!(
                first.peers.iter().any(|p| p.key == *k),
                "{ctx}: {} misses a peer after the restart",
                v.node.hostname
            );
        }
        v.stream = stream;
    }
}

async fn veterans_lose_streams(vs: &mut [Veteran], ctx: &str) {
    for v in vs.iter_mut() {
        assert!(
            stream_ends(&mut v.stream).await,
            "{ctx}: {}'s map stream outlived the server",
            v.node.hostname
        );
    }
}

async fn storm_crashes(db: Db) {
    let mut s = start(&db, "").await;
    s.ok(&["users", "create", "vpn1"]).await;
    let key = preauth_key(&s, "vpn1", &["--reusable"]).await;
    let mut vs = veterans(&s, &key).await;
    let keys = vec![key];
    let attempts = vec![0usize; STORM_ROUND];
    let mut all_acked = Vec::new();
    let mut attempted = vs.len();
    for (round, &kill_after) in STORM_KILL_POINTS.iter().enumerate() {
        let ctx = format!(
            "{} storm round {round} (kill after {kill_after})",
            db.name()
        );
        let out = storm_and_kill(&s, &keys, &attempts, "storm", kill_after).await;
        attempted += attempts.len();
        eprintln!(
            "{ctx}: {} acknowledged, {} refused, {} failed; {} not finished at the kill",
            out.acked.len(),
            out.refused,
            out.failed,
            out.pending_at_kill
        );
        assert!(out.pending_at_kill > 0, "{ctx}: killed after the storm");
        assert_eq!(out.refused, 0, "{ctx}: a reusable key was refused");
        all_acked.extend(out.acked.iter().cloned());
        veterans_lose_streams(&mut vs, &ctx).await;

        s.spawn().await;
        assert_healthy(&s, &ctx).await;
        let db_conn = open_db(&s).await;
        let nodes = stored_nodes(&db_conn).await;
        let key_ids: Vec<i64> = {
            let stored = stored_keys(&db_conn).await;
            keys.iter()
                .map(|k| {
                    stored
                        .iter()
                        .find(|s| s.prefix == key_prefix(k))
                        .expect("key stored")
                        .id
                })
                .collect()
        };
        db_conn.close().await;
        eprintln!(
            "{ctx}: after the restart {} nodes stored, {} acknowledged (with the veterans)",
            nodes.len(),
            all_acked.len() + vs.len()
        );
        assert_acked_stored(&all_acked, &nodes, &key_ids, &ctx);
        assert_unique(&nodes, &ctx);
        assert!(
            nodes.len() >= all_acked.len() + vs.len() && nodes.len() <= attempted,
            "{ctx}: {} nodes stored, {} acknowledged, {attempted} attempted",
            nodes.len(),
            all_acked.len() + vs.len()
        );
        assert_eq!(
            mesh::nodes(&s).await.len(),
            nodes.len(),
            "{ctx}: the restarted server lists what is stored"
        );
        veterans_reattach(&s, &mut vs, &ctx).await;
        let by_machine: HashMap<String, &StoredNode> =
            nodes.iter().map(|n| (n.machine_key.clone(), n)).collect();
        let step = (out.acked.len() / REATTACH_SAMPLE).max(1);
        for a in out.acked.iter().step_by(step).take(REATTACH_SAMPLE) {
            let stored = by_machine[&a.machine.public().to_string()];
            reattach(&s, a, stored, &ctx).await;
        }
    }
    // Registration still works and still hands out fresh addresses.
    let late = TestNode::join(&s, "late", &keys[0]).await;
    let (_stream, first) = late.stream().await;
    let db_conn = open_db(&s).await;
    let nodes = stored_nodes(&db_conn).await;
    assert_unique(&nodes, "after the crashes");
    let (id, _) = identity(&first, "late node");
    assert!(nodes.iter().any(|n| n.id == id));
}

async fn key_race_crashes(db: Db) {
    let mut s = start(&db, "").await;
    s.ok(&["users", "create", "vpn1"]).await;
    let mut acked_total: Vec<(Acked, String)> = Vec::new();
    let mut all_keys: Vec<String> = Vec::new();
    for (round, &kill_after) in RACE_KILL_POINTS.iter().enumerate() {
        let ctx = format!(
            "{} key race round {round} (kill after {kill_after})",
            db.name()
        );
        let mut keys = Vec::new();
        for _ in 0..RACE_KEYS {
            keys.push(preauth_key(&s, "vpn1", &[]).await);
        }
        // Racers for one key sit next to each other, so they are in flight together.
        let attempts: Vec<usize> = (0..RACE_KEYS)
            .flat_map(|k| std::iter::repeat_n(k, RACERS))
            .collect();
        let out = storm_and_kill(&s, &keys, &attempts, "racer", kill_after).await;
        eprintln!(
            "{ctx}: {} acknowledged, {} refused, {} failed; {} not finished at the kill",
            out.acked.len(),
            out.refused,
            out.failed,
            out.pending_at_kill
        );
        assert!(out.pending_at_kill > 0, "{ctx}: killed after the race");
        let mut per_key: HashMap<usize, usize> = HashMap::new();
        for a in &out.acked {
            *per_key.entry(a.key).or_default() += 1;
        }
        assert!(
            per_key.values().all(|&n| n == 1),
            "{ctx}: a single-use key was acknowledged twice: {per_key:?}"
        );
        acked_total.extend(out.acked.iter().map(|a| (a.clone(), keys[a.key].clone())));
        all_keys.extend(keys.iter().cloned());

        s.spawn().await;
        assert_healthy(&s, &ctx).await;
        let db_conn = open_db(&s).await;
        let nodes = stored_nodes(&db_conn).await;
        let stored = stored_keys(&db_conn).await;
        db_conn.close().await;
        let id_of = |k: &str| {
            stored
                .iter()
                .find(|s| s.prefix == key_prefix(k))
                .expect("key stored")
                .id
        };
        // Every acknowledged racer, with the key it won.
        let acked: Vec<Acked> = acked_total
            .iter()
            .enumerate()
            .map(|(i, (a, _))| Acked {
                key: i,
                ..a.clone()
            })
            .collect();
        let key_ids: Vec<i64> = acked_total.iter().map(|(_, k)| id_of(k)).collect();
        assert_acked_stored(&acked, &nodes, &key_ids, &ctx);
        assert_single_use(&stored, &nodes, &ctx);
        assert_unique(&nodes, &ctx);

        // The restarted server agrees: a used key refuses a new machine, an
        // unused one admits exactly one.
        let used: Vec<&String> = keys
            .iter()
            .filter(|k| stored.iter().any(|s| s.prefix == key_prefix(k) && s.used))
            .collect();
        let unused: Vec<&String> = keys
            .iter()
            .filter(|k| stored.iter().any(|s| s.prefix == key_prefix(k) && !s.used))
            .collect();
        eprintln!(
            "{ctx}: after the restart {} of this round's {RACE_KEYS} keys used, {} acknowledged",
            used.len(),
            out.acked.len()
        );
        assert!(!used.is_empty(), "{ctx}: no key consumed before the kill");
        let stranger = TestNode::new(&s, "stranger").await;
        let r = stranger.register_with_key(used[0]).await;
        assert!(!authorized(&r), "{ctx}: a used key admitted a new machine");
        if let Some(k) = unused.first() {
            let first = TestNode::new(&s, "first").await;
            assert!(authorized(&first.register_with_key(k).await), "{ctx}");
            let second = TestNode::new(&s, "second").await;
            assert!(!authorized(&second.register_with_key(k).await), "{ctx}");
        }
        // A winner re-attaches with its stored identity.
        let (a, k) = &acked_total[acked_total.len() - 1];
        let n = nodes
            .iter()
            .find(|n| n.machine_key == a.machine.public().to_string())
            .expect("acknowledged node stored");
        assert_eq!(n.auth_key_id, Some(id_of(k)), "{ctx}");
        reattach(&s, a, n, &ctx).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_registration_storm_sqlite() {
    storm_crashes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_registration_storm_postgres() {
    if postgres_url().is_some() {
        storm_crashes(Db::Postgres).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_single_use_key_race_sqlite() {
    key_race_crashes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_single_use_key_race_postgres() {
    if postgres_url().is_some() {
        key_race_crashes(Db::Postgres).await;
    }
}

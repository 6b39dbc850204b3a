//! `meshscale-loadgen`: N simulated nodes in one process against a running
//! `meshscale serve`, printing one run of `control.json` (see
//! docs/benchmarks.d/control.md and /work/notes/bench-contract.md).

mod frames;
mod node;
mod probe;
mod procstat;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use meshscale_controlclient::ServerUrl;
use meshscale_controlclient::dial::Dialer;
use meshscale_wire::MachinePublic;
use tokio::sync::{Semaphore, oneshot};

use node::{FirstMap, Keys, Node, run_session};
use probe::{Shared, Target};

#[derive(Parser, Debug)]
#[command(about = "Control-plane load generator for meshscale serve")]
struct Args {
    /// The server's URL (http://127.0.0.1:PORT).
    #[arg(long)]
    server: String,
    /// A reusable pre-auth key (from the environment, so it is not in `ps`).
    #[arg(long, env = "MESHSCALE_LOADGEN_AUTHKEY", hide_env_values = true)]
    auth_key: String,
    /// Simulated nodes.
    #[arg(long)]
    nodes: usize,
    /// The server's pid, for RSS and CPU.
    #[arg(long)]
    server_pid: u32,
    /// `meshscale` binary and config, for `nodes list`.
    #[arg(long)]
    meshscale_bin: PathBuf,
    #[arg(long)]
    config: PathBuf,
    /// Label of the database, copied into the output.
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Propagation rounds per kind of change.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Limit for each waiting phase, in seconds.
    #[arg(long, default_value_t = 240)]
    phase_timeout: u64,
    /// Registration phase budget, in seconds: nodes not admitted by then are
    /// abandoned and the run is reported as not held (keeps the script bounded).
    #[arg(long, default_value_t = 120)]
    register_budget: u64,
    /// Run under an access policy of this many ACL rules (the server must be
    /// in `policy.mode: database`), set through the CLI before the join
    /// storm; then also measure how long a policy change takes to reach
    /// every session. Without it: no policy (allow-all).
    #[arg(long)]
    policy_rules: Option<usize>,
    /// The user the pre-auth key belongs to, named by the policy.
    #[arg(long, default_value = "bench")]
    policy_user: String,
}

/// A policy of `rules` ACL rules over one user's nodes, the kind a platform
/// team writes (groups, hosts, a tag, port lists and ranges, protocols,
/// autogroups, an SSH rule). Every node still reaches every other on
/// `marker`, so every session sees every peer (the propagation probes count
/// all of them) and every session's filter changes when `marker` does.
fn bench_policy(user: &str, rules: usize, marker: u16) -> String {
    let pool = [
        r#"{"action": "accept", "src": ["group:bench"], "proto": "tcp", "dst": ["*:22"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "dst": ["*:80,443"]}"#,
        r#"{"action": "accept", "src": ["USER@"], "dst": ["*:8000-8100"]}"#,
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["tag:bench:9100"]}"#,
        r#"{"action": "accept", "src": ["corp"], "dst": ["*:53"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "dst": ["lab:*"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "proto": "udp", "dst": ["*:41641"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:5432"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:6379"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "dst": ["*:9090"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "dst": ["*:3000"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:8080,8443"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:2379-2380"]}"#,
        r#"{"action": "accept", "src": ["corp"], "dst": ["tag:bench:10250"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:6443"]}"#,
        r#"{"action": "accept", "src": ["group:bench"], "dst": ["*:9000-9010"]}"#,
        r#"{"action": "accept", "src": ["lab"], "proto": "udp", "dst": ["*:1194"]}"#,
        r#"{"action": "accept", "src": ["group:ops"], "dst": ["*:25,587"]}"#,
    ];
    let mut acls = vec![format!(
        r#"{{"action": "accept", "src": ["group:bench"], "dst": ["*:{marker}"]}}"#
    )];
    acls.extend(
        pool.iter()
            .cycle()
            .take(rules.saturating_sub(1))
            .map(|r| r.replace("USER", user)),
    );
    format!(
        r#"// meshscale-loadgen: {rules} rules
{{
  "groups": {{"group:bench": ["{user}@"], "group:ops": ["{user}@"]}},
  "tagOwners": {{"tag:bench": ["group:ops"]}},
  "hosts": {{"corp": "10.0.0.0/8", "lab": "192.168.0.0/16"}},
  "acls": [
    {}
  ],
  "ssh": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]}}],
}}
"#,
        acls.join(",\n    ")
    )
}

/// `meshscale policy set` with `text`.
async fn set_policy(args: &Args, text: &str) -> anyhow::Result<()> {
    let path =
        std::env::temp_dir().join(format!("meshscale-loadgen-{}.hujson", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    let out = tokio::process::Command::new(&args.meshscale_bin)
        .arg("-c")
        .arg(&args.config)
        .args(["policy", "set", "--file"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("run meshscale policy set")?;
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        bail!(
            "policy set: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The port of the policy's marker rule in round `round`.
fn marker_port(round: usize) -> u16 {
    20000 + (round % 10000) as u16
}

fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let nofile = procstat::raise_nofile();
    if (nofile as usize) < args.nodes + 256 {
        bail!(
            "open-file limit {nofile} is too low for {} nodes; run `ulimit -n` higher",
            args.nodes
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let run = rt.block_on(run(args))?;
    println!("{}", serde_json::to_string(&run)?);
    // Thousands of sessions are still open; tearing them down one by one
    // would only slow the script.
    rt.shutdown_background();
    Ok(())
}

struct Ctx {
    dialer: Dialer,
    server_key: MachinePublic,
    auth_key: String,
    shared: Arc<Shared>,
}

/// Connects, registers and opens the map stream of one node; its stream is
/// then read by a task of its own. Returns the node and when it registered.
async fn join(
    ctx: &Ctx,
    keys: &Keys,
    name: String,
    inspect: Option<oneshot::Sender<FirstMap>>,
    stop: Option<oneshot::Receiver<()>>,
    endpoints: &[String],
) -> anyhow::Result<(Node, Instant)> {
    let mut attempt = 0;
    let node = loop {
        attempt += 1;
        let r = async {
            let n = Node::connect(&ctx.dialer, &ctx.server_key, keys, name.clone()).await?;
            n.register(&ctx.auth_key).await?;
            Ok::<_, node::NodeError>(n)
        }
        .await;
        match r {
            Ok(n) => break n,
            Err(e) if attempt >= 3 => return Err(e).context(format!("{name}: join")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let registered = Instant::now();
    let body = node
        .open_stream(endpoints)
        .await
        .with_context(|| format!("{name}: map stream"))?;
    tokio::spawn(run_session(
        body,
        node.conn(),
        ctx.shared.clone(),
        inspect,
        stop,
    ));
    Ok((node, registered))
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            eprintln!("loadgen: gave up waiting for {what} after {limit:?}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// Waits until no session has received a frame for `quiet` (the server has
/// flushed what a storm left behind), within `limit`.
async fn settle(shared: &Shared, quiet: Duration, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = shared.frames.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shared.frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

fn endpoint(i: usize, round: usize) -> String {
    format!(
        "127.{}.{}.{}:{}",
        64 + round % 64,
        (i >> 8) & 255,
        i & 255,
        41641
    )
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let n = args.nodes;
    let url: ServerUrl = args.server.parse().context("--server")?;
    let dialer = Dialer::new(url, None, Duration::from_secs(30))?;
    let server_key = dialer.fetch_server_key(133).await?;
    let extra = 2 * args.repeats;
    let keys: Vec<Arc<Keys>> = (0..n + extra)
        .map(|_| Keys::generate().map(Arc::new))
        .collect::<Result<_, _>>()?;
    let shared = Arc::new(Shared::default());
    let ctx = Arc::new(Ctx {
        dialer,
        server_key,
        auth_key: args.auth_key.clone(),
        shared: shared.clone(),
    });
    let limit = Duration::from_secs(args.phase_timeout);
    let mut notes: Vec<String> = Vec::new();
    if let Some(rules) = args.policy_rules {
        set_policy(
            &args,
            &bench_policy(&args.policy_user, rules, marker_port(0)),
        )
        .await
        .context("the benchmark policy")?;
    }

    // Registration storm: every node registers and opens its map stream.
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let stride = (n / 8).max(1);
    let mut handles = Vec::with_capacity(n);
    let mut inspected = Vec::new();
    for i in 0..n {
        let (itx, irx) = if i % stride == 0 {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if let Some(rx) = irx {
            inspected.push(rx);
        }
        let ctx = ctx.clone();
        let sem = sem.clone();
        let keys = keys[i].clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            join(&ctx, &keys, format!("lg-{i}"), itx, None, &[endpoint(i, 0)]).await
        }));
    }
    let mut changer = None;
    let mut registered = 0usize;
    let mut last_registered = start;
    let mut first_error = None;
    let budget = tokio::time::Instant::now() + Duration::from_secs(args.register_budget);
    let mut abandoned = 0usize;
    for (i, mut h) in handles.into_iter().enumerate() {
        let joined = match tokio::time::timeout_at(budget, &mut h).await {
            Ok(r) => r,
            Err(_) => {
                h.abort();
                abandoned += 1;
                continue;
            }
        };
        match joined {
            Ok(Ok((node, at))) => {
                registered += 1;
                last_registered = last_registered.max(at);
                if i == 0 {
                    changer = Some(node);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let register_s = last_registered.duration_since(start).as_secs_f64();
    if abandoned > 0 {
        notes.push(format!(
            "registration budget of {} s ran out: {abandoned} of {n} nodes abandoned; register_per_s counts admitted nodes only",
            args.register_budget
        ));
    }
    if let Some(e) = first_error {
        notes.push(format!(
            "{} of {n} nodes failed to join; first error: {e}",
            n - registered - abandoned
        ));
    }
    let mapped_ok = wait_for("every full map", limit, || {
        shared.mapped.load(Ordering::Acquire) >= registered
    })
    .await;
    let all_mapped_s = mapped_ok.then(|| start.elapsed().as_secs_f64());
    let mut peers_seen = Vec::new();
    for rx in inspected {
        if let Ok(Ok(first)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
            if !first.complete {
                notes.push("an inspected first map lacked Node, DERPMap or PacketFilters".into());
            }
            peers_seen.push(first.peers);
        }
    }
    settle(&shared, Duration::from_secs(1), limit).await;
    let (rss_mapped, _) = procstat::rss_kib(args.server_pid)?;
    let storm_frames = shared.frames.load(Ordering::Relaxed);
    let storm_bytes = shared.frame_bytes.load(Ordering::Relaxed);

    // Propagation: one node changes its endpoints.
    let expected_peers = registered.saturating_sub(1);
    let mut endpoint_all = Vec::new();
    let mut endpoint_each = Vec::new();
    let mut change_bytes = 0u64;
    let cpu_before = procstat::cpu_s(args.server_pid)?;
    let mut probe_id = 0u64;
    if let Some(changer) = &changer {
        for round in 1..=args.repeats {
            probe_id += 1;
            let ep = endpoint(0, round);
            let probe = shared.start_probe(probe_id, Target::Endpoint(ep.clone()));
            if let Err(e) = changer.update_endpoints(&[ep]).await {
                notes.push(format!("endpoint update failed: {e}"));
                shared.stop_probe();
                break;
            }
            let ok = wait_for("an endpoint change", limit, || {
                probe.seen.load(Ordering::Acquire) >= expected_peers
            })
            .await;
            shared.stop_probe();
            if ok {
                let delays = probe.delays.lock().map(|d| d.clone()).unwrap_or_default();
                endpoint_all.push(delays.iter().copied().fold(0.0, f64::max));
                endpoint_each.extend(delays);
                change_bytes += probe.bytes.load(Ordering::Relaxed);
            }
        }
    }
    let cpu_after = procstat::cpu_s(args.server_pid)?;
    let changes = endpoint_all.len();

    // A node joins (register + map stream), then leaves (closes its connection).
    let mut join_all = Vec::new();
    let mut join_each = Vec::new();
    let mut leave_all = Vec::new();
    let mut leave_each = Vec::new();
    for round in 0..args.repeats {
        let keys = keys[n + round].clone();
        probe_id += 1;
        let probe = shared.start_probe(probe_id, Target::Join(keys.node.public()));
        let (itx, irx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let joined = join(
            &ctx,
            &keys,
            format!("joiner-{round}"),
            Some(itx),
            Some(stop_rx),
            &[endpoint(n + round, 0)],
        )
        .await;
        let node = match joined {
            Ok((node, _)) => node,
            Err(e) => {
                shared.stop_probe();
                notes.push(format!("joiner {round}: {e:#}"));
                continue;
            }
        };
        let ok = wait_for("a join", limit, || {
            probe.seen.load(Ordering::Acquire) >= registered
        })
        .await;
        shared.stop_probe();
        if ok {
            let delays = probe.delays.lock().map(|d| d.clone()).unwrap_or_default();
            join_all.push(delays.iter().copied().fold(0.0, f64::max));
            join_each.extend(delays);
        }
        let Ok(Ok(first)) = tokio::time::timeout(limit, irx).await else {
            notes.push(format!("joiner {round}: no full map"));
            continue;
        };
        let Some(id) = first.self_id else {
            notes.push(format!("joiner {round}: full map without its own node"));
            continue;
        };
        settle(&shared, Duration::from_millis(300), limit).await;
        probe_id += 1;
        let probe = shared.start_probe(probe_id, Target::Leave(id));
        let _ = stop_tx.send(());
        drop(node);
        let ok = wait_for("a leave", limit, || {
            probe.seen.load(Ordering::Acquire) >= registered
        })
        .await;
        shared.stop_probe();
        if ok {
            let delays = probe.delays.lock().map(|d| d.clone()).unwrap_or_default();
            leave_all.push(delays.iter().copied().fold(0.0, f64::max));
            leave_each.extend(delays);
        }
        settle(&shared, Duration::from_millis(300), limit).await;
    }

    // A policy change (one rule's port) until every session has its new filter.
    let mut policy_all = Vec::new();
    let mut policy_each = Vec::new();
    let mut policy_cpu = None;
    if let Some(rules) = args.policy_rules {
        let cpu_before = procstat::cpu_s(args.server_pid)?;
        let mut rounds = 0usize;
        for round in 1..=args.repeats {
            probe_id += 1;
            let port = marker_port(round);
            let probe = shared.start_probe(probe_id, Target::FilterPort(port));
            if let Err(e) = set_policy(&args, &bench_policy(&args.policy_user, rules, port)).await {
                shared.stop_probe();
                notes.push(format!("policy change {round}: {e:#}"));
                break;
            }
            let ok = wait_for("a policy change", limit, || {
                probe.seen.load(Ordering::Acquire) >= registered
            })
            .await;
            shared.stop_probe();
            rounds += 1;
            if ok {
                let delays = probe.delays.lock().map(|d| d.clone()).unwrap_or_default();
                policy_all.push(delays.iter().copied().fold(0.0, f64::max));
                policy_each.extend(delays);
            }
            settle(&shared, Duration::from_millis(300), limit).await;
        }
        let cpu_after = procstat::cpu_s(args.server_pid)?;
        // The settle after each round is idle time: the server's CPU is the change's.
        policy_cpu = (rounds > 0).then(|| (cpu_after - cpu_before) / rounds as f64);
        notes.push(format!(
            "policy: {rules} ACL rules set with `meshscale policy set` (database mode) before the join storm; a policy change is timed from the start of `policy set` (includes starting the CLI process) until every session has a filter with the changed rule"
        ));
    }

    let nodes_list_ms = nodes_list(&args).await;
    if nodes_list_ms.is_none() {
        notes.push("`meshscale nodes list` failed".into());
    }
    let (rss_end, rss_peak) = procstat::rss_kib(args.server_pid)?;
    let alive = shared.alive.load(Ordering::Acquire);
    let held = registered == n && alive == n;
    if !held {
        notes.push(format!("{alive} of {n} sessions alive at the end"));
    }
    let errors = shared.stream_errors.load(Ordering::Relaxed);
    if errors > 0 {
        notes.push(format!("{errors} map streams ended with an error"));
    }
    let decode_errors = shared.decode_errors.load(Ordering::Relaxed);
    if decode_errors > 0 {
        notes.push(format!("{decode_errors} delta frames did not decode"));
    }
    notes.push(format!(
        "join storm: {storm_frames} map frames, {} KiB received by all sessions; inspected full maps had {:?} peers",
        storm_bytes / 1024,
        peers_seen
    ));
    notes.push(
        "received = a complete frame taken off the session's HTTP/2 stream, zstd-decoded and JSON-decoded, containing the change; \
         full maps are counted on arrival and decoded only for 8 sample sessions; bytes are map frames (length prefix + zstd body), \
         without Noise/HTTP2 framing; propagation samples are per round (time until the last session had it)"
            .into(),
    );
    Ok(serde_json::json!({
        "db": args.db,
        "n": n,
        "policy": args.policy_rules.map_or_else(|| "allow-all".to_string(), |r| format!("acl-{r}")),
        "held": held,
        "register_per_s": (register_s > 0.0).then(|| registered as f64 / register_s),
        "register_s": register_s,
        "all_mapped_s": all_mapped_s,
        "propagation": {
            "endpoint": stats::summary(&endpoint_all, &endpoint_each),
            "join": stats::summary(&join_all, &join_each),
            "leave": stats::summary(&leave_all, &leave_each),
            "policy_change": args.policy_rules.map(|_| stats::summary(&policy_all, &policy_each)),
        },
        "server_cpu_s_per_policy_change": policy_cpu,
        "server_rss_kib": rss_end,
        "server_rss_mapped_kib": rss_mapped,
        "server_rss_peak_kib": rss_peak,
        "server_cpu_s_per_change": (changes > 0).then(|| (cpu_after - cpu_before) / changes as f64),
        "bytes_per_change": (changes > 0).then(|| change_bytes / changes as u64),
        "nodes_list_ms": nodes_list_ms,
        "notes": notes.join("; "),
    }))
}

/// Median wall time of three `meshscale nodes list` runs.
async fn nodes_list(args: &Args) -> Option<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = tokio::process::Command::new(&args.meshscale_bin)
            .arg("-c")
            .arg(&args.config)
            .args(["nodes", "list"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "loadgen: nodes list: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    stats::percentile(&times, 50.0)
}

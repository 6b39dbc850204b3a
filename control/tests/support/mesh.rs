//! Node-protocol test helpers: a `meshscale serve` that announces its
//! embedded DERP region, and test nodes driven by `meshscale-controlclient`.
//!
//! Waiting is always polling against [`DEADLINE`], never a fixed sleep.
//!
//! Included by each test file next to `mod support;` as
//! `#[path = "support/mesh.rs"] mod mesh;`, so that `support/mod.rs` stays
//! as it is for the other test files.

use std::future::Future;
use std::time::Duration;

use meshscale_controlclient::requests;
use meshscale_controlclient::{
    ConnectOptions, ControlClient, DiscoKey, MachineKey, MapMessage, MapStream, NodeKey,
};
use meshscale_wire::tailcfg::{Hostinfo, MapRequest, MapResponse, RegisterResponse};

use crate::support::Db;
use crate::support::server::{Server, free_port, start};

/// How long any single expected event may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Starts `meshscale serve` with `extra` config and the embedded DERP
/// server on (region 999 in every DERP map).
///
/// `server::start` writes `derp.server.enabled: false` and a repeated YAML
/// key would be refused, so the server is started once, stopped, given the
/// DERP settings in place and started again on the same database.
pub async fn start_mesh(db: &Db, extra: &str) -> Server {
    let mut s = start(db, extra).await;
    s.stop().await;
    let config = std::fs::read_to_string(&s.config).expect("read config");
    let disabled = "derp:\n  server:\n    enabled: false\n";
    assert!(config.contains(disabled), "unexpected config layout:\n{config}");
    let enabled = format!(
        "derp:\n  server:\n    enabled: true\n    stun_listen_addr: 127.0.0.1:{}\n",
        free_port()
    );
    std::fs::write(&s.config, config.replacen(disabled, &enabled, 1)).expect("write config");
    s.spawn().await;
    s
}

pub fn server_url(s: &Server) -> String {
    format!("http://{}", s.http)
}

/// The pid of `s`'s `meshscale serve`, found by its config path in
/// `/proc/*/cmdline` (the support server does not expose its child).
pub fn server_pid(s: &Server) -> u32 {
    let config = s.config.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "serve") && args.iter().any(|a| *a == config) {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "exactly one server for {config}: {found:?}");
    found[0]
}

/// Resident set size of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Creates a pre-auth key for `user` with extra CLI flags.
pub async fn preauth_key(s: &Server, user: &str, flags: &[&str]) -> String {
    let mut args = vec!["preauthkeys", "create", "--user", user, "--expiration", "1h"];
    args.extend_from_slice(flags);
    let key = s.ok(&args).await.trim().to_string();
    assert!(key.starts_with("mskey-auth-"), "{key}");
    key
}

/// `nodes list -o json` as an array.
pub async fn nodes(s: &Server) -> Vec<serde_json::Value> {
    s.json(&["nodes", "list"])
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The listed node whose node key is `key`.
pub async fn node_by_key(s: &Server, key: &NodeKey) -> Option<serde_json::Value> {
    let text = key.public().to_string();
    nodes(s).await.into_iter().find(|n| n["node_key"] == text)
}

/// Runs `f` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn poll_until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node as a test drives it: its keys and one control connection.
pub struct TestNode {
    pub hostname: String,
    pub machine: MachineKey,
    pub node: NodeKey,
    pub disco: DiscoKey,
    pub client: ControlClient,
}

pub fn authorized(r: &RegisterResponse) -> bool {
    r.error.is_empty() && r.auth_url.is_empty() && r.machine_authorized && !r.node_key_expired
}

impl TestNode {
    /// Fresh keys, connected (not registered).
    pub async fn new(s: &Server, hostname: &str) -> TestNode {
        let machine = MachineKey::generate().expect("machine key");
        let node = NodeKey::generate().expect("node key");
        TestNode::with_keys(s, hostname, machine, node).await
    }

    pub async fn with_keys(
        s: &Server,
        hostname: &str,
        machine: MachineKey,
        node: NodeKey,
    ) -> TestNode {
        let client = ControlClient::connect(&server_url(s), &machine, ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{hostname}: connect: {e}"));
        TestNode {
            hostname: hostname.to_string(),
            machine,
            node,
            disco: DiscoKey::generate().expect("disco key"),
            client,
        }
    }

    /// Connected and registered with `key`; panics unless authorized.
    pub async fn join(s: &Server, hostname: &str, key: &str) -> TestNode {
        let n = TestNode::new(s, hostname).await;
        let r = n.register_with_key(key).await;
        assert!(authorized(&r), "{hostname}: not authorized: {r:?}");
        n
    }

    pub fn hostinfo(&self) -> Hostinfo {
        requests::hostinfo(&self.hostname)
    }

    pub async fn register_with_key(&self, key: &str) -> RegisterResponse {
        let req = requests::register_with_auth_key(self.node.public(), key, self.hostinfo());
        self.client
            .register(req)
            .await
            .unwrap_or_else(|e| panic!("{}: register: {e}", self.hostname))
    }

    pub fn map_request(&self) -> MapRequest {
        requests::map_stream(self.node.public(), self.disco.public(), self.hostinfo())
    }

    /// Opens the long poll and returns it with its first message.
    pub async fn stream(&self) -> (MapStream, MapResponse) {
        let mut stream = self
            .client
            .map_stream(self.map_request())
            .await
            .unwrap_or_else(|e| panic!("{}: map stream: {e}", self.hostname));
        let first = next_message(&mut stream, &format!("{}'s first map", self.hostname)).await;
        (stream, first.response)
    }
}

/// The next message of any kind, within [`DEADLINE`].
pub async fn next_message(stream: &mut MapStream, what: &str) -> MapMessage {
    match tokio::time::timeout(DEADLINE, stream.next_message()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => panic!("{what}: map stream failed: {e}"),
        Ok(None) => panic!("{what}: map stream ended"),
        Err(_) => panic!("{what}: no map message within {DEADLINE:?}"),
    }
}

/// Reads messages until one satisfies `pred`; keep-alives are skipped and
/// every other message is checked to be a delta, never a full map.
pub async fn wait_for_delta(
    stream: &mut MapStream,
    what: &str,
    pred: impl Fn(&MapResponse) -> bool,
) -> MapResponse {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = match tokio::time::timeout(left, stream.next_message()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("{what}: map stream failed: {e}"),
            Ok(None) => panic!("{what}: map stream ended"),
            Err(_) => panic!("{what}: not seen within {DEADLINE:?}"),
        };
        if msg.response.keep_alive {
            assert!(
                msg.is_exact_keep_alive(),
                "keep-alive must be exactly {{\"KeepAlive\":true}}, got {}",
                String::from_utf8_lossy(&msg.json)
            );
            continue;
        }
        let r = msg.response;
        assert!(
            r.derp_map.is_none() && r.peers.is_empty(),
            "{what}: got a full map where a delta was due: {r:?}"
        );
        if pred(&r) {
            return r;
        }
    }
}

/// Whether the stream ends (or fails) within [`DEADLINE`], skipping messages.
pub async fn stream_ends(stream: &mut MapStream) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.next_message()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

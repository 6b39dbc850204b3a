//! Node-protocol test helpers: a `meshscale serve` that announces its
//! embedded DERP region, and test nodes driven by `meshscale-controlclient`.
//!
//! Waiting is always polling against [`DEADLINE`], never a fixed sleep.
//!
//! Included by each test file next to `mod support;` as
//! `#[path = "support/mesh.rs"] mod mesh;`, so that `support/mod.rs` stays
//! as it is for the other test files.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
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
/// `server::start` writes `derp.server.enabled: false`, and a repeated YAML
/// key would be refused, so the first server is replaced by one started from
/// an edited config (see [`move_to_fresh_addresses`]).
pub async fn start_mesh(db: &Db, extra: &str) -> Server {
    let mut s = start(db, extra).await;
    let config = move_to_fresh_addresses(&mut s, "run2");
    let disabled = "derp:\n  server:\n    enabled: false\n";
    assert!(
        config.contains(disabled),
        "unexpected config layout:\n{config}"
    );
    let enabled = format!(
        "derp:\n  server:\n    enabled: true\n    stun_listen_addr: 127.0.0.1:{}\n",
        free_port()
    );
    std::fs::write(&s.config, config.replacen(disabled, &enabled, 1)).expect("write config");
    // `spawn` replaces the running child, whose drop SIGKILLs it: no
    // SIGTERM, which `meshscale serve` only handles once fully started.
    s.spawn().await;
    s
}

/// Rewrites `s`'s config (and `s`) to fresh loopback ports and a fresh
/// admin socket under `<dir>/<run_dir>`, so a second server can start while
/// the first still holds the old ones. Returns the new config text, not yet
/// written.
pub fn move_to_fresh_addresses(s: &mut Server, run_dir: &str) -> String {
    let mut config = std::fs::read_to_string(&s.config).expect("read config");
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let socket = s.dir.path().join(run_dir).join("meshscale.sock");
    for (old, new) in [
        (s.http.to_string(), http.to_string()),
        (s.metrics.to_string(), metrics.to_string()),
        (s.socket.display().to_string(), socket.display().to_string()),
    ] {
        assert!(config.contains(&old), "{old} not in config:\n{config}");
        config = config.replace(&old, &new);
    }
    s.http = http;
    s.metrics = metrics;
    s.socket = socket;
    config
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
        if args.iter().any(|a| a == "serve") && args.contains(&config) {
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
    let mut args = vec![
        "preauthkeys",
        "create",
        "--user",
        user,
        "--expiration",
        "1h",
    ];
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

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost,
/// written as PEM files into `dir`: `(ca, cert, key)` paths.
pub fn write_test_certs(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write CA");
    std::fs::write(&paths.1, leaf.pem()).expect("write cert");
    std::fs::write(&paths.2, leaf_key.serialize_pem()).expect("write key");
    paths
}

/// `meshscale serve` on TLS, from `s`'s config moved to fresh addresses
/// and its own data directory (`server::Server` waits for plain-HTTP
/// health, so this child is managed here). `s`'s own server keeps running,
/// idle, until `s` is dropped; with PostgreSQL both share the database, as
/// replicas would. The TLS child is killed when dropped.
pub struct TlsServer {
    child: tokio::process::Child,
    pub url: String,
}

impl TlsServer {
    pub async fn start(
        s: &mut Server,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca_pem: &[u8],
    ) -> TlsServer {
        let config = move_to_fresh_addresses(s, "run-tls");
        let plain = format!("server_url: http://{}\n", s.http);
        assert!(
            config.contains(&plain),
            "unexpected config layout:\n{config}"
        );
        let data = format!("data_dir: {}\n", s.data_dir().display());
        assert!(
            config.contains(&data),
            "unexpected config layout:\n{config}"
        );
        let url = format!("https://{}", s.http);
        let config = config
            .replacen(&plain, &format!("server_url: {url}\n"), 1)
            .replacen(
                &data,
                &format!("data_dir: {}\n", s.dir.path().join("data-tls").display()),
                1,
            )
            + &format!(
                "tls_cert_path: {}\ntls_key_path: {}\n",
                cert.display(),
                key.display()
            );
        std::fs::write(&s.config, config).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .expect("log file");
        let child = tokio::process::Command::new(crate::support::server::BIN)
            .args(["serve", "-c"])
            .arg(&s.config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn meshscale serve");
        let mut server = TlsServer { child, url };
        let parsed: meshscale_controlclient::ServerUrl = server.url.parse().expect("url");
        let dialer = meshscale_controlclient::dial::Dialer::new(parsed, Some(ca_pem), DEADLINE)
            .expect("dialer");
        let child = &mut server.child;
        poll_until("TLS server answering /key", || {
            let dialer = dialer.clone();
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    panic!("meshscale serve exited with {status}");
                }
                dialer.fetch_server_key(133).await.ok().map(|_| ())
            }
        })
        .await;
        poll_until("admin socket", || async { s.socket.exists().then_some(()) }).await;
        server
    }
}

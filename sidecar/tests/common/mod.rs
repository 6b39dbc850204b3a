//! Shared by the sidecar's end-to-end scenarios: the sidecar process in a
//! namespace, and the topologies (reusing the `meshscale-e2e` harness:
//! namespaces, server, tailscaled; everything torn down on drop, nothing in
//! the host namespace).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::process::Proc;
use meshscale_e2e::{Lab, Ns, Server, Tools};

pub const SIDECAR: &str = env!("CARGO_BIN_EXE_meshscale-sidecar");
pub const CONVERGE: Duration = Duration::from_secs(40);

pub fn tools() -> Option<Tools> {
    Tools::detect().unwrap_or_else(|e| panic!("e2e prerequisites missing: {e:#}"))
}

/// The e2e crate's TCP echo tool, built next to our binary by
/// `cargo build --workspace --bins` (what `e2e/test-all.sh` runs first);
/// `None` when it was not built, and then [`tcp_check`] uses iperf3.
pub fn tcp_tool() -> Option<PathBuf> {
    let p = Path::new(SIDECAR).with_file_name("meshscale-e2e-tcp");
    p.exists().then_some(p)
}

/// A TCP server in `ns` for [`tcp_check`]: the echo tool, else iperf3.
pub fn tcp_server(lab: &Lab, ns: &Ns, name: &str) -> Proc {
    match tcp_tool() {
        Some(tool) => {
            meshscale_e2e::traffic::start_echo(lab, &tool, ns, name).expect("echo server")
        }
        None => {
            let log = lab.subdir(name).expect("dir").join("iperf3.log");
            lab.register_log(&log);
            let mut c = ns.command("iperf3");
            c.args(["-s", "-p", "5201"]);
            Proc::spawn(name, c, &log).expect("iperf3 -s")
        }
    }
}

/// Streams a few MB over TCP from `from` to the server at `addr`: every
/// byte echoed back unchanged (echo tool), or an iperf3 run that completes.
pub fn tcp_check(from: &Ns, addr: &str, bytes: u64) -> anyhow::Result<String> {
    match tcp_tool() {
        Some(tool) => meshscale_e2e::traffic::tcp_echo(&tool, from, addr, bytes),
        None => eventually(&format!("iperf3 to {addr}"), CONVERGE, || {
            let mut c = from.command("iperf3");
            c.args(["-c", addr, "-p", "5201", "-n", &bytes.to_string()]);
            let out = meshscale_e2e::cmd::run_ok(&mut c, Duration::from_secs(60))?;
            anyhow::ensure!(out.contains("receiver"), "{out}");
            Ok(out)
        }),
    }
}

/// The sidecar process; stopped before the lab's namespaces go away.
pub struct Sidecar {
    pub proc: Proc,
    pub ns: Ns,
    pub state: PathBuf,
    pub hostname: String,
    spec: UpSpec,
}

/// Everything `up` is started with, kept for restarts.
struct UpSpec {
    ns: Ns,
    state: PathBuf,
    hostname: String,
    log: PathBuf,
    key: String,
    url: String,
    ca: PathBuf,
    /// More `up` flags (e.g. `--advertise-tags`).
    extra: Vec<String>,
}

impl UpSpec {
    fn spawn(&self) -> Proc {
        let mut cmd = self.ns.command(SIDECAR);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MESHSCALE_LOG", "info,meshscale_sidecar=debug")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("up")
            .arg("--login-server")
            .arg(&self.url)
            .arg("--hostname")
            .arg(&self.hostname)
            .arg("--ca-file")
            .arg(&self.ca)
            .args(&self.extra);
        // No key: interactive login.
        if !self.key.is_empty() {
            cmd.env("MESHSCALE_AUTHKEY", &self.key);
        }
        Proc::spawn(&format!("sidecar {}", self.hostname), cmd, &self.log).expect("spawn sidecar")
    }
}

impl Sidecar {
    pub fn start(lab: &Lab, ns: &Ns, server: &Server, key: &str, hostname: &str) -> Sidecar {
        Self::start_with(lab, ns, server, key, hostname, &[])
    }

    /// `start`, with more `up` flags.
    pub fn start_with(
        lab: &Lab,
        ns: &Ns,
        server: &Server,
        key: &str,
        hostname: &str,
        extra: &[&str],
    ) -> Sidecar {
        let state = lab.subdir(hostname).expect("state dir");
        let log = state.join("sidecar.log");
        lab.register_log(&log);
        let spec = UpSpec {
            ns: ns.clone(),
            state,
            hostname: hostname.into(),
            log,
            key: key.into(),
            url: server.url(),
            ca: server.ca().to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        Sidecar {
            proc: spec.spawn(),
            ns: ns.clone(),
            state: spec.state.clone(),
            hostname: hostname.into(),
            spec,
        }
    }

    /// SIGTERM, wait, and start again with the same state dir.
    pub fn restart(&mut self) {
        self.proc
            .stop(Duration::from_secs(10))
            .expect("sidecar stops");
        self.proc = self.spec.spawn();
    }

    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ns.command(SIDECAR);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        meshscale_e2e::cmd::run_ok(&mut cmd, Duration::from_secs(30))
    }

    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "--json"])?)?)
    }

    /// Our (IPv4, IPv6) mesh addresses, once the tunnel is up.
    pub fn wait_ips(&self) -> (String, String) {
        eventually(
            &format!("{} to have its addresses", self.hostname),
            CONVERGE,
            || {
                let out = self.cli(&["ip"])?;
                let v4 = out.lines().find(|l| l.starts_with("100."));
                let v6 = out.lines().find(|l| l.contains(':'));
                match (v4, v6) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => anyhow::bail!("no addresses yet: {out:?}"),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", self.proc.log_text()))
    }

    /// Polls `status` until it names `peer`.
    pub fn wait_peer(&self, peer: &str, timeout: Duration) -> String {
        eventually(&format!("{} to see {peer}", self.hostname), timeout, || {
            let st = self.cli(&["status"])?;
            anyhow::ensure!(st.contains(peer), "{st}");
            Ok(st)
        })
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// `GET /healthz` inside the sidecar's namespace: the HTTP status code.
    pub fn healthz(&self) -> anyhow::Result<String> {
        let mut c = self.ns.command("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "http://127.0.0.1:9099/healthz",
        ]);
        meshscale_e2e::cmd::run_ok(&mut c, Duration::from_secs(10))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.proc.stop(Duration::from_secs(5));
    }
}

/// Hosts on one LAN with the server at 10.2.0.1.
pub struct LanWorld {
    pub server: Server,
    pub hosts: Vec<Ns>,
    pub lab: Lab,
}

pub fn lan(test: &str, tools: &Tools, hosts: usize) -> LanWorld {
    lan_with(test, tools, hosts, "")
}

/// [`lan`] with `extra_yaml` appended to the server's config.
pub fn lan_with(test: &str, tools: &Tools, hosts: usize, extra_yaml: &str) -> LanWorld {
    let lab = Lab::new(test).expect("lab");
    let sw = lab.switch("lan").expect("switch");
    let srv = lab.host("srv", &sw, "10.2.0.1/24").expect("srv ns");
    let hosts = (0..hosts)
        .map(|i| {
            lab.host(
                &format!("n{}", i + 1),
                &sw,
                &format!("10.2.0.{}/24", 11 + i),
            )
            .expect("host ns")
        })
        .collect();
    let server = Server::start(&lab, tools, &srv, "10.2.0.1", extra_yaml).expect("server");
    server.create_user("vpn1").expect("user");
    LanWorld { server, hosts, lab }
}

/// Two LANs, each behind its own NAT router (masquerade), the server on
/// the "internet" segment between them:
///
/// ```text
///  n1 192.168.1.2 ── r1 (wan 10.200.0.11) ─┐
///                                          ├─ wan ── srv 10.200.0.1
///  n2 192.168.2.2 ── r2 (wan 10.200.0.12) ─┘
/// ```
pub struct NatWorld {
    pub server: Server,
    pub n1: Ns,
    pub n2: Ns,
    pub routers: Vec<Ns>,
    pub lab: Lab,
}

pub fn nat(test: &str, tools: &Tools) -> NatWorld {
    let lab = Lab::new(test).expect("lab");
    let wan = lab.switch("wan").expect("WAN switch");
    let srv = lab.host("srv", &wan, "10.200.0.1/24").expect("srv ns");
    let mut routers = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let r = lab
            .nat_router(&format!("r{i}"), &wan, &format!("10.200.0.{}/24", 10 + i))
            .expect("NAT router");
        let n = lab.namespace(&format!("n{i}")).expect("node ns");
        lab.link(
            (&r, "lan0", &format!("192.168.{i}.1/24")),
            (&n, "eth0", &format!("192.168.{i}.2/24")),
        )
        .expect("LAN link");
        n.default_route(&format!("192.168.{i}.1"))
            .expect("default route");
        routers.push(r);
        nodes.push(n);
    }
    let server = Server::start(&lab, tools, &srv, "10.200.0.1", "").expect("server");
    server.create_user("vpn1").expect("user");
    let n2 = nodes.pop().expect("two nodes");
    let n1 = nodes.pop().expect("two nodes");
    NatWorld {
        server,
        n1,
        n2,
        routers,
        lab,
    }
}

//! Acceptance scenario 5 of the node protocol: one official client
//! (`tailscaled` v1.96) and one client built on the `tailscale` crate
//! (tailscale-rs, this crate's `meshscale-tsrs-peer`) join the same Meshscale
//! server and reach each other over TCP, both ways.
//!
//! Topology, every box its own network namespace, all plugged into a bridge
//! in a `sw` namespace, no route anywhere else:
//!
//! ```text
//!   srv 10.231.0.1  meshscale serve (HTTPS + DERP :8443, STUN :3478)
//!   n1  10.231.0.2  tailscaled (TUN), hostname nodo1, TCP echo :7001
//!   rs  10.231.0.3  meshscale-tsrs-peer (userspace netstack), hostname tsrs1, TCP echo :7000
//! ```
//!
//! Two tests: one on the flat LAN (the clients may find a direct UDP path),
//! one where `n1` and `rs` drop UDP between each other, so every packet must
//! go through the server's DERP relay.
//!
//! DERP and trust: tailscale-rs trusts only the compiled-in public roots and,
//! for DERP, offers no seam but the `InsecureForTests` node flag. So the
//! embedded region (999) is announced unreachable (`IPv4`/`IPv6` `none`) and
//! region 900, from a `derp.paths` file, points at the same embedded relay
//! with `InsecureForTests`; both clients then home on 900. The tailscale-rs
//! peer's control connection is still certificate-checked against the test
//! CA (see the peer's docs).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use support::{EchoServer, Lab, LineProc, Ns, Output, Proc, SHORT, Tools, eventually, run, run_ok};

const SUBNET: &str = "10.231.0";
const SERVER_PORT: u16 = 8443;
const STUN_PORT: u16 = 3478;
/// The DERP region of the derp.paths file, and its code as tailscaled shows it.
const DERP_REGION: u16 = 900;
const DERP_REGION_CODE: &str = "tsrs-test";
/// Where the tailscale-rs peer serves its echo (on its tailnet address).
const TSRS_ECHO_PORT: u16 = 7000;
/// Where the official node's namespace serves an echo (reached through its TUN).
const OFFICIAL_ECHO_PORT: u16 = 7001;
/// Joining, first netmap, DERP connections: generous for a loaded 2-core CI.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Traffic both ways: the first packets may wait for WireGuard handshakes
/// over DERP and for each side to learn the other's home region.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
fn official_client_and_tailscale_rs_reach_each_other() {
    run_test("interop", Path::Any);
}

#[test]
fn official_client_and_tailscale_rs_reach_each_other_through_derp_only() {
    run_test("interop-derp", Path::DerpOnly);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Whatever the clients find (a direct path on this flat LAN).
    Any,
    /// Direct UDP between the two clients is dropped: DERP must carry it all.
    DerpOnly,
}

fn run_test(name: &str, path: Path) {
    let Some(tools) = Tools::find() else { return };
    let mut lab = match Lab::new(name) {
        Ok(lab) => lab,
        Err(e) => panic!("{e:#}"),
    };
    // The panic happens while the lab is alive, so its drop prints the logs.
    if let Err(e) = scenario(&mut lab, &tools, path) {
        panic!("{e:#}");
    }
}

#[derive(Debug, Deserialize)]
struct PreAuthKey {
    key: String,
}

#[derive(Debug, Deserialize)]
struct NodeInfo {
    given_name: String,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    online: bool,
}

fn scenario(lab: &mut Lab, tools: &Tools, path: Path) -> anyhow::Result<()> {
    let sw = lab.switch("sw")?;
    let srv_ip = format!("{SUBNET}.1");
    let n1_lan = format!("{SUBNET}.2");
    let rs_lan = format!("{SUBNET}.3");
    let srv = lab.host("srv", &sw, &format!("{srv_ip}/24"))?;
    let n1 = lab.host("n1", &sw, &format!("{n1_lan}/24"))?;
    let rs = lab.host("rs", &sw, &format!("{rs_lan}/24"))?;
    if path == Path::DerpOnly {
        block_udp_except_to(&n1, &srv_ip)?;
        block_udp_except_to(&rs, &srv_ip)?;
    }

    let server = Server::start(lab, tools, &srv, &srv_ip)?;
    server.wait_ready(&n1)?;
    server.cli(&["users", "create", "vpn1"])?;
    let key: PreAuthKey = serde_json::from_str(&server.cli(&[
        "preauthkeys",
        "create",
        "--user",
        "vpn1",
        "--reusable",
        "--expiration",
        "1h",
        "-o",
        "json",
    ])?)
    .context("preauthkeys create -o json printed no key")?;

    // --- the official client ---
    let official = Official::start(lab, tools, &n1, &server, "nodo1")?;
    official.up(&server, &key.key)?;
    let n1_ip = official.ipv4()?;
    let _official_echo = EchoServer::start(
        &n1,
        format!("{n1_ip}:{OFFICIAL_ECHO_PORT}")
            .parse()
            .context("official echo address")?,
    )?;

    // --- the tailscale-rs peer ---
    let rs_dir = lab.subdir("tsrs1")?;
    let rs_log = rs_dir.join("peer.log");
    lab.register_log(&rs_log);
    let mut peer_cmd = rs.command(&tools.tsrs_peer);
    peer_cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &rs_dir)
        .env("RUST_LOG", "info,ts_control=debug,ts_runtime=debug")
        .env("MESHSCALE_TSRS_AUTH_KEY", &key.key)
        .arg(format!("--control-url={}", server.url))
        .arg(format!("--ca-file={}", server.ca.display()))
        .arg("--hostname=tsrs1")
        .arg(format!("--state-dir={}", rs_dir.display()))
        .arg(format!("--echo-port={TSRS_ECHO_PORT}"));
    let mut peer = LineProc::spawn("meshscale-tsrs-peer tsrs1", peer_cmd, &rs_log)?;
    let ready = peer.expect(&["READY", "FAILED"], JOIN_TIMEOUT)?;
    let rs_ip = ready
        .strip_prefix("READY ")
        .with_context(|| format!("the tailscale-rs peer did not join: {ready}"))?
        .trim()
        .to_string();

    // The server lists both, online, with the addresses they use.
    eventually(
        "the server to list nodo1 and tsrs1 online",
        JOIN_TIMEOUT,
        || {
            let nodes: Option<Vec<NodeInfo>> =
                serde_json::from_str(&server.cli(&["nodes", "list", "-o", "json"])?)?;
            let nodes = nodes.unwrap_or_default();
            for (name, ip) in [("nodo1", &n1_ip), ("tsrs1", &rs_ip)] {
                let n = nodes
                    .iter()
                    .find(|n| n.given_name == name)
                    .with_context(|| format!("{name} not listed: {nodes:?}"))?;
                anyhow::ensure!(n.online, "{name} is offline: {n:?}");
                anyhow::ensure!(
                    n.ip_addresses.contains(ip),
                    "{name} does not have {ip}: {n:?}"
                );
            }
            Ok(())
        },
    )?;

    // Official client -> tailscale-rs: a kernel TCP socket in nodo1's
    // namespace, through tailscaled's TUN, to the userspace netstack's echo.
    let rs_echo = format!("{rs_ip}:{TSRS_ECHO_PORT}")
        .parse()
        .context("tsrs echo address")?;
    eventually(
        "nodo1 to reach the tailscale-rs echo",
        TRAFFIC_TIMEOUT,
        || support::tcp_echo_check(&n1, rs_echo, 64 * 1024),
    )?;
    peer.expect(&["ACCEPTED"], SHORT)?;

    // tailscale-rs -> official client: the peer dials the echo in nodo1's
    // namespace on nodo1's tailnet address.
    let n1_echo = format!("{n1_ip}:{OFFICIAL_ECHO_PORT}");
    eventually("tsrs1 to reach nodo1's echo", TRAFFIC_TIMEOUT, || {
        peer.send(&format!("dial {n1_echo} 65536"))?;
        let line = peer.expect(&["ECHO "], Duration::from_secs(30))?;
        anyhow::ensure!(line.starts_with("ECHO OK"), "{line}");
        Ok(())
    })?;

    // Each side knows the other as the server announced it.
    peer.send(&format!("peer {n1_ip}"))?;
    let line = peer.expect(&["PEER", "NOPEER", "ERROR"], SHORT)?;
    anyhow::ensure!(
        line == format!("PEER {n1_ip} nodo1"),
        "tsrs1's view of nodo1: {line}"
    );
    let seen = official.peer_with_ip(&rs_ip)?;
    eprintln!(
        "nodo1 sees tsrs1 ({rs_ip}): HostName={} DNSName={} Relay={} CurAddr={} Online={}",
        seen["HostName"], seen["DNSName"], seen["Relay"], seen["CurAddr"], seen["Online"]
    );
    anyhow::ensure!(
        seen["DNSName"]
            .as_str()
            .is_some_and(|n| n.starts_with("tsrs1.")),
        "nodo1 does not know tsrs1 by name: {seen}"
    );
    if path == Path::DerpOnly {
        // The relay is how nodo1 reaches tsrs1's home region: it is only
        // known if the server passed on tsrs1's preferred DERP.
        anyhow::ensure!(
            seen["Relay"] == DERP_REGION_CODE && seen["CurAddr"] == "",
            "nodo1 should reach tsrs1 through DERP {DERP_REGION_CODE} only: {seen}"
        );
    }

    peer.send("quit")?;
    peer.expect(&["BYE"], SHORT)?;
    peer.finish();
    server.ensure_alive()
}

/// Drops UDP leaving or entering `ns` for anything but `server` (STUN), on
/// IPv4 and IPv6 (link-local included), in that namespace's own netfilter:
/// the clients then cannot find a direct path to each other.
fn block_udp_except_to(ns: &Ns, server: &str) -> anyhow::Result<()> {
    ns.nft(&format!(
        "table inet tsrs_no_direct {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\toifname \"eth0\" meta l4proto udp ip daddr != {server} drop\n\
         \t\toifname \"eth0\" meta nfproto ipv6 meta l4proto udp drop\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiifname \"eth0\" meta l4proto udp ip saddr != {server} drop\n\
         \t\tiifname \"eth0\" meta nfproto ipv6 meta l4proto udp drop\n\
         \t}}\n\
         }}\n"
    ))
}

/// `meshscale serve` in its namespace, HTTPS with a throwaway CA.
struct Server {
    proc: std::cell::RefCell<Proc>,
    meshscale: PathBuf,
    config: PathBuf,
    ca: PathBuf,
    url: String,
}

impl Server {
    fn start(lab: &mut Lab, tools: &Tools, ns: &Ns, ip: &str) -> anyhow::Result<Server> {
        let dir = lab.subdir("server")?;
        let (ca, cert, key) = support::write_certs(&dir, ip)?;
        let derp_file = dir.join("derp-tsrs.json");
        std::fs::write(&derp_file, derp_map_json(ip))?;
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "server_url: https://{ip}:{SERVER_PORT}\n\
                 listen_addr: {ip}:{SERVER_PORT}\n\
                 metrics_listen_addr: 127.0.0.1:9090\n\
                 grpc_listen_addr: \"\"\n\
                 tls_cert_path: {cert}\n\
                 tls_key_path: {key}\n\
                 data_dir: {data}\n\
                 unix_socket: {socket}\n\
                 derp:\n\
                 \x20 server:\n\
                 \x20   stun_listen_addr: {ip}:{STUN_PORT}\n\
                 \x20   ipv4: none\n\
                 \x20   ipv6: none\n\
                 \x20 paths:\n\
                 \x20   - {derp}\n\
                 log:\n\
                 \x20 level: debug\n",
                cert = cert.display(),
                key = key.display(),
                data = dir.join("data").display(),
                socket = dir.join("run/meshscale.sock").display(),
                derp = derp_file.display(),
            ),
        )?;
        let log = dir.join("server.log");
        lab.register_log(&log);
        let mut cmd = ns.command(&tools.meshscale);
        cmd.arg("-c").arg(&config).arg("serve").env("NO_COLOR", "1");
        Ok(Server {
            proc: std::cell::RefCell::new(Proc::spawn("meshscale serve", cmd, &log)?),
            meshscale: tools.meshscale.clone(),
            config,
            ca,
            url: format!("https://{ip}:{SERVER_PORT}"),
        })
    }

    /// Waits until `/health` answers over TLS from `from` and the admin CLI works.
    fn wait_ready(&self, from: &Ns) -> anyhow::Result<()> {
        eventually(
            "the server to answer /health over TLS and the admin CLI",
            SHORT,
            || {
                self.ensure_alive()?;
                let health = run_ok(
                    from.command("curl")
                        .args(["--silent", "--show-error", "--fail", "--max-time", "5"])
                        .arg("--cacert")
                        .arg(&self.ca)
                        .arg(format!("{}/health", self.url)),
                    SHORT,
                )?;
                anyhow::ensure!(health.contains("pass"), "/health said {health}");
                self.cli(&["users", "list"]).map(|_| ())
            },
        )
    }

    fn ensure_alive(&self) -> anyhow::Result<()> {
        match self.proc.borrow_mut().exited() {
            Some(status) => anyhow::bail!("meshscale serve exited ({status}); see server.log"),
            None => Ok(()),
        }
    }

    /// The admin CLI over the server's unix socket (a file in the lab dir,
    /// so it works from the host namespace).
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        run_ok(
            Command::new(&self.meshscale)
                .arg("-c")
                .arg(&self.config)
                .args(args),
            SHORT,
        )
    }
}

/// One official `tailscaled` in its namespace, with its own state, socket
/// and TUN, and no log uploads.
struct Official {
    ns: Ns,
    dir: PathBuf,
    socket: PathBuf,
    tailscale: PathBuf,
    ca: PathBuf,
    hostname: String,
    _daemon: Proc,
}

impl Official {
    fn start(
        lab: &mut Lab,
        tools: &Tools,
        ns: &Ns,
        server: &Server,
        hostname: &str,
    ) -> anyhow::Result<Official> {
        let dir = lab.subdir(hostname)?;
        let log = dir.join("tailscaled.log");
        lab.register_log(&log);
        let socket = dir.join("tailscaled.sock");
        let mut cmd = ns.command(&tools.tailscaled);
        cmd.arg("--no-logs-no-support")
            .arg(format!("--statedir={}", dir.display()))
            .arg(format!(
                "--state={}",
                dir.join("tailscaled.state").display()
            ))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tun=ts-{hostname}"))
            .arg("--port=41641")
            // A TPM, if the machine has one, is not the test's to use.
            .arg("--encrypt-state=false");
        client_env(&mut cmd, &dir, &server.ca);
        let daemon = Proc::spawn(&format!("tailscaled {hostname}"), cmd, &log)?;
        let node = Official {
            ns: ns.clone(),
            dir,
            socket,
            tailscale: tools.tailscale.clone(),
            ca: server.ca.clone(),
            hostname: hostname.to_string(),
            _daemon: daemon,
        };
        eventually("tailscaled to answer on its socket", SHORT, || {
            let out = node.cli(&["status", "--json"], SHORT)?;
            // `status` exits non-zero while logged out but still prints JSON.
            serde_json::from_str::<serde_json::Value>(&out.stdout)
                .with_context(|| format!("no status yet: {}", out.combined()))
                .map(|_| ())
        })?;
        Ok(node)
    }

    fn cli(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let mut c = self.ns.command(&self.tailscale);
        client_env(&mut c, &self.dir, &self.ca);
        c.arg(format!("--socket={}", self.socket.display()))
            .args(args);
        run(&mut c, timeout)
    }

    fn up(&self, server: &Server, key: &str) -> anyhow::Result<()> {
        let out = self.cli(
            &[
                "up",
                &format!("--login-server={}", server.url),
                &format!("--auth-key={key}"),
                &format!("--hostname={}", self.hostname),
                // tailscaled must never touch the machine's resolv.conf.
                "--accept-dns=false",
                "--timeout=60s",
            ],
            JOIN_TIMEOUT,
        )?;
        anyhow::ensure!(
            out.ok,
            "`tailscale up` on {} failed ({}):\n{}",
            self.hostname,
            out.status,
            out.combined()
        );
        Ok(())
    }

    fn ipv4(&self) -> anyhow::Result<String> {
        eventually("the official node to have a tailnet IPv4", SHORT, || {
            let out = self.cli(&["ip", "-4"], SHORT)?;
            anyhow::ensure!(out.ok, "tailscale ip -4: {}", out.combined());
            let ip = out.stdout.trim().to_string();
            anyhow::ensure!(!ip.is_empty(), "no address yet");
            Ok(ip)
        })
    }

    /// The entry of `tailscale status --json` for the peer that has `ip`.
    fn peer_with_ip(&self, ip: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"], SHORT)?;
        let status: serde_json::Value =
            serde_json::from_str(&out.stdout).context("tailscale status --json")?;
        status["Peer"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .find(|p| {
                p["TailscaleIPs"]
                    .as_array()
                    .is_some_and(|ips| ips.iter().any(|a| a == ip))
            })
            .cloned()
            .with_context(|| format!("{} lists no peer with {ip}: {status}", self.hostname))
    }
}

/// A clean environment for tailscaled and its CLI: the test CA as the only
/// trust root, no log uploads, caches and config inside the test dir.
fn client_env(cmd: &mut Command, dir: &std::path::Path, ca: &std::path::Path) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("TS_NO_LOGS_NO_SUPPORT", "true")
        .env("SSL_CERT_FILE", ca)
        .env("SSL_CERT_DIR", dir.join("no-cert-dir"));
}

/// One DERP region served by the embedded relay, marked `InsecureForTests`
/// so tailscale-rs (built with `insecure-derp`) accepts the test CA's cert.
fn derp_map_json(ip: &str) -> String {
    serde_json::json!({
        "Regions": {
            DERP_REGION.to_string(): {
                "RegionID": DERP_REGION,
                "RegionCode": DERP_REGION_CODE,
                "RegionName": "Embedded relay, for tailscale-rs",
                "Nodes": [{
                    "Name": format!("{DERP_REGION}a"),
                    "RegionID": DERP_REGION,
                    "HostName": ip,
                    "IPv4": ip,
                    "IPv6": "none",
                    "STUNPort": STUN_PORT,
                    "DERPPort": SERVER_PORT,
                    "InsecureForTests": true
                }]
            }
        }
    })
    .to_string()
}

//! The sidecar next to the official client: one `meshscale-sidecar up` and
//! one `tailscaled`, each in its own network namespace on one LAN with the
//! server; ICMP passes between their 100.64 addresses both ways.
//!
//! Reuses the e2e harness (namespaces, server, tailscaled; everything torn
//! down on drop, nothing in the host namespace). Needs root and the tools of
//! `e2e/setup.sh`; fails clearly without them unless `MESHSCALE_E2E_SKIP=1`.

use std::time::Duration;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::process::Proc;
use meshscale_e2e::{Lab, Ns, Server, Tools, TsNode, traffic};

const SIDECAR: &str = env!("CARGO_BIN_EXE_meshscale-sidecar");
const CONVERGE: Duration = Duration::from_secs(40);

/// The sidecar process; stopped before the lab's namespaces go away.
struct Sidecar {
    proc: Proc,
    ns: Ns,
    state: std::path::PathBuf,
}

impl Sidecar {
    fn start(lab: &Lab, ns: &Ns, server: &Server, key: &str, hostname: &str) -> Sidecar {
        let state = lab.subdir(hostname).expect("state dir");
        let log = state.join("sidecar.log");
        lab.register_log(&log);
        let mut cmd = ns.command(SIDECAR);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MESHSCALE_LOG", "info,meshscale_sidecar=debug")
            .env("MESHSCALE_AUTHKEY", key)
            .arg("--state-dir")
            .arg(&state)
            .arg("up")
            .arg("--login-server")
            .arg(server.url())
            .arg("--hostname")
            .arg(hostname)
            .arg("--ca-file")
            .arg(server.ca());
        let proc = Proc::spawn(&format!("sidecar {hostname}"), cmd, &log).expect("spawn sidecar");
        Sidecar {
            proc,
            ns: ns.clone(),
            state,
        }
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ns.command(SIDECAR);
        cmd.arg("--state-dir").arg(&self.state).args(args);
        meshscale_e2e::cmd::run_ok(&mut cmd, Duration::from_secs(20))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.proc.stop(Duration::from_secs(5));
    }
}

fn tools() -> Option<Tools> {
    Tools::detect().unwrap_or_else(|e| panic!("e2e prerequisites missing: {e:#}"))
}

#[test]
fn sidecar_and_official_client_exchange_icmp() {
    run(false);
}

/// All UDP dropped in the sidecar's namespace: only the DERP relay (TLS
/// over TCP) can carry WireGuard.
#[test]
fn sidecar_and_official_client_over_derp_only() {
    run(true);
}

fn run(block_udp: bool) {
    let Some(tools) = tools() else { return };
    // Field drop order matters: declared first, dropped last.
    let lab = Lab::new("sidecar-official").expect("lab");
    let lan = lab.switch("lan").expect("switch");
    let srv = lab.host("srv", &lan, "10.1.0.1/24").expect("srv ns");
    let h1 = lab.host("n1", &lan, "10.1.0.11/24").expect("n1 ns");
    let h2 = lab.host("n2", &lan, "10.1.0.12/24").expect("n2 ns");
    if block_udp {
        h2.nft(
            "table inet block {\n\
               chain in { type filter hook input priority 0; meta l4proto udp drop; }\n\
               chain out { type filter hook output priority 0; meta l4proto udp drop; }\n}\n",
        )
        .expect("block UDP in n2");
    }
    let server = Server::start(&lab, &tools, &srv, "10.1.0.1", "").expect("server");
    server.create_user("vpn1").expect("user");
    let key = server.create_key("vpn1", &["--reusable"]).expect("key");

    let ts = TsNode::start(&lab, &tools, &h1, "nodo1", &server).expect("tailscaled");
    ts.join(&server, &key.key).expect("nodo1 joins");
    let sc = Sidecar::start(&lab, &h2, &server, &key.key, "side2");

    // The sidecar registers, gets its addresses and brings the TUN up.
    let sc_ip = eventually("sidecar has a 100.64 address", CONVERGE, || {
        let out = sc.cli(&["ip", "-4"])?;
        let ip = out.trim().to_string();
        anyhow::ensure!(ip.starts_with("100.64."), "no address yet: {out:?}");
        Ok(ip)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sc.proc.log_text()));
    let (ts_ip, _) = ts.addresses().expect("tailscaled addresses");
    ts.wait_peer_online("side2", CONVERGE)
        .expect("tailscaled sees the sidecar");

    traffic::ping_eventually(&h1, &sc_ip, 3, CONVERGE)
        .unwrap_or_else(|e| panic!("tailscaled -> sidecar: {e:#}\n{}", sc.proc.log_text()));
    traffic::ping_eventually(&h2, &ts_ip, 3, CONVERGE)
        .unwrap_or_else(|e| panic!("sidecar -> tailscaled: {e:#}\n{}", sc.proc.log_text()));

    let status = sc.cli(&["status"]).expect("status");
    assert!(status.contains("nodo1"), "{status}");
    // Like `tailscale ping`, ours stops at the first direct pong and fails
    // when none comes; over DERP only, ask for plain pings.
    let ping = if block_udp {
        sc.cli(&["ping", "-c", "3", "--until-direct=false", "nodo1"])
    } else {
        sc.cli(&["ping", "-c", "10", "nodo1"])
    }
    .expect("ping");
    assert!(ping.contains("pong from nodo1"), "{ping}");
    if block_udp {
        assert!(status.contains("relay \"meshscale\""), "{status}");
        assert!(ping.contains("via DERP(meshscale)"), "{ping}");
    } else {
        assert!(ping.contains("via 10.1.0.11:"), "{ping}");
    }
    eprintln!("status:\n{status}\nping:\n{ping}");
    drop(sc);
    drop(ts);
    drop(server);
}

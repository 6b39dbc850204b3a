//! Scenario 1: two official clients on one LAN join with a pre-auth key,
//! see each other, find a direct path, and carry ICMP and TCP over both
//! address families.

use std::path::Path;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::tailscale::{PongPath, pong_paths};
use meshscale_e2e::{TsNode, traffic};

use crate::common::{CONVERGE, Clock, LanWorld, TCP_TOOL, lan_host_ip, node, tools};

/// Bytes pushed through TCP (each way) per address family.
const STREAM_BYTES: u64 = 4 * 1024 * 1024;

#[test]
fn two_nodes_on_one_lan_join_and_talk() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = LanWorld::new("lan", &tools, 2, "");
    let s = &w.server;
    s.create_user("vpn1").expect("users create");
    let key = s.create_key("vpn1", &["--reusable"]).expect("key");
    clock.mark("server up");

    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled 1");
    let n2 = TsNode::start(&w.lab, &tools, &w.hosts[1], "nodo2", s).expect("tailscaled 2");
    // One after the other, so the addresses are predictable.
    n1.join(s, &key.key).expect("nodo1 joins");
    n2.join(s, &key.key).expect("nodo2 joins");
    clock.mark("both joined");

    // The server's view: both nodes, sequential addresses, online.
    let nodes = eventually("both nodes online in `nodes list`", CONVERGE, || {
        let nodes = s.nodes()?;
        for name in ["nodo1", "nodo2"] {
            let n = node(&nodes, name).ok_or_else(|| anyhow::anyhow!("{name} missing"))?;
            anyhow::ensure!(n.online, "{name} offline: {n:?}");
        }
        Ok(nodes)
    })
    .expect("nodes list");
    assert_eq!(nodes.len(), 2, "{nodes:#?}");
    for (name, i) in [("nodo1", 1), ("nodo2", 2)] {
        let n = node(&nodes, name).expect("listed");
        assert_eq!(
            n.ip_addresses,
            [format!("100.64.0.{i}"), format!("fd7a:115c:a1e0::{i}")],
            "{name}"
        );
        assert_eq!(n.user.as_ref().map(|u| u.name.as_str()), Some("vpn1"));
    }

    // The clients' view: each lists the other, online, with those addresses.
    let p2 = n1
        .wait_peer_online("nodo2", CONVERGE)
        .expect("nodo1 sees nodo2");
    let p1 = n2
        .wait_peer_online("nodo1", CONVERGE)
        .expect("nodo2 sees nodo1");
    assert_eq!(p2.ips(), ["100.64.0.2", "fd7a:115c:a1e0::2"]);
    assert_eq!(p1.ips(), ["100.64.0.1", "fd7a:115c:a1e0::1"]);
    assert_eq!(
        n1.addresses().expect("own addresses"),
        ("100.64.0.1".to_string(), "fd7a:115c:a1e0::1".to_string())
    );
    clock.mark("both see each other");

    // `tailscale ping` by name answers, and on a LAN ends on the direct path.
    let direct = eventually("a direct pong from nodo2", CONVERGE, || {
        let out = n1.ping("nodo2", &["-c", "10"])?;
        let paths = pong_paths(&out.stdout);
        paths
            .iter()
            .find_map(|p| match p {
                PongPath::Direct(addr) => Some(addr.clone()),
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("no direct pong:\n{}", out.combined()))
    })
    .expect("tailscale ping");
    assert!(
        direct.starts_with(&format!("{}:", lan_host_ip(1))),
        "direct path {direct} is not nodo2's LAN address"
    );
    clock.mark(&format!("tailscale ping direct via {direct}"));

    // ICMP and a checked TCP stream, over IPv4 and IPv6, both directions for ICMP.
    let _echo = traffic::start_echo(&w.lab, Path::new(TCP_TOOL), n2.ns(), "echo-nodo2")
        .expect("echo server");
    for (from, to) in [
        (&n1, "100.64.0.2"),
        (&n2, "100.64.0.1"),
        (&n1, "fd7a:115c:a1e0::2"),
        (&n2, "fd7a:115c:a1e0::1"),
    ] {
        traffic::ping_eventually(from.ns(), to, 3, CONVERGE)
            .unwrap_or_else(|e| panic!("ICMP {} -> {to}: {e:#}", from.hostname()));
    }
    clock.mark("ICMP v4+v6 both ways");
    for to in ["100.64.0.2", "fd7a:115c:a1e0::2"] {
        let summary = traffic::tcp_echo(Path::new(TCP_TOOL), n1.ns(), to, STREAM_BYTES)
            .unwrap_or_else(|e| panic!("TCP to {to}: {e:#}"));
        clock.mark(&format!("TCP {to}: {}", summary.trim()));
    }
}

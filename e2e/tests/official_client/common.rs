//! Worlds shared by the scenarios: a flat LAN, and two NATed LANs behind a
//! common "internet" segment. Both hold the server; the tests add nodes.

use std::time::{Duration, Instant};

use meshscale_e2e::server::NodeInfo;
use meshscale_e2e::{Lab, Ns, Server, Tools};

/// The echo tool built with this crate.
pub const TCP_TOOL: &str = env!("CARGO_BIN_EXE_meshscale-e2e-tcp");

/// How long the control plane may take to show a change (a join, a peer
/// coming online, a removal) everywhere.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The prerequisites, or `None` when skipped; a missing one fails the test.
pub fn tools() -> Option<Tools> {
    Tools::detect().unwrap_or_else(|e| panic!("e2e prerequisites missing: {e:#}"))
}

/// Prints how long a step took (visible with `--nocapture`, and in the
/// output of a failing test).
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    pub fn mark(&self, step: &str) {
        eprintln!("e2e [{:6.1}s] {step}", self.0.elapsed().as_secs_f64());
    }
}

/// The server and `hosts` node namespaces on one bridge, 10.1.0.0/24:
/// server 10.1.0.1, hosts 10.1.0.11, .12, ...
/// Fields drop in order: the server stops before the lab goes away.
pub struct LanWorld {
    pub server: Server,
    pub hosts: Vec<Ns>,
    pub lab: Lab,
}

pub const LAN_SERVER_IP: &str = "10.1.0.1";

pub fn lan_host_ip(i: usize) -> String {
    format!("10.1.0.{}", 11 + i)
}

impl LanWorld {
    pub fn new(test: &str, tools: &Tools, hosts: usize, extra_yaml: &str) -> LanWorld {
        let lab = Lab::new(test).expect("lab");
        let lan = lab.switch("lan").expect("LAN switch");
        let srv = lab
            .host("srv", &lan, &format!("{LAN_SERVER_IP}/24"))
            .expect("server namespace");
        let hosts = (0..hosts)
            .map(|i| {
                lab.host(
                    &format!("n{}", i + 1),
                    &lan,
                    &format!("{}/24", lan_host_ip(i)),
                )
                .expect("node namespace")
            })
            .collect();
        let server =
            Server::start(&lab, tools, &srv, LAN_SERVER_IP, extra_yaml).expect("start meshscale");
        LanWorld { server, hosts, lab }
    }
}

/// Two private LANs, each behind its own NAT router, and the server on the
/// "internet" segment between the routers (10.200.0.0/24):
///
/// ```text
///  n1 192.168.1.2 ── r1 (192.168.1.1 | wan 10.200.0.11) ─┐
///                                                        ├─ wan bridge ── srv 10.200.0.1
///  n2 192.168.2.2 ── r2 (192.168.2.1 | wan 10.200.0.12) ─┘
/// ```
///
/// The nodes' default route points at their router; the routers and the
/// server have no default route at all.
pub struct NatWorld {
    pub server: Server,
    pub n1: Ns,
    pub n2: Ns,
    pub r1: Ns,
    pub r2: Ns,
    pub lab: Lab,
}

pub const WAN_SERVER_IP: &str = "10.200.0.1";
pub const R1_WAN_IP: &str = "10.200.0.11";
pub const R2_WAN_IP: &str = "10.200.0.12";

impl NatWorld {
    pub fn new(test: &str, tools: &Tools) -> NatWorld {
        let lab = Lab::new(test).expect("lab");
        let wan = lab.switch("wan").expect("WAN switch");
        let srv = lab
            .host("srv", &wan, &format!("{WAN_SERVER_IP}/24"))
            .expect("server namespace");
        let mut routed = Vec::new();
        for (i, wan_ip) in [(1, R1_WAN_IP), (2, R2_WAN_IP)] {
            let r = lab
                .nat_router(&format!("r{i}"), &wan, &format!("{wan_ip}/24"))
                .expect("NAT router");
            let n = lab.namespace(&format!("n{i}")).expect("node namespace");
            lab.link(
                (&r, "lan0", &format!("192.168.{i}.1/24")),
                (&n, "eth0", &format!("192.168.{i}.2/24")),
            )
            .expect("LAN link");
            n.default_route(&format!("192.168.{i}.1"))
                .expect("default route to the router");
            routed.push((r, n));
        }
        let server = Server::start(&lab, tools, &srv, WAN_SERVER_IP, "").expect("start meshscale");
        let (r2, n2) = routed.pop().expect("two LANs");
        let (r1, n1) = routed.pop().expect("two LANs");
        NatWorld {
            server,
            n1,
            n2,
            r1,
            r2,
            lab,
        }
    }
}

/// The node named `name` in `nodes list`.
pub fn node<'a>(nodes: &'a [NodeInfo], name: &str) -> Option<&'a NodeInfo> {
    nodes
        .iter()
        .find(|n| n.given_name == name || n.name == name)
}

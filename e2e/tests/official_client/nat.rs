//! Scenarios 2 and 3: two nodes behind two separate NAT routers. With UDP
//! between the NATs allowed, the first pongs come through our DERP relay and
//! then hole punching finds a direct path. With UDP between the NATs
//! dropped, everything still flows, relayed by DERP.

use std::path::Path;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::tailscale::{PongPath, pong_paths};
use meshscale_e2e::{Server, Tools, TsNode, cmd, traffic};

use crate::common::{CONVERGE, Clock, NatWorld, R1_WAN_IP, R2_WAN_IP, TCP_TOOL, tools};

/// The region code of the embedded relay (`derp.server.region_code`).
const DERP_REGION: &str = "meshscale";

/// Both nodes joined (nodo1 behind r1, nodo2 behind r2), seeing each other.
fn join_both(w: &NatWorld, tools: &Tools, clock: &Clock) -> (TsNode, TsNode) {
    let s: &Server = &w.server;
    s.create_user("vpn1").expect("users create");
    let key = s.create_key("vpn1", &["--reusable"]).expect("key");
    let n1 = TsNode::start(&w.lab, tools, &w.n1, "nodo1", s).expect("tailscaled 1");
    let n2 = TsNode::start(&w.lab, tools, &w.n2, "nodo2", s).expect("tailscaled 2");
    n1.join(s, &key.key).expect("nodo1 joins");
    n2.join(s, &key.key).expect("nodo2 joins");
    n1.wait_peer_online("nodo2", CONVERGE)
        .expect("nodo1 sees nodo2");
    n2.wait_peer_online("nodo1", CONVERGE)
        .expect("nodo2 sees nodo1");
    clock.mark("both joined behind their NATs and see each other");
    (n1, n2)
}

#[test]
fn nat_to_nat_starts_on_derp_then_goes_direct() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = NatWorld::new("nat-direct", &tools);
    let (n1, _n2) = join_both(&w, &tools, &clock);

    // Keep pinging (each round stops at the first direct pong) and keep
    // every pong, in order, until a direct one shows up.
    let mut pongs: Vec<PongPath> = Vec::new();
    let direct = eventually("a direct path between the NATs", CONVERGE * 2, || {
        let out = n1.ping("nodo2", &["-c", "10"])?;
        let paths = pong_paths(&out.stdout);
        pongs.extend(paths.iter().cloned());
        paths
            .iter()
            .find_map(|p| match p {
                PongPath::Direct(a) => Some(a.clone()),
                _ => None,
            })
            .ok_or_else(|| anyhow::anyhow!("not direct yet:\n{}", out.combined()))
    })
    .unwrap_or_else(|e| {
        let peer = n1
            .status()
            .ok()
            .and_then(|s| s.peer_named("nodo2").cloned());
        panic!("{e:#}\npongs so far: {pongs:?}\nnodo1's view of nodo2: {peer:#?}")
    });
    clock.mark(&format!("pongs: {pongs:?}"));

    // Before the hole is punched, the only way in is the relay.
    assert_eq!(
        pongs.first(),
        Some(&PongPath::Derp(DERP_REGION.to_string())),
        "the first pong must come through our relay: {pongs:?}"
    );
    // The direct path is nodo2's NAT mapping on r2, learned through STUN.
    assert!(
        direct.starts_with(&format!("{R2_WAN_IP}:")),
        "direct path {direct} is not r2's WAN address {R2_WAN_IP}"
    );

    let status = n1.status().expect("status");
    let peer = status.peer_named("nodo2").expect("nodo2 listed");
    assert!(
        peer.cur_addr.starts_with(&format!("{R2_WAN_IP}:")),
        "status CurAddr {:?}",
        peer.cur_addr
    );
    traffic::ping_eventually(n1.ns(), "100.64.0.2", 3, CONVERGE)
        .expect("ICMP over the direct path");
    clock.mark("ICMP over the direct path");
}

#[test]
fn udp_blocked_between_nats_relays_through_derp() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = NatWorld::new("nat-derp", &tools);
    // Drop UDP between the two WAN sides in both routers, both directions.
    // UDP to the server's STUN port stays allowed: the nodes learn their
    // public mappings and try the direct path, which must fail over to DERP.
    for (router, other) in [(&w.r1, R2_WAN_IP), (&w.r2, R1_WAN_IP)] {
        router
            .nft(&format!(
                "table inet mse2e_block {{\n\
                 \tchain forward {{\n\
                 \t\ttype filter hook forward priority filter; policy accept;\n\
                 \t\tip daddr {other} meta l4proto udp counter drop\n\
                 \t\tip saddr {other} meta l4proto udp counter drop\n\
                 \t}}\n\
                 }}\n"
            ))
            .expect("block UDP between the NATs");
    }
    let (n1, n2) = join_both(&w, &tools, &clock);

    // ICMP and TCP over the tailnet, through the relay.
    let _echo =
        traffic::start_echo(&w.lab, Path::new(TCP_TOOL), n2.ns(), "echo-nodo2").expect("echo");
    traffic::ping_eventually(n1.ns(), "100.64.0.2", 3, CONVERGE).expect("ICMP 1->2");
    traffic::ping_eventually(n2.ns(), "100.64.0.1", 3, CONVERGE).expect("ICMP 2->1");
    clock.mark("ICMP both ways");
    let summary = traffic::tcp_echo(Path::new(TCP_TOOL), n1.ns(), "100.64.0.2", 1024 * 1024)
        .expect("TCP through DERP");
    clock.mark(&format!("TCP: {}", summary.trim()));

    // Every pong comes through the relay, and the status shows no direct address.
    let out = n1
        .ping("nodo2", &["--until-direct=false", "-c", "5"])
        .expect("tailscale ping");
    let pongs = pong_paths(&out.stdout);
    assert!(
        !pongs.is_empty()
            && pongs
                .iter()
                .all(|p| *p == PongPath::Derp(DERP_REGION.to_string())),
        "expected only DERP({DERP_REGION}) pongs:\n{}",
        out.combined()
    );
    let status = n1.status().expect("status");
    let peer = status.peer_named("nodo2").expect("nodo2 listed");
    assert_eq!(peer.cur_addr, "", "no direct address expected: {peer:?}");
    assert_eq!(peer.relay, DERP_REGION, "{peer:?}");
    clock.mark("all pongs via DERP; CurAddr empty");

    // The routers really did drop the direct attempts (the nodes tried).
    let text = cmd::run_ok(
        w.r1.command("nft")
            .args(["list", "table", "inet", "mse2e_block"]),
        cmd::SHORT,
    )
    .expect("nft list");
    assert!(
        text.lines()
            .filter(|l| l.contains("counter packets"))
            .any(|l| !l.contains("counter packets 0 ")),
        "r1 dropped no UDP between the NATs; the direct path was never tried:\n{text}"
    );
}

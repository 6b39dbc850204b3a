//! Scenario 7: the server restarts (SIGTERM, then the same config) under two
//! connected clients. They reconnect by themselves and keep their ids and
//! addresses; nothing is duplicated; traffic flows again.

use std::collections::BTreeMap;
use std::time::Duration;

use meshscale_e2e::TsNode;
use meshscale_e2e::poll::eventually;
use meshscale_e2e::traffic;

use crate::common::{Clock, LanWorld, tools};

/// How long clients may take to come back: their map poll retries with a
/// back-off that grows to tens of seconds.
const RECONNECT: Duration = Duration::from_secs(90);

#[test]
fn clients_survive_a_server_restart() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let mut w = LanWorld::new("restart", &tools, 2, "");
    w.server.create_user("vpn1").expect("users create");
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", &w.server).expect("tailscaled 1");
    let n2 = TsNode::start(&w.lab, &tools, &w.hosts[1], "nodo2", &w.server).expect("tailscaled 2");
    n1.join(&w.server, &key.key).expect("nodo1 joins");
    n2.join(&w.server, &key.key).expect("nodo2 joins");
    n1.wait_peer_online("nodo2", RECONNECT)
        .expect("nodo1 sees nodo2");
    traffic::ping_eventually(n1.ns(), "100.64.0.2", 1, RECONNECT).expect("ICMP before");
    // id -> addresses, as the server lists them.
    let listing = |w: &LanWorld| -> anyhow::Result<BTreeMap<u64, (String, Vec<String>)>> {
        Ok(w.server
            .nodes()?
            .into_iter()
            .map(|n| (n.id, (n.given_name, n.ip_addresses)))
            .collect())
    };
    let before = listing(&w).expect("nodes list");
    assert_eq!(before.len(), 2, "{before:?}");
    let ips_before = (n1.addresses().expect("n1"), n2.addresses().expect("n2"));
    clock.mark("two nodes up; restarting the server");

    w.server.stop().expect("SIGTERM: clean exit");
    clock.mark("server stopped");
    w.server.spawn().expect("start again with the same config");
    clock.mark("server started again");

    // Both back online on the server, with the same ids and addresses.
    let after = eventually("both nodes online again", RECONNECT, || {
        let nodes = w.server.nodes()?;
        anyhow::ensure!(
            nodes.iter().all(|n| n.online),
            "not all online: {:?}",
            nodes
                .iter()
                .map(|n| (&n.given_name, n.online))
                .collect::<Vec<_>>()
        );
        listing(&w)
    })
    .expect("reconnect");
    assert_eq!(
        after, before,
        "ids or addresses changed, or nodes were duplicated"
    );
    clock.mark("both online again, same ids and addresses");

    for n in [&n1, &n2] {
        n.wait_state("Running", RECONNECT).expect("Running");
    }
    n1.wait_peer_online("nodo2", RECONNECT)
        .expect("nodo1 sees nodo2 again");
    n2.wait_peer_online("nodo1", RECONNECT)
        .expect("nodo2 sees nodo1 again");
    assert_eq!(
        (n1.addresses().expect("n1"), n2.addresses().expect("n2")),
        ips_before
    );
    let out = eventually("tailscale ping after the restart", RECONNECT, || {
        let out = n1.ping("nodo2", &["--until-direct=false", "-c", "1"])?;
        anyhow::ensure!(out.success(), "{}", out.combined());
        Ok(out)
    })
    .expect("tailscale ping");
    clock.mark(&format!("tailscale ping: {}", out.stdout.trim()));
    traffic::ping_eventually(n1.ns(), "100.64.0.2", 3, RECONNECT).expect("ICMP after");
    // Nothing was duplicated by the reconnects either.
    assert_eq!(listing(&w).expect("nodes list"), before);
}

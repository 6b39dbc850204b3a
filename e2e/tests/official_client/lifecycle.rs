//! Scenario 6: what admins do to nodes and keys, as the official client
//! experiences it — a destroyed user's nodes are expelled, a single-use key
//! admits one node, an expired key admits none, and an ephemeral node is
//! removed once it has been gone for the inactivity timeout.

use std::time::Duration;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::{TsNode, traffic};

use crate::common::{CONVERGE, Clock, LanWorld, node, tools};

#[test]
fn destroying_a_user_expels_its_nodes() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = LanWorld::new("destroy-user", &tools, 2, "");
    let s = &w.server;
    // nodo1 belongs to vpn1 (destroyed), nodo2 to vpn2 (the witness).
    s.create_user("vpn1").expect("users create vpn1");
    s.create_user("vpn2").expect("users create vpn2");
    let k1 = s.create_key("vpn1", &[]).expect("key vpn1");
    let k2 = s.create_key("vpn2", &[]).expect("key vpn2");
    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled 1");
    let n2 = TsNode::start(&w.lab, &tools, &w.hosts[1], "nodo2", s).expect("tailscaled 2");
    n1.join(s, &k1.key).expect("nodo1 joins");
    n2.join(s, &k2.key).expect("nodo2 joins");
    n2.wait_peer_online("nodo1", CONVERGE)
        .expect("nodo2 sees nodo1");
    traffic::ping_eventually(n1.ns(), "100.64.0.2", 1, CONVERGE).expect("ICMP before");
    clock.mark("vpn1's nodo1 and vpn2's nodo2 joined and talk");

    let said = s
        .cli(&["users", "destroy", "vpn1", "--force"])
        .expect("users destroy");
    clock.mark(&format!("users destroy: {}", said.trim()));

    let nodes = s.nodes().expect("nodes list");
    assert!(
        node(&nodes, "nodo1").is_none(),
        "nodo1 still listed: {nodes:?}"
    );
    assert!(node(&nodes, "nodo2").is_some(), "nodo2 gone too: {nodes:?}");
    // Expelled means: gone from every peer's status (the witness's here),
    // or told to log in again. The first must hold; the second is reported.
    eventually("nodo2 to drop nodo1 from its peers", CONVERGE, || {
        let st = n2.status()?;
        anyhow::ensure!(st.peer_named("nodo1").is_none(), "nodo1 still a peer");
        Ok(())
    })
    .expect("peer removal");
    clock.mark("nodo1 gone from nodo2's peers");
    // With the peer gone from nodo2's WireGuard config, nodo1's packets are dropped.
    // (Polled: the peer list and the WireGuard config are updated one after the other.)
    eventually(
        "nodo1's packets to be dropped",
        CONVERGE,
        || match traffic::ping(n1.ns(), "100.64.0.2", 1) {
            Ok(out) => anyhow::bail!("the expelled node still reaches nodo2:\n{out}"),
            Err(_) => Ok(()),
        },
    )
    .expect("expelled node cut off");
    // The server's last message to the expelled node says its key expired, so
    // the client asks for a new login instead of retrying with a stale netmap.
    n1.wait_state("NeedsLogin", CONVERGE)
        .expect("the expelled node is told to log in again");
    clock.mark("nodo1 is in NeedsLogin");
}

#[test]
fn a_single_use_key_admits_one_node() {
    let Some(tools) = tools() else { return };
    let w = LanWorld::new("single-use-key", &tools, 2, "");
    let s = &w.server;
    s.create_user("vpn1").expect("users create");
    let key = s.create_key("vpn1", &[]).expect("single-use key");
    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled 1");
    let n2 = TsNode::start(&w.lab, &tools, &w.hosts[1], "nodo2", s).expect("tailscaled 2");
    n1.join(s, &key.key).expect("first use of the key");

    let second = n2.up_with_key(s, &key.key).expect("tailscale up");
    assert!(
        !second.success(),
        "a used key admitted a second node:\n{}",
        second.combined()
    );
    assert!(
        second.combined().contains("auth key already used"),
        "the refusal should carry the server's reason:\n{}",
        second.combined()
    );
    assert_ne!(n2.status().expect("status").backend_state, "Running");
    let nodes = s.nodes().expect("nodes list");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
}

#[test]
fn an_expired_key_is_refused() {
    let Some(tools) = tools() else { return };
    let w = LanWorld::new("expired-key", &tools, 1, "");
    let s = &w.server;
    s.create_user("vpn1").expect("users create");
    let key = s.create_key("vpn1", &["--reusable"]).expect("key");
    s.cli(&["preauthkeys", "expire", "--id", &key.id.to_string()])
        .expect("preauthkeys expire");
    let n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled");

    let out = n1.up_with_key(s, &key.key).expect("tailscale up");
    assert!(
        !out.success(),
        "an expired key admitted a node:\n{}",
        out.combined()
    );
    assert!(
        out.combined().contains("auth key expired"),
        "the refusal should carry the server's reason:\n{}",
        out.combined()
    );
    assert!(s.nodes().expect("nodes list").is_empty());
}

#[test]
fn an_ephemeral_node_is_removed_after_inactivity() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let w = LanWorld::new(
        "ephemeral",
        &tools,
        1,
        "ephemeral_node_inactivity_timeout: 5s",
    );
    let s = &w.server;
    s.create_user("vpn1").expect("users create");
    let key = s
        .create_key("vpn1", &["--ephemeral"])
        .expect("ephemeral key");
    let mut n1 = TsNode::start(&w.lab, &tools, &w.hosts[0], "nodo1", s).expect("tailscaled");
    n1.join(s, &key.key).expect("join");
    let nodes = s.nodes().expect("nodes list");
    let listed = node(&nodes, "nodo1").unwrap_or_else(|| panic!("not listed: {nodes:?}"));
    assert!(listed.ephemeral, "{listed:?}");

    // A crash, not a logout: only the inactivity timeout can remove it.
    n1.crash().expect("kill tailscaled");
    clock.mark("tailscaled killed");
    eventually(
        "the ephemeral node to be removed",
        Duration::from_secs(30),
        || {
            let nodes = s.nodes()?;
            anyhow::ensure!(nodes.is_empty(), "still listed: {nodes:?}");
            Ok(())
        },
    )
    .expect("ephemeral node removal");
    clock.mark("ephemeral node removed");
}

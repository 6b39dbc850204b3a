//! The acceptance scenarios of the sidecar issue, each in its own network
//! namespaces (see `common`). Needs root and the tools of `e2e/setup.sh`;
//! fails clearly without them unless `MESHSCALE_E2E_SKIP=1`.
//!
//! Waits are polls with deadlines; the only fixed wait is scenario 5's
//! deliberate 20-second control outage, which is the scenario itself.

mod common;

use std::time::{Duration, Instant};

use common::{CONVERGE, Sidecar, lan, nat, tcp_check, tcp_server, tools};
use meshscale_e2e::poll::eventually;
use meshscale_e2e::tailscale::{PongPath, pong_paths};
use meshscale_e2e::{TsNode, traffic};

const TCP_BYTES: u64 = 4 << 20;

/// 1. Two sidecars on one LAN: status lists each other, ping goes direct,
///    TCP and ICMP pass both ways over IPv4 and IPv6.
#[test]
fn s1_two_sidecars_on_one_lan() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s1", &tools, 2);
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    let (a4, a6) = a.wait_ips();
    let (b4, b6) = b.wait_ips();
    a.wait_peer("side2", CONVERGE);
    b.wait_peer("side1", CONVERGE);

    let ping = a.cli(&["ping", "side2"]).expect("ping goes direct");
    assert!(ping.contains("via 10.2.0.12:"), "{ping}");

    let _tcp_a = tcp_server(&w.lab, &w.hosts[0], "tcp-a");
    let _tcp_b = tcp_server(&w.lab, &w.hosts[1], "tcp-b");
    for (from, to) in [
        (&w.hosts[0], &b4),
        (&w.hosts[0], &b6),
        (&w.hosts[1], &a4),
        (&w.hosts[1], &a6),
    ] {
        traffic::ping_eventually(from, to, 3, CONVERGE)
            .unwrap_or_else(|e| panic!("ICMP to {to}: {e:#}"));
        tcp_check(from, to, TCP_BYTES).unwrap_or_else(|e| panic!("TCP to {to}: {e:#}"));
    }
    let st = a.cli(&["status"]).expect("status");
    assert!(st.contains("direct 10.2.0.12:"), "{st}");
    eprintln!("status:\n{st}\nping:\n{ping}");
}

/// 2. Sidecar ↔ official tailscaled, each behind its own NAT router: both
///    pings end on a direct path; traffic passes both ways.
#[test]
fn s2_sidecar_and_tailscaled_behind_nat_go_direct() {
    let Some(tools) = tools() else { return };
    let w = nat("sc-s2", &tools);
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let sc = Sidecar::start(&w.lab, &w.n1, &w.server, &key.key, "side1");
    let ts = TsNode::start(&w.lab, &tools, &w.n2, "nodo2", &w.server).expect("tailscaled");
    ts.join(&w.server, &key.key).expect("nodo2 joins");
    let (sc4, _) = sc.wait_ips();
    let (ts4, _) = ts.addresses().expect("tailscaled addresses");
    sc.wait_peer("nodo2", CONVERGE);
    ts.wait_peer_online("side1", CONVERGE)
        .expect("tailscaled sees the sidecar");

    // Through the NATs, the endpoints that work are the STUN-learned ones.
    let ping = eventually("sidecar ping to end direct", CONVERGE, || {
        let out = sc.cli(&["ping", "-c", "20", "nodo2"])?;
        anyhow::ensure!(out.contains("via 10.200.0.12:"), "{out}");
        Ok(out)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sc.proc.log_text()));
    let ts_ping = eventually("tailscale ping to end direct", CONVERGE, || {
        let out = ts.ping("side1", &["-c", "20"])?;
        let text = out.stdout;
        let paths = pong_paths(&text);
        anyhow::ensure!(
            matches!(paths.last(), Some(PongPath::Direct(a)) if a.starts_with("10.200.0.11:")),
            "{text}"
        );
        Ok(text)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    traffic::ping_eventually(&w.n1, &ts4, 3, CONVERGE).expect("sidecar -> tailscaled");
    traffic::ping_eventually(&w.n2, &sc4, 3, CONVERGE).expect("tailscaled -> sidecar");
    eprintln!("sidecar ping:\n{ping}\ntailscale ping:\n{ts_ping}");
}

/// 1b. The underlay is IPv6 too: with IPv4 UDP between the two nodes
///     blocked, the direct path is found over the LAN's IPv6 addresses
///     (the dual-stack socket and interface endpoints).
#[test]
fn s1b_direct_path_over_ipv6_underlay() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s1b", &tools, 2);
    for (i, h) in w.hosts.iter().enumerate() {
        h.ip(&[
            "addr",
            "add",
            &format!("fd00:2::{}/64", 11 + i),
            "dev",
            "eth0",
            "nodad",
        ])
        .expect("IPv6 LAN address");
    }
    // IPv4 UDP between the nodes dropped; control and DERP stay reachable.
    w.hosts[1]
        .nft(
            "table ip block {\n\
               chain in { type filter hook input priority 0; ip saddr 10.2.0.11 meta l4proto udp drop; }\n\
               chain out { type filter hook output priority 0; ip daddr 10.2.0.11 meta l4proto udp drop; }\n}\n",
        )
        .expect("block IPv4 UDP between the nodes");
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    a.wait_ips();
    let (b4, _) = b.wait_ips();
    a.wait_peer("side2", CONVERGE);
    let ping = eventually("a direct path over IPv6", CONVERGE, || {
        let out = a.cli(&["ping", "-c", "20", "side2"])?;
        anyhow::ensure!(out.contains("via [fd00:2::12]:"), "{out}");
        Ok(out)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
    traffic::ping_eventually(&w.hosts[0], &b4, 3, CONVERGE).expect("a -> b");
    eprintln!("ping:\n{ping}");
}

/// 2b. Two sidecars, each behind its own NAT router: only hole punching
///     (STUN endpoints, call-me-maybe through DERP) gets them direct.
#[test]
fn s2b_two_sidecars_behind_nat_go_direct() {
    let Some(tools) = tools() else { return };
    let w = nat("sc-s2b", &tools);
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.n1, &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.n2, &w.server, &key.key, "side2");
    let (a4, a6) = a.wait_ips();
    let (b4, _) = b.wait_ips();
    a.wait_peer("side2", CONVERGE);
    let ping = a
        .cli(&["ping", "-c", "20", "side2"])
        .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
    assert!(ping.contains("via 10.200.0.12:"), "{ping}");
    traffic::ping_eventually(&w.n1, &b4, 3, CONVERGE).expect("a -> b");
    traffic::ping_eventually(&w.n2, &a4, 3, CONVERGE).expect("b -> a");
    traffic::ping_eventually(&w.n2, &a6, 3, CONVERGE).expect("b -> a over IPv6");
    let st = b.cli(&["status"]).expect("status");
    assert!(st.contains("direct 10.200.0.11:"), "{st}");
    eprintln!("ping:\n{ping}\nstatus of side2:\n{st}");
}

/// 3. UDP blocked between two sidecars: traffic passes through DERP and
///    `status` says relay.
#[test]
fn s3_udp_blocked_goes_through_derp() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s3", &tools, 2);
    w.hosts[1]
        .nft(
            "table inet block {\n\
               chain in { type filter hook input priority 0; meta l4proto udp drop; }\n\
               chain out { type filter hook output priority 0; meta l4proto udp drop; }\n}\n",
        )
        .expect("block UDP in n2");
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    let (a4, _) = a.wait_ips();
    let (b4, _) = b.wait_ips();
    traffic::ping_eventually(&w.hosts[0], &b4, 3, CONVERGE).expect("a -> b over DERP");
    traffic::ping_eventually(&w.hosts[1], &a4, 3, CONVERGE).expect("b -> a over DERP");
    let st = a.cli(&["status"]).expect("status");
    assert!(st.contains("relay \"meshscale\""), "{st}");
    let ping = a
        .cli(&["ping", "-c", "2", "--until-direct=false", "side2"])
        .expect("ping over DERP");
    assert!(ping.contains("via DERP(meshscale)"), "{ping}");
}

/// 4. A third node joins while traffic flows and is seen; a node removed
///    with `meshscale nodes delete` disappears and its tunnel is torn
///    down; the deleted sidecar stops with NeedsLogin and /healthz 503.
#[test]
fn s4_join_and_delete_while_traffic_flows() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s4", &tools, 3);
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    let (a4, _) = a.wait_ips();
    let (b4, _) = b.wait_ips();
    traffic::ping_eventually(&w.hosts[0], &b4, 1, CONVERGE).expect("a -> b");

    let c = Sidecar::start(&w.lab, &w.hosts[2], &w.server, &key.key, "side3");
    let (c4, _) = c.wait_ips();
    let t = Instant::now();
    a.wait_peer("side3", Duration::from_secs(10));
    b.wait_peer("side3", Duration::from_secs(10));
    eprintln!("side3 seen by both after {:?}", t.elapsed());
    // The established tunnel kept working through the change.
    traffic::ping(&w.hosts[0], &b4, 3).expect("a -> b after the join");
    traffic::ping_eventually(&w.hosts[2], &a4, 3, CONVERGE).expect("c -> a");
    assert_eq!(c.healthz().expect("healthz"), "200");

    let id = w
        .server
        .nodes()
        .expect("nodes")
        .into_iter()
        .find(|n| n.given_name == "side3")
        .expect("side3 in nodes list")
        .id;
    w.server
        .cli(&["nodes", "delete", "-i", &id.to_string(), "--force"])
        .expect("nodes delete");
    for sc in [&a, &b] {
        eventually(&format!("{} to drop side3", sc.hostname), CONVERGE, || {
            let st = sc.cli(&["status"])?;
            anyhow::ensure!(!st.contains("side3"), "{st}");
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // Torn down: a's kernel has no peer for c's address any more.
    assert!(
        traffic::ping(&w.hosts[0], &c4, 1).is_err(),
        "c still reachable"
    );
    eventually("side3 to say NeedsLogin", CONVERGE, || {
        let st = c.status_json()?;
        anyhow::ensure!(st["state"] == "NeedsLogin", "{st}");
        anyhow::ensure!(c.healthz()? == "503", "healthz still ready");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", c.proc.log_text()));
    let log = c.proc.log_text();
    let line = log.lines().find(|l| l.contains("needs login"));
    assert!(line.is_some(), "no clear log line:\n{log}");
    eprintln!("side3: {}", line.unwrap_or_default());
    eprintln!("side3 status:\n{}", c.cli(&["status"]).unwrap_or_default());
    traffic::ping(&w.hosts[0], &b4, 3).expect("a -> b still fine");
}

/// 5. The control server stops for 20 s: the tunnel keeps carrying traffic
///    meanwhile, and the sidecars re-attach by themselves.
#[test]
fn s5_control_outage_keeps_tunnels() {
    let Some(tools) = tools() else { return };
    let mut w = lan("sc-s5", &tools, 3);
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    a.wait_ips();
    let (b4, _) = b.wait_ips();
    traffic::ping_eventually(&w.hosts[0], &b4, 3, CONVERGE).expect("a -> b");
    // The tunnel that must survive is the direct one: the relay lives in
    // the control server and goes down with it.
    let ping = a.cli(&["ping", "side2"]).expect("a's ping goes direct");
    assert!(ping.contains("via 10.2.0.12:"), "{ping}");

    w.server.stop().expect("server stops");
    let down_at = Instant::now();
    // The outage is the scenario: traffic is checked throughout it.
    while down_at.elapsed() < Duration::from_secs(20) {
        traffic::ping(&w.hosts[0], &b4, 5).expect("a -> b while control is down");
    }
    w.server.spawn().expect("server restarts");
    eventually(
        "both sidecars to re-attach",
        Duration::from_secs(90),
        || {
            let nodes = w.server.nodes()?;
            anyhow::ensure!(
                nodes.len() == 2 && nodes.iter().all(|n| n.online),
                "{nodes:?}"
            );
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
    traffic::ping(&w.hosts[0], &b4, 3).expect("a -> b after the outage");
    // Re-attached for real: a change made now reaches the sidecars.
    let c = Sidecar::start(&w.lab, &w.hosts[2], &w.server, &key.key, "side3");
    c.wait_ips();
    eventually(
        "side1 to hear of a node joining after the outage",
        CONVERGE,
        || {
            let st = a.cli(&["status"])?;
            anyhow::ensure!(st.contains("side3"), "{st}");
            Ok(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
}

/// 6. A restart with the same state dir keeps node id and addresses.
///    Also `--advertise-tags`: a key without tags registers the node with
///    the tags it requests (`Hostinfo.RequestTags`), which the policy lets
///    its user own (without a policy nobody owns a tag).
#[test]
fn s6_restart_keeps_identity() {
    let Some(tools) = tools() else { return };
    let w = common::lan_with("sc-s6", &tools, 1, "policy:\n  mode: database\n");
    let policy = w.server.config_path().with_file_name("policy.hujson");
    std::fs::write(
        &policy,
        r#"{"tagOwners": {"tag:web": ["vpn1@"], "tag:db": ["vpn1@"]},
            "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .expect("write policy");
    w.server
        .cli(&["policy", "set", "--file", &policy.display().to_string()])
        .expect("policy set");
    // Single-use: a restart that re-spent the key would fail.
    let key = w.server.create_key("vpn1", &[]).expect("key");
    let mut a = Sidecar::start_with(
        &w.lab,
        &w.hosts[0],
        &w.server,
        &key.key,
        "side1",
        &["--advertise-tags", "tag:web,tag:db"],
    );
    let before = a.wait_ips();
    let nodes = w.server.nodes().expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let id = nodes[0].id;
    let tags = |w: &common::LanWorld| -> Vec<String> {
        let list: serde_json::Value = w.server.cli_json(&["nodes", "list"]).expect("nodes list");
        let mut t: Vec<String> = list[0]["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("no tags in {list}"))
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        t.sort();
        t
    };
    assert_eq!(tags(&w), ["tag:db", "tag:web"]);
    a.restart();
    eventually("the restarted sidecar to be up", CONVERGE, || {
        anyhow::ensure!(a.status_json()?["state"] == "Running", "not running");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
    assert_eq!(a.wait_ips(), before);
    let nodes = w.server.nodes().expect("nodes");
    assert_eq!(nodes.len(), 1, "a duplicate node: {nodes:?}");
    assert_eq!(nodes[0].id, id);
    assert_eq!(tags(&w), ["tag:db", "tag:web"], "tags lost on restart");

    // `down` logs out (like `tailscale logout`): the server marks the node
    // expired, and the agent exits.
    a.cli(&["down"]).expect("down");
    let status = a
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("up exits after down");
    assert!(status.success(), "{status}\n{}", a.proc.log_text());
    let nodes: serde_json::Value = w.server.cli_json(&["nodes", "list"]).expect("nodes list");
    assert_eq!(nodes[0]["expired"], true, "{nodes}");
}

/// Interactive login: `up` without a key logs the `/register/<id>` URL and
/// waits; `meshscale nodes register` lets it in.
#[test]
fn s7_interactive_login() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s7", &tools, 1);
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, "", "side1");
    let id = eventually("the login URL in the log", CONVERGE, || {
        let log = a.proc.log_text();
        let at = log.find("/register/").map(|i| i + "/register/".len());
        let id: String = at
            .map(|i| {
                log[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect()
            })
            .unwrap_or_default();
        anyhow::ensure!(!id.is_empty(), "no URL yet");
        Ok(id)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", a.proc.log_text()));
    assert_eq!(a.healthz().expect("healthz"), "503", "ready before login");
    w.server
        .cli(&["nodes", "register", "--key", &id, "--user", "vpn1"])
        .expect("nodes register");
    a.wait_ips();
    assert_eq!(a.healthz().expect("healthz"), "200");
    let nodes = w.server.nodes().expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
}

/// The packet counter of a named nftables counter in `ns`.
fn nft_counter(ns: &meshscale_e2e::Ns, table: &str, name: &str) -> u64 {
    let mut c = ns.command("nft");
    c.args(["list", "counter", "inet", table, name]);
    let out = meshscale_e2e::cmd::run_ok(&mut c, Duration::from_secs(10)).expect("nft list");
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out}"))
}

/// 8. Pod start: the first WireGuard handshake initiations are lost (the
///    receiving side drops the first two), as when the peer has not yet
///    heard of a new node. The sidecar resends on its own fast schedule,
///    so the handshake completes before boringtun's 5 s retransmission
///    ever fires, and the very first packet, queued meanwhile, arrives:
///    one echo request, one reply.
#[test]
fn s8_lost_first_initiations_are_resent() {
    let Some(tools) = tools() else { return };
    let w = lan("sc-s8", &tools, 2);
    // n1 drops the first two initiations that come in over UDP (type 1,
    // 148 bytes: a UDP length of 156); n2 counts those it sends.
    w.hosts[0]
        .nft(
            "table inet hs {\n\
               set first { type inet_service; flags dynamic; }\n\
               set second { type inet_service; flags dynamic; }\n\
               counter dropped { }\n\
               chain in { type filter hook input priority 0; udp length 156 @th,64,32 0x01000000 jump initiation; }\n\
               chain initiation {\n\
                 udp sport != @first add @first { udp sport } counter name \"dropped\" drop\n\
                 udp sport != @second add @second { udp sport } counter name \"dropped\" drop\n\
               }\n}\n",
        )
        .expect("drop the first initiations in n1");
    w.hosts[1]
        .nft(
            "table inet hs {\n\
               counter sent { }\n\
               chain out { type filter hook output priority 0; udp length 156 @th,64,32 0x01000000 counter name \"sent\"; }\n}\n",
        )
        .expect("count initiations leaving n2");
    let key = w.server.create_key("vpn1", &["--reusable"]).expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key.key, "side1");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key.key, "side2");
    let (a4, _) = a.wait_ips();
    b.wait_ips();
    a.wait_peer("side2", CONVERGE);
    b.wait_peer("side1", CONVERGE);
    // Initiations go over UDP (where n1 can drop them) only while side2
    // has a proven direct path to side1: disco pings keep it proven for
    // the whole check. Nothing of WireGuard has been sent yet.
    let ping = b.cli(&["ping", "side1"]).expect("disco ping goes direct");
    assert!(ping.contains("via 10.2.0.11:"), "{ping}");
    assert_eq!(nft_counter(&w.hosts[1], "hs", "sent"), 0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reply = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = b.cli(&["ping", "-c", "2", "--until-direct=false", "side1"]);
            }
        });
        // One echo request, waited for long enough for boringtun's own
        // retries too: what must hold is that it is answered and how.
        let mut c = w.hosts[1].command("ping");
        c.args(["-n", "-c", "1", "-W", "30", &a4]);
        let out = meshscale_e2e::cmd::run(&mut c, Duration::from_secs(40));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    })
    .expect("ping runs");
    let log = b.proc.log_text();
    assert!(
        reply.stdout.contains("1 received"),
        "the first packet got lost:\n{}\n{log}",
        reply.combined()
    );
    let dropped = nft_counter(&w.hosts[0], "hs", "dropped");
    let sent = nft_counter(&w.hosts[1], "hs", "sent");
    assert_eq!(dropped, 2, "n1 dropped {dropped} initiations");
    assert!(sent >= 3, "only {sent} initiations sent");
    // Answered before boringtun's own retransmission ever fired (it
    // resends 5 s after an unanswered initiation, and logs it): the
    // resends were the fast schedule's.
    assert!(
        !log.contains("HANDSHAKE(REKEY_TIMEOUT)"),
        "the handshake waited for boringtun's 5 s retry:\n{log}"
    );
    let resent = log.matches("handshake initiation resent").count();
    assert!(resent >= 2, "{resent} fast resends:\n{log}");
    assert!(log.contains("handshake complete"), "{log}");
    eprintln!("initiations: {sent} sent, {dropped} dropped, {resent} fast resends");
}

//! Scenario: the access policy enforced by official clients. Three nodes,
//! two users and a tag: `laptop` (alice), `web` (tag:web, from alice's
//! tagged key) and `other` (bob). The policy lets alice reach tag:web on
//! tcp/80 only: laptop reaches port 80 on web but not port 22, other
//! reaches nothing and sees nobody. The policy is then edited (file mode:
//! the file is rewritten; database mode: `policy set`) and the new rules
//! take effect without restarting anything; a refused policy leaves the
//! old one working.

use std::time::Duration;

use meshscale_e2e::poll::eventually;
use meshscale_e2e::process::Proc;
use meshscale_e2e::{Lab, Ns, Server, Tools, TsNode, cmd};

use crate::common::{CONVERGE, Clock, LanWorld, TCP_TOOL, node, tools};

/// alice → tag:web on tcp/80, nothing else.
const WEB_80: &str = r#"// e2e: only alice reaches the web server, on port 80
{
  "tagOwners": {"tag:web": ["alice@"]},
  "acls": [
    {"action": "accept", "src": ["alice@"], "proto": "tcp", "dst": ["tag:web:80"]},
  ],
}
"#;

/// The edit: bob may reach tag:web on tcp/80 too.
const WEB_80_BOB_TOO: &str = r#"{
  "tagOwners": {"tag:web": ["alice@"]},
  "acls": [
    {"action": "accept", "src": ["alice@", "bob@"], "proto": "tcp", "dst": ["tag:web:80"]},
  ],
}
"#;

/// Refused: an undefined group.
const BAD: &str = r#"{"acls": [{"action": "accept", "src": ["group:ghosts"], "dst": ["*:*"]}]}"#;

/// How long a connection that the policy drops is given before it counts
/// as refused. Only ever used after the same path carried a connection
/// that is allowed, so a slow path cannot pass for a blocked one.
const BLOCKED_AFTER: Duration = Duration::from_secs(6);

struct World {
    w: LanWorld,
    laptop: TsNode,
    web: TsNode,
    other: TsNode,
    web_ip: String,
    _listeners: Vec<Proc>,
}

/// A TCP echo listener on `port` in `ns`.
fn listen(lab: &Lab, ns: &Ns, port: u16) -> Proc {
    let log = lab.dir().join(format!("listen-{port}.log"));
    lab.register_log(&log);
    let mut c = ns.command(TCP_TOOL);
    c.arg("serve").arg(format!("0.0.0.0:{port}"));
    let proc = Proc::spawn(&format!("listen-{port}"), c, &log).expect("listener");
    eventually("the listener to listen", CONVERGE, || {
        anyhow::ensure!(proc.log_text().contains("listening"), "not yet");
        Ok(())
    })
    .expect("listener up");
    proc
}

/// One echo exchange from `from` to `ip:port`; `Ok` when it went through.
fn tcp(from: &TsNode, ip: &str, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let mut c = from.ns().command(TCP_TOOL);
    c.arg("check").arg(format!("{ip}:{port}")).arg("4096");
    let out = cmd::run(&mut c, timeout)?;
    anyhow::ensure!(out.success(), "{}", out.combined());
    Ok(())
}

fn reaches(from: &TsNode, ip: &str, port: u16) {
    eventually(
        &format!("{} to reach {ip}:{port}", from.hostname()),
        CONVERGE,
        || tcp(from, ip, port, Duration::from_secs(10)),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn blocked(from: &TsNode, ip: &str, port: u16) {
    assert!(
        tcp(from, ip, port, BLOCKED_AFTER).is_err(),
        "{} reached {ip}:{port}, which the policy forbids",
        from.hostname()
    );
}

fn peer_count(n: &TsNode) -> usize {
    n.status().map(|s| s.peers().count()).unwrap_or(usize::MAX)
}

fn setup(tools: &Tools, test: &str, extra_yaml: &str, before_join: impl FnOnce(&Server)) -> World {
    let w = LanWorld::new(test, tools, 3, extra_yaml);
    let s = &w.server;
    s.create_user("alice").expect("alice");
    s.create_user("bob").expect("bob");
    let web_key = s.create_key("alice", &["--tags", "tag:web"]).expect("key");
    let alice_key = s.create_key("alice", &[]).expect("key");
    let bob_key = s.create_key("bob", &[]).expect("key");
    before_join(s);
    let web = TsNode::start(&w.lab, tools, &w.hosts[0], "web", s).expect("web");
    let laptop = TsNode::start(&w.lab, tools, &w.hosts[1], "laptop", s).expect("laptop");
    let other = TsNode::start(&w.lab, tools, &w.hosts[2], "other", s).expect("other");
    web.join(s, &web_key.key).expect("web joins");
    laptop.join(s, &alice_key.key).expect("laptop joins");
    other.join(s, &bob_key.key).expect("other joins");
    let nodes = s.nodes().expect("nodes");
    let web_info = node(&nodes, "web").expect("web listed");
    assert_eq!(web_info.tags, ["tag:web"], "{web_info:?}");
    let web_ip = web_info.ip_addresses[0].clone();
    let listeners = vec![listen(&w.lab, web.ns(), 80), listen(&w.lab, web.ns(), 22)];
    World {
        w,
        laptop,
        web,
        other,
        web_ip,
        _listeners: listeners,
    }
}

/// What `WEB_80` must produce, checked through the clients.
fn web_80_is_enforced(x: &World, clock: &Clock) {
    x.laptop
        .wait_peer_online("web", CONVERGE)
        .expect("laptop sees web");
    reaches(&x.laptop, &x.web_ip, 80);
    clock.mark("laptop reaches web:80");
    blocked(&x.laptop, &x.web_ip, 22);
    clock.mark("laptop does not reach web:22");
    eventually("other to see nobody", CONVERGE, || {
        let n = peer_count(&x.other);
        anyhow::ensure!(n == 0, "other sees {n} peers");
        Ok(())
    })
    .expect("other alone");
    blocked(&x.other, &x.web_ip, 80);
    clock.mark("other sees and reaches nobody");
    assert!(
        x.web
            .status()
            .expect("web status")
            .peer_named("other")
            .is_none(),
        "web must not see other"
    );
}

/// After `WEB_80_BOB_TOO` is in force: other reaches web:80, still not 22.
fn bob_too_is_enforced(x: &World, clock: &Clock) {
    x.other
        .wait_peer_online("web", CONVERGE)
        .expect("other sees web after the edit");
    reaches(&x.other, &x.web_ip, 80);
    blocked(&x.other, &x.web_ip, 22);
    reaches(&x.laptop, &x.web_ip, 80);
    clock.mark("the edited policy is in force, nothing restarted");
}

#[test]
fn policy_file_mode_enforced_and_reloaded() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acl.hujson");
    std::fs::write(&path, WEB_80).expect("write policy");
    let yaml = format!("policy:\n  mode: file\n  path: {}\n", path.display());
    let x = setup(&tools, "policy-file", &yaml, |_| {});
    clock.mark("three nodes joined");
    web_80_is_enforced(&x, &clock);

    std::fs::write(&path, WEB_80_BOB_TOO).expect("edit policy");
    bob_too_is_enforced(&x, &clock);

    // A bad edit is refused; the policy in force keeps working.
    std::fs::write(&path, BAD).expect("bad edit");
    eventually("the bad edit to be refused", CONVERGE, || {
        anyhow::ensure!(
            x.w.server.log_text().contains("group:ghosts"),
            "not seen yet"
        );
        Ok(())
    })
    .expect("refusal logged");
    reaches(&x.other, &x.web_ip, 80);
    blocked(&x.laptop, &x.web_ip, 22);
    clock.mark("a refused edit left the old policy working");
}

#[test]
fn policy_database_mode_enforced_and_set() {
    let Some(tools) = tools() else { return };
    let clock = Clock::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write policy");
        p.display().to_string()
    };
    let (web80, bob_too, bad) = (
        file("web80.hujson", WEB_80),
        file("bob.hujson", WEB_80_BOB_TOO),
        file("bad.hujson", BAD),
    );
    let x = setup(&tools, "policy-db", "policy:\n  mode: database\n", |s| {
        s.cli(&["policy", "set", "--file", &web80])
            .expect("policy set");
    });
    clock.mark("three nodes joined");
    web_80_is_enforced(&x, &clock);

    let s = &x.w.server;
    s.cli(&["policy", "set", "--file", &bob_too])
        .expect("policy set");
    bob_too_is_enforced(&x, &clock);

    let out = s
        .cli_output(&["policy", "set", "--file", &bad])
        .expect("run policy set");
    assert_eq!(out.status.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("group:ghosts"), "{}", out.combined());
    let in_force = s.cli(&["policy", "get"]).expect("policy get");
    assert_eq!(in_force.trim_end(), WEB_80_BOB_TOO.trim_end());
    reaches(&x.other, &x.web_ip, 80);
    clock.mark("a refused `policy set` left the old policy working");
}

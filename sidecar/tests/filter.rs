//! The packet filter enforced by the receiving sidecar (issue 13). Two
//! sidecars, `side-a` (tag:a) and `side-b` (tag:b), and a policy that only
//! lets tag:a reach tag:b on tcp/80: that connection works, tcp/22 and the
//! reverse direction are dropped by the receiver (counted in `status
//! --json` and `/metrics`), a long-lived allowed stream survives a policy
//! update that keeps it allowed, and a policy without the rule stops new
//! connections. Same prerequisites as `scenarios.rs`.

mod common;

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{CONVERGE, Sidecar, tools};
use meshscale_e2e::poll::eventually;
use meshscale_e2e::process::Proc;
use meshscale_e2e::{Lab, Ns, TsNode, cmd};

const OWNERS: &str = r#""tagOwners": {"tag:a": ["vpn1@"], "tag:b": ["vpn1@"]}"#;

/// A connection refused by the filter is given this long; only ever
/// checked on a path that just carried an allowed connection, so a slow
/// path cannot pass for a blocked one.
const BLOCKED_AFTER: &str = "4";

fn policy(acls: &str) -> String {
    format!("{{{OWNERS}, \"acls\": [{acls}]}}")
}

fn a_to_b(ports: &str) -> String {
    format!(r#"{{"action": "accept", "src": ["tag:a"], "proto": "tcp", "dst": ["tag:b:{ports}"]}}"#)
}

fn set_policy(w: &common::LanWorld, text: &str) {
    let path = w.server.config_path().with_file_name("policy.hujson");
    std::fs::write(&path, text).expect("write policy");
    w.server
        .cli(&["policy", "set", "--file", &path.display().to_string()])
        .expect("policy set");
}

/// `nc` listening on `port` (IPv4), keeping what it receives in its log.
fn listen(lab: &Lab, ns: &Ns, name: &str, port: u16) -> Proc {
    let log = lab.dir().join(format!("{name}.log"));
    lab.register_log(&log);
    let mut c = ns.command("nc");
    c.args(["-4", "-lk", &port.to_string()]);
    Proc::spawn(name, c, &log).expect("nc -l")
}

/// Whether a TCP connection from `from` to `ip:port` completes.
fn connects(from: &Ns, ip: &str, port: u16) -> bool {
    let mut c = from.command("nc");
    c.args(["-4", "-z", "-w", BLOCKED_AFTER, ip, &port.to_string()]);
    cmd::run(&mut c, Duration::from_secs(15)).is_ok_and(|o| o.success())
}

fn reaches(from: &Ns, ip: &str, port: u16) {
    eventually(&format!("{ip}:{port} to accept"), CONVERGE, || {
        anyhow::ensure!(connects(from, ip, port), "no connection");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn acl_drops(s: &Sidecar) -> u64 {
    let st = s.status_json().expect("status --json");
    st["filter"]["dropped"]["acl"].as_u64().unwrap_or(0)
}

fn metrics(s: &Sidecar) -> String {
    let mut c = s.ns.command("curl");
    c.args(["-s", "--max-time", "5", "http://127.0.0.1:9099/metrics"]);
    cmd::run_ok(&mut c, Duration::from_secs(10)).expect("GET /metrics")
}

/// A client stream kept open: lines written to its stdin arrive at the
/// listener; killed (it is ours) when the test ends.
struct Stream(Child);

impl Stream {
    fn open(from: &Ns, ip: &str, port: u16) -> Stream {
        let mut c = from.command("nc");
        c.args(["-4", ip, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Stream(c.spawn().expect("nc client"))
    }

    fn send(&mut self, line: &str) {
        let stdin = self.0.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("the stream is still open");
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn arrives(listener: &Proc, line: &str) {
    eventually(&format!("{line:?} to arrive"), CONVERGE, || {
        anyhow::ensure!(listener.log_text().contains(line), "not yet");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn f1_receiving_sidecar_enforces_the_policy() {
    let Some(tools) = tools() else { return };
    let w = common::lan_with("sc-f1", &tools, 2, "policy:\n  mode: database\n");
    set_policy(&w, &policy(&a_to_b("80")));
    let key_a = w
        .server
        .create_key("vpn1", &["--tags", "tag:a"])
        .expect("key");
    let key_b = w
        .server
        .create_key("vpn1", &["--tags", "tag:b"])
        .expect("key");
    let a = Sidecar::start(&w.lab, &w.hosts[0], &w.server, &key_a.key, "side-a");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key_b.key, "side-b");
    let (a4, _) = a.wait_ips();
    let (b4, _) = b.wait_ips();
    a.wait_peer("side-b", CONVERGE);
    b.wait_peer("side-a", CONVERGE);
    let st = b.status_json().expect("status");
    assert_eq!(st["filter"]["received"], true, "{st}");

    let b80 = listen(&w.lab, &w.hosts[1], "b-80", 80);
    let _b22 = listen(&w.lab, &w.hosts[1], "b-22", 22);
    let _b443 = listen(&w.lab, &w.hosts[1], "b-443", 443);
    let _a80 = listen(&w.lab, &w.hosts[0], "a-80", 80);

    // Allowed: a → b:80.
    reaches(&w.hosts[0], &b4, 80);
    // Dropped at b: a → b:22. Counted by b.
    let before = acl_drops(&b);
    assert!(!connects(&w.hosts[0], &b4, 22), "a reached b:22");
    let after = acl_drops(&b);
    assert!(after > before, "b counted no drop ({before} → {after})");
    let m = metrics(&b);
    assert!(
        m.contains("meshscale_sidecar_filter_dropped_packets_total{reason=\"acl\"}")
            && !m.contains("{reason=\"acl\"} 0\n"),
        "{m}"
    );
    // The reverse direction: dropped at a, which the policy lets nobody reach.
    let before = acl_drops(&a);
    assert!(!connects(&w.hosts[1], &a4, 80), "b reached a:80");
    assert!(acl_drops(&a) > before, "a counted no drop");
    // ...while the tunnel itself works both ways: a's own connection still goes.
    reaches(&w.hosts[0], &b4, 80);

    // A long-lived stream survives an update that keeps it allowed.
    let mut stream = Stream::open(&w.hosts[0], &b4, 80);
    stream.send("before-update");
    arrives(&b80, "before-update");
    set_policy(&w, &policy(&format!("{}, {}", a_to_b("80"), a_to_b("443"))));
    // b has the new policy once 443 opens.
    reaches(&w.hosts[0], &b4, 443);
    stream.send("after-update");
    arrives(&b80, "after-update");

    // A policy without the rule stops new connections to 80.
    set_policy(&w, &policy(&a_to_b("443")));
    eventually("new connections to b:80 to be refused", CONVERGE, || {
        anyhow::ensure!(!connects(&w.hosts[0], &b4, 80), "still connects");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", b.proc.log_text()));
    reaches(&w.hosts[0], &b4, 443);
    let st = b.status_json().expect("status");
    eprintln!("side-b filter: {}", st["filter"]);
}

/// The same policy between an official `tailscaled` (tag:a) and a sidecar
/// (tag:b): the official client's connection to port 80 works, port 22 is
/// dropped and counted by the sidecar, and the sidecar cannot open a
/// connection to the official client (which enforces the filter itself).
#[test]
fn f2_tailscaled_to_sidecar() {
    let Some(tools) = tools() else { return };
    let w = common::lan_with("sc-f2", &tools, 2, "policy:\n  mode: database\n");
    set_policy(&w, &policy(&a_to_b("80")));
    let key_a = w
        .server
        .create_key("vpn1", &["--tags", "tag:a"])
        .expect("key");
    let key_b = w
        .server
        .create_key("vpn1", &["--tags", "tag:b"])
        .expect("key");
    let ts = TsNode::start(&w.lab, &tools, &w.hosts[0], "ts-a", &w.server).expect("tailscaled");
    ts.join(&w.server, &key_a.key).expect("ts-a joins");
    let b = Sidecar::start(&w.lab, &w.hosts[1], &w.server, &key_b.key, "side-b");
    let (a4, _) = ts.addresses().expect("tailscaled addresses");
    let (b4, _) = b.wait_ips();
    b.wait_peer("ts-a", CONVERGE);
    let _b80 = listen(&w.lab, &w.hosts[1], "b-80", 80);
    let _b22 = listen(&w.lab, &w.hosts[1], "b-22", 22);
    let _a80 = listen(&w.lab, &w.hosts[0], "a-80", 80);

    reaches(&w.hosts[0], &b4, 80);
    let before = acl_drops(&b);
    assert!(!connects(&w.hosts[0], &b4, 22), "ts-a reached side-b:22");
    assert!(acl_drops(&b) > before, "side-b counted no drop");
    assert!(!connects(&w.hosts[1], &a4, 80), "side-b reached ts-a:80");
    reaches(&w.hosts[0], &b4, 80);
}

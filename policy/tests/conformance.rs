//! Conformance with Tailscale's own control plane: every `acl`, `grant`,
//! `routes` and `ssh` case of `tests/conformance/cases.json.gz` (captured
//! from Tailscale by the Headscale project, see the README there) runs
//! through the compiler and is compared BY MEANING:
//!
//! - packet filters: the admitted (source, destination, port, protocol)
//!   points must be the same — rules are expanded into boxes and compared
//!   on the grid their boundaries span; capability grants likewise per
//!   (capability, value);
//! - peers: the same set of hostnames;
//! - SSH: the same (principal, requested user → local user, action,
//!   acceptEnv) tuples;
//! - refusals: a policy Tailscale refused (HTTP 400) must be refused by
//!   `Policy::parse` or `Policy::check`, and an accepted one accepted.
//!
//! Prints the pass figure per category and fails below `BAR`, or when a
//! case not listed in `tests/conformance/KNOWN_FAILURES.md` fails.
//! `nodeattrs` (the policy-derived part of each node's CapMap) is reported
//! beside them. `POLICY_CASES=/path/cases.json[.gz]` runs another case file
//! of the same format (e.g. a held-out set).
//!
//! Run: `cargo test -p meshscale-policy --test conformance -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::IpAddr;

use meshscale_policy::{Policy, Topology, compile_report};
use serde_json::Value;

/// Minimum share of passing cases per category.
const BAR: f64 = 0.95;
const CATEGORIES: &[&str] = &[
    "acl",
    "grant",
    "routes",
    "ssh",
    "nodeattrs",
    // Captures of policies with `tests`/`sshTests`, accepted or refused
    // (`policy_tests.json.gz`): `Policy::parse` + `Policy::check`.
    "policytest",
    "sshtest",
];
/// Categories held to `BAR` and to the known-failures list (`nodeattrs`
/// is reported only: its remaining differences are deliberate, see
/// KNOWN_FAILURES.md).
const GATED: &[&str] = &["acl", "grant", "routes", "ssh", "policytest", "sshtest"];

/// The in-tree cases (`cases.json.gz` and `policy_tests.json.gz`), or
/// another file of the same format named by `POLICY_CASES` (`.json` or
/// `.json.gz`), e.g. a held-out set.
fn load_cases() -> Value {
    if let Ok(path) = std::env::var("POLICY_CASES") {
        return read_cases(&path);
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");
    let mut all = read_cases(&format!("{dir}/cases.json.gz"));
    let more = read_cases(&format!("{dir}/policy_tests.json.gz"));
    if let (Some(all), Some(more)) = (all.as_object_mut(), more.as_object()) {
        for (k, v) in more {
            all.insert(k.clone(), v.clone());
        }
    }
    all
}

fn read_cases(path: &str) -> Value {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut text = String::new();
    if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .expect("cases decompress");
    } else {
        std::io::BufReader::new(file)
            .read_to_string(&mut text)
            .expect("cases are readable");
    }
    serde_json::from_str(&text).expect("cases hold JSON")
}

fn known_failures() -> BTreeMap<String, String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance/KNOWN_FAILURES.md"
    );
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(id, rest)| {
            (
                id.to_string(),
                rest.trim_start_matches(':').trim().to_string(),
            )
        })
        .collect()
}

// ---------- addresses as u128 intervals ----------

const V4_BASE: u128 = 0xffff_0000_0000;

fn ip_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_BASE | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A wire address form (`*`, address, CIDR, `a-b`) as an interval.
fn interval(form: &str) -> (u128, u128) {
    if form == "*" {
        return (0, u128::MAX);
    }
    if let Some((a, b)) = form.split_once('-')
        && let (Ok(a), Ok(b)) = (a.parse::<IpAddr>(), b.parse::<IpAddr>())
    {
        return (ip_u128(a), ip_u128(b));
    }
    if let Some((addr, bits)) = form.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("bad address {form}"));
        let bits: u32 = bits.parse().unwrap_or_else(|_| panic!("bad bits {form}"));
        let host_bits = if addr.is_ipv4() {
            32 - bits
        } else {
            128 - bits
        };
        let span = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = ip_u128(addr) & !span;
        return (start, start | span);
    }
    let ip: IpAddr = form
        .parse()
        .unwrap_or_else(|_| panic!("bad address {form}"));
    (ip_u128(ip), ip_u128(ip))
}

/// A box: (src, dst, port) intervals, all inclusive.
type Box3 = [(u128, u128); 3];

/// Do two unions of boxes cover the same points? Both are cut along every
/// boundary either side has, then each cell is tested on both sides.
fn same_union(a: &[Box3], b: &[Box3]) -> bool {
    let mut cuts: [BTreeSet<u128>; 3] = Default::default();
    for bx in a.iter().chain(b) {
        for (d, (lo, hi)) in bx.iter().enumerate() {
            cuts[d].insert(*lo);
            if *hi < u128::MAX {
                cuts[d].insert(hi + 1);
            }
        }
    }
    let cells: Vec<Vec<u128>> = cuts.iter().map(|c| c.iter().copied().collect()).collect();
    let covered = |set: &[Box3], p: [u128; 3]| {
        set.iter()
            .any(|bx| (0..3).all(|d| bx[d].0 <= p[d] && p[d] <= bx[d].1))
    };
    for &x in &cells[0] {
        for &y in &cells[1] {
            for &z in &cells[2] {
                let p = [x, y, z];
                if covered(a, p) != covered(b, p) {
                    return false;
                }
            }
        }
    }
    true
}

/// Filter rules by meaning: per protocol (network rules) or per
/// (capability, value) (capability grants), the boxes they admit.
fn meaning(rules: &Value) -> BTreeMap<String, Vec<Box3>> {
    let mut out: BTreeMap<String, Vec<Box3>> = BTreeMap::new();
    for rule in rules.as_array().into_iter().flatten() {
        let srcs: Vec<(u128, u128)> = rule["SrcIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(interval)
            .collect();
        let protos: Vec<i64> = match rule["IPProto"].as_array() {
            Some(p) if !p.is_empty() => p.iter().filter_map(Value::as_i64).collect(),
            _ => vec![1, 6, 17, 58],
        };
        for dp in rule["DstPorts"].as_array().into_iter().flatten() {
            let dst = interval(dp["IP"].as_str().unwrap_or("*"));
            let first = dp["Ports"]["First"].as_u64().unwrap_or(0) as u128;
            let last = dp["Ports"]["Last"].as_u64().unwrap_or(0) as u128;
            for proto in &protos {
                for s in &srcs {
                    out.entry(format!("proto {proto}"))
                        .or_default()
                        .push([*s, dst, (first, last)]);
                }
            }
        }
        for cg in rule["CapGrant"].as_array().into_iter().flatten() {
            let dsts: Vec<(u128, u128)> = cg["Dsts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(interval)
                .collect();
            for (cap, values) in cg["CapMap"].as_object().into_iter().flatten() {
                let values: Vec<String> = match values.as_array() {
                    Some(v) if !v.is_empty() => v.iter().map(|x| x.to_string()).collect(),
                    _ => vec!["null".into()],
                };
                for v in values {
                    for s in &srcs {
                        for d in &dsts {
                            out.entry(format!("cap {cap} {v}"))
                                .or_default()
                                .push([*s, *d, (0, 0)]);
                        }
                    }
                }
            }
        }
    }
    out
}

fn same_filter(got: &Value, want: &Value) -> Result<(), String> {
    let (g, w) = (meaning(got), meaning(want));
    let keys: BTreeSet<&String> = g.keys().chain(w.keys()).collect();
    for k in keys {
        let empty = Vec::new();
        let (gb, wb) = (g.get(k).unwrap_or(&empty), w.get(k).unwrap_or(&empty));
        if !same_union(gb, wb) {
            return Err(format!("filter differs for {k}"));
        }
    }
    Ok(())
}

/// SSH policy by meaning: (principal, user → local, action, acceptEnv).
fn ssh_meaning(policy: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for rule in policy["rules"].as_array().into_iter().flatten() {
        let action = &rule["action"];
        let action = if action["holdAndDelegate"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            "check".to_string()
        } else {
            format!(
                "accept={} agent={} local={} remote={}",
                action["accept"].as_bool().unwrap_or(false),
                action["allowAgentForwarding"].as_bool().unwrap_or(false),
                action["allowLocalPortForwarding"]
                    .as_bool()
                    .unwrap_or(false),
                action["allowRemotePortForwarding"]
                    .as_bool()
                    .unwrap_or(false)
            )
        };
        let env = rule["acceptEnv"].to_string();
        for p in rule["principals"].as_array().into_iter().flatten() {
            let who = p["nodeIP"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| p.to_string());
            for (user, local) in rule["sshUsers"].as_object().into_iter().flatten() {
                out.insert(format!("{who} {user}->{local} {action} env={env}"));
            }
        }
    }
    out
}

/// The routes a node reaches through its peers: the union of the peers'
/// `AllowedIPs` beyond their own addresses must be the union of the
/// visible peers' approved routes (counting advertised routes the policy's
/// `autoApprovers` cover) that `RouteFilter` lets the node use. Which of two
/// routers with the same route is primary depends on registration order,
/// which captures do not record, so routes are compared per viewer, not
/// per peer.
fn same_routes(
    policy: &Policy,
    topo: &Topology,
    node: &str,
    got_peers: &Value,
    want_allowed: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let own: BTreeSet<String> = topo
        .tailnet
        .nodes
        .iter()
        .flat_map(|n| {
            let v4 = n.ipv4.map(|ip| format!("{ip}/32"));
            let v6 = n.ipv6.map(|ip| format!("{ip}/128"));
            v4.into_iter().chain(v6)
        })
        .collect();
    let want: BTreeSet<String> = want_allowed
        .values()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|p| !own.contains(p))
        .collect();
    let visible: BTreeSet<&str> = got_peers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // Approved routes, with advertised ones the autoApprovers cover.
    let mut tailnet = topo.tailnet.clone();
    for n in &mut tailnet.nodes {
        for r in topo.advertised.get(&n.id).into_iter().flatten() {
            if !n.approved_routes.contains(r) && policy.auto_approves(r, n, &topo.tailnet) {
                n.approved_routes.push(*r);
            }
        }
    }
    let filter = policy.route_filter(&tailnet);
    let viewer = tailnet
        .nodes
        .iter()
        .find(|n| topo.node_names.get(&n.id).map(String::as_str) == Some(node))
        .ok_or("viewer missing")?;
    let mut got = BTreeSet::new();
    for n in &tailnet.nodes {
        if !visible.contains(n.hostname.as_str()) {
            continue;
        }
        for r in &n.approved_routes {
            if filter.allows(viewer.id, r) {
                got.insert(r.to_string());
            }
        }
    }
    // Whether a router sees a peer's copy of a route it serves itself
    // depends on which of them is primary (registration order): leave
    // those routes out on both sides.
    let own: BTreeSet<String> = viewer
        .approved_routes
        .iter()
        .map(|r| r.to_string())
        .collect();
    let want: BTreeSet<String> = want.difference(&own).cloned().collect();
    let got: BTreeSet<String> = got.difference(&own).cloned().collect();
    if got != want {
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        return Err(format!(
            "routes via peers differ ({node}): missing {missing:?}, extra {extra:?}"
        ));
    }
    Ok(())
}

/// The node's own CapMap, restricted to what a policy decides: the
/// attributes its `nodeAttrs` name and `randomize-client-port` (Tailscale
/// adds many capabilities of its own, which are not policy output).
fn same_capmap(policy: &str, got: &Value, want: &Value) -> Result<(), String> {
    let text: Value = serde_json::from_str(policy).unwrap_or(Value::Null);
    let mut keys: BTreeSet<String> = BTreeSet::from(["randomize-client-port".to_string()]);
    for na in text["nodeAttrs"].as_array().into_iter().flatten() {
        for a in na["attr"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            keys.insert(a.to_string());
        }
        for a in na["app"].as_object().into_iter().flat_map(|m| m.keys()) {
            keys.insert(a.clone());
        }
    }
    for k in keys {
        let norm = |v: Option<&Value>| match v {
            None => None,
            Some(Value::Null) => Some(Value::Array(Vec::new())),
            Some(v) => Some(v.clone()),
        };
        let (g, w) = (norm(got.get(&k)), norm(want.get(&k)));
        if g != w {
            return Err(format!("capmap {k}: got {g:?}, want {w:?}"));
        }
    }
    Ok(())
}

fn check_case(category: &str, case: &Value) -> Result<(), String> {
    let policy_text = match &case["policy"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let topo = Topology::from_value(case).map_err(|e| format!("topology: {e}"))?;
    let refused = case["api_response_code"].as_i64() != Some(200);
    let parsed = Policy::parse(&policy_text).and_then(|p| p.check(&topo.tailnet).map(|()| p));
    let policy = match (parsed, refused) {
        (Err(_), true) => return Ok(()),
        (Ok(_), true) => {
            return Err(format!(
                "accepted a policy Tailscale refused ({})",
                case["api_response_body"]
            ));
        }
        (Err(e), false) => return Err(format!("refused an accepted policy: {e}")),
        (Ok(p), false) => p,
    };
    let report = compile_report(&policy, &topo);
    let expected = case["expected"].as_object().ok_or("no expected")?;
    for (node, want) in expected {
        let got = &report[node.as_str()];
        if got.is_null() {
            return Err(format!("{node}: missing from the report"));
        }
        same_filter(&got["packet_filter_rules"], &want["packet_filter_rules"])
            .map_err(|e| format!("{node}: {e}"))?;
        if let Some(peers) = want.get("peers") {
            let w: BTreeSet<&str> = peers
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let g: BTreeSet<&str> = got["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if w != g {
                let missing: Vec<_> = w.difference(&g).collect();
                let extra: Vec<_> = g.difference(&w).collect();
                return Err(format!(
                    "{node}: peers differ, missing {missing:?}, extra {extra:?}"
                ));
            }
        }
        if let Some(allowed) = want.get("peer_allowed_ips").and_then(Value::as_object) {
            same_routes(&policy, &topo, node, &got["peers"], allowed)
                .map_err(|e| format!("{node}: {e}"))?;
        }
        if category == "nodeattrs" {
            same_capmap(&policy_text, &got["self_capmap"], &want["self_capmap"])
                .map_err(|e| format!("{node}: {e}"))?;
        }
        if category == "ssh" {
            let (g, w) = (
                ssh_meaning(&got["ssh_policy"]),
                ssh_meaning(&want["ssh_policy"]),
            );
            if g != w {
                let missing: Vec<_> = w.difference(&g).take(3).collect();
                let extra: Vec<_> = g.difference(&w).take(3).collect();
                return Err(format!(
                    "{node}: ssh differs, missing {missing:?}, extra {extra:?}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn conformance_with_tailscale() {
    let cases = load_cases();
    let known = known_failures();
    let mut unexpected = Vec::new();
    let mut now_passing = Vec::new();
    let mut below_bar = Vec::new();
    for category in CATEGORIES {
        let Some(list) = cases[*category].as_array() else {
            let external = std::env::var_os("POLICY_CASES").is_some();
            assert!(
                external || !GATED.contains(category),
                "category {category} missing"
            );
            continue;
        };
        let mut passed = 0;
        for case in list {
            let id = case["test_id"].as_str().unwrap_or("?").to_string();
            let result = std::panic::catch_unwind(|| check_case(category, case))
                .unwrap_or_else(|_| Err("panicked".into()));
            match result {
                Ok(()) => {
                    passed += 1;
                    if known.contains_key(&id) {
                        now_passing.push(id);
                    }
                }
                Err(why) => {
                    println!("FAIL {category} {id}: {why}");
                    if !known.contains_key(&id) && GATED.contains(category) {
                        unexpected.push(format!("{id}: {why}"));
                    }
                }
            }
        }
        let share = passed as f64 / list.len() as f64;
        println!(
            "conformance {category}: {passed}/{} ({:.1}%)",
            list.len(),
            share * 100.0
        );
        if share < BAR && GATED.contains(category) {
            below_bar.push(format!("{category} {:.1}%", share * 100.0));
        }
    }
    if !now_passing.is_empty() {
        println!("now passing, remove from KNOWN_FAILURES.md: {now_passing:?}");
    }
    assert!(below_bar.is_empty(), "below the {BAR} bar: {below_bar:?}");
    assert!(
        unexpected.is_empty(),
        "failures not in KNOWN_FAILURES.md:\n{}",
        unexpected.join("\n")
    );
}

/// Debugging aid: `CASE=<test_id> cargo test -p meshscale-policy --test
/// conformance dump_case -- --ignored --nocapture` prints what the compiler
/// produced beside what Tailscale sent, for every node.
#[test]
#[ignore]
fn dump_case() {
    let Ok(wanted) = std::env::var("CASE") else {
        return;
    };
    let cases = load_cases();
    for category in CATEGORIES {
        for case in cases[*category].as_array().into_iter().flatten() {
            if case["test_id"].as_str() != Some(wanted.as_str()) {
                continue;
            }
            let text = match &case["policy"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("policy: {text}");
            let topo = Topology::from_value(case).expect("topology");
            let policy = Policy::parse(&text).expect("parses");
            let report = compile_report(&policy, &topo);
            for (node, want) in case["expected"].as_object().into_iter().flatten() {
                println!("== {node}\nwant: {want}\ngot:  {}", report[node.as_str()]);
            }
        }
    }
}

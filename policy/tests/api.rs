//! The public surface: parsing and refusals, compilation on a small
//! tailnet, tag ownership, auto-approval, policy tests, fingerprints and
//! the `policy compile` report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshscale_policy::{
    MAX_POLICY_BYTES, Node, NodePolicy, Policy, PolicyError, TagOwner, Tailnet, Topology, User,
    compile_report,
};
use meshscale_wire::tailcfg::FilterRule;

fn user(id: u64, name: &str) -> User {
    User {
        id,
        name: name.into(),
        email: Some(format!("{name}@example.com")),
    }
}

fn node(id: u64, host: &str, user: Option<u64>, tags: &[&str]) -> Node {
    Node {
        id,
        hostname: host.into(),
        user,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ipv4: Some(Ipv4Addr::new(100, 64, 0, id as u8)),
        ipv6: Some(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, id as u16)),
        approved_routes: Vec::new(),
    }
}

/// alice (node 1), bob (node 2), a web server tagged `tag:web` (node 3),
/// and a subnet router for 10.33.0.0/16 tagged `tag:router` (node 4).
fn tailnet() -> Tailnet {
    let mut router = node(4, "router", None, &["tag:router"]);
    router.approved_routes = vec!["10.33.0.0/16".parse().unwrap()];
    Tailnet {
        users: vec![user(1, "alice"), user(2, "bob")],
        nodes: vec![
            node(1, "laptop-a", Some(1), &[]),
            node(2, "laptop-b", Some(2), &[]),
            node(3, "web", None, &["tag:web"]),
            router,
        ],
    }
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, last))
}

/// Does a filter admit `src` → `dst:port` over TCP?
fn admits(filter: &[FilterRule], src: IpAddr, dst: IpAddr, port: u16) -> bool {
    let contains = |form: &str, ip: IpAddr| -> bool {
        if form == "*" {
            return true;
        }
        if let Ok(a) = form.parse::<IpAddr>() {
            return a == ip;
        }
        if let Ok(p) = form.parse::<meshscale_wire::netip::IpPrefix>() {
            return p.contains(&ip);
        }
        if let Some((a, b)) = form.split_once('-')
            && let (Ok(a), Ok(b)) = (a.parse::<Ipv4Addr>(), b.parse::<Ipv4Addr>())
            && let IpAddr::V4(ip) = ip
        {
            return a <= ip && ip <= b;
        }
        false
    };
    filter.iter().any(|r| {
        (r.ip_proto.is_empty() || r.ip_proto.contains(&6))
            && r.src_ips.iter().any(|s| contains(s, src))
            && r.dst_ports
                .iter()
                .any(|d| d.ports.contains(port) && contains(&d.ip, dst))
    })
}

const WEB_POLICY: &str = r#"{
  // alice may reach the web server on port 80, nothing else.
  "tagOwners": {"tag:web": ["alice@"], "tag:router": ["alice@"],},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:80"]},
  ],
}"#;

#[test]
fn only_granted_traffic_and_peers() {
    let compiled = Policy::parse(WEB_POLICY).unwrap().compile(&tailnet());
    let web = &compiled.nodes[&3];
    assert!(admits(&web.packet_filter, v4(1), v4(3), 80));
    assert!(!admits(&web.packet_filter, v4(1), v4(3), 22));
    assert!(!admits(&web.packet_filter, v4(2), v4(3), 80));
    assert_eq!(web.peers, vec![1]);
    assert_eq!(compiled.nodes[&1].peers, vec![3]);
    assert!(compiled.nodes[&1].packet_filter.is_empty());
    assert!(compiled.nodes[&2].peers.is_empty(), "bob sees nobody");
    assert!(compiled.nodes[&2].packet_filter.is_empty());
}

#[test]
fn no_policy_allows_everything() {
    let compiled = Policy::allow_all().compile(&tailnet());
    for (id, view) in &compiled.nodes {
        assert_eq!(view.packet_filter, vec![FilterRule::allow_all()]);
        assert_eq!(view.peers.len(), 3, "node {id} sees all others");
        assert!(view.ssh_policy.is_none());
    }
}

#[test]
fn subnet_router_receives_rules_for_its_routes() {
    let policy = r#"{"tagOwners": {"tag:router": ["alice@"]},
        "acls": [{"action": "accept", "src": ["bob@"], "dst": ["10.33.1.0/24:443"]}]}"#;
    let compiled = Policy::parse(policy).unwrap().compile(&tailnet());
    let router = &compiled.nodes[&4];
    assert!(admits(
        &router.packet_filter,
        v4(2),
        "10.33.1.7".parse().unwrap(),
        443
    ));
    assert_eq!(router.peers, vec![2]);
    assert_eq!(compiled.nodes[&2].peers, vec![4]);
    assert!(compiled.nodes[&3].packet_filter.is_empty());
}

#[test]
fn autogroup_self_stays_within_a_user() {
    let mut t = tailnet();
    t.nodes.push(node(5, "phone-a", Some(1), &[]));
    let policy = r#"{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}"#;
    let compiled = Policy::parse(policy).unwrap().compile(&t);
    let phone = &compiled.nodes[&5];
    assert!(admits(&phone.packet_filter, v4(1), v4(5), 22));
    assert!(!admits(&phone.packet_filter, v4(2), v4(5), 22));
    assert_eq!(phone.peers, vec![1]);
    assert!(
        compiled.nodes[&3].packet_filter.is_empty(),
        "tagged nodes have no self"
    );
}

#[test]
fn refusals_name_the_offending_entry() {
    let cases = [
        (
            r#"{"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["*:*"]}]}"#,
            "acls[0].src[0]",
            "group:eng",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]}]}"#,
            "acls[0].dst[0]",
            "tag:db",
        ),
        (
            r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:ssh"]}]}"#,
            "acls[0].dst[0]",
            "ssh",
        ),
        (
            r#"{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}"#,
            "acls[0].action",
            "deny",
        ),
        (
            r#"{"grants": [{"src": ["autogroup:self"], "dst": ["*"], "ip": ["*"]}]}"#,
            "grants[0].src[0]",
            "autogroup:self",
        ),
        (
            r#"{"grants": [{"src": ["*"], "dst": ["*"]}]}"#,
            "grants[0]",
            "ip and app",
        ),
        (
            r#"{"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"]}]}"#,
            "ssh[0]",
            "users",
        ),
        (r#"{"aclz": []}"#, "syntax", "aclz"),
        ("{ /* unterminated", "syntax", "comment"),
    ];
    for (text, at, word) in cases {
        let err = Policy::parse(text).expect_err(text).to_string();
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(err.contains(at), "{err:?} should name {at}");
        assert!(err.contains(word), "{err:?} should mention {word}");
    }
}

#[test]
fn oversized_policy_is_refused() {
    let text = format!("{{\"hosts\": {{}}}}{}", " ".repeat(MAX_POLICY_BYTES));
    assert!(matches!(
        Policy::parse(&text),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[test]
fn keys_match_case_insensitively_and_hash_keys_are_comments() {
    let text =
        r##"{"ACLs": [{"Action": "accept", "#why": "demo", "Src": ["*"], "Dst": ["*:22"]}]}"##;
    let compiled = Policy::parse(text).unwrap().compile(&tailnet());
    assert!(admits(&compiled.nodes[&3].packet_filter, v4(1), v4(3), 22));
}

#[test]
fn tag_ownership() {
    let policy = Policy::parse(
        r#"{"groups": {"group:ops": ["bob@"]},
            "tagOwners": {"tag:web": ["alice@example.com"], "tag:db": ["group:ops"], "tag:child": ["tag:web"]}}"#,
    )
    .unwrap();
    let t = tailnet();
    let (alice, bob) = (&t.users[0], &t.users[1]);
    assert!(policy.may_own_tag("tag:web", &TagOwner::User(alice), &t));
    assert!(!policy.may_own_tag("tag:web", &TagOwner::User(bob), &t));
    assert!(policy.may_own_tag("tag:db", &TagOwner::User(bob), &t));
    assert!(!policy.may_own_tag("tag:nope", &TagOwner::User(alice), &t));
    let held = vec!["tag:web".to_string()];
    assert!(policy.may_own_tag("tag:child", &TagOwner::Tags(&held), &t));
    assert!(!policy.may_own_tag("tag:db", &TagOwner::Tags(&held), &t));
    assert!(!Policy::allow_all().may_own_tag("tag:web", &TagOwner::User(alice), &t));
}

#[test]
fn auto_approvers() {
    let policy = Policy::parse(
        r#"{"tagOwners": {"tag:router": ["alice@"]},
            "autoApprovers": {"routes": {"10.33.0.0/16": ["tag:router"]}, "exitNode": ["alice@"]}}"#,
    )
    .unwrap();
    let t = tailnet();
    let router = &t.nodes[3];
    let laptop = &t.nodes[0];
    assert!(policy.auto_approves(&"10.33.1.0/24".parse().unwrap(), router, &t));
    assert!(!policy.auto_approves(&"10.34.0.0/24".parse().unwrap(), router, &t));
    assert!(!policy.auto_approves(&"10.33.0.0/16".parse().unwrap(), laptop, &t));
    assert!(policy.auto_approves(&"0.0.0.0/0".parse().unwrap(), laptop, &t));
    assert!(!policy.auto_approves(&"0.0.0.0/0".parse().unwrap(), router, &t));
}

#[test]
fn policy_tests_refuse_a_policy_that_breaks_them() {
    let passing = format!(
        r#"{WEB_TAIL}, "tests": [{{"src": "alice@", "accept": ["tag:web:80"], "deny": ["tag:web:22"]}}]}}"#
    );
    Policy::parse(&passing).unwrap().check(&tailnet()).unwrap();
    let failing =
        format!(r#"{WEB_TAIL}, "tests": [{{"src": "bob@", "accept": ["tag:web:80"]}}]}}"#);
    let err = Policy::parse(&failing)
        .unwrap()
        .check(&tailnet())
        .unwrap_err();
    assert!(matches!(err, PolicyError::TestFailed { .. }), "{err}");
    assert!(err.to_string().contains("tests[0]"));
}

const WEB_TAIL: &str = r#"{"tagOwners": {"tag:web": ["alice@"]},
    "acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web:80"]}],
    "ssh": [{"action": "accept", "src": ["alice@"], "dst": ["tag:web"], "users": ["root"]}]"#;

#[test]
fn ssh_policy_and_ssh_tests() {
    let text = format!(
        r#"{WEB_TAIL}, "sshTests": [{{"src": "alice@", "dst": ["tag:web"], "accept": ["root"], "deny": ["ubuntu"]}}]}}"#
    );
    let policy = Policy::parse(&text).unwrap();
    policy.check(&tailnet()).unwrap();
    let compiled = policy.compile(&tailnet());
    let ssh = compiled.nodes[&3].ssh_policy.as_ref().unwrap();
    assert_eq!(ssh.rules.len(), 1);
    assert_eq!(ssh.rules[0].ssh_users["root"], "root");
    assert!(ssh.rules[0].action.as_ref().unwrap().accept);
    assert_eq!(ssh.rules[0].principals.len(), 2, "alice's IPv4 and IPv6");
    let bad = format!(
        r#"{WEB_TAIL}, "sshTests": [{{"src": "bob@", "dst": ["tag:web"], "accept": ["root"]}}]}}"#
    );
    assert!(Policy::parse(&bad).unwrap().check(&tailnet()).is_err());
}

#[test]
fn node_attrs_become_cap_maps() {
    let policy = Policy::parse(
        r#"{"tagOwners": {"tag:web": ["alice@"]},
            "nodeAttrs": [{"target": ["tag:web"], "attr": ["funnel"]}]}"#,
    )
    .unwrap();
    let compiled = policy.compile(&tailnet());
    assert!(compiled.nodes[&3].cap_map.contains_key("funnel"));
    assert!(compiled.nodes[&1].cap_map.is_empty());
}

#[test]
fn fingerprints_group_identical_views() {
    let same = |a: &NodePolicy, b: &NodePolicy| a.fingerprint() == b.fingerprint();
    let policy = r#"{"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:80"]}],
        "tagOwners": {"tag:web": ["alice@"]}}"#;
    let compiled = Policy::parse(policy).unwrap().compile(&tailnet());
    let (a, b, web) = (
        &compiled.nodes[&1],
        &compiled.nodes[&2],
        &compiled.nodes[&3],
    );
    assert!(same(a, b), "the two laptops see the same thing");
    assert!(!same(a, web));
}

#[test]
fn compile_report_names_nodes_and_peers_by_hostname() {
    let topo = Topology::parse(
        r#"{"users": [{"id": 1, "name": "alice", "email": "alice@example.com"}],
            "nodes": {
              "a": {"hostname": "laptop", "tags": [], "ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1", "user": "alice"},
              "w": {"hostname": "web", "tags": ["tag:web"], "ipv4": "100.64.0.3", "ipv6": "fd7a:115c:a1e0::3"}
            }}"#,
    )
    .unwrap();
    let report = compile_report(&Policy::parse(WEB_POLICY).unwrap(), &topo);
    assert_eq!(report["a"]["peers"], serde_json::json!(["web"]));
    assert_eq!(report["w"]["peers"], serde_json::json!(["laptop"]));
    let rules = &report["w"]["packet_filter_rules"];
    assert_eq!(rules[0]["DstPorts"][0]["Ports"]["First"], 80);
    assert!(report["w"]["ssh_policy"].is_null());
    assert!(Topology::parse(r#"{"nodes": {"x": {"user": "ghost"}}}"#).is_err());
}

#[test]
fn empty_text_is_no_policy() {
    for text in ["", "  \n", "// nothing yet\n"] {
        let compiled = Policy::parse(text).unwrap().compile(&tailnet());
        assert_eq!(compiled.nodes[&1].peers, vec![2, 3, 4], "{text:?}");
    }
}

#[test]
fn a_node_may_keep_a_tag_it_holds() {
    let policy = Policy::parse(r#"{"tagOwners": {"tag:web": ["alice@"]}}"#).unwrap();
    let held = vec!["tag:web".to_string()];
    assert!(policy.may_own_tag("tag:web", &TagOwner::Tags(&held), &tailnet()));
}

#[test]
fn malformed_tests_and_ssh_aliases_are_refused() {
    let base = r#""tagOwners": {"tag:web": ["alice@"]}, "hosts": {"net": "10.0.0.0/8"}"#;
    for (extra, at) in [
        (r#""tests": [{"src": "alice@"}]"#, "tests[0]"),
        (
            r#""tests": [{"src": "alice@", "proto": "icmp", "accept": ["tag:web:80"]}]"#,
            "tests[0].proto",
        ),
        (
            r#""tests": [{"src": "alice@", "accept": ["tag:web:80-90"]}]"#,
            "tests[0].accept[0]",
        ),
        (
            r#""tests": [{"src": "alice@", "accept": ["100.64.0.3/32:80"]}]"#,
            "tests[0].accept[0]",
        ),
        (
            r#""tests": [{"src": "alice@", "deny": ["net:80"]}]"#,
            "tests[0].deny[0]",
        ),
        (
            r#""sshTests": [{"src": "alice@", "dst": [], "accept": ["root"]}]"#,
            "sshTests[0]",
        ),
        (
            r#""ssh": [{"action": "accept", "src": ["*"], "dst": ["tag:web"], "users": ["root"]}]"#,
            "ssh[0].src[0]",
        ),
        (
            r#""ssh": [{"action": "accept", "src": ["alice@"], "dst": ["*"], "users": ["root"]}]"#,
            "ssh[0].dst[0]",
        ),
    ] {
        let text = format!("{{{base}, {extra}}}");
        let err = Policy::parse(&text).expect_err(&text).to_string();
        assert!(err.starts_with(at), "{err:?} should start with {at}");
    }
}

#[test]
fn compile_report_applies_auto_approvers_to_advertised_routes() {
    let topo = Topology::parse(
        r#"{"users": [{"id": 1, "name": "alice", "email": "alice@example.com"}],
            "nodes": {
              "a": {"hostname": "laptop", "ipv4": "100.64.0.1", "user": "alice"},
              "r": {"hostname": "router", "tags": ["tag:router"], "ipv4": "100.64.0.4",
                    "routable_ips": ["10.33.0.0/16"], "approved_routes": null}
            }}"#,
    )
    .unwrap();
    let rules = r#""acls": [{"action": "accept", "src": ["alice@"], "dst": ["10.33.0.0/16:22"]}]"#;
    let approving = format!(
        r#"{{"tagOwners": {{"tag:router": ["alice@"]}}, {rules},
            "autoApprovers": {{"routes": {{"10.33.0.0/16": ["tag:router"]}}}}}}"#
    );
    let report = compile_report(&Policy::parse(&approving).unwrap(), &topo);
    assert_eq!(report["a"]["peers"], serde_json::json!(["router"]));
    let silent = format!(r#"{{"tagOwners": {{"tag:router": ["alice@"]}}, {rules}}}"#);
    let report = compile_report(&Policy::parse(&silent).unwrap(), &topo);
    assert_eq!(
        report["a"]["peers"],
        serde_json::json!([]),
        "not approved: no route"
    );
}

#[test]
fn route_filter_offers_routes_only_to_nodes_the_policy_connects() {
    let policy = Policy::parse(
        r#"{"tagOwners": {"tag:router": ["alice@"], "tag:web": ["alice@"]},
            "acls": [{"action": "accept", "src": ["bob@"], "dst": ["10.33.1.0/24:443"]}]}"#,
    )
    .unwrap();
    let t = tailnet();
    let filter = policy.route_filter(&t);
    let route: meshscale_wire::netip::IpPrefix = "10.33.0.0/16".parse().unwrap();
    assert!(filter.allows(2, &route), "bob may reach part of the route");
    assert!(!filter.allows(1, &route), "alice may not");
    assert!(
        filter.allows(1, &"0.0.0.0/0".parse().unwrap()),
        "exit routes are offered"
    );
    assert!(Policy::allow_all().route_filter(&t).allows(1, &route));
}

#[test]
fn a_rule_cannot_fan_out_without_bound() {
    let ports: Vec<String> = (1..=300).map(|p| p.to_string()).collect();
    let dsts: Vec<String> = (0..300)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let text = format!(
        r#"{{"grants": [{{"src": ["*"], "dst": [{}], "ip": ["{}"]}}]}}"#,
        dsts.join(","),
        ports.join(",")
    );
    let err = Policy::parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("grants[0]"), "{err}");
}

//! Parsing never panics, whatever the input: arbitrary text, and
//! policy-shaped text assembled from real fragments (which also goes
//! through `check` and `compile`).

use std::net::{Ipv4Addr, Ipv6Addr};

use meshscale_policy::{Node, Policy, Tailnet, Topology, User};
use proptest::prelude::*;

fn tailnet() -> Tailnet {
    Tailnet {
        users: vec![User {
            id: 1,
            name: "alice".into(),
            email: Some("alice@example.com".into()),
        }],
        nodes: (1..=3)
            .map(|i| Node {
                id: i,
                hostname: format!("n{i}"),
                user: (i != 3).then_some(1),
                tags: if i == 3 {
                    vec!["tag:web".into()]
                } else {
                    Vec::new()
                },
                ipv4: Some(Ipv4Addr::new(100, 64, 0, i as u8)),
                ipv6: Some(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, i as u16)),
                approved_routes: if i == 3 {
                    vec!["10.0.0.0/8".parse().unwrap(), "0.0.0.0/0".parse().unwrap()]
                } else {
                    Vec::new()
                },
            })
            .collect(),
    }
}

const ALIASES: &[&str] = &[
    "*",
    "alice@",
    "alice@example.com",
    "group:g",
    "group:missing",
    "tag:web",
    "tag:nope",
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:self",
    "autogroup:internet",
    "autogroup:danger-all",
    "autogroup:nonroot",
    "h",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "100.64.0.1",
    "fd7a:115c:a1e0::1",
    "10.0.0.1-10.0.0.9",
    "",
    ":",
    "user:*@example.com",
];
const PORTS: &[&str] = &["*", "22", "80-443", "0", "1,2,3", "x", "65536", "5-1", ""];

fn alias() -> impl Strategy<Value = String> {
    prop::sample::select(ALIASES).prop_map(str::to_string)
}

fn list(max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(alias(), 0..max)
}

/// Policies built from known fragments, valid or not.
fn policy_text() -> impl Strategy<Value = String> {
    let acl = (list(3), list(3), prop::sample::select(PORTS)).prop_map(|(s, d, p)| {
        let dst: Vec<String> = d.iter().map(|a| format!("{a}:{p}")).collect();
        serde_json::json!({"action": "accept", "src": s, "dst": dst}).to_string()
    });
    let grant = (list(3), list(3), prop::sample::select(PORTS), any::<bool>(), any::<bool>()).prop_map(
        |(s, d, p, app, via)| {
            let mut g = serde_json::json!({"src": s, "dst": d, "ip": [p]});
            if app {
                g["app"] = serde_json::json!({"example.com/cap/x": [{"k": 1}], "tailscale.com/cap/drive": [{}]});
            }
            if via {
                g["via"] = serde_json::json!(["tag:web"]);
            }
            g.to_string()
        },
    );
    let ssh = (list(2), list(2), prop::sample::select(&["accept", "check", "deny", ""][..])).prop_map(
        |(s, d, a)| {
            serde_json::json!({"action": a, "src": s, "dst": d, "users": ["root", "autogroup:nonroot", "localpart:*@example.com"]})
                .to_string()
        },
    );
    (
        prop::collection::vec(acl, 0..3),
        prop::collection::vec(grant, 0..3),
        prop::collection::vec(ssh, 0..2),
    )
        .prop_map(|(acls, grants, ssh)| {
            format!(
                r#"{{"groups": {{"group:g": ["alice@"]}}, "hosts": {{"h": "10.1.0.0/16"}},
                   "tagOwners": {{"tag:web": ["alice@"]}},
                   "acls": [{}], "grants": [{}], "ssh": [{}],
                   "nodeAttrs": [{{"target": ["*"], "attr": ["funnel"]}}]}}"#,
                acls.join(","),
                grants.join(","),
                ssh.join(",")
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Policy::parse(&text);
        let _ = Topology::parse(&text);
    }

    #[test]
    fn json_like_text_never_panics(text in "[{}\\[\\]\",:/*a-z0-9 \\\\\n#@-]{0,200}") {
        let _ = Policy::parse(&text);
    }

    #[test]
    fn assembled_policies_never_panic(text in policy_text()) {
        if let Ok(policy) = Policy::parse(&text) {
            let t = tailnet();
            let _ = policy.check(&t);
            let compiled = policy.compile(&t);
            prop_assert_eq!(compiled.nodes.len(), 3);
            for view in compiled.nodes.values() {
                prop_assert!(view.peers.windows(2).all(|w| w[0] < w[1]), "peers sorted and unique");
            }
        }
    }
}

//! Compiles a 20-rule policy over a large synthetic tailnet and prints how
//! long it took: `cargo run --release -p meshscale-policy --example scale
//! [NODES]`. A measurement aid, not a test.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use meshscale_policy::{Node, Policy, Tailnet, User};

fn main() {
    let nodes: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000);
    let users: u64 = 50;
    let mut tailnet = Tailnet::default();
    for u in 0..users {
        tailnet.users.push(User {
            id: u + 1,
            name: format!("user{u}"),
            email: Some(format!("user{u}@example.com")),
        });
    }
    for i in 0..nodes {
        let tagged = i % 5 == 0;
        tailnet.nodes.push(Node {
            id: i + 1,
            hostname: format!("node{i}"),
            user: (!tagged).then_some(i % users + 1),
            tags: if tagged {
                vec![format!("tag:svc{}", i % 10)]
            } else {
                Vec::new()
            },
            ipv4: Some(Ipv4Addr::from(0x6440_0000u32 + i as u32 + 1)),
            ipv6: Some(Ipv6Addr::from(
                0xfd7a_115c_a1e0_u128 << 80 | (i as u128 + 1),
            )),
            approved_routes: Vec::new(),
        });
    }
    let mut acls = Vec::new();
    for r in 0..18 {
        acls.push(format!(
            r#"{{"action":"accept","src":["group:g{}"],"dst":["tag:svc{}:{}"]}}"#,
            r % 5,
            r % 10,
            8000 + r
        ));
    }
    acls.push(
        r#"{"action":"accept","src":["autogroup:member"],"dst":["autogroup:self:*"]}"#.into(),
    );
    acls.push(r#"{"action":"accept","src":["tag:svc1"],"dst":["tag:svc2:443"]}"#.into());
    let groups: Vec<String> = (0..5)
        .map(|g| {
            let members: Vec<String> = (0..users)
                .filter(|u| u % 5 == g)
                .map(|u| format!("\"user{u}@example.com\""))
                .collect();
            format!("\"group:g{g}\":[{}]", members.join(","))
        })
        .collect();
    let owners: Vec<String> = (0..10)
        .map(|t| format!("\"tag:svc{t}\":[\"group:g0\"]"))
        .collect();
    let text = format!(
        r#"{{"groups":{{{}}},"tagOwners":{{{}}},"acls":[{}]}}"#,
        groups.join(","),
        owners.join(","),
        acls.join(",")
    );
    let policy = match Policy::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("policy refused: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let compiled = policy.compile(&tailnet);
    let took = start.elapsed();
    let peers: usize = compiled.nodes.values().map(|v| v.peers.len()).sum();
    let rules: usize = compiled.nodes.values().map(|v| v.packet_filter.len()).sum();
    println!(
        "{nodes} nodes, 20 rules: compiled in {took:?} ({peers} peer links, {rules} filter rules)"
    );
}

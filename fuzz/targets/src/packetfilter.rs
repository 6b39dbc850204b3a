//! The sidecar's inbound packet filter (`meshscale-packetfilter`): the
//! first byte picks a fixed policy, the rest is a packet from the tunnel,
//! also recorded as outbound. Any bytes get a verdict (no panic), and the
//! verdict counts exactly once.
use meshscale_packetfilter::{Filter, LocalNets, Policy, Rules};
use meshscale_wire::tailcfg::{FilterRule, NetPortRange, PortRange};

fn policy(which: u8) -> Policy {
    let rules = match which % 3 {
        0 => vec![FilterRule::allow_all()],
        1 => vec![FilterRule {
            src_ips: vec!["100.64.0.0/10".into(), "fd7a:115c:a1e0::/48".into()],
            dst_ports: vec![NetPortRange {
                ip: "*".into(),
                bits: None,
                ports: PortRange {
                    first: 80,
                    last: 80,
                },
            }],
            ip_proto: vec![6, 17, 47],
            ..FilterRule::default()
        }],
        _ => Vec::new(),
    };
    let local = LocalNets::new([
        ("100.64.0.1".parse().expect("literal"), 32),
        ("fd7a:115c:a1e0::1".parse().expect("literal"), 128),
        ("0.0.0.0".parse().expect("literal"), 0),
    ]);
    Policy {
        rules: Rules::compile(&rules).rules,
        local,
    }
}

pub fn run(data: &[u8]) {
    let Some((&which, packet)) = data.split_first() else {
        return;
    };
    let f = Filter::new(policy(which));
    f.outbound(packet);
    let _ = f.inbound(packet);
    let c = f.counters();
    let total: u64 = c.drops().iter().map(|(_, n)| n).sum::<u64>() + c.accepted();
    assert_eq!(total, 1);
}

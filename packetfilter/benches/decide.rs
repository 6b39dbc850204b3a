//! Per-packet cost of the inbound filter decision with a 20-rule policy
//! (the size the data-plane benchmark uses): an allowed SYN that matches
//! the last rule, a denied SYN that scans every rule, a mid-flow segment
//! (no rule scan), and a UDP reply found in the flow table.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use meshscale_packetfilter::{Filter, LocalNets, Policy, Rules};
use meshscale_wire::tailcfg::{FilterRule, NetPortRange, PortRange};

fn v4(proto: u8, src: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b = vec![0x45, 0, 0, 60, 0, 0, 0, 0, 64, proto, 0, 0];
    b.extend_from_slice(&src);
    b.extend_from_slice(&[100, 64, 0, 1]);
    let mut t = [0u8; 40];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[13] = flags;
    b.extend_from_slice(&t);
    b
}

fn twenty_rules() -> Filter {
    let rules: Vec<FilterRule> = (0..20u16)
        .map(|i| FilterRule {
            src_ips: vec![format!("100.64.1.{i}"), format!("10.{i}.0.0/16")],
            dst_ports: vec![NetPortRange {
                ip: "100.64.0.1".into(),
                bits: None,
                ports: PortRange {
                    first: 8000 + i,
                    last: 8000 + i,
                },
            }],
            ..FilterRule::default()
        })
        .collect();
    Filter::new(Policy {
        rules: Rules::compile(&rules).rules,
        local: LocalNets::new([("100.64.0.1".parse().expect("literal"), 32)]),
    })
}

fn bench(c: &mut Criterion) {
    let f = twenty_rules();
    let cases = [
        (
            "syn_allowed_last_rule",
            v4(6, [100, 64, 1, 19], 40000, 8019, 0x02),
        ),
        (
            "syn_denied_all_rules",
            v4(6, [100, 64, 9, 9], 40000, 22, 0x02),
        ),
        ("tcp_established", v4(6, [100, 64, 9, 9], 40000, 22, 0x10)),
        (
            "udp_reply_in_flow_table",
            v4(17, [100, 64, 9, 9], 53, 5353, 0),
        ),
    ];
    f.outbound(&{
        let mut b = v4(17, [100, 64, 0, 1], 5353, 53, 0);
        b[12..16].copy_from_slice(&[100, 64, 0, 1]);
        b[16..20].copy_from_slice(&[100, 64, 9, 9]);
        b
    });
    let mut g = c.benchmark_group("packetfilter_inbound_20_rules");
    for (name, p) in &cases {
        g.bench_function(*name, |b| b.iter(|| f.inbound(black_box(p))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

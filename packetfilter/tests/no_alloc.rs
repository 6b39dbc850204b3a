//! The per-packet paths allocate nothing once the filter exists: a counting
//! global allocator watches `inbound`/`outbound` over a mix of packets
//! against a 20-rule filter.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use meshscale_packetfilter::{Filter, LocalNets, Policy, Rules};
use meshscale_wire::tailcfg::{FilterRule, NetPortRange, PortRange};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b = vec![0x45, 0, 0, 48, 0, 0, 0, 0, 64, proto, 0, 0];
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    let mut t = [0u8; 28];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[13] = flags;
    b.extend_from_slice(&t);
    b
}

#[test]
fn decisions_do_not_allocate() {
    let rules: Vec<FilterRule> = (0..20u16)
        .map(|i| FilterRule {
            src_ips: vec![format!("100.64.1.{i}"), "10.0.0.0/8".into()],
            dst_ports: vec![NetPortRange {
                ip: "100.64.0.1".into(),
                bits: None,
                ports: PortRange {
                    first: 1000 + i,
                    last: 1000 + i,
                },
            }],
            ..FilterRule::default()
        })
        .collect();
    let f = Filter::new(Policy {
        rules: Rules::compile(&rules).rules,
        local: LocalNets::new([("100.64.0.1".parse().unwrap(), 32)]),
    });
    let us = [100, 64, 0, 1];
    let packets = [
        v4(6, [100, 64, 1, 3], us, 5000, 1003, 0x02),
        v4(6, [100, 64, 1, 3], us, 5000, 22, 0x02),
        v4(6, [100, 64, 9, 9], us, 5000, 22, 0x10),
        v4(17, [100, 64, 9, 9], us, 53, 5000, 0),
        v4(1, [100, 64, 9, 9], us, 0, 0, 0),
        v4(47, [100, 64, 9, 9], us, 0, 0, 0),
    ];
    let out = v4(17, us, [100, 64, 9, 9], 5000, 53, 0);
    // Warm-up: the flow table and lazily set-up state exist before counting.
    f.outbound(&out);
    for p in &packets {
        f.inbound(p);
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        f.outbound(&out);
        for p in &packets {
            std::hint::black_box(f.inbound(p));
        }
    }
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 0);
    assert!(f.counters().accepted() > 0);
}

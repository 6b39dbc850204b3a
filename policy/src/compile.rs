//! Per-node compilation: packet filters, visible peers, cap maps.

use meshscale_wire::tailcfg::FilterRule;

use crate::resolve::Checked;
use crate::{Compiled, NodePolicy, Tailnet};

/// No policy: every node gets the allow-all filter and sees every peer.
pub(crate) fn allow_all(tailnet: &Tailnet) -> Compiled {
    let mut ids: Vec<u64> = tailnet.nodes.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    let nodes = tailnet
        .nodes
        .iter()
        .map(|n| {
            let view = NodePolicy {
                packet_filter: vec![FilterRule::allow_all()],
                peers: ids.iter().copied().filter(|&p| p != n.id).collect(),
                ssh_policy: None,
                cap_map: Default::default(),
            };
            (n.id, view)
        })
        .collect();
    Compiled { nodes }
}

pub(crate) fn compile(_checked: &Checked, tailnet: &Tailnet) -> Compiled {
    allow_all(tailnet)
}

//! What the access policy lets each node see, as the hub keeps it: the
//! node's packet filter, SSH policy and capabilities, and the set of nodes
//! it may see, shared between all nodes that see the same set.
//!
//! Sharing the visible set is what keeps the hub's fan-out O(changed): a
//! batch of peer changes is filtered and encoded once per distinct visible
//! set, not once per session. Without a policy every node sees everyone
//! ([`Visible::All`]), so there is exactly one such set.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock};

use meshscale_policy::{Compiled, NodePolicy, Policy, Tailnet as PolicyTailnet};
use meshscale_wire::tailcfg::{CapMap, FilterRule, SshPolicy};

use super::view::allow_all_filter;
use crate::store;

/// The nodes one node may see (itself included or not: a node is never its
/// own peer, so membership of its own id does not matter).
#[derive(Debug)]
pub enum Visible {
    /// Every node of the tailnet (no policy).
    All,
    /// These node ids, sorted; shared by every node that sees exactly them.
    Ids(Arc<VisibleSet>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct VisibleSet {
    /// Identifies the set among the hub's groups (a hash of `ids`; equal
    /// sets are interned to one `Arc`, so pointer identity also holds).
    pub key: u64,
    pub ids: Vec<i64>,
}

impl Visible {
    pub fn contains(&self, id: i64) -> bool {
        match self {
            Visible::All => true,
            Visible::Ids(set) => set.ids.binary_search(&id).is_ok(),
        }
    }

    /// What batches of peer changes are grouped by: nodes with equal keys
    /// receive identical peer deltas.
    pub fn group_key(&self) -> u64 {
        match self {
            Visible::All => 0,
            Visible::Ids(set) => set.key,
        }
    }
}

/// One node's share of the policy.
#[derive(Debug)]
pub struct Access {
    pub filter: Vec<FilterRule>,
    pub ssh: Option<SshPolicy>,
    pub cap_map: CapMap,
    pub visible: Visible,
}

/// No policy: the allow-all filter, everyone visible.
pub static ALLOW_ALL: LazyLock<Arc<Access>> = LazyLock::new(|| {
    Arc::new(Access {
        filter: allow_all_filter(),
        ssh: None,
        cap_map: CapMap::new(),
        visible: Visible::All,
    })
});

/// Under a policy, before the node's first compilation (it joined since the
/// last one): nothing reaches it and it sees nobody, until the next batch
/// (at most one batch window later) brings its real share.
pub static NOT_YET_COMPILED: LazyLock<Arc<Access>> = LazyLock::new(|| {
    Arc::new(Access {
        filter: Vec::new(),
        ssh: None,
        cap_map: CapMap::new(),
        visible: Visible::Ids(Arc::new(VisibleSet {
            key: hash_ids(&[]),
            ids: Vec::new(),
        })),
    })
});

fn hash_ids(ids: &[i64]) -> u64 {
    let mut h = DefaultHasher::new();
    ids.hash(&mut h);
    // 0 is `Visible::All`'s key.
    h.finish().max(1)
}

/// The policy's view of one stored node. Tagged nodes belong to their tags,
/// not to the user that registered them (Tailscale's semantics).
pub fn policy_node(n: &store::Node) -> meshscale_policy::Node {
    meshscale_policy::Node {
        id: n.id.unsigned_abs(),
        hostname: n.hostname.clone(),
        user: n.tags.is_empty().then_some(n.user.id.unsigned_abs()),
        tags: n.tags.clone(),
        ipv4: n.ipv4,
        ipv6: n.ipv6,
        approved_routes: Vec::new(),
    }
}

pub fn policy_user(u: &store::User) -> meshscale_policy::User {
    meshscale_policy::User {
        id: u.id.unsigned_abs(),
        name: u.name.clone(),
        email: (!u.email.is_empty()).then(|| u.email.clone()),
    }
}

/// The tailnet as the policy compiler sees it: every node and every user
/// that owns one (plus `extra` users, e.g. the owner of a key being used).
pub fn policy_tailnet<'a>(
    nodes: impl Iterator<Item = &'a store::Node>,
    extra: &[&store::User],
) -> PolicyTailnet {
    let mut users: BTreeMap<i64, meshscale_policy::User> = BTreeMap::new();
    let mut out = Vec::new();
    for n in nodes {
        users
            .entry(n.user.id)
            .or_insert_with(|| policy_user(&n.user));
        out.push(policy_node(n));
    }
    for u in extra {
        users.entry(u.id).or_insert_with(|| policy_user(u));
    }
    PolicyTailnet {
        users: users.into_values().collect(),
        nodes: out,
    }
}

/// Compiles `policy` for the tailnet and turns every node's result into an
/// [`Access`], interning equal visible sets.
pub fn compile(policy: &Policy, tailnet: &PolicyTailnet) -> HashMap<i64, Arc<Access>> {
    let Compiled { nodes } = policy.compile(tailnet);
    let mut sets: HashMap<u64, Vec<Arc<VisibleSet>>> = HashMap::new();
    let mut out = HashMap::with_capacity(nodes.len());
    for (id, np) in nodes {
        let Ok(id) = i64::try_from(id) else { continue };
        let NodePolicy {
            packet_filter,
            peers,
            ssh_policy,
            cap_map,
        } = np;
        let mut ids: Vec<i64> = peers
            .into_iter()
            .filter_map(|p| i64::try_from(p).ok())
            .collect();
        // With itself in, nodes that see each other share a set (in a
        // policy-free tailnet all nodes share one).
        ids.push(id);
        ids.sort_unstable();
        ids.dedup();
        let key = hash_ids(&ids);
        let bucket = sets.entry(key).or_default();
        let set = match bucket.iter().find(|s| s.ids == ids) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(VisibleSet { key, ids });
                bucket.push(s.clone());
                s
            }
        };
        out.insert(
            id,
            Arc::new(Access {
                filter: packet_filter,
                ssh: ssh_policy,
                cap_map,
                visible: Visible::Ids(set),
            }),
        );
    }
    out
}

/// How a node's visible set changed: peers to add (send in full) and to
/// remove. `all` lists every node of the tailnet, for [`Visible::All`].
pub fn visible_diff(old: &Visible, new: &Visible, all: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let ids = |v: &Visible| -> Vec<i64> {
        match v {
            Visible::All => all.to_vec(),
            Visible::Ids(s) => s.ids.clone(),
        }
    };
    match (old, new) {
        (Visible::All, Visible::All) => (Vec::new(), Vec::new()),
        (Visible::Ids(a), Visible::Ids(b)) if Arc::ptr_eq(a, b) => (Vec::new(), Vec::new()),
        _ => {
            let (old, new) = (ids(old), ids(new));
            let added = new
                .iter()
                .filter(|id| old.binary_search(id).is_err())
                .copied()
                .collect();
            let removed = old
                .iter()
                .filter(|id| new.binary_search(id).is_err())
                .copied()
                .collect();
            (added, removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[i64]) -> Visible {
        Visible::Ids(Arc::new(VisibleSet {
            key: hash_ids(ids),
            ids: ids.to_vec(),
        }))
    }

    #[test]
    fn diffs_between_visible_sets() {
        let all = [1, 2, 3, 4];
        assert_eq!(
            visible_diff(&set(&[1, 2]), &set(&[2, 3]), &all),
            (vec![3], vec![1])
        );
        assert_eq!(
            visible_diff(&Visible::All, &set(&[1, 4]), &all),
            (vec![], vec![2, 3])
        );
        assert_eq!(
            visible_diff(&set(&[2]), &Visible::All, &all),
            (vec![1, 3, 4], vec![])
        );
        assert!(set(&[1, 3]).contains(3) && !set(&[1, 3]).contains(2));
        assert!(Visible::All.contains(77));
    }

    #[test]
    fn no_policy_gives_everyone_one_shared_set() {
        let user = store::User {
            id: 1,
            name: "a".into(),
            display_name: String::new(),
            email: String::new(),
            profile_pic_url: String::new(),
            created_at: chrono::Utc::now(),
        };
        let tailnet = PolicyTailnet {
            users: vec![policy_user(&user)],
            nodes: (1..=3)
                .map(|id| meshscale_policy::Node {
                    id,
                    hostname: format!("n{id}"),
                    user: Some(1),
                    tags: vec![],
                    ipv4: None,
                    ipv6: None,
                    approved_routes: vec![],
                })
                .collect(),
        };
        let out = compile(&Policy::allow_all(), &tailnet);
        let keys: Vec<u64> = (1..=3).map(|id| out[&id].visible.group_key()).collect();
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert!(out[&1].visible.contains(2) && out[&1].visible.contains(3));
    }
}

//! SSH rules → per-node `SSHPolicy`, and `nodeAttrs` → per-node `CapMap`.
//!
//! A node's SSH policy lists, for every rule whose destinations include
//! the node, who may connect (`principals`: the source nodes' addresses)
//! and as which local users. `localpart:*@domain` adds, per source user
//! whose email is in `domain`, a rule mapping the email's local part to
//! the same local user. Check rules come first, as Tailscale orders them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use meshscale_wire::tailcfg::{CapMap, SshAction, SshPolicy, SshPrincipal, SshRule};

use crate::alias::{Alias, AutoGroup};
use crate::resolve::{Checked, Ctx, SshCheck, SshRuleC, SshUser, node_ips};
use crate::{Node, Tailnet};

/// Where a `check` action sends the client to wait for re-authentication.
/// The client sends it over its Noise connection to the control server, so
/// the host part is not used (Tailscale sends the same placeholder).
pub(crate) const HOLD_AND_DELEGATE: &str =
    "https://unused/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER";

fn action(check: SshCheck) -> SshAction {
    match check {
        SshCheck::Accept => SshAction {
            accept: true,
            allow_agent_forwarding: true,
            allow_local_port_forwarding: true,
            allow_remote_port_forwarding: true,
            ..SshAction::default()
        },
        SshCheck::Check { .. } => SshAction {
            hold_and_delegate: HOLD_AND_DELEGATE.to_string(),
            ..SshAction::default()
        },
    }
}

fn principals(ips: &BTreeSet<IpAddr>) -> Vec<SshPrincipal> {
    ips.iter()
        .map(|ip| SshPrincipal {
            node_ip: ip.to_string(),
            ..SshPrincipal::default()
        })
        .collect()
}

/// Source nodes of a rule, split by owning user; tagged nodes apart.
struct Sources {
    by_user: BTreeMap<u64, BTreeSet<IpAddr>>,
    tagged: BTreeSet<IpAddr>,
}

impl Sources {
    fn all(&self) -> BTreeSet<IpAddr> {
        let mut all: BTreeSet<IpAddr> = self.by_user.values().flatten().copied().collect();
        all.extend(self.tagged.iter().copied());
        all
    }
}

pub(crate) fn compile_for(policy: &Checked, tailnet: &Tailnet, node: &Node) -> Option<SshPolicy> {
    let rules = policy.ssh.as_ref()?;
    if rules.is_empty() {
        return None;
    }
    let ctx = Ctx::new(policy, tailnet);
    let mut out = Vec::new();
    for rule in rules {
        compile_rule(&ctx, rule, node, &mut out);
    }
    // Check rules first; otherwise policy order.
    out.sort_by_key(|r| {
        r.action
            .as_ref()
            .is_none_or(|a| a.hold_and_delegate.is_empty())
    });
    Some(SshPolicy { rules: out })
}

fn compile_rule(ctx: &Ctx<'_>, rule: &SshRuleC, node: &Node, out: &mut Vec<SshRule>) {
    let src_set = ctx.resolve_all(&rule.src);
    if src_set.is_empty() {
        return;
    }
    let mut sources = Sources {
        by_user: BTreeMap::new(),
        tagged: BTreeSet::new(),
    };
    for n in &ctx.tailnet.nodes {
        let ips = node_ips(n);
        if !ips.iter().any(|ip| src_set.contains(*ip)) {
            continue;
        }
        if !n.tags.is_empty() {
            sources.tagged.extend(ips);
        } else if let Some(u) = n.user {
            sources.by_user.entry(u).or_default().extend(ips);
        }
    }

    let mut base_users = BTreeMap::new();
    if rule.users.contains(&SshUser::NonRoot) {
        base_users.insert("*".to_string(), "=".to_string());
    }
    base_users.insert(
        "root".to_string(),
        if rule.users.contains(&SshUser::Root) {
            "root".to_string()
        } else {
            String::new()
        },
    );
    for u in &rule.users {
        if let SshUser::Named(name) = u {
            base_users.insert(name.clone(), name.clone());
        }
    }
    let domains: Vec<&str> = rule
        .users
        .iter()
        .filter_map(|u| match u {
            SshUser::Localpart(d) => Some(d.as_str()),
            _ => None,
        })
        .collect();
    let has_localpart = !domains.is_empty();
    // The local part of each user's email in one of the domains.
    let localpart_of = |uid: u64| -> Option<String> {
        let user = ctx.tailnet.users.iter().find(|u| u.id == uid)?;
        let (local, domain) = user.email.as_deref()?.rsplit_once('@')?;
        domains.contains(&domain).then(|| local.to_string())
    };
    let act = action(rule.action);
    let mut emit = |ips: &BTreeSet<IpAddr>, uid: Option<u64>| {
        if ips.is_empty() {
            return;
        }
        out.push(SshRule {
            principals: principals(ips),
            ssh_users: base_users.clone(),
            action: Some(act.clone()),
            accept_env: rule.accept_env.clone(),
            ..SshRule::default()
        });
        if let Some(lp) = uid.and_then(localpart_of) {
            out.push(SshRule {
                principals: principals(ips),
                ssh_users: BTreeMap::from([(lp.clone(), lp)]),
                action: Some(act.clone()),
                accept_env: rule.accept_env.clone(),
                ..SshRule::default()
            });
        }
    };

    let self_dst = rule.dst.iter().any(|d| d.is(AutoGroup::SelfNodes));
    let others: Vec<Alias> = rule
        .dst
        .iter()
        .filter(|d| !d.is(AutoGroup::SelfNodes))
        .cloned()
        .collect();
    let node_user = if node.tags.is_empty() { node.user } else { None };

    if self_dst {
        if let Some(uid) = node_user {
            if let Some(ips) = sources.by_user.get(&uid) {
                emit(ips, Some(uid));
            }
        }
    }
    if others.is_empty() {
        return;
    }
    let dst_set = ctx.resolve_all(&others);
    let ips = node_ips(node);
    if ips.iter().any(|ip| dst_set.contains(*ip)) {
        if has_localpart {
            for (uid, user_ips) in &sources.by_user {
                emit(user_ips, Some(*uid));
            }
            emit(&sources.tagged, None);
        } else {
            emit(&sources.all(), None);
        }
    } else if has_localpart && ips.iter().any(|ip| src_set.contains(*ip)) {
        // Tailscale also hands localpart rules to the source nodes
        // themselves, scoped to their own addresses.
        if !node.tags.is_empty() {
            emit(&ips.iter().copied().collect(), None);
        } else if let Some(uid) = node.user {
            if let Some(user_ips) = sources.by_user.get(&uid) {
                emit(user_ips, Some(uid));
            }
        }
    }
}

/// `nodeAttrs` (and `randomizeClientPort`) per node id.
pub(crate) fn node_cap_maps(policy: &Checked, tailnet: &Tailnet) -> BTreeMap<u64, CapMap> {
    let ctx = Ctx::new(policy, tailnet);
    let mut out: BTreeMap<u64, CapMap> = BTreeMap::new();
    if policy.randomize_client_port {
        for n in &tailnet.nodes {
            out.entry(n.id)
                .or_default()
                .entry("randomize-client-port".into())
                .or_default();
        }
    }
    for na in &policy.node_attrs {
        if na.attr.is_empty() && na.app.is_empty() {
            continue;
        }
        let targets = ctx.resolve_all(&na.target);
        for n in &tailnet.nodes {
            let hit = na.target.iter().any(|t| matches!(t, Alias::Wildcard))
                || node_ips(n).iter().any(|ip| targets.contains(*ip));
            if !hit {
                continue;
            }
            let caps = out.entry(n.id).or_default();
            for a in &na.attr {
                caps.entry(a.clone()).or_default();
            }
            for (name, values) in &na.app {
                caps.entry(name.clone())
                    .or_default()
                    .extend(values.iter().cloned());
            }
        }
    }
    out
}

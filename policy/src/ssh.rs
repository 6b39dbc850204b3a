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
use crate::ipset::IpSet;
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

/// The SSH rules resolved against a tailnet once, then specialised per
/// node.
pub(crate) struct Plan<'a> {
    rules: Option<Vec<RulePlan<'a>>>,
}

struct RulePlan<'a> {
    rule: &'a SshRuleC,
    src_set: IpSet,
    sources: Sources,
    self_dst: bool,
    /// Addresses of the destinations other than `autogroup:self`.
    dst_set: Option<IpSet>,
    base_users: BTreeMap<String, String>,
    has_localpart: bool,
    /// Per source user: the local part of their email, when in a
    /// `localpart:*@domain` domain.
    localparts: BTreeMap<u64, String>,
    action: SshAction,
}

impl<'a> Plan<'a> {
    pub(crate) fn new(policy: &'a Checked, tailnet: &'a Tailnet) -> Self {
        let Some(rules) = policy.ssh.as_ref().filter(|r| !r.is_empty()) else {
            return Plan { rules: None };
        };
        let ctx = Ctx::new(policy, tailnet);
        let plans = rules.iter().map(|r| RulePlan::new(&ctx, r)).collect();
        Plan { rules: Some(plans) }
    }

    /// The node's SSH policy; `None` when the policy has no SSH rules.
    pub(crate) fn for_node(&self, node: &Node) -> Option<SshPolicy> {
        let rules = self.rules.as_ref()?;
        let mut out = Vec::new();
        for plan in rules {
            plan.emit_for(node, &mut out);
        }
        // Check rules first; otherwise policy order.
        out.sort_by_key(|r| {
            r.action
                .as_ref()
                .is_none_or(|a| a.hold_and_delegate.is_empty())
        });
        Some(SshPolicy { rules: out })
    }
}

impl<'a> RulePlan<'a> {
    fn new(ctx: &Ctx<'_>, rule: &'a SshRuleC) -> Self {
        let src_set = ctx.resolve_all(&rule.src);
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
        let root = if rule.users.contains(&SshUser::Root) {
            "root"
        } else {
            ""
        };
        base_users.insert("root".to_string(), root.to_string());
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
        let localparts = ctx
            .tailnet
            .users
            .iter()
            .filter_map(|u| {
                let (local, domain) = u.email.as_deref()?.rsplit_once('@')?;
                domains.contains(&domain).then(|| (u.id, local.to_string()))
            })
            .collect();
        let others: Vec<Alias> = rule
            .dst
            .iter()
            .filter(|d| !d.is(AutoGroup::SelfNodes))
            .cloned()
            .collect();
        RulePlan {
            rule,
            sources,
            self_dst: rule.dst.iter().any(|d| d.is(AutoGroup::SelfNodes)),
            dst_set: (!others.is_empty()).then(|| ctx.resolve_all(&others)),
            base_users,
            has_localpart: !domains.is_empty(),
            localparts,
            action: action(rule.action),
            src_set,
        }
    }

    fn emit(&self, ips: &BTreeSet<IpAddr>, uid: Option<u64>, out: &mut Vec<SshRule>) {
        if ips.is_empty() {
            return;
        }
        out.push(SshRule {
            principals: principals(ips),
            ssh_users: self.base_users.clone(),
            action: Some(self.action.clone()),
            accept_env: self.rule.accept_env.clone(),
            ..SshRule::default()
        });
        if let Some(lp) = uid.and_then(|u| self.localparts.get(&u)) {
            out.push(SshRule {
                principals: principals(ips),
                ssh_users: BTreeMap::from([(lp.clone(), lp.clone())]),
                action: Some(self.action.clone()),
                accept_env: self.rule.accept_env.clone(),
                ..SshRule::default()
            });
        }
    }

    fn emit_for(&self, node: &Node, out: &mut Vec<SshRule>) {
        if self.src_set.is_empty() {
            return;
        }
        let node_user = if node.tags.is_empty() {
            node.user
        } else {
            None
        };
        if self.self_dst
            && let Some(ips) = node_user.and_then(|uid| self.sources.by_user.get(&uid))
        {
            self.emit(ips, node_user, out);
        }
        let Some(dst_set) = &self.dst_set else {
            return;
        };
        let ips = node_ips(node);
        if ips.iter().any(|ip| dst_set.contains(*ip)) {
            if self.has_localpart {
                for (uid, user_ips) in &self.sources.by_user {
                    self.emit(user_ips, Some(*uid), out);
                }
                self.emit(&self.sources.tagged, None, out);
            } else {
                self.emit(&self.sources.all(), None, out);
            }
        } else if self.has_localpart && ips.iter().any(|ip| self.src_set.contains(*ip)) {
            // Tailscale also hands localpart rules to the source nodes
            // themselves, scoped to their own addresses.
            if !node.tags.is_empty() {
                self.emit(&ips.iter().copied().collect(), None, out);
            } else if let Some(user_ips) = node.user.and_then(|uid| self.sources.by_user.get(&uid))
            {
                self.emit(user_ips, node.user, out);
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

//! Validation of a parsed policy (everything Tailscale refuses without
//! looking at a tailnet) and resolution of aliases to addresses against a
//! tailnet.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use meshscale_wire::netip::IpPrefix;
use serde_json::Value;

use crate::alias::{Alias, AutoGroup, ProtoPorts, parse_ports, split_dst_ports, validate_tag_name};
use crate::ipset::IpSet;
use crate::model::PolicyFile;
use crate::{Node, PolicyError, TagOwner, Tailnet, User};

/// A grant (ACLs are turned into grants, one per destination).
#[derive(Debug, Clone)]
pub(crate) struct GrantRule {
    pub(crate) src: Vec<Alias>,
    pub(crate) dst: Vec<Alias>,
    pub(crate) ip: Vec<ProtoPorts>,
    pub(crate) app: Option<BTreeMap<String, Vec<Value>>>,
    pub(crate) via: Vec<String>,
}

/// The local-user part of an SSH rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SshUser {
    Root,
    NonRoot,
    /// `localpart:*@domain`: the local part of the connecting user's email.
    Localpart(String),
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SshCheck {
    Accept,
    /// Re-authentication every `period` (nanoseconds; 0 = always).
    Check {
        period_ns: i64,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct SshRuleC {
    pub(crate) action: SshCheck,
    pub(crate) src: Vec<Alias>,
    pub(crate) dst: Vec<Alias>,
    pub(crate) users: Vec<SshUser>,
    pub(crate) accept_env: Vec<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeAttrC {
    pub(crate) target: Vec<Alias>,
    pub(crate) attr: Vec<String>,
    pub(crate) app: BTreeMap<String, Vec<Value>>,
}

/// A policy that passed validation.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    pub(crate) tag_owners: BTreeMap<String, Vec<Alias>>,
    pub(crate) hosts: BTreeMap<String, IpSet>,
    /// `false` when neither `acls` nor `grants` is present: allow-all.
    pub(crate) has_filter: bool,
    pub(crate) grants: Vec<GrantRule>,
    pub(crate) ssh: Option<Vec<SshRuleC>>,
    pub(crate) node_attrs: Vec<NodeAttrC>,
    pub(crate) randomize_client_port: bool,
    pub(crate) route_approvers: Vec<(IpPrefix, Vec<Alias>)>,
    pub(crate) exit_approvers: Vec<Alias>,
    pub(crate) tests: Vec<crate::model::AclTest>,
    pub(crate) ssh_tests: Vec<crate::model::SshTest>,
    /// `user:*@domain` / `localpart:*@domain` domains, checked against
    /// the tailnet by `Policy::check`.
    pub(crate) domains: Vec<(String, String)>,
    /// Destination/port pairs named so far (see `MAX_TOTAL_FANOUT`).
    fanout: usize,
}

/// Most (destination, port range) pairs one ACL or grant, and the whole
/// policy, may name. Each pair becomes a filter entry per destination
/// address, so this bounds what a small policy text can make the compiler
/// produce.
const MAX_FANOUT: usize = 65_536;
const MAX_TOTAL_FANOUT: usize = 1 << 20;

/// Tailscale's longest SSH check period: one week.
const MAX_CHECK_PERIOD_NS: i64 = 168 * 3600 * 1_000_000_000;

fn inv(at: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::invalid(at, reason)
}

/// Where a list of aliases is used decides which autogroups it may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Src,
    Dst,
    SshSrc,
    SshDst,
    NodeAttr,
}

impl Checked {
    pub(crate) fn new(file: PolicyFile) -> Result<Self, PolicyError> {
        let mut c = Checked {
            groups: BTreeMap::new(),
            tag_owners: BTreeMap::new(),
            hosts: BTreeMap::new(),
            has_filter: file.acls.is_some() || file.grants.is_some(),
            grants: Vec::new(),
            ssh: None,
            node_attrs: Vec::new(),
            randomize_client_port: file.randomize_client_port,
            route_approvers: Vec::new(),
            exit_approvers: Vec::new(),
            tests: file.tests.clone(),
            ssh_tests: file.ssh_tests.clone(),
            domains: Vec::new(),
            fanout: 0,
        };
        c.load_groups(&file)?;
        c.load_hosts(&file)?;
        c.load_tag_owners(&file)?;
        for (i, g) in file.grants.iter().flatten().enumerate() {
            let grant = c.load_grant(&format!("grants[{i}]"), g)?;
            c.grants.push(grant);
        }
        for (i, a) in file.acls.iter().flatten().enumerate() {
            let grants = c.load_acl(&format!("acls[{i}]"), a)?;
            c.grants.extend(grants);
        }
        if let Some(rules) = &file.ssh {
            let mut out = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                out.push(c.load_ssh(&format!("ssh[{i}]"), r)?);
            }
            c.ssh = Some(out);
        }
        for (i, na) in file.node_attrs.iter().enumerate() {
            let at = format!("nodeAttrs[{i}]");
            let target = c.aliases(&at, "target", &na.target, Side::NodeAttr)?;
            if !na.ip_pool.is_empty() {
                return Err(inv(&at, "ipPool is not supported"));
            }
            c.node_attrs.push(NodeAttrC {
                target,
                attr: na.attr.clone(),
                app: na.app.clone().unwrap_or_default(),
            });
        }
        c.load_auto_approvers(&file)?;
        c.check_tests()?;
        Ok(c)
    }

    /// What `tests` and `sshTests` may contain (their outcome needs a
    /// tailnet: see `Policy::check`).
    fn check_tests(&self) -> Result<(), PolicyError> {
        for (i, t) in self.tests.iter().enumerate() {
            let at = format!("tests[{i}]");
            if t.accept.is_empty() && t.deny.is_empty() {
                return Err(inv(
                    at,
                    "test entry must have at least one of \"accept\" or \"deny\"",
                ));
            }
            let src = Alias::parse(&t.src).map_err(|e| inv(format!("{at}.src"), e))?;
            self.check_defined(&format!("{at}.src"), &src)?;
            let proto = match &t.proto {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    crate::alias::Proto::parse(s)
                        .map_err(|e| inv(format!("{at}.proto"), e))?
                        .0
                }
                Some(other) => {
                    return Err(inv(
                        format!("{at}.proto"),
                        format!("{other} is not a string"),
                    ));
                }
            };
            if !matches!(proto, None | Some(6) | Some(17) | Some(132)) {
                return Err(inv(
                    format!("{at}.proto"),
                    "test protocol must be tcp, udp, sctp, or empty",
                ));
            }
            for (field, list) in [("accept", &t.accept), ("deny", &t.deny)] {
                for (j, dst) in list.iter().enumerate() {
                    let here = format!("{at}.{field}[{j}]");
                    let (alias, ports) = split_dst_ports(dst.trim()).map_err(|e| inv(&here, e))?;
                    let ports = parse_ports(&ports).map_err(|e| inv(&here, e))?;
                    if ports.len() != 1 || ports[0].first != ports[0].last {
                        return Err(inv(here, "test destination port must be a single port"));
                    }
                    let alias = Alias::parse(&alias).map_err(|e| inv(&here, e))?;
                    self.check_test_destination(&here, &alias, alias_text_has_slash(dst))?;
                }
            }
        }
        for (i, t) in self.ssh_tests.iter().enumerate() {
            let at = format!("sshTests[{i}]");
            if t.src.trim().is_empty() {
                return Err(inv(at, "sshTest src must be specified"));
            }
            if t.dst.is_empty() {
                return Err(inv(at, "sshTest dst must be specified"));
            }
            if t.accept.is_empty() && t.deny.is_empty() && t.check.is_empty() {
                return Err(inv(
                    at,
                    "sshTest must have at least one of accept, check or deny",
                ));
            }
            let src = Alias::parse(&t.src).map_err(|e| inv(format!("{at}.src"), e))?;
            self.check_defined(&format!("{at}.src"), &src)?;
            for (j, dst) in t.dst.iter().enumerate() {
                let here = format!("{at}.dst[{j}]");
                let alias = Alias::parse(dst).map_err(|e| inv(&here, e))?;
                self.check_test_destination(&here, &alias, dst.contains('/'))?;
            }
        }
        Ok(())
    }

    /// Groups, tags and hosts a test names must exist.
    fn check_defined(&self, at: &str, alias: &Alias) -> Result<(), PolicyError> {
        match alias {
            Alias::Group(g) if !self.groups.contains_key(g) => {
                Err(inv(at, format!("group not defined: {g:?}")))
            }
            Alias::Tag(t) if !self.tag_owners.contains_key(t) => {
                Err(inv(at, format!("tag not found: {t:?}")))
            }
            Alias::Host(h) if !self.hosts.contains_key(h) => {
                Err(inv(at, format!("host not defined: {h:?}")))
            }
            _ => Ok(()),
        }
    }

    /// A test destination is one host: no CIDR (even `/32`), no host alias
    /// naming a network, no `autogroup:internet`.
    fn check_test_destination(
        &self,
        at: &str,
        alias: &Alias,
        cidr: bool,
    ) -> Result<(), PolicyError> {
        self.check_defined(at, alias)?;
        let single =
            |set: &IpSet| set.ranges().len() == 1 && set.ranges()[0].0 == set.ranges()[0].1;
        match alias {
            Alias::AutoGroup(AutoGroup::Internet) => Err(inv(
                at,
                "autogroup:internet not valid as a test destination",
            )),
            Alias::Addr { .. } if cidr => Err(inv(
                at,
                "test destination must be a single host, not a CIDR range",
            )),
            Alias::Addr { set, .. } if !single(set) => Err(inv(
                at,
                "test destination must be a single host, not a CIDR range",
            )),
            Alias::Host(h) if self.hosts.get(h).is_some_and(|s| !single(s)) => Err(inv(
                at,
                "test destination must be a single host, not a CIDR range",
            )),
            _ => Ok(()),
        }
    }

    fn load_groups(&mut self, file: &PolicyFile) -> Result<(), PolicyError> {
        for (name, members) in &file.groups {
            if !name.starts_with("group:") {
                return Err(inv(
                    format!("groups[{name:?}]"),
                    "group names must start with \"group:\"",
                ));
            }
            let mut users = Vec::new();
            for m in members {
                let m = m.trim();
                if m.starts_with("group:") {
                    return Err(inv(
                        format!("groups[{name:?}]"),
                        format!("{m:?}: group members cannot be recursive"),
                    ));
                }
                if !m.contains('@') {
                    return Err(inv(
                        format!("groups[{name:?}]"),
                        format!("{m:?}: group members must be users (name@ or an email)"),
                    ));
                }
                users.push(m.to_string());
            }
            self.groups.insert(name.clone(), users);
        }
        Ok(())
    }

    fn load_hosts(&mut self, file: &PolicyFile) -> Result<(), PolicyError> {
        for (name, addr) in &file.hosts {
            let at = format!("hosts[{name:?}]");
            if name.is_empty() || name.contains('@') || name.contains(':') {
                return Err(inv(at, "invalid host name"));
            }
            match Alias::parse(addr) {
                Ok(Alias::Addr { set, .. }) => {
                    self.hosts.insert(name.clone(), set);
                }
                _ => return Err(inv(at, format!("{addr:?} is not an IP address or prefix"))),
            }
        }
        Ok(())
    }

    fn load_tag_owners(&mut self, file: &PolicyFile) -> Result<(), PolicyError> {
        for tag in file.tag_owners.keys() {
            validate_tag_name(tag).map_err(|e| inv(format!("tagOwners[{tag:?}]"), e))?;
        }
        for (tag, owners) in &file.tag_owners {
            let at = format!("tagOwners[{tag:?}]");
            let mut parsed = Vec::new();
            for o in owners {
                let alias = Alias::parse(o).map_err(|e| inv(&at, e))?;
                match &alias {
                    Alias::User(_) => {}
                    Alias::Group(g) if file.groups.contains_key(g) => {}
                    Alias::Group(g) => return Err(inv(&at, format!("group not defined: {g:?}"))),
                    Alias::Tag(t) if file.tag_owners.contains_key(t) => {}
                    Alias::Tag(t) => return Err(inv(&at, format!("tag not found: {t:?}"))),
                    Alias::AutoGroup(
                        AutoGroup::Member | AutoGroup::Tagged | AutoGroup::Role(_),
                    ) => {}
                    _ => return Err(inv(&at, format!("{o:?} cannot own tags"))),
                }
                parsed.push(alias);
            }
            self.tag_owners.insert(tag.clone(), parsed);
        }
        // Tags may own each other in a cycle (Tailscale accepts it);
        // `owner_matches` guards its recursion instead.
        Ok(())
    }

    /// Parses and checks one alias list.
    fn aliases(
        &mut self,
        at: &str,
        field: &str,
        list: &[String],
        side: Side,
    ) -> Result<Vec<Alias>, PolicyError> {
        let mut out = Vec::new();
        for (j, s) in list.iter().enumerate() {
            let here = format!("{at}.{field}[{j}]");
            let alias = Alias::parse(s).map_err(|e| inv(&here, e))?;
            self.check_alias(&here, &alias, side)?;
            out.push(alias);
        }
        Ok(out)
    }

    fn check_alias(&mut self, at: &str, alias: &Alias, side: Side) -> Result<(), PolicyError> {
        match alias {
            Alias::Group(g) if !self.groups.contains_key(g) => {
                Err(inv(at, format!("group not defined: {g:?}")))
            }
            Alias::Tag(t) if !self.tag_owners.contains_key(t) => {
                Err(inv(at, format!("tag not found: {t:?}")))
            }
            Alias::Host(h) if !self.hosts.contains_key(h) => {
                Err(inv(at, format!("host not defined: {h:?}")))
            }
            Alias::Host(h) if side == Side::SshDst => Err(inv(at, format!("invalid dst {h:?}"))),
            Alias::Wildcard if side == Side::SshDst => Err(inv(
                at,
                "wildcard (*) is not supported as SSH destination; use 'autogroup:member' for user-owned devices, 'autogroup:tagged' for tagged devices, or specific tags/users",
            )),
            Alias::Wildcard | Alias::Host(_) | Alias::Addr { .. } if side == Side::SshSrc => {
                Err(inv(
                    at,
                    "alias not supported for SSH source (use users, groups, tags or autogroups)",
                ))
            }
            Alias::Addr { .. } if side == Side::SshDst => Err(inv(
                at,
                "alias not supported for SSH destination (use users, tags or autogroups)",
            )),
            Alias::UserDomain(d) => {
                self.domains.push((at.to_string(), d.clone()));
                Ok(())
            }
            Alias::AutoGroup(ag) => check_autogroup(at, *ag, side),
            _ => Ok(()),
        }
    }

    fn add_fanout(&mut self, at: &str, pairs: usize) -> Result<(), PolicyError> {
        self.fanout = self.fanout.saturating_add(pairs);
        if pairs > MAX_FANOUT {
            return Err(inv(
                at,
                format!(
                    "{pairs} destination/port pairs, more than the {MAX_FANOUT} allowed in one rule"
                ),
            ));
        }
        if self.fanout > MAX_TOTAL_FANOUT {
            return Err(inv(
                at,
                format!(
                    "the policy names more than {MAX_TOTAL_FANOUT} destination/port pairs in all"
                ),
            ));
        }
        Ok(())
    }

    fn load_grant(&mut self, at: &str, g: &crate::model::Grant) -> Result<GrantRule, PolicyError> {
        let src = self.aliases(at, "src", &g.src, Side::Src)?;
        let dst = self.aliases(at, "dst", &g.dst, Side::Dst)?;
        let mut ip = Vec::new();
        for (j, text) in g.ip.iter().flatten().enumerate() {
            ip.push(ProtoPorts::parse(text).map_err(|e| inv(format!("{at}.ip[{j}]"), e))?);
        }
        let app = g.app.clone().filter(|m| !m.is_empty());
        if ip.is_empty() && app.is_none() {
            return Err(inv(at, "ip and app can not both be empty"));
        }
        for name in app.iter().flat_map(|m| m.keys()) {
            check_cap_name(&format!("{at}.app[{name:?}]"), name)?;
        }
        if app.is_some() && dst.iter().any(|d| d.is(AutoGroup::Internet)) {
            return Err(inv(at, "cannot use app grants with autogroup:internet"));
        }
        for (j, d) in dst.iter().enumerate() {
            if let Alias::Addr {
                zero_bits: true, ..
            } = d
            {
                return Err(inv(
                    format!("{at}.dst[{j}]"),
                    format!(
                        "dst {:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\"",
                        g.dst[j].trim()
                    ),
                ));
            }
        }
        let mut via = Vec::new();
        for (j, v) in g.via.iter().enumerate() {
            let here = format!("{at}.via[{j}]");
            let v = v.trim();
            if !v.starts_with("tag:") {
                return Err(inv(here, "via can only be a tag"));
            }
            if !self.tag_owners.contains_key(v) {
                return Err(inv(here, format!("tag {v:?} not found")));
            }
            via.push(v.to_string());
        }
        check_self_sources(at, &src, &dst, false)?;
        let ports: usize = ip.iter().map(|p| p.ports.len()).sum();
        self.add_fanout(at, dst.len().max(1) * ports.max(1))?;
        Ok(GrantRule {
            src,
            dst,
            ip,
            app,
            via,
        })
    }

    fn load_acl(&mut self, at: &str, a: &crate::model::Acl) -> Result<Vec<GrantRule>, PolicyError> {
        if a.action.trim() != "accept" {
            return Err(inv(
                format!("{at}.action"),
                format!("action={:?} is not supported", a.action),
            ));
        }
        let proto = match &a.proto {
            None | Some(Value::Null) => Ok(crate::alias::Proto(None)),
            Some(Value::String(s)) => crate::alias::Proto::parse(s),
            Some(Value::Number(n)) => crate::alias::Proto::parse(&n.to_string()),
            Some(other) => Err(format!("proto {other} is not a string")),
        }
        .map_err(|e| inv(format!("{at}.proto"), e))?;
        let src = self.aliases(at, "src", &a.src, Side::Src)?;
        let mut dsts = Vec::new();
        for (j, d) in a.dst.iter().enumerate() {
            let here = format!("{at}.dst[{j}]");
            let (alias_text, ports_text) = split_dst_ports(d.trim()).map_err(|e| {
                if d.contains(':') {
                    inv(&here, format!("dst={d:?}: {e}"))
                } else {
                    inv(
                        &here,
                        format!("dst={d:?}: port range missing (alias:ports)"),
                    )
                }
            })?;
            let alias = Alias::parse(&alias_text).map_err(|e| inv(&here, e))?;
            let ports =
                parse_ports(&ports_text).map_err(|e| inv(&here, format!("dst={d:?}: {e}")))?;
            self.check_alias(&here, &alias, Side::Dst)?;
            if !proto.has_ports()
                && ports
                    .iter()
                    .any(|p| *p != meshscale_wire::tailcfg::PortRange::ANY)
            {
                return Err(inv(
                    &here,
                    "protocol does not support specific ports, only \"*\" is allowed",
                ));
            }
            dsts.push((alias, ports));
        }
        self.add_fanout(at, dsts.iter().map(|(_, p)| p.len()).sum())?;
        let dst_aliases: Vec<Alias> = dsts.iter().map(|(a, _)| a.clone()).collect();
        check_self_sources(at, &src, &dst_aliases, true)?;
        Ok(dsts
            .into_iter()
            .map(|(alias, ports)| GrantRule {
                src: src.clone(),
                dst: vec![alias],
                ip: vec![ProtoPorts { proto, ports }],
                app: None,
                via: Vec::new(),
            })
            .collect())
    }

    fn load_ssh(&mut self, at: &str, r: &crate::model::Ssh) -> Result<SshRuleC, PolicyError> {
        let action = match r.action.as_deref().map(str::trim) {
            None | Some("") => return Err(inv(at, "action must be specified")),
            Some("accept") => SshCheck::Accept,
            Some("check") => SshCheck::Check {
                period_ns: 12 * 3600 * 1_000_000_000,
            },
            Some(other) => return Err(inv(at, format!("{other:?} is not a valid action"))),
        };
        let action = match (&r.check_period, action) {
            (None, a) => a,
            (Some(_), SshCheck::Accept) => {
                return Err(inv(at, "checkPeriod is only valid with action \"check\""));
            }
            (Some(p), SshCheck::Check { .. }) => {
                let p = p.trim();
                let period_ns = if p == "always" {
                    0
                } else {
                    let ns =
                        parse_go_duration(p).map_err(|e| inv(format!("{at}.checkPeriod"), e))?;
                    if ns < 0 {
                        return Err(inv(
                            format!("{at}.checkPeriod"),
                            format!("checkPeriod {p} must be a positive duration"),
                        ));
                    }
                    if ns > MAX_CHECK_PERIOD_NS {
                        return Err(inv(
                            format!("{at}.checkPeriod"),
                            format!("checkPeriod {p} is above the max (168h)"),
                        ));
                    }
                    ns
                };
                SshCheck::Check { period_ns }
            }
        };
        let users_raw = match &r.users {
            Some(u) if !u.is_empty() => u,
            _ => return Err(inv(at, "users must be specified")),
        };
        let mut users = Vec::new();
        for (j, u) in users_raw.iter().enumerate() {
            let u = u.trim();
            let here = format!("{at}.users[{j}]");
            if u.is_empty() || u == "*" {
                return Err(inv(here, format!("user {u:?} is not valid")));
            }
            users.push(if u == "root" {
                SshUser::Root
            } else if u == "autogroup:nonroot" {
                SshUser::NonRoot
            } else if let Some(domain) = canonical_localpart(u) {
                self.domains.push((here, domain.clone()));
                SshUser::Localpart(domain)
            } else {
                SshUser::Named(u.to_string())
            });
        }
        for (j, e) in r.accept_env.iter().enumerate() {
            if e.is_empty() {
                return Err(inv(
                    format!("{at}.acceptEnv[{j}]"),
                    "acceptEnv values cannot be empty",
                ));
            }
        }
        let src = self.aliases(at, "src", &r.src, Side::SshSrc)?;
        let dst = self.aliases(at, "dst", &r.dst, Side::SshDst)?;
        check_ssh_combination(at, &src, &dst)?;
        Ok(SshRuleC {
            action,
            src,
            dst,
            users,
            accept_env: r.accept_env.clone(),
        })
    }

    fn load_auto_approvers(&mut self, file: &PolicyFile) -> Result<(), PolicyError> {
        for (route, approvers) in &file.auto_approvers.routes {
            let at = format!("autoApprovers.routes[{route:?}]");
            let prefix: IpPrefix = route.trim().parse().map_err(|e| inv(&at, format!("{e}")))?;
            let list = self.approvers(&at, approvers)?;
            self.route_approvers.push((prefix, list));
        }
        let list = self.approvers("autoApprovers.exitNode", &file.auto_approvers.exit_node)?;
        self.exit_approvers = list;
        Ok(())
    }

    fn approvers(&mut self, at: &str, list: &[String]) -> Result<Vec<Alias>, PolicyError> {
        let mut out = Vec::new();
        for (j, s) in list.iter().enumerate() {
            let here = format!("{at}[{j}]");
            let alias = Alias::parse(s).map_err(|e| inv(&here, e))?;
            match &alias {
                Alias::User(_) | Alias::Group(_) | Alias::Tag(_) => {
                    self.check_alias(&here, &alias, Side::Src)?
                }
                Alias::AutoGroup(AutoGroup::Member | AutoGroup::Tagged) => {}
                _ => return Err(inv(here, format!("{s:?} cannot be an auto approver"))),
            }
            out.push(alias);
        }
        Ok(out)
    }

    pub(crate) fn may_own_tag(&self, tag: &str, owner: &TagOwner<'_>, tailnet: &Tailnet) -> bool {
        // A node may keep a tag it already holds (Headscale's rule).
        if let TagOwner::Tags(held) = owner
            && held.iter().any(|t| t == tag)
        {
            return true;
        }
        let Some(owners) = self.tag_owners.get(tag) else {
            return false;
        };
        let ctx = Ctx::new(self, tailnet);
        let mut seen = BTreeSet::new();
        ctx.owner_matches(owners, owner, &mut seen)
    }

    pub(crate) fn auto_approves(&self, route: &IpPrefix, node: &Node, tailnet: &Tailnet) -> bool {
        let ctx = Ctx::new(self, tailnet);
        let is_exit = route.bits() == 0;
        if is_exit {
            return ctx.node_in_any(node, &self.exit_approvers);
        }
        let route_set = IpSet::from_prefix(route);
        self.route_approvers.iter().any(|(prefix, approvers)| {
            route_set.is_subset_of(&IpSet::from_prefix(prefix)) && ctx.node_in_any(node, approvers)
        })
    }
}

/// Does the destination part of `alias:port` contain a `/`?
fn alias_text_has_slash(dst: &str) -> bool {
    split_dst_ports(dst.trim()).is_ok_and(|(alias, _)| alias.contains('/'))
}

fn check_autogroup(at: &str, ag: AutoGroup, side: Side) -> Result<(), PolicyError> {
    use AutoGroup::*;
    let ok = match side {
        Side::Src => {
            if ag == Internet {
                return Err(inv(
                    at,
                    "\"autogroup:internet\" not valid on the src side of a rule",
                ));
            }
            if ag == SelfNodes {
                return Err(inv(
                    at,
                    "\"autogroup:self\" not valid on the src side of a rule",
                ));
            }
            matches!(ag, Member | Tagged | DangerAll)
        }
        Side::Dst => {
            if ag == DangerAll {
                return Err(inv(at, "cannot use autogroup:danger-all as a dst"));
            }
            matches!(ag, Internet | Member | Tagged | SelfNodes)
        }
        Side::SshSrc => matches!(ag, Member | Tagged),
        Side::SshDst => matches!(ag, Member | Tagged | SelfNodes),
        Side::NodeAttr => matches!(ag, Member | Tagged | Role(_)),
    };
    if ok {
        Ok(())
    } else {
        Err(inv(at, format!("{} is not allowed here", ag.name())))
    }
}

/// `autogroup:self` as a destination: sources must be users, groups or
/// `autogroup:member` (ACLs also accept `*`).
fn check_self_sources(
    at: &str,
    src: &[Alias],
    dst: &[Alias],
    acl: bool,
) -> Result<(), PolicyError> {
    if !dst.iter().any(|d| d.is(AutoGroup::SelfNodes)) {
        return Ok(());
    }
    for s in src {
        let ok = match s {
            Alias::User(_) | Alias::Group(_) => true,
            Alias::AutoGroup(AutoGroup::Member) => true,
            Alias::Wildcard => acl,
            _ => false,
        };
        if !ok {
            return Err(inv(
                at,
                "autogroup:self can only be used with users, groups, or supported autogroups",
            ));
        }
    }
    Ok(())
}

fn check_ssh_combination(at: &str, src: &[Alias], dst: &[Alias]) -> Result<(), PolicyError> {
    let tagged_src = src
        .iter()
        .any(|s| matches!(s, Alias::Tag(_)) || s.is(AutoGroup::Tagged));
    let group_src = src
        .iter()
        .any(|s| matches!(s, Alias::Group(_)) || s.is(AutoGroup::Member));
    let users: BTreeSet<&str> = src
        .iter()
        .filter_map(|s| match s {
            Alias::User(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    for d in dst {
        match d {
            Alias::User(u) => {
                if tagged_src {
                    return Err(inv(
                        at,
                        format!(
                            "tags cannot SSH to user {u:?}; use autogroup:tagged or specific tags as destinations instead"
                        ),
                    ));
                }
                if group_src || users.len() != 1 || !users.contains(u.as_str()) {
                    return Err(inv(
                        at,
                        format!(
                            "only {u:?} itself may SSH to user {u:?}; use autogroup:self instead for same-user SSH access"
                        ),
                    ));
                }
            }
            Alias::AutoGroup(AutoGroup::SelfNodes) if tagged_src => {
                return Err(inv(
                    at,
                    "autogroup:self as an SSH destination requires user sources",
                ));
            }
            Alias::AutoGroup(AutoGroup::Member) if tagged_src => {
                return Err(inv(at, "tags cannot SSH to autogroup:member"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Capability names: no URL schemes; the `tailscale.com` domain only for
/// the capabilities Tailscale lets policies grant.
fn check_cap_name(at: &str, name: &str) -> Result<(), PolicyError> {
    if name.contains("://") {
        return Err(inv(at, "capability name must not contain a URL scheme"));
    }
    const ALLOWED: &[&str] = &[
        "tailscale.com/cap/drive",
        "tailscale.com/cap/relay",
        "tailscale.com/cap/webui",
        "tailscale.com/cap/kubernetes",
        "tailscale.com/cap/tsidp",
        "tailscale.com/cap/secrets",
    ];
    if name.starts_with("tailscale.com/") && !ALLOWED.contains(&name) {
        return Err(inv(
            at,
            "capability name must not be in the tailscale.com domain",
        ));
    }
    Ok(())
}

/// `localpart:*@domain` with a non-empty domain; other `localpart:` forms
/// are plain user names, as in Headscale.
fn canonical_localpart(u: &str) -> Option<String> {
    let pattern = u.strip_prefix("localpart:")?;
    let (local, domain) = pattern.rsplit_once('@')?;
    (local == "*" && !domain.is_empty()).then(|| domain.to_string())
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h; signs;
/// fractions), in nanoseconds.
fn parse_go_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("time: invalid duration {text:?}");
    let (neg, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration {text:?}"))?;
        if num_end == 0 {
            return Err(bad());
        }
        let value: f64 = s[..num_end].parse().map_err(|_| bad())?;
        s = &s[num_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let scale: f64 = match &s[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(format!("time: unknown unit in duration {text:?}")),
        };
        s = &s[unit_end..];
        total += value * scale;
    }
    if total > i64::MAX as f64 {
        return Err(format!("time: invalid duration {text:?}"));
    }
    let ns = total as i64;
    Ok(if neg { -ns } else { ns })
}

/// The tailnet's own address ranges (`*`): CGNAT without the ChromeOS VM
/// range, and Tailscale's ULA.
pub(crate) fn tailnet_ranges() -> IpSet {
    let mut set = IpSet::new();
    set.add_prefix(&pfx("100.64.0.0/10"));
    set.remove_prefix(&pfx("100.115.92.0/23"));
    set.add_prefix(&pfx("fd7a:115c:a1e0::/48"));
    set
}

/// `autogroup:internet`: public IPv4 and global IPv6 unicast, without
/// private, link-local and Tailscale ranges.
pub(crate) fn the_internet() -> IpSet {
    let mut set = IpSet::new();
    set.add_prefix(&pfx("0.0.0.0/0"));
    set.add_prefix(&pfx("2000::/3"));
    for p in [
        "fc00::/7",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fd7a:115c:a1e0::/48",
        "100.64.0.0/10",
        "fe80::/10",
        "169.254.0.0/16",
    ] {
        set.remove_prefix(&pfx(p));
    }
    set
}

fn pfx(s: &str) -> IpPrefix {
    // Only called with the literals above, which always parse.
    s.parse()
        .unwrap_or_else(|_| IpPrefix::host(IpAddr::from([0u8, 0, 0, 0])))
}

/// A node's addresses.
pub(crate) fn node_ips(node: &Node) -> Vec<IpAddr> {
    node.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(node.ipv6.map(IpAddr::V6))
        .collect()
}

pub(crate) fn node_set(node: &Node) -> IpSet {
    let mut set = IpSet::new();
    for ip in node_ips(node) {
        set.add_addr(ip);
    }
    set
}

/// Approved routes that are not exit routes.
pub(crate) fn subnet_routes(node: &Node) -> Vec<IpPrefix> {
    node.approved_routes
        .iter()
        .filter(|r| r.bits() != 0)
        .copied()
        .collect()
}

/// Has both exit routes approved (`0.0.0.0/0` or `::/0`).
pub(crate) fn is_exit_node(node: &Node) -> bool {
    node.approved_routes.iter().any(|r| r.bits() == 0)
}

/// Alias resolution against one tailnet.
pub(crate) struct Ctx<'a> {
    pub(crate) policy: &'a Checked,
    pub(crate) tailnet: &'a Tailnet,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(policy: &'a Checked, tailnet: &'a Tailnet) -> Self {
        Self { policy, tailnet }
    }

    /// The user a `name@` / email token names; `None` when no user or more
    /// than one matches (Headscale refuses to guess).
    pub(crate) fn user(&self, token: &str) -> Option<&'a User> {
        let t = token.strip_suffix('@').unwrap_or(token);
        let mut found = self
            .tailnet
            .users
            .iter()
            .filter(|u| u.name == t || u.email.as_deref() == Some(t));
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// Users named by an alias (users, groups, `user:*@domain`).
    pub(crate) fn users_of(&self, alias: &Alias) -> Vec<u64> {
        match alias {
            Alias::User(t) => self.user(t).map(|u| vec![u.id]).unwrap_or_default(),
            Alias::Group(g) => self
                .policy
                .groups
                .get(g)
                .into_iter()
                .flatten()
                .filter_map(|t| self.user(t).map(|u| u.id))
                .collect(),
            Alias::UserDomain(d) => self
                .tailnet
                .users
                .iter()
                .filter(|u| {
                    u.email
                        .as_deref()
                        .and_then(|e| e.rsplit_once('@'))
                        .is_some_and(|(_, dom)| dom == d)
                })
                .map(|u| u.id)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Does `node` belong to `alias` as an identity (not by address)?
    pub(crate) fn node_is(&self, node: &Node, alias: &Alias) -> bool {
        let tagged = !node.tags.is_empty();
        match alias {
            Alias::Wildcard => true,
            Alias::User(_) | Alias::Group(_) | Alias::UserDomain(_) => {
                !tagged && node.user.is_some_and(|u| self.users_of(alias).contains(&u))
            }
            Alias::Tag(t) => node.tags.iter().any(|x| x == t),
            Alias::AutoGroup(AutoGroup::Member) => !tagged && node.user.is_some(),
            Alias::AutoGroup(AutoGroup::Tagged) => tagged,
            Alias::AutoGroup(AutoGroup::DangerAll) => true,
            Alias::Host(_) | Alias::Addr { .. } => {
                let set = self.resolve(alias);
                node_ips(node).into_iter().any(|ip| set.contains(ip))
            }
            Alias::AutoGroup(_) => false,
        }
    }

    fn node_in_any(&self, node: &Node, list: &[Alias]) -> bool {
        list.iter().any(|a| self.node_is(node, a))
    }

    /// The addresses an alias stands for (`autogroup:self` resolves per
    /// node elsewhere and is empty here; `*` is the tailnet ranges).
    pub(crate) fn resolve(&self, alias: &Alias) -> IpSet {
        match alias {
            Alias::Wildcard => tailnet_ranges(),
            Alias::AutoGroup(AutoGroup::DangerAll) => IpSet::all(),
            Alias::AutoGroup(AutoGroup::Internet) => the_internet(),
            Alias::Addr { set, .. } => set.clone(),
            Alias::Host(h) => self.policy.hosts.get(h).cloned().unwrap_or_default(),
            Alias::AutoGroup(AutoGroup::SelfNodes | AutoGroup::NonRoot | AutoGroup::Role(_)) => {
                IpSet::new()
            }
            Alias::User(_) | Alias::Group(_) | Alias::UserDomain(_) => {
                // Resolve the users once, not once per node.
                let uids: BTreeSet<u64> = self.users_of(alias).into_iter().collect();
                IpSet::from_addrs(
                    self.tailnet
                        .nodes
                        .iter()
                        .filter(|n| n.tags.is_empty() && n.user.is_some_and(|u| uids.contains(&u)))
                        .flat_map(node_ips),
                )
            }
            _ => IpSet::from_addrs(
                self.tailnet
                    .nodes
                    .iter()
                    .filter(|n| self.node_is(n, alias))
                    .flat_map(node_ips),
            ),
        }
    }

    pub(crate) fn resolve_all(&self, aliases: &[Alias]) -> IpSet {
        let mut set = IpSet::new();
        for a in aliases {
            set.union_with(&self.resolve(a));
        }
        set
    }

    /// Approved subnet routes of every node (what `*` adds as a source).
    pub(crate) fn all_subnet_routes(&self) -> IpSet {
        let mut set = IpSet::new();
        for n in &self.tailnet.nodes {
            for r in subnet_routes(n) {
                set.add_prefix(&r);
            }
        }
        set
    }

    fn owner_matches(
        &self,
        owners: &[Alias],
        who: &TagOwner<'_>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        owners.iter().any(|o| match (o, who) {
            (Alias::User(_) | Alias::Group(_), TagOwner::User(u)) => {
                self.users_of(o).contains(&u.id)
            }
            (Alias::AutoGroup(AutoGroup::Member), TagOwner::User(_)) => true,
            (Alias::AutoGroup(AutoGroup::Tagged), TagOwner::Tags(t)) => !t.is_empty(),
            (Alias::Tag(t), TagOwner::Tags(held)) => {
                if held.iter().any(|h| h == t) {
                    return true;
                }
                // A tag owned by a tag the node holds, transitively.
                if !seen.insert(t.clone()) {
                    return false;
                }
                let inner = self.policy.tag_owners.get(t).cloned().unwrap_or_default();
                self.owner_matches(&inner, who, seen)
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod unit {
    use super::parse_go_duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h").unwrap(), 3_600_000_000_000);
        assert_eq!(parse_go_duration("1h30m").unwrap(), 5_400_000_000_000);
        assert_eq!(parse_go_duration("-1m").unwrap(), -60_000_000_000);
        assert_eq!(parse_go_duration("0s").unwrap(), 0);
        assert!(parse_go_duration("abc").is_err());
        assert!(parse_go_duration("10").is_err());
    }
}

//! Per-node compilation: packet filters, visible peers, cap maps.
//!
//! Grants (ACLs become grants) compile into rules over address sets. Most
//! rules are the same for every node ("global"); `autogroup:self`
//! destinations and `via` grants give rules that depend on the receiving
//! node. Each node receives its rules reduced to the destinations that
//! cover it: its own addresses, its approved subnet routes, or — for an
//! exit node — destinations inside the internet. Two nodes see each other
//! when a rule lets either reach the other (by address, or through an
//! approved route).

use std::collections::BTreeMap;
use std::net::IpAddr;

use meshscale_wire::netip::IpPrefix;
use meshscale_wire::tailcfg::{CapGrant, CapMap, FilterRule, NetPortRange, PortRange};

use crate::alias::{Alias, AutoGroup};
use crate::ipset::{IpSet, to_u128};
use crate::resolve::{
    Checked, Ctx, GrantRule, is_exit_node, node_ips, node_set, subnet_routes, the_internet,
};
use crate::{Compiled, Node, NodePolicy, Tailnet};

/// A rule's source side: addresses, or everything (`autogroup:danger-all`).
#[derive(Debug, Clone)]
pub(crate) struct Src {
    pub(crate) any: bool,
    pub(crate) set: IpSet,
}

impl Src {
    fn overlaps_any(&self, prefixes: &[IpPrefix]) -> bool {
        !prefixes.is_empty() && (self.any || prefixes.iter().any(|p| self.set.overlaps_prefix(p)))
    }

    fn strings(&self) -> Vec<String> {
        if self.any {
            vec!["*".into()]
        } else {
            self.set.strings()
        }
    }
}

/// A destination address: everything (`*`) or a set.
#[derive(Debug, Clone)]
pub(crate) enum Dst {
    Any,
    Set(IpSet),
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    /// Network access: sources may reach `dsts` on `protos` (empty =
    /// TCP, UDP, ICMP).
    Net {
        src: Src,
        dsts: Vec<(Dst, PortRange)>,
        protos: Vec<i64>,
    },
    /// Application capabilities granted to sources at destinations.
    Cap {
        src: Src,
        grants: Vec<(Vec<IpPrefix>, CapMap)>,
    },
}

/// Capabilities whose grant implies a reverse grant to the destinations
/// (Taildrive shares, peer relays).
const COMPANION_CAPS: &[(&str, &str)] = &[
    ("tailscale.com/cap/drive", "tailscale.com/cap/drive-sharer"),
    ("tailscale.com/cap/relay", "tailscale.com/cap/relay-target"),
];

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
                cap_map: CapMap::new(),
            };
            (n.id, view)
        })
        .collect();
    Compiled { nodes }
}

/// Rules that do not depend on the receiving node, plus what is needed to
/// build the per-node ones.
pub(crate) struct Rules<'a> {
    ctx: Ctx<'a>,
    global: Vec<Rule>,
    /// Grants with `autogroup:self` destinations: (grant, resolved sources).
    self_grants: Vec<(&'a GrantRule, IpSet)>,
    /// `via` grants: (grant, sources).
    via: Vec<(&'a GrantRule, Src)>,
}

impl<'a> Rules<'a> {
    pub(crate) fn new(policy: &'a Checked, tailnet: &'a Tailnet) -> Self {
        let ctx = Ctx::new(policy, tailnet);
        let mut rules = Rules {
            global: Vec::new(),
            self_grants: Vec::new(),
            via: Vec::new(),
            ctx,
        };
        if !policy.has_filter {
            // A policy without `acls` and `grants` allows `*` to `*:*`, as
            // Tailscale's default policy does.
            rules.add_grant(default_grant());
            return rules;
        }
        for grant in &policy.grants {
            rules.add_grant(grant);
        }
        rules
    }

    fn sources(&self, grant: &GrantRule) -> Src {
        if grant.src.iter().any(|s| s.is(AutoGroup::DangerAll)) {
            return Src {
                any: true,
                set: IpSet::new(),
            };
        }
        let mut set = self.ctx.resolve_all(&grant.src);
        // `*` as a source also means "any approved subnet".
        if grant.src.iter().any(|s| matches!(s, Alias::Wildcard)) {
            set.union_with(&self.ctx.all_subnet_routes());
        }
        Src { any: false, set }
    }

    fn add_grant(&mut self, grant: &'a GrantRule) {
        let src = self.sources(grant);
        if !grant.via.is_empty() {
            if src.any || !src.set.is_empty() {
                self.via.push((grant, src));
            }
            return;
        }
        let (selves, others): (Vec<&Alias>, Vec<&Alias>) =
            grant.dst.iter().partition(|d| d.is(AutoGroup::SelfNodes));
        if !selves.is_empty() {
            let plain: Vec<Alias> = grant
                .src
                .iter()
                .filter(|s| !s.is(AutoGroup::DangerAll))
                .cloned()
                .collect();
            let set = self.ctx.resolve_all(&plain);
            self.self_grants.push((grant, set));
        }
        if others.is_empty() || (!src.any && src.set.is_empty()) {
            return;
        }
        for ip in &grant.ip {
            let mut dsts = Vec::new();
            for d in &others {
                let addr = match d {
                    Alias::Wildcard => Dst::Any,
                    // Access to the internet is given through exit nodes
                    // (and `via`), not as a filter rule.
                    Alias::AutoGroup(AutoGroup::Internet) => continue,
                    _ => {
                        // One entry per interval, so reduction keeps only
                        // the receiving node's own addresses.
                        for part in split(&self.ctx.resolve(d)) {
                            for p in &ip.ports {
                                dsts.push((Dst::Set(part.clone()), *p));
                            }
                        }
                        continue;
                    }
                };
                for p in &ip.ports {
                    dsts.push((addr.clone(), *p));
                }
            }
            if !dsts.is_empty() {
                self.global.push(Rule::Net {
                    src: src.clone(),
                    dsts,
                    protos: ip.proto.numbers(),
                });
            }
        }
        if let Some(app) = &grant.app {
            let mut grants = Vec::new();
            let mut dst_union = IpSet::new();
            for d in &others {
                let set = self.ctx.resolve(d);
                if set.is_empty() {
                    continue;
                }
                dst_union.union_with(&set);
                grants.push((set.prefixes(), app.clone()));
            }
            if grants.is_empty() {
                return;
            }
            self.global.push(Rule::Cap {
                src: src.clone(),
                grants,
            });
            if others.iter().any(|d| matches!(d, Alias::Wildcard)) {
                dst_union.union_with(&self.ctx.all_subnet_routes());
            }
            // Companion grants go back from the destinations to the
            // sources' own addresses (without the subnets `*` adds).
            let src_back = if src.any {
                IpSet::all()
            } else {
                self.ctx.resolve_all(&grant.src)
            };
            self.global
                .extend(companions(app, &dst_union, &src_back.prefixes()));
        }
    }

    fn self_rules(&self, n: &Node) -> Vec<Rule> {
        let mut out = Vec::new();
        if self.self_grants.is_empty() || !n.tags.is_empty() {
            return out;
        }
        let Some(uid) = n.user else {
            return out;
        };
        let same_user: Vec<&Node> = self
            .ctx
            .tailnet
            .nodes
            .iter()
            .filter(|m| m.tags.is_empty() && m.user == Some(uid))
            .collect();
        for (grant, srcs) in &self.self_grants {
            let src = IpSet::from_addrs(
                same_user
                    .iter()
                    .filter(|m| node_ips(m).iter().any(|ip| srcs.contains(*ip)))
                    .flat_map(|m| node_ips(m)),
            );
            if src.is_empty() {
                continue;
            }
            let src = Src {
                any: false,
                set: src,
            };
            for ip in &grant.ip {
                let mut dsts = Vec::new();
                for m in &same_user {
                    for p in &ip.ports {
                        dsts.push((Dst::Set(node_set(m)), *p));
                    }
                }
                if !dsts.is_empty() {
                    out.push(Rule::Net {
                        src: src.clone(),
                        dsts,
                        protos: ip.proto.numbers(),
                    });
                }
            }
            if let Some(app) = &grant.app {
                let dst_union = IpSet::from_addrs(same_user.iter().flat_map(|m| node_ips(m)));
                let grants: Vec<(Vec<IpPrefix>, CapMap)> = same_user
                    .iter()
                    .map(|m| (node_set(m).prefixes(), app.clone()))
                    .collect();
                out.push(Rule::Cap {
                    src: src.clone(),
                    grants,
                });
                out.extend(companions(app, &dst_union, &src.set.prefixes()));
            }
        }
        out
    }

    /// The part of a `via` grant's destinations router `n` serves: the
    /// destination prefixes overlapping its approved subnet routes, and
    /// the internet when it is an approved exit node.
    fn via_destinations(&self, grant: &GrantRule, n: &Node) -> IpSet {
        let routes = subnet_routes(n);
        let mut dst = IpSet::new();
        for d in &grant.dst {
            if d.is(AutoGroup::Internet) {
                if is_exit_node(n) {
                    dst.union_with(&the_internet());
                }
                continue;
            }
            let set = match d {
                Alias::Wildcard => IpSet::all(),
                _ => self.ctx.resolve(d),
            };
            for p in set.prefixes() {
                if routes
                    .iter()
                    .any(|r| IpSet::from_prefix(r).overlaps_prefix(&p))
                {
                    dst.add_prefix(&p);
                }
            }
        }
        dst
    }

    /// Pairs (source node, router) a `via` grant makes visible to each
    /// other, whether it grants `ip` or only `app`.
    fn via_pairs(&self, index: &NodeIndex) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (grant, src) in &self.via {
            let srcs = index.sources(src);
            for (r, n) in self.ctx.tailnet.nodes.iter().enumerate() {
                if grant.via.iter().any(|t| n.tags.contains(t))
                    && !self.via_destinations(grant, n).is_empty()
                {
                    out.extend(srcs.iter().map(|&s| (s, r)));
                }
            }
        }
        out
    }

    fn via_rules(&self, n: &Node) -> Vec<Rule> {
        let mut out = Vec::new();
        for (grant, src) in &self.via {
            if !grant.via.iter().any(|t| n.tags.contains(t)) {
                continue;
            }
            let dst = self.via_destinations(grant, n);
            if dst.is_empty() {
                continue;
            }
            for ip in &grant.ip {
                let dsts = ip
                    .ports
                    .iter()
                    .map(|p| (Dst::Set(dst.clone()), *p))
                    .collect();
                out.push(Rule::Net {
                    src: src.clone(),
                    dsts,
                    protos: ip.proto.numbers(),
                });
            }
        }
        out
    }
}

/// `{"src": ["*"], "dst": ["*"], "ip": ["*"]}`.
fn default_grant() -> &'static GrantRule {
    static DEFAULT: std::sync::OnceLock<GrantRule> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(|| GrantRule {
        src: vec![Alias::Wildcard],
        dst: vec![Alias::Wildcard],
        ip: vec![crate::alias::ProtoPorts {
            proto: crate::alias::Proto(None),
            ports: vec![PortRange::ANY],
        }],
        app: None,
        via: Vec::new(),
    })
}

/// A set as one set per interval.
fn split(set: &IpSet) -> Vec<IpSet> {
    set.ranges()
        .iter()
        .map(|&(a, b)| {
            let mut one = IpSet::new();
            one.add_range(a, b);
            one
        })
        .collect()
}

fn companions(app: &CapMap, dsts: &IpSet, srcs: &[IpPrefix]) -> Vec<Rule> {
    let mut out = Vec::new();
    for (cap, companion) in COMPANION_CAPS {
        if app.contains_key(*cap) && !dsts.is_empty() {
            let mut map = CapMap::new();
            map.insert((*companion).to_string(), Vec::new());
            out.push(Rule::Cap {
                src: Src {
                    any: false,
                    set: dsts.clone(),
                },
                grants: vec![(srcs.to_vec(), map)],
            });
        }
    }
    out
}

/// What a node is, for matching rules against it.
struct Target {
    ips: Vec<IpAddr>,
    routes: Vec<IpPrefix>,
    exit: bool,
}

impl Target {
    fn of(n: &Node) -> Self {
        Target {
            ips: node_ips(n),
            routes: subnet_routes(n),
            exit: is_exit_node(n),
        }
    }
}

/// Keeps the parts of `rules` whose destinations cover `t`.
fn reduce(rules: &[Rule], t: &Target, internet: &IpSet) -> Vec<FilterRule> {
    let mut out = Vec::new();
    for rule in rules {
        match rule {
            Rule::Net { src, dsts, protos } => {
                let kept: Vec<NetPortRange> = dsts
                    .iter()
                    .filter(|(d, _)| match d {
                        Dst::Any => true,
                        Dst::Set(set) => {
                            t.ips.iter().any(|ip| set.contains(*ip))
                                || t.routes.iter().any(|r| set.overlaps_prefix(r))
                                || (t.exit && set.is_subset_of(internet))
                        }
                    })
                    .flat_map(|(d, ports)| dst_wire(d, *ports))
                    .collect();
                if !kept.is_empty() {
                    out.push(FilterRule {
                        src_ips: src.strings(),
                        dst_ports: kept,
                        ip_proto: protos.clone(),
                        ..FilterRule::default()
                    });
                }
            }
            Rule::Cap { src, grants } => {
                let mut cap_grant = Vec::new();
                for (dsts, caps) in grants {
                    let mut kept: Vec<IpPrefix> = Vec::new();
                    for d in dsts {
                        for ip in &t.ips {
                            if d.contains(ip) {
                                kept.push(IpPrefix::host(*ip));
                            }
                        }
                        let dset = IpSet::from_prefix(d);
                        if t.routes.iter().any(|r| dset.overlaps_prefix(r)) {
                            kept.push(*d);
                        }
                    }
                    kept.sort();
                    kept.dedup();
                    if !kept.is_empty() {
                        cap_grant.push(CapGrant {
                            dsts: kept,
                            caps: Vec::new(),
                            cap_map: caps.clone(),
                        });
                    }
                }
                if !cap_grant.is_empty() {
                    out.push(FilterRule {
                        src_ips: src.strings(),
                        cap_grant,
                        ..FilterRule::default()
                    });
                }
            }
        }
    }
    out
}

/// One destination in the client's form (`*`, an address, a prefix or a
/// range per `NetPortRange`).
fn dst_wire(d: &Dst, ports: PortRange) -> Vec<NetPortRange> {
    match d {
        Dst::Any => vec![NetPortRange {
            ip: "*".into(),
            bits: None,
            ports,
        }],
        Dst::Set(set) => set
            .strings()
            .into_iter()
            .map(|ip| NetPortRange {
                ip,
                bits: None,
                ports,
            })
            .collect(),
    }
}

/// The destination addresses of a rule (for peer visibility).
fn rule_dst(rule: &Rule) -> (bool, IpSet) {
    match rule {
        Rule::Net { dsts, .. } => {
            if dsts.iter().any(|(d, _)| matches!(d, Dst::Any)) {
                return (true, IpSet::new());
            }
            let sets = dsts.iter().filter_map(|(d, _)| match d {
                Dst::Set(s) => Some(s),
                Dst::Any => None,
            });
            (false, IpSet::union_of(sets))
        }
        Rule::Cap { grants, .. } => {
            let mut set = IpSet::new();
            for (dsts, _) in grants {
                for p in dsts {
                    set.add_prefix(p);
                }
            }
            (false, set)
        }
    }
}

fn rule_src(rule: &Rule) -> &Src {
    match rule {
        Rule::Net { src, .. } | Rule::Cap { src, .. } => src,
    }
}

/// A symmetric "may see" relation over node indices.
struct Adjacency {
    words: usize,
    bits: Vec<u64>,
}

impl Adjacency {
    fn new(n: usize) -> Self {
        let words = n.div_ceil(64);
        Adjacency {
            words,
            bits: vec![0; words * n],
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        if a == b {
            return;
        }
        self.bits[a * self.words + b / 64] |= 1 << (b % 64);
        self.bits[b * self.words + a / 64] |= 1 << (a % 64);
    }

    /// Links every node of `a` with every node of `b`, a row at a time.
    fn link_all(&mut self, a: &[usize], b: &[usize]) {
        let words = self.words;
        let mask = |set: &[usize]| {
            let mut m = vec![0u64; words];
            for &x in set {
                m[x / 64] |= 1 << (x % 64);
            }
            m
        };
        let (ma, mb) = (mask(a), mask(b));
        for &x in a {
            for (w, bits) in mb.iter().enumerate() {
                self.bits[x * words + w] |= bits;
            }
        }
        for &y in b {
            for (w, bits) in ma.iter().enumerate() {
                self.bits[y * words + w] |= bits;
            }
        }
    }

    fn row(&self, a: usize) -> impl Iterator<Item = usize> + '_ {
        let row = &self.bits[a * self.words..(a + 1) * self.words];
        row.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// Node lookup by address and by route, to find the nodes a set covers
/// without scanning the whole tailnet for every rule.
struct NodeIndex {
    by_ip: BTreeMap<u128, Vec<usize>>,
    targets: Vec<Target>,
    /// Nodes with approved subnet routes or exit routes.
    routers: Vec<usize>,
}

impl NodeIndex {
    fn new(nodes: &[Node]) -> Self {
        let mut by_ip: BTreeMap<u128, Vec<usize>> = BTreeMap::new();
        let mut routers = Vec::new();
        let targets: Vec<Target> = nodes.iter().map(Target::of).collect();
        for (i, t) in targets.iter().enumerate() {
            for ip in &t.ips {
                by_ip.entry(to_u128(*ip)).or_default().push(i);
            }
            if !t.routes.is_empty() || t.exit {
                routers.push(i);
            }
        }
        NodeIndex {
            by_ip,
            targets,
            routers,
        }
    }

    /// Nodes whose addresses fall in `set` (`any`: all nodes).
    fn by_addr(&self, any: bool, set: &IpSet) -> Vec<usize> {
        if any {
            return (0..self.targets.len()).collect();
        }
        let mut out = Vec::new();
        for &(a, b) in set.ranges() {
            for (_, idx) in self.by_ip.range(a..=b) {
                out.extend_from_slice(idx);
            }
        }
        out
    }

    /// Nodes that keep a destination entry `set`: by address, by an
    /// overlapping approved route, or as an exit node when the entry lies
    /// in the internet.
    fn covering(&self, set: &IpSet, internet: &IpSet) -> Vec<usize> {
        let mut out = self.by_addr(false, set);
        let in_internet = set.is_subset_of(internet);
        for &r in &self.routers {
            let t = &self.targets[r];
            if t.routes.iter().any(|p| set.overlaps_prefix(p)) || (t.exit && in_internet) {
                out.push(r);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Nodes a rule's sources cover (by address or approved route).
    fn sources(&self, src: &Src) -> Vec<usize> {
        let mut out = self.by_addr(src.any, &src.set);
        for &r in &self.routers {
            if src.overlaps_any(&self.targets[r].routes) {
                out.push(r);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Nodes a rule's destinations cover (by address, approved route, or as
    /// an exit node when the destinations span the internet).
    fn destinations(&self, any: bool, set: &IpSet, internet: &IpSet) -> Vec<usize> {
        let mut out = self.by_addr(any, set);
        // As Headscale: all of IPv4 or all of IPv6 counts as the internet.
        let spans_internet = any
            || internet.is_subset_of(set)
            || IpSet::all_v4().is_subset_of(set)
            || IpSet::all_v6().is_subset_of(set);
        for &r in &self.routers {
            let t = &self.targets[r];
            if t.routes.iter().any(|p| set.overlaps_prefix(p)) || (t.exit && spans_internet) {
                out.push(r);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

pub(crate) fn compile(policy: &Checked, tailnet: &Tailnet) -> Compiled {
    let rules = Rules::new(policy, tailnet);
    let nodes = &tailnet.nodes;
    let index = NodeIndex::new(nodes);
    let internet = the_internet();
    let mut adj = Adjacency::new(nodes.len());

    // Global rules: every source node sees every destination node, and
    // each node keeps the entries that cover it.
    let mut filters: Vec<Vec<FilterRule>> = vec![Vec::new(); nodes.len()];
    for rule in &rules.global {
        let (any, dst) = rule_dst(rule);
        let srcs = index.sources(rule_src(rule));
        if !srcs.is_empty() {
            let dsts = index.destinations(any, &dst, &internet);
            adj.link_all(&srcs, &dsts);
        }
        distribute(rule, &index, &internet, &mut filters);
    }
    for (s, r) in rules.via_pairs(&index) {
        adj.link(s, r);
    }

    let cap_maps = crate::ssh::node_cap_maps(policy, tailnet);
    let ssh = crate::ssh::Plan::new(policy, tailnet);
    let mut self_cache: BTreeMap<u64, Vec<Rule>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        // `autogroup:self` rules are the same for all nodes of a user.
        let mut extra = match (n.user, n.tags.is_empty()) {
            (Some(uid), true) => self_cache
                .entry(uid)
                .or_insert_with(|| rules.self_rules(n))
                .clone(),
            _ => Vec::new(),
        };
        extra.extend(rules.via_rules(n));
        // Rules only this node holds link pairs that involve it.
        for rule in &extra {
            let (any, dst) = rule_dst(rule);
            let srcs = index.sources(rule_src(rule));
            let dsts = index.destinations(any, &dst, &internet);
            if srcs.contains(&i) {
                for &d in &dsts {
                    adj.link(i, d);
                }
            }
            if dsts.contains(&i) {
                for &s in &srcs {
                    adj.link(s, i);
                }
            }
        }
        let mut packet_filter = std::mem::take(&mut filters[i]);
        packet_filter.extend(reduce(&extra, &index.targets[i], &internet));
        out.insert(
            n.id,
            NodePolicy {
                packet_filter,
                peers: Vec::new(),
                ssh_policy: ssh.for_node(n),
                cap_map: cap_maps.get(&n.id).cloned().unwrap_or_default(),
            },
        );
    }
    for (i, n) in nodes.iter().enumerate() {
        let mut peers: Vec<u64> = adj
            .row(i)
            .filter(|&j| j != i)
            .map(|j| nodes[j].id)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        if let Some(view) = out.get_mut(&n.id) {
            view.peers = peers;
        }
    }
    Compiled { nodes: out }
}

/// Hands each node the parts of a global rule that cover it (the same
/// result as [`reduce`], found through the index instead of by testing
/// every entry against every node).
fn distribute(rule: &Rule, index: &NodeIndex, internet: &IpSet, filters: &mut [Vec<FilterRule>]) {
    match rule {
        Rule::Net { src, dsts, protos } => {
            let mut kept: BTreeMap<usize, Vec<NetPortRange>> = BTreeMap::new();
            for (d, ports) in dsts {
                let wire = dst_wire(d, *ports);
                let targets = match d {
                    Dst::Any => (0..index.targets.len()).collect(),
                    Dst::Set(set) => index.covering(set, internet),
                };
                for t in targets {
                    kept.entry(t).or_default().extend(wire.iter().cloned());
                }
            }
            if kept.is_empty() {
                return;
            }
            let src_ips = src.strings();
            for (t, dst_ports) in kept {
                filters[t].push(FilterRule {
                    src_ips: src_ips.clone(),
                    dst_ports,
                    ip_proto: protos.clone(),
                    ..FilterRule::default()
                });
            }
        }
        Rule::Cap { src, grants } => {
            let mut kept: BTreeMap<usize, Vec<CapGrant>> = BTreeMap::new();
            for (dsts, caps) in grants {
                let mut per_node: BTreeMap<usize, Vec<IpPrefix>> = BTreeMap::new();
                for d in dsts {
                    let dset = IpSet::from_prefix(d);
                    for t in index.by_addr(false, &dset) {
                        for ip in &index.targets[t].ips {
                            if d.contains(ip) {
                                per_node.entry(t).or_default().push(IpPrefix::host(*ip));
                            }
                        }
                    }
                    for &r in &index.routers {
                        if index.targets[r]
                            .routes
                            .iter()
                            .any(|p| dset.overlaps_prefix(p))
                        {
                            per_node.entry(r).or_default().push(*d);
                        }
                    }
                }
                for (t, mut prefixes) in per_node {
                    prefixes.sort();
                    prefixes.dedup();
                    kept.entry(t).or_default().push(CapGrant {
                        dsts: prefixes,
                        caps: Vec::new(),
                        cap_map: caps.clone(),
                    });
                }
            }
            if kept.is_empty() {
                return;
            }
            let src_ips = src.strings();
            for (t, cap_grant) in kept {
                filters[t].push(FilterRule {
                    src_ips: src_ips.clone(),
                    cap_grant,
                    ..FilterRule::default()
                });
            }
        }
    }
}

/// Every network rule before per-node reduction (for policy tests whose
/// destination is not a node, e.g. an address behind a subnet router).
pub(crate) fn unreduced(policy: &Checked, tailnet: &Tailnet) -> Vec<FilterRule> {
    let rules = Rules::new(policy, tailnet);
    rules
        .global
        .iter()
        .filter_map(|r| match r {
            Rule::Net { src, dsts, protos } => Some(FilterRule {
                src_ips: src.strings(),
                dst_ports: dsts.iter().flat_map(|(d, p)| dst_wire(d, *p)).collect(),
                ip_proto: protos.clone(),
                ..FilterRule::default()
            }),
            Rule::Cap { .. } => None,
        })
        .collect()
}

/// Test helper shared with `tests.rs`: may `src` reach `dst` on `port`
/// with protocol `proto` (None = any of the default ones)?
pub(crate) fn allows(
    rules: &[FilterRule],
    src: IpAddr,
    dst: IpAddr,
    port: u16,
    proto: Option<u8>,
) -> bool {
    rules.iter().any(|r| {
        let proto_ok = match proto {
            None => true,
            Some(p) => {
                if r.ip_proto.is_empty() {
                    matches!(p, 1 | 6 | 17 | 58)
                } else {
                    r.ip_proto.contains(&i64::from(p))
                }
            }
        };
        proto_ok
            && r.src_ips.iter().any(|s| wire_contains(s, src))
            && r.dst_ports
                .iter()
                .any(|d| d.ports.contains(port) && wire_contains(&d.ip, dst))
    })
}

/// Does a wire address form (`*`, address, prefix, `a-b`) contain `ip`?
pub(crate) fn wire_contains(form: &str, ip: IpAddr) -> bool {
    if form == "*" {
        return true;
    }
    match Alias::parse(form) {
        Ok(Alias::Addr { set, .. }) => set.contains(ip),
        _ => false,
    }
}

/// One rule reduced to what route visibility needs.
#[derive(Debug, Clone)]
struct Matcher {
    src: Src,
    dst_any: bool,
    dst: IpSet,
}

impl Matcher {
    fn of(rule: &Rule) -> Self {
        let (dst_any, dst) = rule_dst(rule);
        Matcher {
            src: rule_src(rule).clone(),
            dst_any,
            dst,
        }
    }

    fn src_has(&self, ips: &[IpAddr]) -> bool {
        self.src.any || ips.iter().any(|ip| self.src.set.contains(*ip))
    }

    fn src_meets(&self, set: &IpSet) -> bool {
        self.src.any || self.src.set.overlaps(set)
    }

    fn dst_has(&self, ips: &[IpAddr]) -> bool {
        self.dst_any || ips.iter().any(|ip| self.dst.contains(*ip))
    }

    fn dst_meets(&self, set: &IpSet) -> bool {
        !set.is_empty() && (self.dst_any || self.dst.overlaps(set))
    }
}

/// Which of its peers' routes each node may use; see
/// [`crate::RouteFilter`].
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteMatchers {
    global: Vec<Matcher>,
    per_node: BTreeMap<u64, (Vec<IpAddr>, IpSet, Vec<Matcher>)>,
}

impl RouteMatchers {
    pub(crate) fn new(policy: &Checked, tailnet: &Tailnet) -> Self {
        let rules = Rules::new(policy, tailnet);
        let global = rules.global.iter().map(Matcher::of).collect();
        let mut self_cache: BTreeMap<u64, Vec<Matcher>> = BTreeMap::new();
        let mut per_node = BTreeMap::new();
        for n in &tailnet.nodes {
            let mut own = match (n.user, n.tags.is_empty()) {
                (Some(uid), true) => self_cache
                    .entry(uid)
                    .or_insert_with(|| rules.self_rules(n).iter().map(Matcher::of).collect())
                    .clone(),
                _ => Vec::new(),
            };
            own.extend(rules.via_rules(n).iter().map(Matcher::of));
            let mut routes = IpSet::new();
            for r in subnet_routes(n) {
                routes.add_prefix(&r);
            }
            per_node.insert(n.id, (node_ips(n), routes, own));
        }
        RouteMatchers { global, per_node }
    }

    /// May `viewer` use `route` (Headscale's `CanAccessRoute`): it may send
    /// to the route, the route may send to it, or — for a subnet router —
    /// its own subnets and the route may talk either way. Exit routes are
    /// always allowed.
    pub(crate) fn allows(&self, viewer: u64, route: &IpPrefix) -> bool {
        // Exit routes of a visible exit node are always offered; using
        // them is the client's choice.
        if route.bits() == 0 {
            return true;
        }
        let Some((ips, own_routes, extra)) = self.per_node.get(&viewer) else {
            return false;
        };
        let route = IpSet::from_prefix(route);
        self.global.iter().chain(extra).any(|m| {
            (m.src_has(ips) && m.dst_meets(&route))
                || (m.src_meets(&route) && m.dst_has(ips))
                || (!own_routes.is_empty()
                    && ((m.src_meets(own_routes) && m.dst_meets(&route))
                        || (m.src_meets(&route) && m.dst_meets(own_routes))))
        })
    }
}

//! Tailscale's policy language — `groups`, `tagOwners`, `hosts`, `acls`,
//! `grants`, `autoApprovers`, `ssh`, `nodeAttrs`, `tests`, `sshTests` — as
//! Headscale (policy v2) reads it, compiled per node into what the official
//! client expects: a packet filter, the visible peers, an `SSHPolicy` and a
//! `CapMap`.
//!
//! Pure: no I/O, no async. The control server parses a policy once
//! ([`Policy::parse`]), then compiles it against its current tailnet
//! ([`Policy::compile`]) whenever the policy or the tailnet changes.
//!
//! Beyond the compiled views: [`Policy::check`] runs the policy's own
//! tests (call it before putting a policy in force), [`Policy::may_own_tag`]
//! and [`Policy::auto_approves`] answer registration-time questions, and
//! [`Policy::route_filter`] says which peers' routes a node may use.
//! [`NodePolicy`] is not `Eq`/`Hash` (wire filter rules carry JSON values):
//! group identical views by [`NodePolicy::fingerprint`].
//!
//! Layout: `hujson` (comments/trailing commas → JSON), `model` (serde
//! shape), `resolve` (aliases → addresses; validation), `compile`
//! (filters, peers, cap maps), `ssh` (SSH policy), `tests` (policy
//! `tests`/`sshTests`), [`topology`] (conformance topology files and the
//! `policy compile` report).

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod alias;
mod compile;
mod error;
mod hujson;
mod ipset;
mod model;
mod resolve;
mod ssh;
mod tests;
pub mod topology;

use std::collections::BTreeMap;

use meshscale_wire::netip::IpPrefix;
use meshscale_wire::tailcfg::{CapMap, FilterRule, SshPolicy};

pub use error::PolicyError;
pub use topology::{Topology, compile_report};

/// The largest policy text accepted (1 MiB).
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// HuJSON as plain JSON (comments and trailing commas removed, byte offsets
/// kept), for tools that assemble a policy from several HuJSON documents,
/// e.g. the Kubernetes operator merging MeshPolicy objects.
pub fn hujson_to_json(text: &str) -> Result<String, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: text.len(),
            max: MAX_POLICY_BYTES,
        });
    }
    hujson::to_json(text)
}

/// A parsed, structurally validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `None`: no policy at all, which allows everything.
    inner: Option<resolve::Checked>,
}

impl Policy {
    /// Reads HuJSON or JSON of at most [`MAX_POLICY_BYTES`], refusing what
    /// Tailscale refuses without needing a tailnet: syntax, unknown keys,
    /// undefined groups/hosts/tags, bad ports and protocols, autogroups where
    /// they are not allowed, malformed SSH rules. Empty text (or only
    /// comments) is no policy: [`Policy::allow_all`].
    ///
    /// Some refusals need the tailnet (`tests`, `sshTests`, the domain in
    /// `user:*@domain`): call [`Policy::check`] before putting a policy in
    /// force.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                size: text.len(),
                max: MAX_POLICY_BYTES,
            });
        }
        let json = hujson::to_json(text)?;
        // An empty file (or only comments) is no policy, as in Headscale.
        if json.trim().is_empty() {
            return Ok(Policy::allow_all());
        }
        let mut value: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        model::canonicalize(&mut value);
        let file: model::PolicyFile =
            serde_json::from_value(value).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let checked = resolve::Checked::new(file)?;
        Ok(Policy {
            inner: Some(checked),
        })
    }

    /// No policy: every node reaches and sees every other node (Headscale's
    /// and Tailscale's behaviour when no policy is set).
    pub fn allow_all() -> Policy {
        Policy { inner: None }
    }

    /// Evaluates the policy's `tests` and `sshTests` against `tailnet`;
    /// `Err` names the first one that does not hold.
    pub fn check(&self, tailnet: &Tailnet) -> Result<(), PolicyError> {
        match &self.inner {
            None => Ok(()),
            Some(checked) => tests::run(checked, tailnet),
        }
    }

    /// May `owner` carry `tag` per `tagOwners`? A user may when an owner
    /// entry names them (directly, through a group, or `autogroup:member`);
    /// a node holding tags may when one of its tags owns `tag`
    /// (transitively) or it already holds `tag`. Without a policy no tag is
    /// ownable, as in Headscale (there, only an admin setting tags
    /// directly bypasses tagOwners).
    pub fn may_own_tag(&self, tag: &str, owner: &TagOwner<'_>, tailnet: &Tailnet) -> bool {
        match &self.inner {
            None => false,
            Some(checked) => checked.may_own_tag(tag, owner, tailnet),
        }
    }

    /// Is `route` (approved or advertised by `node`) approved automatically
    /// by `autoApprovers`? Exit routes (`0.0.0.0/0`, `::/0`) follow
    /// `autoApprovers.exitNode`.
    pub fn auto_approves(&self, route: &IpPrefix, node: &Node, tailnet: &Tailnet) -> bool {
        match &self.inner {
            None => false,
            Some(checked) => checked.auto_approves(route, node, tailnet),
        }
    }

    /// Which of its peers' routes (subnet and exit routes the server has
    /// made primary) each node may use, for the peers' `AllowedIPs`.
    pub fn route_filter(&self, tailnet: &Tailnet) -> RouteFilter {
        RouteFilter {
            inner: self
                .inner
                .as_ref()
                .map(|checked| compile::RouteMatchers::new(checked, tailnet)),
        }
    }

    /// What every node of `tailnet` receives.
    pub fn compile(&self, tailnet: &Tailnet) -> Compiled {
        match &self.inner {
            None => compile::allow_all(tailnet),
            Some(checked) => compile::compile(checked, tailnet),
        }
    }
}

/// Route visibility under a policy (from [`Policy::route_filter`]): a node
/// gets a peer's route in that peer's `AllowedIPs` only when the policy
/// lets traffic flow between the node (or the subnets it routes) and the
/// route, in either direction — Headscale's and Tailscale's rule. Exit
/// routes of a visible exit node are always allowed, and without a policy
/// every route is. `via` grants do not steer routes here yet (Headscale's
/// `ViaRoutesForPeer`).
#[derive(Debug, Clone)]
pub struct RouteFilter {
    inner: Option<compile::RouteMatchers>,
}

impl RouteFilter {
    /// May node `viewer` (a [`Node::id`]) use `route` through a peer?
    pub fn allows(&self, viewer: u64, route: &IpPrefix) -> bool {
        match &self.inner {
            None => true,
            Some(m) => m.allows(viewer, route),
        }
    }
}

/// Who asks to own a tag: a user, or a node that already holds tags.
#[derive(Debug, Clone, Copy)]
pub enum TagOwner<'a> {
    User(&'a User),
    Tags(&'a [String]),
}

/// The tailnet a policy is compiled against.
#[derive(Debug, Clone, Default)]
pub struct Tailnet {
    pub users: Vec<User>,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: u64,
    pub hostname: String,
    /// Owning user's id; tagged nodes are owned by their tags.
    pub user: Option<u64>,
    /// `tag:x`; non-empty = a tagged node, which no longer belongs to its
    /// user in policy terms.
    pub tags: Vec<String>,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Approved subnet routes and exit routes.
    pub approved_routes: Vec<IpPrefix>,
}

/// The compiled view of every node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compiled {
    /// Key: [`Node::id`].
    pub nodes: BTreeMap<u64, NodePolicy>,
}

/// What one node receives. `FilterRule` and `CapMap` carry JSON values,
/// which are not `Eq`/`Hash`; group identical views by
/// [`NodePolicy::fingerprint`] instead.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePolicy {
    /// Only the rules whose destinations cover this node's addresses or
    /// approved routes.
    pub packet_filter: Vec<FilterRule>,
    /// Visible peers, sorted: a peer is visible when either side may reach
    /// the other.
    pub peers: Vec<u64>,
    pub ssh_policy: Option<SshPolicy>,
    /// From `nodeAttrs`.
    pub cap_map: CapMap,
}

impl NodePolicy {
    /// SHA-256 over a canonical encoding of the whole view: equal views have
    /// equal fingerprints, so sessions can share encoded frames.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        // Serializing these wire types cannot fail (string keys only).
        let filter = serde_json::to_vec(&self.packet_filter).unwrap_or_default();
        let ssh = serde_json::to_vec(&self.ssh_policy).unwrap_or_default();
        let caps = serde_json::to_vec(&self.cap_map).unwrap_or_default();
        for part in [&filter, &ssh, &caps] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update((self.peers.len() as u64).to_le_bytes());
        for peer in &self.peers {
            hasher.update(peer.to_le_bytes());
        }
        hasher.finalize().into()
    }
}

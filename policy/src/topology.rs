//! The conformance topology file (users with emails; nodes with hostname,
//! tags, addresses, owner and routes) and the `meshscale policy compile`
//! report built from it.
//!
//! Format (JSON): `{"users": [{"id", "name", "email"}], "nodes": {"<name>":
//! {"hostname", "tags", "ipv4", "ipv6", "user"?, "routable_ips",
//! "approved_routes"}}}`; `user` is a user's name. A whole conformance case
//! (with a `topology` key) is accepted too.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use meshscale_wire::gojson::nullable;
use meshscale_wire::netip::IpPrefix;

use crate::{Node, Policy, PolicyError, Tailnet, User};

/// A tailnet read from a topology file, with its node names.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub tailnet: Tailnet,
    /// Node id → the node's name in the file (the key of `nodes`).
    pub node_names: BTreeMap<u64, String>,
    /// Node name → node id.
    pub node_ids: BTreeMap<String, u64>,
    /// Node id → the routes it advertises (`routable_ips`), approved or
    /// not; [`compile_report`] approves those the policy's
    /// `autoApprovers` cover, as the server does when routes arrive.
    pub advertised: BTreeMap<u64, Vec<IpPrefix>>,
}

#[derive(Deserialize)]
struct FileUser {
    id: u64,
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Deserialize)]
struct FileNode {
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    tags: Vec<String>,
    #[serde(default)]
    ipv4: Option<String>,
    #[serde(default)]
    ipv6: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    approved_routes: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    routable_ips: Vec<String>,
}

#[derive(Deserialize)]
struct FileTopology {
    #[serde(default, deserialize_with = "nullable")]
    users: Vec<FileUser>,
    #[serde(default)]
    nodes: BTreeMap<String, FileNode>,
}

impl Topology {
    /// Parses a topology file (JSON, at most [`crate::MAX_POLICY_BYTES`]
    /// times four, as topologies list every node).
    pub fn parse(text: &str) -> Result<Topology, PolicyError> {
        if text.len() > 4 * crate::MAX_POLICY_BYTES {
            return Err(PolicyError::Topology(format!(
                "file is {} bytes, more than the {} allowed",
                text.len(),
                4 * crate::MAX_POLICY_BYTES
            )));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| PolicyError::Topology(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Reads an already-parsed topology (or a conformance case holding one
    /// under `topology`).
    pub fn from_value(value: &Value) -> Result<Topology, PolicyError> {
        let value = value.get("topology").unwrap_or(value);
        let file: FileTopology = serde_json::from_value(value.clone())
            .map_err(|e| PolicyError::Topology(e.to_string()))?;
        let mut topo = Topology::default();
        let mut user_ids = BTreeMap::new();
        for u in file.users {
            user_ids.insert(u.name.clone(), u.id);
            topo.tailnet.users.push(User {
                id: u.id,
                name: u.name,
                email: u.email.filter(|e| !e.is_empty()),
            });
        }
        for (index, (name, n)) in file.nodes.into_iter().enumerate() {
            let id = index as u64 + 1;
            let user = match &n.user {
                Some(user) if !user.is_empty() => Some(*user_ids.get(user).ok_or_else(|| {
                    PolicyError::Topology(format!("node {name:?}: unknown user {user:?}"))
                })?),
                _ => None,
            };
            let ipv4 = parse_opt(&name, "ipv4", n.ipv4.as_deref())?;
            let ipv6 = parse_opt(&name, "ipv6", n.ipv6.as_deref())?;
            let approved_routes = parse_routes(&name, &n.approved_routes)?;
            let advertised = parse_routes(&name, &n.routable_ips)?;
            if !advertised.is_empty() {
                topo.advertised.insert(id, advertised);
            }
            topo.tailnet.nodes.push(Node {
                id,
                hostname: n.hostname.unwrap_or_else(|| name.clone()),
                user: if n.tags.is_empty() { user } else { None },
                tags: n.tags,
                ipv4,
                ipv6,
                approved_routes,
            });
            topo.node_names.insert(id, name.clone());
            topo.node_ids.insert(name, id);
        }
        Ok(topo)
    }
}

fn parse_routes(node: &str, routes: &[String]) -> Result<Vec<IpPrefix>, PolicyError> {
    routes
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e| PolicyError::Topology(format!("node {node:?}: route {r:?}: {e}")))
        })
        .collect()
}

fn parse_opt<T: std::str::FromStr>(
    node: &str,
    field: &str,
    text: Option<&str>,
) -> Result<Option<T>, PolicyError>
where
    T::Err: std::fmt::Display,
{
    match text {
        None | Some("") => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|e| PolicyError::Topology(format!("node {node:?}: {field} {t:?}: {e}"))),
    }
}

/// What `meshscale policy compile -o json` prints: for every node of the
/// topology, `{"packet_filter_rules": [...], "peers": ["<hostname>", ...],
/// "ssh_policy": {...}}`, filter rules in the JSON the official client
/// receives.
///
/// Advertised routes that the policy's `autoApprovers` cover count as
/// approved, as they would on the server.
pub fn compile_report(policy: &Policy, topo: &Topology) -> Value {
    let mut tailnet = topo.tailnet.clone();
    for node in &mut tailnet.nodes {
        for route in topo.advertised.get(&node.id).into_iter().flatten() {
            if !node.approved_routes.contains(route)
                && policy.auto_approves(route, node, &topo.tailnet)
            {
                node.approved_routes.push(*route);
            }
        }
    }
    let compiled = policy.compile(&tailnet);
    let hostnames: BTreeMap<u64, &str> = topo
        .tailnet
        .nodes
        .iter()
        .map(|n| (n.id, n.hostname.as_str()))
        .collect();
    let mut out = Map::new();
    for (id, view) in &compiled.nodes {
        let name = topo
            .node_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string());
        let mut peers: Vec<&str> = view
            .peers
            .iter()
            .filter_map(|p| hostnames.get(p).copied())
            .collect();
        peers.sort_unstable();
        let mut entry = Map::new();
        entry.insert(
            "packet_filter_rules".into(),
            serde_json::to_value(&view.packet_filter).unwrap_or(Value::Null),
        );
        entry.insert("peers".into(), serde_json::json!(peers));
        entry.insert(
            "ssh_policy".into(),
            serde_json::to_value(&view.ssh_policy).unwrap_or(Value::Null),
        );
        if !view.cap_map.is_empty() {
            entry.insert(
                "self_capmap".into(),
                serde_json::to_value(&view.cap_map).unwrap_or(Value::Null),
            );
        }
        out.insert(name, Value::Object(entry));
    }
    Value::Object(out)
}

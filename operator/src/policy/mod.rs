//! The policy the operator sets on the control server: every
//! `ClusterMeshPolicy` and `MeshPolicy` merged, plus the `tagOwners` of the
//! tags the operator gives injected pods. Pure code; the reconciler in
//! `reconcile/policy.rs` feeds it the objects and writes the outcome.
//!
//! Merge rules: lists (`acls`, `grants`, `ssh`, `tests`, ...) are
//! concatenated in a stable order (cluster policies by name, then namespaced
//! ones by namespace/name); maps (`groups`, `hosts`, `tagOwners`, ...) are
//! merged, and one key defined differently by two cluster policies refuses
//! the whole merge, naming both (a namespaced policy that clashes is refused
//! alone, naming the object it clashes with). The operator's own tags are the exception: their
//! owners are the union of the operator's and anyone else's.
//!
//! A namespaced `MeshPolicy` may only open its own namespace: every
//! destination is exactly the namespace's tag (`tag:k8s-ns-<ns>`), its
//! groups and hosts are named `<ns>-...` (so one team cannot redefine, or
//! block the merge with, a name another uses), and it declares no
//! `tagOwners` or other tailnet-wide settings. A namespaced policy that
//! breaks these rules is refused on its own; the others still merge.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::crd::PolicyBody;

/// Top-level keys as the policy language spells them; the server reads
/// field names case-insensitively, so the merge must too.
const KEYS: &[&str] = &[
    "groups",
    "hosts",
    "tagOwners",
    "acls",
    "grants",
    "ssh",
    "tests",
    "sshTests",
    "autoApprovers",
    "nodeAttrs",
    "randomizeClientPort",
];

/// What a namespaced policy may declare.
const NAMESPACED_KEYS: &[&str] = &["groups", "hosts", "acls", "grants", "ssh", "tests"];

/// One policy object, as the merge sees it.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// How conditions and errors name it: `ClusterMeshPolicy/base`,
    /// `MeshPolicy/payments/db`.
    pub id: String,
    /// `Some` for a namespaced `MeshPolicy`: its namespace's tag.
    pub confined_to: Option<String>,
    /// The namespace (namespaced policies only), for group/host names.
    pub namespace: Option<String>,
    pub body: &'a PolicyBody,
}

/// The tags the operator gives pods, and who owns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorTags {
    /// Policy owners, e.g. `k8s@` (the injection user).
    pub owners: Vec<String>,
    pub tags: Vec<String>,
}

/// Why a merge was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("{what} is defined differently by {first} and {second}")]
    Conflict {
        what: String,
        first: String,
        second: String,
    },
    #[error("{id}: {what} has a different type than in {other}")]
    Shape {
        id: String,
        what: String,
        other: String,
    },
}

/// A successful merge.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The policy text for `SetPolicy`.
    pub text: String,
    /// Objects that are part of `text`.
    pub accepted: Vec<String>,
    /// Objects left out, with the reason (bad HuJSON, a namespaced policy
    /// reaching outside its namespace, ...).
    pub refused: BTreeMap<String, String>,
}

/// Comment at the head of the policy text: who writes it, so an admin who
/// reads it with `meshscale policy get` knows where to change it.
pub const HEADER: &str = "// Written by meshscale-operator from the cluster's ClusterMeshPolicy and MeshPolicy objects; edit those, not this.\n";

/// One object's policy as a JSON object: its `hujson` text (if any) with the
/// structured fields merged in by the same rules as between objects.
pub fn document(id: &str, body: &PolicyBody) -> Result<Map<String, Value>, String> {
    let mut doc = Map::new();
    let mut origins = Origins::default();
    if let Some(text) = body.hujson.as_deref().filter(|t| !t.trim().is_empty()) {
        let json = meshscale_policy::hujson_to_json(text).map_err(|e| format!("hujson: {e}"))?;
        if !json.trim().is_empty() {
            let v: Value = serde_json::from_str(&json).map_err(|e| format!("hujson: {e}"))?;
            let Value::Object(m) = v else {
                return Err("hujson: the policy must be a JSON object".into());
            };
            merge_into(&mut doc, &mut origins, id, m, &[]).map_err(|e| e.to_string())?;
        }
    }
    let structured = serde_json::to_value(body).map_err(|e| e.to_string())?;
    if let Value::Object(mut m) = structured {
        m.remove("hujson");
        merge_into(&mut doc, &mut origins, id, m, &[]).map_err(|e| e.to_string())?;
    }
    Ok(doc)
}

/// Merges `sources` (any order) and the operator's tags into one policy.
pub fn merge(sources: &[Source<'_>], operator: &OperatorTags) -> Result<Merged, MergeError> {
    let mut sorted: Vec<&Source<'_>> = sources.iter().collect();
    // Cluster-wide first, then namespaced, each by id: the text only
    // changes when a policy does.
    sorted.sort_by(|a, b| (a.confined_to.is_some(), &a.id).cmp(&(b.confined_to.is_some(), &b.id)));
    let mut merged = Map::new();
    let mut origins = Origins::default();
    let mut accepted = Vec::new();
    let mut refused = BTreeMap::new();
    for s in sorted {
        let doc = match document(&s.id, s.body).and_then(|d| confine(s, &d).map(|()| d)) {
            Ok(d) => d,
            Err(why) => {
                refused.insert(s.id.clone(), why);
                continue;
            }
        };
        if s.confined_to.is_some() {
            // A namespace's conflict is refused on its own, so one team can
            // never hold back every other policy (cluster policies come
            // first, so a clash with one is the namespace's to fix).
            let mut trial = merged.clone();
            let mut trial_origins = origins.clone();
            match merge_into(&mut trial, &mut trial_origins, &s.id, doc, &operator.tags) {
                Ok(()) => {
                    merged = trial;
                    origins = trial_origins;
                }
                Err(e) => {
                    refused.insert(s.id.clone(), e.to_string());
                    continue;
                }
            }
        } else {
            merge_into(&mut merged, &mut origins, &s.id, doc, &operator.tags)?;
        }
        accepted.push(s.id.clone());
    }
    let owners = merged
        .entry("tagOwners")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(owners_map) = owners {
        for tag in &operator.tags {
            let entry = owners_map
                .entry(tag.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                for o in &operator.owners {
                    if !list.iter().any(|x| x.as_str() == Some(o)) {
                        list.push(Value::String(o.clone()));
                    }
                }
            }
        }
    }
    let body = serde_json::to_string_pretty(&Value::Object(merged)).unwrap_or_default();
    Ok(Merged {
        text: format!("{HEADER}{body}\n"),
        accepted,
        refused,
    })
}

/// Which object defined each map key, to name both sides of a conflict.
#[derive(Default, Clone)]
struct Origins(BTreeMap<String, String>);

fn canonical(key: &str) -> String {
    KEYS.iter()
        .find(|k| k.eq_ignore_ascii_case(key))
        .map_or_else(|| key.to_string(), |k| (*k).to_string())
}

fn merge_into(
    into: &mut Map<String, Value>,
    origins: &mut Origins,
    id: &str,
    doc: Map<String, Value>,
    union_tags: &[String],
) -> Result<(), MergeError> {
    for (key, value) in doc {
        let key = canonical(&key);
        if value.is_null() {
            continue;
        }
        let Some(have) = into.get_mut(&key) else {
            if let Value::Object(m) = &value {
                for k in m.keys() {
                    origins.0.insert(format!("{key}[{k:?}]"), id.to_string());
                }
            } else {
                origins.0.insert(key.clone(), id.to_string());
            }
            into.insert(key, value);
            continue;
        };
        let shape = |other: &Origins, what: &str| MergeError::Shape {
            id: id.to_string(),
            what: what.to_string(),
            other: other
                .0
                .iter()
                .find(|(k, _)| k.as_str() == what || k.starts_with(&format!("{what}[")))
                .map_or_else(|| "another policy".to_string(), |(_, v)| v.clone()),
        };
        match (have, value) {
            (Value::Array(list), Value::Array(more)) => list.extend(more),
            (Value::Object(map), Value::Object(more)) => {
                for (k, v) in more {
                    let what = format!("{key}[{k:?}]");
                    match map.get_mut(&k) {
                        None => {
                            origins.0.insert(what, id.to_string());
                            map.insert(k, v);
                        }
                        Some(old) if key == "tagOwners" && union_tags.contains(&k) => {
                            if let (Value::Array(old), Value::Array(new)) = (old, v) {
                                for o in new {
                                    if !old.contains(&o) {
                                        old.push(o);
                                    }
                                }
                            }
                        }
                        Some(old) if same(old, &v) => {}
                        Some(_) => {
                            return Err(MergeError::Conflict {
                                first: origins
                                    .0
                                    .get(&what)
                                    .cloned()
                                    .unwrap_or_else(|| "another policy".into()),
                                what,
                                second: id.to_string(),
                            });
                        }
                    }
                }
            }
            (old, v) if old.is_array() || old.is_object() || v.is_array() || v.is_object() => {
                return Err(shape(origins, &key));
            }
            (old, v) => {
                if *old != v {
                    return Err(MergeError::Conflict {
                        first: origins
                            .0
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| "another policy".into()),
                        what: key,
                        second: id.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Equal, with lists of strings (group members, tag owners) compared as sets.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            let set = |v: &Vec<Value>| {
                let mut s: Vec<String> = v.iter().map(Value::to_string).collect();
                s.sort();
                s.dedup();
                s
            };
            set(x) == set(y)
        }
        _ => a == b,
    }
}

/// The values of `obj`'s fields named `name` in any case.
fn fields<'v>(obj: &'v Value, name: &str) -> impl Iterator<Item = &'v Value> {
    obj.as_object()
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

/// Whether a namespaced policy stays inside its namespace (`Ok` for cluster
/// policies); `Err` says which entry reaches out, and how to fix it.
fn confine(s: &Source<'_>, doc: &Map<String, Value>) -> Result<(), String> {
    let (Some(tag), Some(ns)) = (&s.confined_to, &s.namespace) else {
        return Ok(());
    };
    if tag.is_empty() {
        return Err(
            "namespace tags are off (empty --namespace-tag-prefix), so a namespaced MeshPolicy has nothing it may open"
                .into(),
        );
    }
    for (key, value) in doc {
        let key = canonical(key);
        if !NAMESPACED_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "{key}: a namespaced MeshPolicy may only declare {}; use a ClusterMeshPolicy for {key}",
                NAMESPACED_KEYS.join(", ")
            ));
        }
        match key.as_str() {
            "groups" | "hosts" => {
                let prefix = if key == "groups" {
                    format!("group:{ns}-")
                } else {
                    format!("{ns}-")
                };
                for name in value.as_object().into_iter().flat_map(|m| m.keys()) {
                    if !name.starts_with(&prefix) {
                        return Err(format!(
                            "{key}[{name:?}]: names in a namespaced MeshPolicy start with {prefix:?}"
                        ));
                    }
                }
            }
            "acls" | "grants" | "ssh" => {
                for (i, entry) in value.as_array().into_iter().flatten().enumerate() {
                    confine_entry(&key, i, entry, tag)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn confine_entry(key: &str, i: usize, entry: &Value, tag: &str) -> Result<(), String> {
    let outside = |d: &str| {
        format!(
            "{key}[{i}].dst: {d:?} is outside the namespace; a namespaced MeshPolicy may only grant access to {tag:?}"
        )
    };
    if key == "acls" {
        for action in fields(entry, "action") {
            if action.as_str() != Some("accept") {
                return Err(format!("{key}[{i}].action: only \"accept\" is allowed"));
            }
        }
    }
    if key == "grants" && fields(entry, "via").next().is_some() {
        return Err(format!(
            "{key}[{i}].via: routing through other nodes is for a ClusterMeshPolicy"
        ));
    }
    let mut any = false;
    for dst in fields(entry, "dst") {
        for d in strings(dst) {
            any = true;
            let ok = match key {
                // `alias:ports`, the alias being exactly the namespace's tag.
                "acls" => d
                    .strip_prefix(tag)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|ports| !ports.is_empty() && !ports.contains(':')),
                _ => d == tag,
            };
            if !ok {
                return Err(outside(&d));
            }
        }
    }
    if !any {
        return Err(format!("{key}[{i}]: no dst"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
